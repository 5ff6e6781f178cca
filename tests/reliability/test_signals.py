"""Badly timed signals (issue 13, findings 1-5).

Rules:

1. Campaign: a signal (mostly SIGINT, also SIGTERM and SIGHUP; seeded random) lands while
   ``migrestore apply`` waits for ``systemctl stop`` of one of two client units (the
   systemctl stand-in holds that stop at a gate after systemd finished it, as systemd
   finishes a stop job whose systemctl was killed). Every unit that ran before runs
   again, now or after the next start. 4 runs by default, 30 with
   ``MIGRESTORE_RELIABILITY_FULL=1``.
2. The watching daemon's every tick starts the units a killed or interrupted run left
   stopped (its note), also when nothing drifted.
3. SIGTERM ends the daemon's wait for the driver and for the GPU lock at once: exit 0,
   no GPU changed.
4. Every RELOADING=1 is followed by READY=1, with STATUS= naming the failure, also when
   the reload's pre-check cannot read the GPUs.
5. The watch loop pings the watchdog during a restore longer than the watchdog interval
   (scaled down: WATCHDOG_USEC=1s and a restore of over 2 s, as 4 s and 7 s).
6. The timeouts match the bounded steps (issue 12 item 2): the start asks systemd for
   the driver wait and the lock wait before it waits; SIGTERM while the start's pass
   waits for a client stop says STOPPING=1 and asks for what the pass declared it still
   needs at once (systemd's TimeoutStopSec= would otherwise kill it mid-step, with the
   client units left stopped); the pass then ends, the units run again, exit 0.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

from migrestore import logs
from migrestore.daemon import Daemon
from migrestore.lock import GpuLock
from migrestore.notify import Notifier
from migrestore.simulator import Simulator
from tests.integration.daemon_util import Node
from tests.reliability.crash import fork_command
from tests.reliability.matrix import full_run
from tests.reliability.rig import PROMPT_SYSTEMCTL, Rig, fast_dir

UNITS = ("nvidia-dcgm.service", "dcgm-exporter.service")
LAYOUT = (
    "version: 1\nclients: [UNITS]\ngpus:\n  - match: all\n    mig: true\n"
    "    instances:\n      - {profile: 7g.80gb}\n"
).replace("UNITS", ", ".join(UNITS))
BOUND = 30.0  # seconds any awaited condition gets before the test calls it a hang


def wait_until(check: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with fast_dir("migrestore-signals-") as tmp:
        made = Rig(tmp, "h100-80gb-hbm3:2", monkeypatch)
        try:
            yield made
        finally:
            gate = Path(made.node.env["FAKE_SYSTEMCTL_DIR"]) / "stop-gate"
            gate.unlink(missing_ok=True)
            made.close()


# --------------------------------------------------------------------------- rule 1


def campaign(runs: int) -> List[Tuple[int, str]]:
    """(index of the unit whose stop is interrupted, signal name), seeded."""
    rnd = random.Random(20261201)
    kinds = ["SIGINT"] * 4 + ["SIGTERM", "SIGHUP"]
    # always: SIGINT in either stop, and each other signal once
    cases = [(0, "SIGINT"), (1, "SIGINT"), (rnd.randrange(2), "SIGTERM"), (1, "SIGHUP")]
    while len(cases) < runs:
        cases.append((rnd.randrange(len(UNITS)), rnd.choice(kinds)))
    return cases


def test_a_signal_during_client_stops_leaves_every_unit_running_again(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.write_config(LAYOUT)
    for gpu, unit in enumerate(UNITS):
        rig.client(unit, gpu)
    rig.save_template()  # MIG off: an apply has to stop the clients
    fake = Path(rig.node.env["FAKE_SYSTEMCTL_DIR"])
    gate, stopping = fake / "stop-gate", fake / "stopping"
    argv = ["--simulate", rig.state, "-c", rig.config_path, "--log-format", "journal", "apply"]
    failures = []
    cases = campaign(30 if full_run() else 4)
    for run, (position, name) in enumerate(cases):
        rig.restore()
        rig.start_clients()
        stopping.unlink(missing_ok=True)
        gate.write_text(UNITS[position])
        log = rig.node.tmp / f"signal-{run}.log"
        pid = fork_command(argv, log)
        try:
            wait_until(stopping.exists, f"the stop of {UNITS[position]}")
            os.kill(pid, getattr(signal, name))
        finally:
            gate.unlink(missing_ok=True)  # a stand-in left waiting (SIGTERM, SIGHUP) ends
            _pid, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        expected = 130 if name == "SIGINT" else -getattr(signal, name)
        problems: List[str] = []
        if code != expected:
            problems.append(f"exit {code}, not {expected}: {log.read_text()[-500:]}")
        if name == "SIGINT":  # it ran its own cleanup: the units are started now
            problems += rig.clients_back(timeout=10.0)
        # the next start (a new apply) converges and every unit runs
        result = rig.migrestore(capsys, "apply")
        if result.code != 0:
            problems.append(f"the next apply: exit {result.code}: {result.err[-500:]}")
        problems += rig.clients_back(timeout=10.0)
        if problems:
            failures.append(f"run {run}: {name} in the stop of {UNITS[position]}: {problems}")
    with capsys.disabled():
        print(f"\nsignals during client stops: {len(cases) - len(failures)}/{len(cases)} passed")
    assert failures == []


# --------------------------------------------------------------------------- rule 2


def test_the_daemon_starts_units_a_killed_run_left_stopped_at_its_next_tick(
    rig: Rig,
) -> None:
    cfg = rig.write_config(LAYOUT.replace(", dcgm-exporter.service", ""))
    rig.client(UNITS[0], 0)
    logs.configure("journal", "info")
    log = logs.get_logger()
    daemon = Daemon(
        cfg,
        config_path=rig.config_path,
        select_name=None,
        simulate=rig.state,
        log=log,
        notifier=Notifier(log),
    )
    try:
        assert daemon.start() is None
        assert rig.clients_back() == []
        # a run killed between its stop and its start: the unit is down, the note says so
        done = subprocess.run(
            [str(PROMPT_SYSTEMCTL), "stop", UNITS[0]],
            env=rig.node.env,
            capture_output=True,
            text=True,
            timeout=BOUND,
        )
        assert done.returncode == 0, done.stderr
        note = Path(rig.node.env["MIGRESTORE_STATE"] + ".stopped-units")
        note.write_text(json.dumps({"units": [UNITS[0]]}))
        note.chmod(0o600)
        daemon.check("interval")  # nothing drifted
        assert rig.clients_back(timeout=10.0) == []
        assert not note.exists()
    finally:
        daemon.close()


# --------------------------------------------------------------------------- rules 3-5


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    made = Node(tmp_path, "h100-80gb-hbm3:1")
    try:
        made.write_config(
            "version: 1\nclients: []\ndriver-wait: 600\ndrift: {interval: 1}\ngpus:\n"
            "  - match: all\n    mig: true\n    instances:\n      - {profile: 7g.80gb}\n"
        )
        yield made
    finally:
        made.cleanup()


def _daemon_argv(node: Node, *, simulate: bool = True) -> List[str]:
    sim = ["--simulate", node.state] if simulate else []
    return [sys.executable, "-m", "migrestore", *sim, "-c", str(node.config)]


def test_sigterm_ends_the_wait_for_the_driver_at_once(node: Node) -> None:
    """Also rule 6: before it waits, the start asks systemd for the driver wait."""
    daemon = subprocess.Popen(
        [*_daemon_argv(node, simulate=False), "--log-format", "journal", "daemon"],
        env=node.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    node.daemon = daemon
    node.notify.wait_for("STATUS=waiting for NVIDIA driver")
    daemon.send_signal(signal.SIGTERM)
    # the wait is 600 s (driver-wait), far past BOUND: only SIGTERM can end it in time
    _out, err = daemon.communicate(timeout=BOUND)
    assert daemon.returncode == 0, err
    assert "Traceback" not in err
    node.notify.drain()
    # driver-wait: 600 in the config, then the lock wait (120 s) and the reads
    asked = _extensions(node.notify.messages)
    assert asked and asked[0] >= 600 + 120, node.notify.messages


def test_sigterm_ends_the_wait_for_the_gpu_lock_and_changes_nothing(node: Node) -> None:
    before = node.changes()
    with GpuLock(node.env["MIGRESTORE_LOCK"], timeout=5):
        daemon = node.start_daemon()
        # sent just before the lock is taken: the daemon waits for it (or is about to;
        # SIGTERM before the wait ends it as well)
        node.notify.wait_for("STATUS=observing GPUs")
        daemon.send_signal(signal.SIGTERM)
        # the lock wait is 120 s, past BOUND: only SIGTERM can end it in time
        code, err = node.wait_daemon(timeout=BOUND)
        assert code == 0, err
    assert node.changes() == before
    assert "READY=1" not in "".join(node.notify.messages)


def test_a_reload_whose_pre_check_read_fails_still_sends_ready(node: Node) -> None:
    # no watch tick may take the fault first
    node.write_config(node.config.read_text().replace("interval: 1}", "interval: 3600}"))
    daemon = node.start_daemon()
    node.notify.wait_for("READY=1")
    mark = len(node.notify.messages)
    node.sim("fail", node.state, "--call", "nvmlDeviceGetCount_v2", "--error", "NVML_ERROR_UNKNOWN")
    daemon.send_signal(signal.SIGHUP)
    node.notify.wait_for("RELOADING=1", after=mark)
    ready = node.notify.wait_for("READY=1", after=mark)
    assert "STATUS=config reload failed" in ready and "NVML_ERROR_UNKNOWN" in ready, ready
    assert node.stop_daemon()[0] == 0


def test_the_watchdog_is_pinged_during_a_long_restore(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the node's boot id: with another one, the simulator would see a reboot
    monkeypatch.setenv("MIGRESTORE_SIM_BOOT_ID_FILE", node.env["MIGRESTORE_SIM_BOOT_ID_FILE"])
    node.start_daemon(env={"WATCHDOG_USEC": "1000000"})  # a ping every 0.5 s
    node.notify.wait_for("READY=1")
    assert node.daemon is not None
    # a restore that takes over 2 s: the GI is destroyed behind the daemon's back and
    # every NVML call is slow
    node.sim("latency", node.state, "--all", "--us", "40000")
    sim = Simulator(node.state)
    before = sim.state().change_count
    gi = sim.state().gpus[0].gis[0]
    for ci in gi.cis:
        node.sim("destroy-ci", node.state, "--gpu", "0", "--gi", str(gi.id), "--ci", str(ci.id))
    node.sim("destroy-gi", node.state, "--gpu", "0", "--gi", str(gi.id))
    node.notify.sock.settimeout(0.05)
    pings: List[float] = []
    deadline = time.monotonic() + BOUND
    restored_at = None
    while time.monotonic() < deadline:
        try:
            data = node.notify.sock.recv(65536).decode()
        except (socket.timeout, BlockingIOError):
            data = ""
        if data:
            node.notify.messages.append(data)
            if "WATCHDOG=1" in data:
                pings.append(time.monotonic())
        if restored_at is None and sim.state().change_count > before + 1:
            restored_at = time.monotonic()
        if restored_at is not None and pings and pings[-1] > restored_at + 0.5:
            break
    assert restored_at is not None, "the daemon did not restore the drift"
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    node.sim("latency", node.state, "--all", "--us", "0")  # the next ticks are quick
    assert node.stop_daemon(timeout=2 * BOUND)[0] == 0
    assert gaps and max(gaps) < 1.0, f"a gap of {max(gaps or [0]):.2f} s between pings"


# --------------------------------------------------------------------------- rule 6


def _extensions(messages: List[str]) -> List[float]:
    """The EXTEND_TIMEOUT_USEC values of ``messages``, in seconds."""
    return [
        int(line.split("=", 1)[1]) / 1e6
        for message in messages
        for line in message.splitlines()
        if line.startswith("EXTEND_TIMEOUT_USEC=")
    ]


def test_sigterm_during_a_client_stop_asks_for_the_rest_of_the_pass_and_ends_it(
    rig: Rig,
) -> None:
    rig.write_config(LAYOUT)
    for gpu, unit in enumerate(UNITS):
        rig.client(unit, gpu)
    rig.save_template()  # MIG off: the start's pass has to stop the clients
    fake = Path(rig.node.env["FAKE_SYSTEMCTL_DIR"])
    gate, stopping = fake / "stop-gate", fake / "stopping"
    gate.write_text(UNITS[0])
    daemon = rig.node.start_daemon()
    wait_until(stopping.exists, f"the stop of {UNITS[0]}")
    mark = len(rig.node.notify.messages)
    daemon.send_signal(signal.SIGTERM)
    # at once, while the stop is still held: STOPPING=1 and the rest of the budget
    rig.node.notify.wait_for("STOPPING=1", after=mark)
    rig.node.notify.wait_for("EXTEND_TIMEOUT_USEC=", after=mark)
    assert daemon.poll() is None and gate.exists()
    asked = _extensions(rig.node.notify.messages[mark:])
    # the pass declared two client stops of 90 s each; about all of it is left
    assert asked and asked[0] >= 2 * 90, rig.node.notify.messages[mark:]
    gate.unlink()
    code, err = rig.node.wait_daemon(timeout=BOUND)
    assert code == 0, err
    assert rig.clients_back(timeout=10.0) == []
    assert "Traceback" not in err
