"""Misleading NVML reads and a failing shutdown never decide the exit code wrongly.

Rules:

1. One ``INVALID_ARGUMENT`` in the middle of a profile table (GI or CI) is read again: the
   run converges, exit 0, instead of a shorter table that makes a valid config look
   infeasible (exit 78, which systemd does not restart).
2. ``nvmlShutdown`` failing after the work is done (a verified apply, a status read, the
   daemon's first pass) keeps the exit code of the work, with one warning.
3. Campaign on the profile reads (``PROFILE_READS``): the fault-free calls of an apply
   that makes GIs with CIs are counted; at the first, middle and last call of each
   profile-read function, one ``INVALID_ARGUMENT`` or ``UNKNOWN``: the run converges
   (exit 0), or exits 1 naming the NVML error, never 78; the fault-free run after it
   converges. ``MIGRESTORE_RELIABILITY_FULL=1``: every call, and ``GPU_IS_LOST`` too.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.integration.cli_util import Result, run
from tests.reliability.matrix import full_run
from tests.reliability.rig import Rig, fast_dir
from tests.reliability.scenarios import NEVER, positions

LAYOUT = (
    "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n"
    "    instances:\n      - {profile: 7g.80gb}\n"
)
GI_TABLE = "nvmlDeviceGetGpuInstanceProfileInfoV"
CI_TABLE = "nvmlGpuInstanceGetComputeInstanceProfileInfoV"
PROFILE_READS = (
    "nvmlDeviceGetGpuInstanceProfileInfo",
    "nvmlDeviceGetGpuInstanceProfileInfoV",
    "nvmlDeviceGetGpuInstanceProfileInfoByIdV",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
)
# GIs of three sizes, one split into CIs: every table a pass reads
SPLIT = (
    "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n    instances:\n"
    "      - {profile: 3g.40gb, placement: 0, compute: [1c.3g.40gb, 1c.3g.40gb, 1c.3g.40gb]}\n"
    "      - {profile: 2g.20gb, placement: 4}\n      - {profile: 1g.10gb, placement: 6}\n"
)


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


def test_faults_on_profile_reads_never_make_a_valid_config_infeasible(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = rig.write_config(SPLIT)
    rig.save_template()
    for function in PROFILE_READS:
        rig.sim.fail(function, NEVER, "NVML_ERROR_UNKNOWN")
    assert apply(rig, capsys).code == 0
    counts = {f.function: f.seen for f in rig.sim.state().faults if f.seen}
    rig.sim.clear_faults()
    assert counts, "a pass that makes GIs and CIs read no profile table"
    full = full_run()
    errors = ["NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_UNKNOWN"]
    errors += ["NVML_ERROR_GPU_IS_LOST"] if full else []
    runs, failures, outcomes = 0, [], {"converged": 0, "exit 1": 0}
    for function, nth in positions(counts, None if full else 3):
        for error in errors:
            runs += 1
            rig.restore()
            rig.sim.fail(function, nth, error)
            result = apply(rig, capsys)
            what = f"{error} on call {nth} of {function}"
            if result.code == 0:
                outcomes["converged"] += 1
                if not rig.converged(cfg):
                    failures.append(f"{what}: exit 0, but the GPUs are not as declared")
            elif result.code == 1 and error in result.err:
                outcomes["exit 1"] += 1
            else:
                failures.append(f"{what}: exit {result.code}: {result.err.strip()[-300:]}")
            rig.sim.clear_faults()
            again = apply(rig, capsys)
            if again.code != 0 or not rig.converged(cfg):
                failures.append(f"{what}: the fault-free run after it: exit {again.code}")
    with capsys.disabled():
        print(f"\nprofile-read faults: {runs} runs, {outcomes}, {len(failures)} failed")
    # Since the live-first restore (issue 11) the CI tables are read in the observation
    # each round plans from: UNKNOWN on the middle CI-table read is the error reported
    # (it was a CI create failing INVALID_ARGUMENT before, docs/RELIABILITY.md section 7).
    assert failures == []
