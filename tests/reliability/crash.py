"""SIGKILL between NVML changes, and what the next start finds.

Rules:

1. The process killed is a real migrestore process: a child forked from the test that
   runs ``migrestore apply`` (or ``migrestore daemon``) through ``cli.main``, with its own
   GPU lock, NVML session and state-file writes. Forking instead of exec'ing a new Python
   saves half a second per kill and changes nothing the kernel sees: the child holds the
   lock through its own descriptor, and SIGKILL ends it without any cleanup of ours.
2. The kill lands after the k-th NVML change, a condition, never a time window: the
   simulator is armed to freeze (SIGSTOP) the process that makes the k-th change right
   after it (``Simulator.freeze_after``); the test waits until the child is stopped and
   sends SIGKILL. Calls of other GPUs' threads may have added a change meanwhile; the
   count at the kill is recorded.
3. After the kill: the simulator's state file parses, migrestore's state file (if any)
   parses, the GPU lock is free at once (the kernel dropped the dead holder's flock),
   every worker's MIG device still exists, and the next start converges with no step in
   between.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from migrestore import cli, statefile
from migrestore.errors import MigrestoreError
from migrestore.lock import GpuLock
from migrestore.simulator import Simulator
from tests.reliability.matrix import ApplyDriver, Driver, Record
from tests.reliability.rig import Rig, fast_dir
from tests.reliability.scenarios import (
    Scenario,
    config_of,
)

KILL_DEADLINE = 120.0
KILL = "SIGKILL"


@dataclass(frozen=True)
class Kill:
    """What the kill hit."""

    wanted: int  # kill after this many changes
    at: int  # changes made when SIGKILL was sent (-1: the process ended first)
    function: str  # the last change before the kill
    code: Optional[int]  # exit status when the process ended on its own


def kill_points(changes: int, full: bool, sample: int = 6) -> List[int]:
    """Every change (``full``), or the first, the last and a few evenly between."""
    if full or changes <= sample:
        return list(range(1, changes + 1))
    step = (changes - 1) / (sample - 1)
    return sorted({1 + round(i * step) for i in range(sample)})


def fork_command(argv: Sequence[str], log_path: Path) -> int:
    """A child running ``migrestore ARGV`` (``cli.main``), its output in ``log_path``."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        # a new process starts with the default handlers, whatever this one installed
        # (an in-process `daemon --once` leaves its own)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        out = open(log_path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - until _exit
        sys.stdout = sys.stderr = out
        code = cli.main(list(argv))
        out.flush()
    finally:
        os._exit(code)


def wait_stopped(pid: int, deadline: float = KILL_DEADLINE) -> Optional[int]:
    """Wait until the child ``pid`` is stopped (None) or has exited (its exit code)."""
    until = time.monotonic() + deadline
    while True:
        done, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        if done:
            if os.WIFSTOPPED(status):
                return None
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > until:
            raise AssertionError(f"process {pid} neither stopped nor ended in {deadline:g} s")
        time.sleep(0.001)


def kill_after(rig: Rig, argv: Sequence[str], wanted: int, log_path: Path) -> Kill:
    """Start ``argv`` and SIGKILL it right after its ``wanted``-th change (rule 2)."""
    base = rig.changes()
    rig.sim.freeze_after(wanted)
    pid = fork_command(argv, log_path)
    try:
        code = wait_stopped(pid)
        if code is not None:
            rig.sim.freeze_after(0)
            return Kill(wanted, -1, "", code)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        changes = rig.sim.changes()
        return Kill(wanted, rig.changes() - base, changes[-1]["function"] if changes else "", None)
    except BaseException:
        if not os.waitpid(pid, os.WNOHANG)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise


