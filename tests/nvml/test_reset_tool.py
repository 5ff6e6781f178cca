"""The real-hardware GPU reset: `nvidia-smi --gpu-reset -i <bus id>`, run against a stand-in
`nvidia-smi` at a path the test gives (the real one must never run in tests); the tool is
never looked up on PATH."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest

from migrestore.backend import RESET_TOOL, run_reset_tool
from migrestore.errors import NvmlError

BUS = "00000000:18:00.0"
WHAT = "GPU 0 (GPU-a2df41b2-0ba1-1d44-e4c4-79338246060e): reset the GPU"


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


def run(bindir: Path, timeout: float = 120.0) -> None:
    run_reset_tool(BUS, WHAT, timeout=timeout, tool=str(bindir / "nvidia-smi"))


@pytest.fixture
def tool(tmp_path: Path, bindir: Path) -> Callable[[str], Path]:
    """Install a stand-in nvidia-smi whose body the test gives; returns the args file."""
    args_file = tmp_path / "args"

    def install(body: str) -> Path:
        script = bindir / "nvidia-smi"
        script.write_text(f'#!/bin/sh\necho "$@" > {args_file}\n{body}\n')
        script.chmod(0o755)
        return args_file

    return install


def test_success_resets_the_gpu_by_bus_id(tool: Callable[[str], Path], bindir: Path) -> None:
    args = tool('echo "GPU 00000000:18:00.0 was successfully reset."\nexit 0')
    run(bindir)
    assert args.read_text().split() == ["--gpu-reset", "-i", BUS]


def test_exit_code_is_named_as_the_nvml_return_code(
    tool: Callable[[str], Path], bindir: Path
) -> None:
    tool('echo "Insufficient Permissions"\nexit 4')
    with pytest.raises(NvmlError) as info:
        run(bindir)
    err = info.value
    assert err.nvml_error == "NVML_ERROR_NO_PERMISSION"
    assert err.code == 4
    assert str(err) == (
        f"{WHAT}: `{bindir}/nvidia-smi --gpu-reset -i {BUS}` exited 4: Insufficient Permissions: "
        "NVML_ERROR_NO_PERMISSION"
    )


def test_gpu_in_use_is_in_use(tool: Callable[[str], Path], bindir: Path) -> None:
    tool(
        'echo "GPU 00000000:18:00.0 is currently in use by another process." >&2\n'
        'echo "1 device is currently being used by one or more other processes" >&2\n'
        'echo "(e.g., Fabric Manager, CUDA application, graphics application such as an X '
        'server, or a monitoring application such as another instance of nvidia-smi in use)." >&2\n'
        "exit 255"
    )
    with pytest.raises(NvmlError) as info:
        run(bindir)
    assert info.value.nvml_error == "NVML_ERROR_IN_USE"
    assert "monitoring application" in str(info.value)
    assert str(info.value).startswith(WHAT)


def test_other_failure_is_unknown_with_the_tool_message(
    tool: Callable[[str], Path], bindir: Path
) -> None:
    tool('echo "Unable to reset this GPU." >&2\nexit 255')
    with pytest.raises(NvmlError) as info:
        run(bindir)
    assert info.value.nvml_error == "NVML_ERROR_UNKNOWN"
    assert "exited 255: Unable to reset this GPU." in str(info.value)


def test_missing_tool(bindir: Path) -> None:
    with pytest.raises(NvmlError) as info:
        run(bindir)
    assert info.value.nvml_error == "NVML_ERROR_NOT_FOUND"
    assert f"cannot run `{bindir}/nvidia-smi --gpu-reset -i" in str(info.value)


def test_hung_tool_is_killed(tool: Callable[[str], Path], bindir: Path) -> None:
    tool('/bin/sleep 60 &\necho $! > "$0.child"\nexec /bin/sleep 60')
    # the bound only has to outlast the tool's start (it then sleeps): a loaded machine
    # must not turn "killed before it forked" into a missing pid file
    with pytest.raises(NvmlError) as info:
        run(bindir, timeout=5.0)
    assert info.value.nvml_error == "NVML_ERROR_TIMEOUT"
    assert "did not finish within 5s and was killed" in str(info.value)
    # the whole session went, the background child of the tool included: wait until it
    # is gone or a zombie waiting for its new parent (SIGKILL is delivered, not instant)
    child = int((bindir / "nvidia-smi.child").read_text())
    stat = Path(f"/proc/{child}/stat")
    until = time.monotonic() + 60
    while stat.exists() and _state(stat) != "Z":
        assert time.monotonic() < until, f"the tool's child {child} outlived the kill"
        time.sleep(0.02)


def _state(stat: Path) -> str:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def test_the_tool_is_never_looked_up_on_path(
    tool: Callable[[str], Path], bindir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stand-in first on PATH must not run as root: the default is a fixed absolute path
    args = tool("exit 0")
    monkeypatch.setenv("PATH", str(bindir))
    assert os.path.isabs(RESET_TOOL)
    if os.path.exists(RESET_TOOL):
        pytest.skip(f"{RESET_TOOL} exists here: running it could reset a real GPU")
    with pytest.raises(NvmlError) as info:
        run_reset_tool(BUS, WHAT)
    assert info.value.nvml_error == "NVML_ERROR_NOT_FOUND"
    assert not args.exists()
