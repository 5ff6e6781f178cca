"""The real-hardware GPU reset: `nvidia-smi --gpu-reset -i <bus id>`, run against a stand-in
`nvidia-smi` on PATH (the real one must never run in tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from migrestore.errors import NvmlError
from migrestore.nvml import run_reset_tool

BUS = "00000000:18:00.0"
WHAT = "GPU 0 (GPU-a2df41b2-0ba1-1d44-e4c4-79338246060e): reset the GPU"


@pytest.fixture
def tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Install a stand-in nvidia-smi whose body the test gives; returns the args file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    args_file = tmp_path / "args"

    def install(body: str) -> Path:
        script = bindir / "nvidia-smi"
        script.write_text(f'#!/bin/sh\necho "$@" > {args_file}\n{body}\n')
        script.chmod(0o755)
        return args_file

    return install


def test_success_resets_the_gpu_by_bus_id(tool: Callable[[str], Path]) -> None:
    args = tool('echo "GPU 00000000:18:00.0 was successfully reset."\nexit 0')
    run_reset_tool(BUS, WHAT)
    assert args.read_text().split() == ["--gpu-reset", "-i", BUS]


def test_exit_code_is_named_as_the_nvml_return_code(tool: Callable[[str], Path]) -> None:
    tool('echo "Insufficient Permissions"\nexit 4')
    with pytest.raises(NvmlError) as info:
        run_reset_tool(BUS, WHAT)
    err = info.value
    assert err.nvml_error == "NVML_ERROR_NO_PERMISSION"
    assert err.code == 4
    assert str(err) == (
        f"{WHAT}: `nvidia-smi --gpu-reset -i {BUS}` exited 4: Insufficient Permissions: "
        "NVML_ERROR_NO_PERMISSION"
    )


def test_gpu_in_use_is_in_use(tool: Callable[[str], Path]) -> None:
    tool(
        'echo "GPU 00000000:18:00.0 is currently in use by another process." >&2\n'
        'echo "1 device is currently being used by one or more other processes" >&2\n'
        'echo "(e.g., Fabric Manager, CUDA application, graphics application such as an X '
        'server, or a monitoring application such as another instance of nvidia-smi in use)." >&2\n'
        "exit 255"
    )
    with pytest.raises(NvmlError) as info:
        run_reset_tool(BUS, WHAT)
    assert info.value.nvml_error == "NVML_ERROR_IN_USE"
    assert "monitoring application" in str(info.value)
    assert str(info.value).startswith(WHAT)


def test_other_failure_is_unknown_with_the_tool_message(tool: Callable[[str], Path]) -> None:
    tool('echo "Unable to reset this GPU." >&2\nexit 255')
    with pytest.raises(NvmlError) as info:
        run_reset_tool(BUS, WHAT)
    assert info.value.nvml_error == "NVML_ERROR_UNKNOWN"
    assert "exited 255: Unable to reset this GPU." in str(info.value)


def test_missing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NvmlError) as info:
        run_reset_tool(BUS, WHAT)
    assert info.value.nvml_error == "NVML_ERROR_NOT_FOUND"
    assert "cannot run `nvidia-smi --gpu-reset -i" in str(info.value)


def test_hung_tool_is_killed(tool: Callable[[str], Path]) -> None:
    tool('/bin/sleep 60 &\necho $! > "$0.child"\nexec /bin/sleep 60')
    with pytest.raises(NvmlError) as info:
        run_reset_tool(BUS, WHAT, timeout=0.3)
    assert info.value.nvml_error == "NVML_ERROR_TIMEOUT"
    assert "did not finish within 0.3s and was killed" in str(info.value)
    # the whole session went, the background child of the tool included (gone, or a
    # zombie waiting for its new parent to reap it)
    child = int(Path(os.environ["PATH"], "nvidia-smi.child").read_text())
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
