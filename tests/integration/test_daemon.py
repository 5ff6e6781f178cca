"""`migrestore daemon` as systemd runs it: a real NOTIFY_SOCKET, a systemctl stand-in
whose client unit really holds the simulated GPU, simulated GPUs in a state file."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.daemon_util import Node, sim_argv

H100_LAYOUT = """\
version: 1
clients: [nvidia-dcgm.service, dcgm-exporter.service]
drift: {{policy: {policy}, interval: {interval}}}
ampere-reset: {reset}
gpus:
  - match: all
    mig: true
    instances:
      - {{profile: {big}, placement: {at}}}
      - {{profile: {small}, count: 2}}
"""


def config(
    policy: str = "restore",
    interval: float = 60,
    reset: str = "allow",
    big: str = "3g.40gb",
    small: str = "1g.10gb",
    at: int = 4,
) -> str:
    return H100_LAYOUT.format(
        policy=policy, interval=interval, reset=reset, big=big, small=small, at=at
    )


@pytest.fixture
def hopper(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path, "h100-80gb-hbm3:2")
    yield node
    node.cleanup()


@pytest.fixture
def ampere(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path, "a100-80gb:1")
    yield node
    node.cleanup()


EXPECTED = [("1g.10gb", (0, 1)), ("1g.10gb", (1, 1)), ("3g.40gb", (4, 4))]


def test_ready_only_after_the_geometry_is_verified(hopper: Node) -> None:
    hopper.write_config(config())
    hopper.units.add("nvidia-dcgm.service", state="inactive")
    hopper.start_daemon()
    ready = hopper.notify.wait_for("READY=1")
    # when READY arrives, the geometry is already there
    assert hopper.geometry(0) == EXPECTED and hopper.geometry(1) == EXPECTED
    assert "STATUS=restored 2 GPUs, 6 MIG devices in" in ready
    statuses = hopper.notify.fields("STATUS")
    assert statuses[0] == "loading config"
    assert any(s.startswith("applying") for s in statuses)
    code, err = hopper.stop_daemon()
    assert code == 0
    assert "<6>stopping" in err
    # SIGTERM leaves the geometry as it is
    assert hopper.geometry(0) == EXPECTED
    # one journal line per action, with GPU, profile, placement and outcome
    assert "<6>create_gi gpu=0 profile=3g.40gb placement=4:4 outcome=ok gi=" in err


def test_converged_start_touches_no_gpu_and_no_unit(hopper: Node) -> None:
    hopper.write_config(config())
    done = hopper.migrestore("apply", "--no-clients")
    assert done.returncode == 0, done.stderr
    hopper.client_unit("nvidia-dcgm.service", gpu=0)
    before = hopper.changes()
    calls = len(hopper.units.calls())
    hopper.start_daemon()
    ready = hopper.notify.wait_for("READY=1")
    assert "converged" in ready
    assert hopper.changes() == before
    assert hopper.units.calls()[calls:] == []
    assert hopper.stop_daemon()[0] == 0
    # the last-result file has the geometry with its MIG device UUIDs
    state = json.loads(Path(hopper.env["MIGRESTORE_STATE"]).read_text())
    assert state["result"] == "converged"
    assert state["config"] == str(hopper.config)
    uuids = [ci["uuid"] for gpu in state["gpus"] for gi in gpu["instances"] for ci in gi["compute"]]
    assert len(uuids) == 6 and all(u.startswith("MIG-") for u in uuids)


def test_held_client_is_stopped_for_an_ampere_mode_change_and_started_again(ampere: Node) -> None:
    ampere.write_config(config(big="3g.40gb", small="1g.10gb"))
    ampere.client_unit("nvidia-dcgm.service", gpu=0)
    holder = ampere.unit_pid("nvidia-dcgm.service")
    ampere.start_daemon()
    ampere.notify.wait_for("READY=1")
    # the mode change only activates with nobody holding the GPU: it did
    assert ampere.mig(0) == {"capable": True, "current": True, "pending": True}
    assert ampere.geometry(0) == EXPECTED
    calls = ampere.units.calls()
    stop = calls.index("--no-ask-password stop nvidia-dcgm.service")
    start = next(
        i for i, c in enumerate(calls) if "start" in c and "--no-block" in c and "nvidia-dcgm" in c
    )
    assert stop < start
    # exactly the units that were active were touched
    assert not any("dcgm-exporter" in c and ("stop" in c or "start" in c) for c in calls)
    ampere.wait_holders(0, 1)
    assert ampere.unit_pid("nvidia-dcgm.service") not in (None, holder)
    code, err = ampere.stop_daemon()
    assert code == 0
    assert "<6>unit_stopped unit=nvidia-dcgm.service" in err
    assert "<6>unit_start_queued unit=nvidia-dcgm.service" in err


def test_failure_after_stopping_units_starts_them_again(ampere: Node) -> None:
    ampere.write_config(config())
    ampere.client_unit("nvidia-dcgm.service", gpu=0)
    ampere.sim(
        "fail",
        ampere.state,
        "--call",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "--nth",
        "2",
        "--error",
        "NVML_ERROR_INSUFFICIENT_RESOURCES",
    )
    ampere.start_daemon()
    code, _err = ampere.wait_daemon()
    assert code == 1
    status = ampere.notify.fields("STATUS")[-1]
    assert status.startswith("failed: GPU 0 (GPU-")
    assert "NVML_ERROR_INSUFFICIENT_RESOURCES" in status
    assert not ampere.notify.fields("READY")
    assert ampere.units.state("nvidia-dcgm.service") == "active"
    ampere.wait_holders(0, 1)
    # a second, fault-free run converges from what was left
    ampere.start_daemon("--once")
    assert ampere.wait_daemon()[0] == 0
    assert ampere.geometry(0) == EXPECTED


def test_ampere_pending_mode_is_reset_only_when_allowed(ampere: Node) -> None:
    # a stray process (not a unit migrestore manages) holds the GPU while MIG is enabled:
    # the change stays pending
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from migrestore.simulator.cli import main; raise SystemExit(main())",
            "hold",
            ampere.state,
            "--gpu",
            "0",
        ],
        env=ampere.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ampere.wait_holders(0, 1)
        ampere.sim("set-mode", ampere.state, "--gpu", "0", "on")
        assert ampere.mig(0) == {"capable": True, "current": False, "pending": True}
    finally:
        holder.terminate()
        holder.wait()
    ampere.wait_holders(0, 0)
    ampere.write_config(config(reset="never"))
    before = ampere.changes()
    ampere.start_daemon()
    code, err = ampere.wait_daemon()
    assert code == 78
    assert ampere.notify.fields("STATUS")[-1].startswith(f"failed: {ampere.config}:")
    assert "reboot" in err
    assert ampere.changes() == before
    ampere.write_config(config(reset="allow"))
    ampere.start_daemon("--once")
    code, err = ampere.wait_daemon()
    assert code == 0, err
    assert "<6>reset gpu=0 outcome=ok" in err
    assert ampere.mig(0)["current"] is True
    assert ampere.geometry(0) == EXPECTED


def test_bad_config_exits_78_names_the_line_and_touches_nothing(hopper: Node) -> None:
    hopper.write_config("version: 1\ngpus:\n  - match: all\n    mig: maybe\n")
    hopper.start_daemon()
    code, err = hopper.wait_daemon()
    assert code == 78
    assert f"{hopper.config}:4" in hopper.notify.fields("STATUS")[-1]
    assert f"{hopper.config}:4" in err and err.startswith("<3>")
    assert hopper.changes() == 0
    assert hopper.units.calls() == []


def test_sighup_reloads_and_converges_and_a_bad_edit_keeps_the_old_config(hopper: Node) -> None:
    hopper.write_config(config())
    hopper.client_unit("nvidia-dcgm.service", gpu=1)
    hopper.start_daemon()
    hopper.notify.wait_for("READY=1")
    mark = len(hopper.notify.messages)
    hopper.write_config(config(big="4g.40gb", at=0))
    assert hopper.daemon is not None
    hopper.daemon.send_signal(signal.SIGHUP)
    hopper.notify.wait_for("RELOADING=1", after=mark)
    hopper.notify.wait_for("READY=1", after=mark + 1)
    expected = [("4g.40gb", (0, 4)), ("1g.10gb", (4, 1)), ("1g.10gb", (5, 1))]
    assert sorted(hopper.geometry(0)) == sorted(expected)
    # the client was stopped for the change and runs again
    assert hopper.units.state("nvidia-dcgm.service") == "active"
    hopper.wait_holders(1, 1)
    before = hopper.changes()
    mark = len(hopper.notify.messages)
    hopper.write_config("version: 1\ngpus: [\n")
    hopper.daemon.send_signal(signal.SIGHUP)
    msg = hopper.notify.wait_for("READY=1", after=mark)
    assert "config reload failed, previous config kept" in msg
    assert hopper.changes() == before
    # an edit that cannot fit these GPUs is refused the same way
    mark = len(hopper.notify.messages)
    hopper.write_config(config(big="4g.40gb", at=4))
    hopper.daemon.send_signal(signal.SIGHUP)
    msg = hopper.notify.wait_for("READY=1", after=mark)
    assert "config reload failed, previous config kept" in msg and "migrestore.yaml:9" in msg
    assert hopper.changes() == before
    assert sorted(hopper.geometry(0)) == sorted(expected)
    code, err = hopper.stop_daemon()
    assert code == 0
    assert "config_reload_failed" in err


@pytest.mark.parametrize("policy", ["restore", "warn"])
def test_drift_is_restored_or_reported_per_policy(hopper: Node, policy: str) -> None:
    hopper.write_config(config(policy=policy, interval=1))
    hopper.start_daemon()
    hopper.notify.wait_for("READY=1")
    first = hopper.show()["gpus"][1]["gis"][0]
    # behind migrestore's back: one compute instance of GPU 1 destroyed
    hopper.sim(
        "destroy-ci",
        hopper.state,
        "--gpu",
        "1",
        "--gi",
        str(first["id"]),
        "--ci",
        str(first["cis"][0]["id"]),
    )

    def cis_on_gpu1() -> int:
        return sum(len(gi["cis"]) for gi in hopper.show()["gpus"][1]["gis"])

    if policy == "restore":
        hopper.wait_until(lambda: cis_on_gpu1() == 3, what="drift restored")
    else:
        # the daemon says it saw the drift; only then is "not restored" a fact
        hopper.notify.wait_for("STATUS=drift:")
        assert cis_on_gpu1() == 2
    assert hopper.geometry(1) == EXPECTED
    code, err = hopper.stop_daemon()
    assert code == 0
    assert "<4>drift_detected" in err
    assert "GPU 1: create CI" in err


def test_hopper_reboot_restores_mode_and_geometry(hopper: Node) -> None:
    hopper.write_config(config())
    done = hopper.migrestore("apply", "--no-clients")
    assert done.returncode == 0, done.stderr
    hopper.reboot()
    assert hopper.mig(0) == {"capable": True, "current": False, "pending": False}
    assert hopper.geometry(0) == []
    hopper.start_daemon("--once")
    code, err = hopper.wait_daemon()
    assert code == 0, err
    assert "reset gpu=" not in err  # Hopper: no reset
    assert hopper.mig(0)["current"] is True
    assert hopper.geometry(0) == EXPECTED and hopper.geometry(1) == EXPECTED


def test_the_daemon_reports_a_notify_socket_it_cannot_reach(hopper: Node) -> None:
    # notify rule 4: the daemon's notifier has the logger, so a lost READY is in the journal
    hopper.write_config(config())
    gone = str(hopper.tmp / "no-such-socket")
    hopper.start_daemon("--once", env={"NOTIFY_SOCKET": gone})
    code, err = hopper.wait_daemon()
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "notify_failed" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("<4>notify_failed ")
    assert f"socket={gone}" in warnings[0]
    assert hopper.geometry(0) == EXPECTED


def test_watchdog_pings_when_systemd_asks(hopper: Node) -> None:
    hopper.write_config(config())
    hopper.start_daemon(env={"WATCHDOG_USEC": "400000"})
    hopper.notify.wait_for("READY=1")
    hopper.notify.wait_for("WATCHDOG=1")
    assert hopper.stop_daemon()[0] == 0


def test_two_applies_at_once_are_serialized_by_the_lock(hopper: Node) -> None:
    hopper.write_config(config())
    hopper.sim("latency", hopper.state, "--all", "--us", "2000")
    a = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migrestore",
            "--simulate",
            hopper.state,
            "-c",
            str(hopper.config),
            "apply",
            "--no-clients",
        ],
        env=hopper.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    b = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migrestore",
            "--simulate",
            hopper.state,
            "-c",
            str(hopper.config),
            "apply",
            "--no-clients",
        ],
        env=hopper.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert a.wait(120) == 0 and b.wait(120) == 0
    logs = a.stderr.read() + b.stderr.read()  # type: ignore[union-attr]
    # one of them changed the GPUs, the other found them converged
    assert logs.count("applied") == 1 and logs.count("nothing to do") == 1
    # 2 GPUs x (mode + 3 GIs + 3 CIs)
    assert hopper.changes() == 14


def test_apply_says_who_holds_the_lock(hopper: Node) -> None:
    hopper.write_config(config())
    lock = hopper.env["MIGRESTORE_LOCK"]
    # hold it as a migrestore does (lock rule 1): the directory's flock, the holder line
    with open(lock, "w") as f:
        f.write("4242 migrestore daemon\n")
    held = os.open(os.path.dirname(lock), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = hopper.migrestore("apply", "--no-clients", "--lock-timeout", "1")
    finally:
        os.close(held)
    assert done.returncode == 1
    assert "4242" in done.stderr
    assert hopper.changes() == 0


def test_no_driver_waits_bounded_then_exits_69(tmp_path: Path) -> None:
    node = Node(tmp_path, "h100-80gb-hbm3:1")
    try:
        node.write_config(
            config().replace("ampere-reset: allow", "ampere-reset: allow\ndriver-wait: 1")
        )
        argv = [
            sys.executable,
            "-m",
            "migrestore",
            "-c",
            str(node.config),
            "--log-format",
            "journal",
            "daemon",
        ]
        started = time.monotonic()
        done = subprocess.run(argv, env=node.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 69
        assert time.monotonic() - started >= 1.0
        statuses = node.notify.fields("STATUS")
        assert "waiting for NVIDIA driver" in statuses
        assert statuses[-1].startswith("failed: no NVIDIA driver")
        assert "waited 1s" in done.stderr
    finally:
        node.cleanup()


def test_ampere_without_reset_says_a_reboot_is_needed(tmp_path: Path) -> None:
    node = Node(tmp_path, "a100-80gb:1")
    try:
        node.sim("init", "--force", "--passthrough", node.state, "a100-80gb:1")
        node.write_config(config())
        node.start_daemon()
        code, err = node.wait_daemon()
        # 77: the unit's RestartPreventExitStatus, so no restart loop (issue 12 item 4)
        assert code == 77, err
        status = node.notify.fields("STATUS")[-1]
        assert "NVML_ERROR_RESET_REQUIRED" in status
        assert "reboot the node (or reset the GPU from the host)" in status
        assert len([x for x in err.splitlines() if "reboot_needed" in x]) == 1, err
        assert node.mig(0)["current"] is False
    finally:
        node.cleanup()


def test_units_a_killed_run_left_stopped_are_started_by_the_next_run(hopper: Node) -> None:
    """The note a run writes before stopping units survives a SIGKILL; the next run (here
    one with nothing to change) starts those units again and forgets the note."""
    hopper.write_config(config())
    done = hopper.migrestore("apply", "--no-clients")
    assert done.returncode == 0, done.stderr
    hopper.units.add("nvidia-dcgm.service", state="inactive")
    note = Path(hopper.env["MIGRESTORE_STATE"] + ".stopped-units")
    note.write_text(json.dumps({"units": ["nvidia-dcgm.service"]}))
    before = hopper.changes()
    done = hopper.migrestore("apply")
    assert done.returncode == 0, done.stderr
    assert "units_left_stopped" in done.stderr
    assert hopper.units.state("nvidia-dcgm.service") == "active"
    assert not note.exists()
    assert hopper.changes() == before


def test_apply_records_the_units_it_stops_until_it_starts_them(hopper: Node) -> None:
    hopper.write_config(config())
    hopper.units.add("nvidia-dcgm.service")
    note = Path(hopper.env["MIGRESTORE_STATE"] + ".stopped-units")
    done = hopper.migrestore("apply")
    assert done.returncode == 0, done.stderr
    calls = hopper.units.calls()
    assert "--no-ask-password stop nvidia-dcgm.service" in calls
    assert hopper.units.state("nvidia-dcgm.service") == "active"
    assert not note.exists()


def test_an_idle_daemon_blocks_no_reset_and_no_ampere_activation(ampere: Node) -> None:
    """Issue 12 item 1: the daemon opens NVML for a pass or a tick only. A process with
    NVML initialised is a client of every GPU (simulator engine rule 6), so a daemon
    holding its session would make another process's reset fail IN_USE."""
    ampere.write_config(config(policy="warn", interval=60))
    ampere.start_daemon()
    ampere.notify.wait_for("READY=1")
    # the daemon's pass is over: its session is closed once READY went out
    ampere.wait_until(lambda: not ampere.show()["sessions"], 30, "the daemon's NVML session end")
    out = subprocess.run(
        [*sim_argv("reset", ampere.state, "--gpu", "0")],
        env=ampere.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert ampere.geometry(0) == []
    # an Ampere activation by another process: activated at once
    assert "activation NVML_SUCCESS" in ampere.sim("set-mode", ampere.state, "--gpu", "0", "off")
    assert ampere.mig(0) == {"capable": True, "current": False, "pending": False}
    assert ampere.daemon is not None and ampere.daemon.poll() is None
    code, err = ampere.stop_daemon()
    assert code == 0, err


def test_a_lost_gpu_gets_ready_with_a_partial_status_and_is_restored_once_back(
    hopper: Node,
) -> None:
    hopper.write_config(config())
    hopper.sim("lose", hopper.state, "--gpu", "1")
    hopper.start_daemon()
    ready = hopper.notify.wait_for("READY=1")
    # READY all the same: GPU 0 is restored; STATUS= names the lost GPU and its error
    assert "STATUS=partial: 1 GPU not restored: GPU 1 (bus id unknown): get its handle: " in (ready)
    assert "NVML_ERROR_GPU_IS_LOST" in ready
    assert hopper.geometry(0) == EXPECTED
    state = json.loads(Path(hopper.env["MIGRESTORE_STATE"]).read_text())
    assert state["result"] == "partial" and state["gpus"][1]["error"]["failed"] == "get its handle"
    assert hopper.daemon is not None and hopper.daemon.poll() is None  # still watching
    # the GPU is back: the next pass (here a reload) restores it
    hopper.sim("recover", hopper.state, "--gpu", "1")
    mark = len(hopper.notify.messages)
    hopper.daemon.send_signal(signal.SIGHUP)
    msg = hopper.notify.wait_for("READY=1", after=mark)
    assert "reloaded: restored 1 GPU" in msg, msg
    assert hopper.geometry(1) == EXPECTED
    code, err = hopper.stop_daemon()
    assert code == 0
    (sick,) = [line for line in err.splitlines() if line.startswith("<3>gpu_sick gpu=1 ")]
    assert "error=NVML_ERROR_GPU_IS_LOST" in sick and 'pci_bus_id="unknown' in sick
