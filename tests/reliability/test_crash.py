"""Crash consistency: SIGKILL after each NVML change of every scenario, then start again.

``crash.Crasher.check`` judges each kill: the state files parse, the GPU lock is free at
once, no instance with a process on it is gone, and the next start converges with no
step in between. By default a sample of kill points runs (first, last and four between
for each scenario); ``MIGRESTORE_RELIABILITY_FULL=1`` kills after every change.
"""

from __future__ import annotations

import os
import signal
from typing import List, Sequence

import pytest

from tests.reliability.crash import (
    by_scenario,
    crash_session,
    fork_command,
    kill_after,
    kill_points,
    wait_stopped,
)
from tests.reliability.matrix import (
    Record,
    describe_failures,
    full_run,
    publish,
    records_json,
    run_shares,
)
from tests.reliability.scenarios import BY_NAME, SCENARIOS, Scenario

WORKERS = 3


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_sigkill_after_every_change_then_the_next_start_converges(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with crash_session(scenario, monkeypatch, capsys) as crasher:
        changes, reset = crasher.count()
    assert changes > 0
    points = kill_points(changes, full_run())

    def part(share: Sequence[int]) -> List[Record]:
        with crash_session(scenario, monkeypatch, capsys) as crasher:
            return [crasher.check(k, reset) for k in share]

    records = run_shares(WORKERS, points, part)
    publish(
        f"crash-{scenario.name}",
        {"scenario": scenario.name, "changes": changes, "records": records_json(records)},
    )
    runs, passed = by_scenario(records)[scenario.name]
    with capsys.disabled():
        print(
            f"\n{scenario.name}: {changes} changes; killed after {len(points)}: {passed}/{runs} passed"
        )
    assert all(r.passed for r in records), describe_failures(records)


@pytest.mark.parametrize("how", ["apply", "daemon"])
def test_clients_a_killed_run_stopped_run_again_after_the_next_start(
    how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = BY_NAME["ci-subdivision"]
    with crash_session(scenario, monkeypatch, capsys) as crasher:
        rig = crasher.rig
        crasher.reset()
        if how == "apply":
            kill = kill_after(rig, crasher.argv(), 1, rig.node.tmp / "killed.log")
            assert kill.at >= 1
        else:  # a real `migrestore daemon` process, exec'd as systemd would
            rig.sim.freeze_after(1)
            daemon = rig.node.start_daemon()
            try:
                # the daemon stops itself right after its first change: kill it there
                assert wait_stopped(daemon.pid) is None, daemon.communicate(timeout=30)
            finally:
                daemon.kill()
                daemon.communicate(timeout=30)
        assert rig.node.units.state("nvidia-dcgm.service") == "inactive"
        code, message = crasher.next_start()
        assert code == 0, message
        assert crasher.driver.converged()
        assert rig.clients_back(timeout=10.0) == []


def test_ctrl_c_during_apply_starts_the_stopped_clients_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = BY_NAME["ci-subdivision"]
    with crash_session(scenario, monkeypatch, capsys) as crasher:
        rig = crasher.rig
        crasher.reset()
        # the run stops itself right after its first change: the interrupt lands while
        # the GPU is being changed, not after the run already started the units again
        rig.sim.freeze_after(1)
        base = rig.changes()
        pid = fork_command(crasher.argv(), rig.node.tmp / "interrupted.log")
        try:
            assert wait_stopped(pid) is None
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGCONT)
        finally:
            _pid, status = os.waitpid(pid, 0)
        log = (rig.node.tmp / "interrupted.log").read_text()
        assert os.waitstatus_to_exitcode(status) == 130, log
        assert "migrestore: interrupted" in log
        assert rig.changes() - base < 4, "the interrupt came after the last change"
        assert rig.clients_back(timeout=10.0) == []


def test_sigterm_during_the_first_pass_finishes_it_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """systemd stops the unit (shutdown, `systemctl stop`) while the daemon is changing
    GPUs: SIGTERM only sets a flag, the pass finishes and is verified, the clients run
    again, and the daemon exits 0 without a traceback."""
    scenario = BY_NAME["ci-subdivision"]
    with crash_session(scenario, monkeypatch, capsys) as crasher:
        rig = crasher.rig
        crasher.reset()
        rig.sim.freeze_after(1)
        base = rig.changes()
        daemon = rig.node.start_daemon()
        assert wait_stopped(daemon.pid) is None
        daemon.send_signal(signal.SIGTERM)
        daemon.send_signal(signal.SIGCONT)
        code, err = rig.node.wait_daemon(timeout=60)
        assert code == 0, err
        assert "Traceback" not in err
        assert rig.changes() - base == 4  # the whole pass: 1 CI destroyed, 3 created
        assert crasher.driver.converged()
        assert rig.clients_back(timeout=10.0) == []
