"""The daemon on a converged config, on the real GPUs: READY on a real notify socket
without one mutating call, watching, no NVML session and no /dev/nvidia* descriptor
between ticks, a clean stop on SIGTERM (docs/REALGPU.md)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from tests.integration.daemon_util import NotifySocket
from tests.realgpu.support import (
    GuardEnv,
    Target,
    Timings,
    fd_links,
    geometry,
    matching_config,
    select_syscall,
    stop,
    syscall_line,
    wait_until,
)


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    notify: NotifySocket
    log: Path
    changes: Optional[int]
    geometry: Any
    ready_after: float
    notes: List[str] = field(default_factory=list)

    def ticks(self) -> int:
        """Watch ticks logged: converged, or drift (another user) reported."""
        return sum(len(self.events(n)) for n in ("watch", "drift_detected", "drift_ignored"))

    def events(self, name: str) -> List[Any]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
        return found


@contextlib.contextmanager
def running_daemon(target: Target) -> Iterator[Daemon]:
    """``migrestore daemon`` on the exported (converged) config, READY received; killed
    at the end if still running, and checked: guarded, no refusal, no unit, no change."""
    status = target.run("status", "--json").json()
    exported = target.run("export")
    assert exported.returncode == 0, exported.stderr
    text, notes = matching_config(exported.stdout, status)
    config = target.tmp / "daemon.yaml"
    # warn: a GPU another user changes meanwhile is reported, never restored
    config.write_text(text + "drift: {policy: warn, interval: 1}\n")
    changes = target.changes()
    before = geometry(target.direct())
    notify = NotifySocket(target.tmp / "notify.sock")
    log = target.tmp / "daemon.log"
    env = {**target.env, "NOTIFY_SOCKET": notify.path}
    argv = target.argv("-c", str(config), "--log-format", "json", "-v", "daemon")
    with open(log, "w") as sink:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        notify.wait_for("READY=1", timeout=180)
        ready_after = time.monotonic() - started
        yield Daemon(proc, notify, log, changes, before, ready_after, notes)
    finally:
        stop(proc)
        notify.close()
        target.guard.check_process(proc.pid, "migrestore daemon")
        assert target.systemctl_calls() == []
        assert target.changes() == changes


@pytest.fixture(scope="module")
def daemon(target: Target, timings: Timings) -> Iterator[Daemon]:
    with running_daemon(target) as started:
        timings.add("daemon_ready", started.ready_after)
        yield started


def idle_session_files(target: Target, daemon: Daemon) -> List[str]:
    """Read /proc/PID/fd while the daemon's main thread sits in the select() of its
    idle wait (the same wait before and after the read, no tick in between), in two
    different waits; returns the descriptors of an NVML session found open."""
    waiting = select_syscall()
    pid = daemon.proc.pid
    markers = target.session_files()

    def idle_sample(after_tick: int) -> Any:
        ticks = daemon.ticks()
        before = syscall_line(pid)
        if ticks <= after_tick or before.split(" ", 1)[0] != waiting:
            return None
        links = fd_links(pid)
        if syscall_line(pid) != before or daemon.ticks() != ticks:
            return None
        return ticks, links

    held: List[str] = []
    tick = daemon.ticks() - 1
    for _ in range(2):
        tick, links = wait_until(
            lambda t=tick: idle_sample(t), 60, "the daemon idle between two ticks", every=0.02
        )
        held += [link for link in links if link.startswith(markers)]
    assert daemon.proc.poll() is None
    return sorted(set(held))


def test_daemon_reaches_ready_without_a_mutating_call(target: Target, daemon: Daemon) -> None:
    assert daemon.proc.poll() is None, daemon.log.read_text()
    target.guard.check_process(daemon.proc.pid, "migrestore daemon")
    statuses = daemon.notify.fields("STATUS")
    assert any(s.startswith("converged") for s in statuses), statuses
    assert daemon.events("converged"), daemon.log.read_text()
    assert not daemon.events("restored")
    assert target.changes() == daemon.changes
    assert target.systemctl_calls() == []


def test_daemon_keeps_watching(daemon: Daemon) -> None:
    first = daemon.ticks()
    wait_until(lambda: daemon.ticks() >= first + 2, 60, "two more watch ticks", every=0.1)
    assert daemon.proc.poll() is None
    assert not daemon.events("watch_failed"), daemon.log.read_text()


def test_daemon_holds_no_nvml_between_ticks(target: Target, daemon: Daemon) -> None:
    held = idle_session_files(target, daemon)
    assert not held, f"the idle daemon holds NVML: {held}"


def test_the_idle_check_on_simulated_gpus(realgpu_guard: GuardEnv, tmp_path: Path) -> None:
    """The same check on a simulated node, everywhere (CI included): the daemon opens
    NVML for a tick only (issue 12 item 1)."""
    from migrestore.simulator import cli as simcli

    state = tmp_path / "gpus.json"
    assert simcli.main(["init", str(state), "a100-sxm4-40gb:2"]) == 0
    simulated = Target("simulate", tmp_path, realgpu_guard, str(state))
    with running_daemon(simulated) as started:
        held = idle_session_files(simulated, started)
        assert not held, f"the idle daemon holds NVML: {held}"


def test_daemon_stops_on_sigterm(target: Target, daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=60) == 0, daemon.log.read_text()
    daemon.notify.wait_for("STOPPING=1", timeout=10)
    assert daemon.events("stopping")
    target.guard.check_process(daemon.proc.pid, "migrestore daemon")
    assert target.changes() == daemon.changes
    now = geometry(target.direct())
    if now != daemon.geometry:
        pytest.skip("the GPUs' MIG geometry changed while the daemon ran (another user)")