def after_kill_problems(rig: Rig) -> List[str]:
    """Rule 3, up to the next start."""
    problems: List[str] = []
    try:
        fresh = Simulator(rig.state)
        try:
            fresh.state()
        finally:
            fresh.close()
    except MigrestoreError as exc:
        problems.append(f"the simulator's state file does not parse: {exc}")
    try:
        statefile.read_state(os.environ["MIGRESTORE_STATE"])
    except MigrestoreError as exc:
        problems.append(f"migrestore's state file does not parse: {exc}")
    lock = GpuLock(timeout=0.0, command="reliability test")
    try:
        lock.acquire()
    except MigrestoreError as exc:
        problems.append(f"the GPU lock is still held: {exc}")
    else:
        lock.release()
    problems.extend(rig.workers_intact())
    return problems


class Crasher:
    """Kill points of one scenario, run on one rig (rule 1 of the module)."""

    def __init__(
        self, driver: Driver, capsys: pytest.CaptureFixture[str], daemon: bool = False
    ) -> None:
        self.driver = driver
        self.rig = driver.rig
        self.capsys = capsys
        self.daemon = daemon
        self.logs = Path(self.rig.node.tmp)

    def argv(self) -> List[str]:
        head = ["--simulate", self.rig.state, "-c", self.rig.config_path, "--log-format", "json"]
        return [*head, "daemon"] if self.daemon else [*head, "apply"]

    def reset(self) -> None:
        """The scenario's start, with the client units running (a killed run leaves
        the units it stopped down: ``test_clients_run_again_after_a_crash``)."""
        self.rig.start_clients()
        self.driver.reset()
        self.rig.sim.clear_faults()

    def count(self) -> Tuple[int, bool]:
        """Changes of a fault-free run, and whether it resets a GPU."""
        self.reset()
        before = self.rig.changes()
        code, message = self.driver.once()
        assert code == 0, message
        made = self.rig.changes() - before
        reset = any(c["function"] == "gpu_reset" for c in self.rig.sim.changes()[-made:])
        return made, reset

    def check(self, wanted: int, reset: bool) -> Record:
        record = Record(self.driver.scenario.name, "SIGKILL after change", wanted, KILL)
        self.reset()
        log = self.logs / f"killed-{wanted}.log"
        kill = kill_after(self.rig, self.argv(), wanted, log)
        if kill.at < 0:
            record.outcome = "ended"
            record.code = kill.code or 0
            record.problems.append(f"the process ended ({kill.code}) before change {wanted}")
            return record
        record.outcome = "killed"
        record.message = f"killed after {kill.at} change(s), the last {kill.function}"
        record.problems.extend(after_kill_problems(self.rig))
        code, message = self.next_start()
        record.code = code
        if code != 0:
            record.problems.append(f"the next start failed ({code}): {message}")
        elif not self.driver.converged():
            record.problems.append("the next start did not converge")
        record.problems.extend(f"after the next start: {p}" for p in self.rig.workers_intact())
        return record

    def next_start(self) -> Tuple[int, str]:
        """What systemd (or the operator) does next: start the same command again; the
        daemon's first pass is what a restarted unit does (``daemon --once``)."""
        if not self.daemon:
            return self.driver.once()
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            done = self.rig.migrestore(self.capsys, "daemon", "--once")
        finally:
            for signum, handler in saved.items():  # the daemon leaves its handlers installed
                signal.signal(signum, handler)
        return done.code, done.err.strip().splitlines()[-1] if done.code else ""


def by_scenario(records: Sequence[Record]) -> Dict[str, Tuple[int, int]]:
    out: Dict[str, Tuple[int, int]] = {}
    for r in records:
        runs, passed = out.get(r.scenario, (0, 0))
        out[r.scenario] = (runs + 1, passed + int(r.passed))
    return out


@contextlib.contextmanager
def crash_session(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Crasher]:
    """A rig at the scenario's start and its crasher. The watch scenario's kill hits the
    daemon's first pass, restoring the drift the template already carries."""
    with fast_dir("migrestore-crash-") as tmp:
        rig = Rig(tmp, scenario.spec, monkeypatch)
        try:
            scenario.prepare(rig, capsys)
            cfg = config_of(scenario, rig)
            if scenario.drift is not None:
                scenario.drift(rig)
            rig.save_template()
            yield Crasher(ApplyDriver(rig, scenario, cfg, capsys), capsys, daemon=scenario.watch)
        finally:
            rig.close()
