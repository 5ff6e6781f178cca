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
4. A failed profile read is exit 1 naming the GPU, the read and the NVML error, never
   another error of a later call (an ``UNKNOWN`` after a table's last entry was once
   reported as the ``INVALID_ARGUMENT`` of that entry read again).
5. One ``INVALID_ARGUMENT`` on any CI-table read, on one GPU or on eight GPUs of one
   model sharing the table, is read again: the run converges (the table is never cached
   short: an entry whose re-read answers ``NOT_SUPPORTED`` is skipped, not an error).
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


def _names_the_read(err: str, error: str) -> bool:
    """Whether an exit-1 message names the GPU, a profile read and the NVML error."""
    last = err.strip().splitlines()[-1]
    return error in last and "GPU " in last and "read" in last


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
            elif result.code == 1 and _names_the_read(result.err, error):
                outcomes["exit 1"] += 1
            else:
                failures.append(f"{what}: exit {result.code}: {result.err.strip()[-300:]}")
            rig.sim.clear_faults()
            again = apply(rig, capsys)
            if again.code != 0 or not rig.converged(cfg):
                failures.append(f"{what}: the fault-free run after it: exit {again.code}")
    with capsys.disabled():
        print(f"\nprofile-read faults: {runs} runs, {outcomes}, {len(failures)} failed")
    assert failures == []


SEVEN = (
    "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n    instances:\n"
    + "      - {profile: 1g.10gb}\n" * 7
)


def test_a_misleading_ci_read_on_a_shared_table_is_never_cached_short(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Eight GPUs of one model share one CI table per GI profile: INVALID_ARGUMENT on
    # call 50 (a GI of the second table read) must not leave that table short.
    with fast_dir("migrestore-reads-") as tmp:
        rig8 = Rig(tmp, "h100-80gb-hbm3:8", monkeypatch)
        try:
            cfg = rig8.write_config(SEVEN)
            rig8.sim.fail(CI_TABLE, 50, "NVML_ERROR_INVALID_ARGUMENT")
            result = apply(rig8, capsys)
            assert result.code == 0, result.err
            assert rig8.converged(cfg)
        finally:
            rig8.close()


def test_a_failed_middle_ci_table_read_is_exit_1_naming_gpu_call_and_error(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = rig.write_config(SPLIT)
    rig.save_template()
    for function in PROFILE_READS:
        rig.sim.fail(function, NEVER, "NVML_ERROR_UNKNOWN")
    assert apply(rig, capsys).code == 0
    counts = {f.function: f.seen for f in rig.sim.state().faults if f.seen}
    rig.sim.clear_faults()
    middle = [k for _f, k in positions({CI_TABLE: counts[CI_TABLE]}, 3)][1]
    rig.restore()
    rig.sim.fail(CI_TABLE, middle, "NVML_ERROR_UNKNOWN")
    result = apply(rig, capsys)
    assert result.code == 1, result.err
    assert "NVML_ERROR_UNKNOWN" in result.err and "CI profile" in result.err, result.err
    assert "GPU 0" in result.err, result.err
    assert "NVML_ERROR_INVALID_ARGUMENT" not in result.err, result.err
    rig.sim.clear_faults()
    assert apply(rig, capsys).code == 0
    assert rig.converged(cfg)


def test_one_misleading_read_anywhere_in_a_ci_table_is_read_again(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = rig.write_config(LAYOUT)
    rig.save_template()
    rig.sim.fail(CI_TABLE, NEVER, "NVML_ERROR_UNKNOWN")
    assert apply(rig, capsys).code == 0
    seen = rig.sim.state().faults[0].seen
    assert seen > 2, "the pass reads no CI table"
    for nth in range(1, seen + 1):
        rig.restore()
        rig.sim.clear_faults()
        rig.sim.fail(CI_TABLE, nth, "NVML_ERROR_INVALID_ARGUMENT")
        result = apply(rig, capsys)
        assert result.code == 0, f"call {nth}: {result.err}"
        assert rig.converged(cfg), f"call {nth}"
