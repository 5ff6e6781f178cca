"""Misleading NVML reads and a failing shutdown never decide the exit code wrongly.

Rules:

1. One ``INVALID_ARGUMENT`` in the middle of a profile table (GI or CI) is read again: the
   run converges, exit 0, instead of a shorter table that makes a valid config look
   infeasible (exit 78, which systemd does not restart).
2. ``nvmlShutdown`` failing after the work is done (a verified apply, a status read, the
   daemon's first pass) keeps the exit code of the work, with one warning.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.integration.cli_util import Result, run
from tests.reliability.rig import Rig, fast_dir

LAYOUT = (
    "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n"
    "    instances:\n      - {profile: 7g.80gb}\n"
)
GI_TABLE = "nvmlDeviceGetGpuInstanceProfileInfoV"
CI_TABLE = "nvmlGpuInstanceGetComputeInstanceProfileInfoV"


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with fast_dir("migrestore-reads-") as tmp:
        made = Rig(tmp, "h100-80gb-hbm3:1", monkeypatch)
        try:
            yield made
        finally:
            made.close()


def apply(rig: Rig, capsys: pytest.CaptureFixture[str]) -> Result:
    return run(capsys, "--simulate", rig.state, "-c", rig.config_path, "apply", "--no-clients")


@pytest.mark.parametrize(("function", "nth"), [(GI_TABLE, 1), (GI_TABLE, 3), (GI_TABLE, 5)])
def test_one_misleading_profile_read_is_read_again_and_the_run_converges(
    function: str, nth: int, rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = rig.write_config(LAYOUT)
    rig.sim.fail(function, nth, "NVML_ERROR_INVALID_ARGUMENT")
    result = apply(rig, capsys)
    assert result.code == 0, result.err
    assert rig.converged(cfg)


def test_a_misleading_ci_profile_read_is_read_again(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = rig.write_config(LAYOUT)
    rig.sim.fail(CI_TABLE, 2, "NVML_ERROR_INVALID_ARGUMENT")
    result = apply(rig, capsys)
    assert result.code == 0, result.err
    assert rig.converged(cfg)


@pytest.mark.parametrize("command", ["apply", "status", "daemon"])
def test_a_failed_shutdown_after_the_work_keeps_its_exit_code(
    command: str, rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = rig.write_config(LAYOUT)
    rig.sim.fail("nvmlShutdown", 1, "NVML_ERROR_UNKNOWN")
    if command == "apply":
        result = apply(rig, capsys)
    elif command == "status":
        result = run(capsys, "--simulate", rig.state, "status")
    else:
        done = rig.node.migrestore("daemon", "--once", timeout=120)
        result = Result(done.returncode, done.stdout, done.stderr)
    assert result.code == 0, result.err
    assert "NVML_ERROR_UNKNOWN" in result.err
    assert "Traceback" not in result.err
    if command != "status":
        assert rig.converged(cfg)
