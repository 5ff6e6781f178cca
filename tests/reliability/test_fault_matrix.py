"""Fault matrix: every scenario, one NVML fault per run at each call position it makes.

For each scenario the fault-free run is counted first (calls per NVML function); then,
for each call position and each error that call can return (``scenarios.FAULTS``), one
run with that single fault, judged by ``matrix.Driver.check``: a clear error with the
right exit code (or a verified success for a harmless read), clients running again,
no instance with processes destroyed, and a fault-free run after it converging.

By default a sample of positions runs (the first call of every read function; the
first, middle and last call of every change); ``MIGRESTORE_RELIABILITY_FULL=1`` runs
every position. Runs are split over two processes, each with its own simulated node.
docs/RELIABILITY.md has the figures of both and the commands.
"""

from __future__ import annotations

import subprocess
from typing import List, Sequence

import pytest

from tests.reliability.matrix import (
    Record,
    describe_failures,
    full_run,
    judge_message,
    publish,
    records_json,
    render,
    run_shares,
    session,
    successes,
)
from tests.reliability.rig import PROMPT_SYSTEMCTL, Rig, destroy_gi_at, fast_dir
from tests.reliability.scenarios import BY_NAME, ERRORS, SCENARIOS, Fault, Scenario, select

WORKERS = 4


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fault_matrix(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with session(scenario, monkeypatch, capsys) as driver:
        counts = driver.count()
    faults = select(counts, full_run())
    assert faults, "the fault-free run made no NVML call"

    def part(share: Sequence[Fault]) -> List[Record]:
        with session(scenario, monkeypatch, capsys) as driver:
            return [driver.check(fault) for fault in share]

    records = run_shares(WORKERS, faults, part)
    publish(
        f"fault_matrix-{scenario.name}",
        {
            "scenario": scenario.name,
            "title": scenario.title,
            "full": full_run(),
            "calls": counts,
            "records": records_json(records),
        },
    )
    unreached = sum(1 for r in records if not r.reached)
    with capsys.disabled():
        print(f"\n{scenario.title}: {sum(counts.values())} NVML calls fault-free")
        print(render(records, ERRORS))
        print("clean successes (fault on a harmless read):", successes(records) or "none")
        if unreached:
            print(f"{unreached} position(s) of shared profile reads not reached (thread timing)")
    assert all(r.passed for r in records if r.reached), describe_failures(records)
    assert unreached <= len(records) // 10, f"{unreached} of {len(records)} faults never fired"


def test_the_judge_is_not_vacuous(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the matrix asserts can fail: a message without the error, the GPU or the
    action; a client left stopped; a worker's instance gone."""
    fault = Fault("nvmlDeviceCreateGpuInstanceWithPlacement", 1, "NVML_ERROR_IN_USE")
    label = "GPU 0 (GPU-d66a6dd8-0874-5ca4-baec-ad40494a6f9b)"
    assert (
        judge_message(fault, f"{label}: create GI 1g.10gb at 0:1 failed: NVML_ERROR_IN_USE") == []
    )
    assert judge_message(fault, f"{label}: create GI failed: NVML_ERROR_UNKNOWN")
    assert judge_message(fault, "create GI 1g.10gb at 0:1 failed: NVML_ERROR_IN_USE")
    assert judge_message(fault, f"{label}: NVML_ERROR_IN_USE")
    scenario = BY_NAME["ci-subdivision"]
    with session(scenario, monkeypatch, capsys) as driver:
        rig = driver.rig
        assert rig.clients_back() == [] and rig.workers_intact() == []
        done = subprocess.run(
            [str(PROMPT_SYSTEMCTL), "stop", "nvidia-dcgm.service"],
            env=rig.node.env,
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 0
        assert rig.clients_back(timeout=0.5) == ["nvidia-dcgm.service is inactive"]
        worker = rig.workers[0]
        rig.sim.stop_process(worker.pid)
        destroy_gi_at(rig, [worker.gpu], worker.gi_start)
        assert rig.workers_intact() == [
            f"GPU 0: the MIG device {worker.mig_uuid} of pid {worker.pid} is gone"
        ]


AMPERE_ON = (
    "version: 1\nclients: [nvidia-dcgm.service]\nampere-reset: allow\ngpus:\n"
    "  - match: all\n    mig: true\n    instances:\n      - {profile: 7g.80gb}\n"
)


@pytest.mark.parametrize("cause", ["held-by-a-stranger", "passthrough"])
def test_a_refused_mode_activation_names_gpu_action_and_status(
    cause: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The activation status SetMigMode returns (not a fault: what the driver says when a
    process migrestore does not manage holds an Ampere GPU, or when the GPU cannot be
    reset at all) ends the run the way an injected fault does, and the run after the
    cause is gone converges."""
    with fast_dir("migrestore-activation-") as tmp:
        rig = Rig(tmp, "a100-80gb:1", monkeypatch)
        stranger = subprocess.Popen(
            ["sleep", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            if cause == "passthrough":
                rig.node.sim("init", rig.state, "a100-80gb:1", "--passthrough", "--force")
            rig.client("nvidia-dcgm.service", 0)
            if cause != "passthrough":
                rig.sim.hold(0, stranger.pid)
            rig.write_config(AMPERE_ON)
            result = rig.migrestore(capsys, "apply")
            status = "NVML_ERROR_IN_USE" if cause != "passthrough" else "NVML_ERROR_RESET_REQUIRED"
            line = [x for x in result.err.splitlines() if x.startswith("migrestore: error: ")]
            # a GPU that cannot be reset here: 77, the unit does not restart on it
            code = 1 if cause != "passthrough" else 77
            assert result.code == code and len(line) == 1, result.err
            assert status in line[0] and "reset" in line[0], line
            assert judge_message(Fault("gpu_reset", 1, status), line[0][19:]) == []
            assert rig.clients_back() == []
            if cause == "passthrough":
                assert "reboot" in line[0]
                rig.node.reboot()  # the pending mode takes effect at the next boot
            else:
                stranger.kill()
                stranger.wait()
            again = rig.migrestore(capsys, "apply")
            assert again.code == 0, again.err
            assert rig.clients_back() == []
        finally:
            stranger.kill()
            stranger.wait()
            rig.close()
