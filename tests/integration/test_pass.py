"""The convergence pass as one sequence (engine.py): a watch tick observes and decides
once, the decision is never made again inside the pass, and the processes on the GPUs
are read only when the plan would destroy an instance."""

from __future__ import annotations

from typing import Iterator

import pytest

from migrestore import config, engine, logs
from migrestore.backend import Simulated
from migrestore.daemon import Daemon
from migrestore.errors import BusyError
from migrestore.notify import Notifier
from tests.nvml.support import CountingLib, count_calls

GPUS = 8
CONFIG = """\
version: 1
clients: []
drift: {policy: restore}
gpus:
  - match: all
    mig: true
    instances:
      - {profile: 3g.40gb, placement: 4}
      - {profile: 2g.20gb, placement: 0}
      - {profile: 1g.10gb, count: 2}
"""
# Reads once per GPU per observation, and by nothing else on Hopper GI/CI changes.
OBSERVATION_CALL = "nvmlDeviceGetMigMode"
# Read only by the MIG device scan (UUIDs and processes).
DEVICE_SCAN_CALL = "nvmlDeviceGetMigDeviceHandleByIndex"


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """The daemon's own object after READY, on 8 simulated H100s, in this process."""
    logs.configure("json", "error")
    cfg = config.parse(CONFIG, "/etc/migrestore.yaml")
    log = logs.get_logger()
    d = Daemon(
        cfg,
        config_path=cfg.path,
        select_name=None,
        simulate=f"h100-80gb-hbm3:{GPUS}",
        log=log,
        notifier=Notifier(log),
    )
    d.nv = d.wait_for_driver()
    try:
        assert not d.converge().converged_before
        yield d
    finally:
        d.close()


def _observations(counter: CountingLib) -> int:
    calls = counter.calls[OBSERVATION_CALL]
    assert calls % GPUS == 0, counter.calls
    return calls // GPUS


def test_a_converged_tick_observes_the_geometry_once(daemon: Daemon) -> None:
    counter = count_calls()
    daemon.check("interval")
    assert _observations(counter) == 1
    assert counter.calls[DEVICE_SCAN_CALL] == 0


def test_a_drift_tick_observes_and_decides_once_then_verifies(daemon: Daemon) -> None:
    assert daemon.nv is not None and isinstance(daemon.nv.backend, Simulated)
    sim = daemon.nv.backend.simulator
    gi = daemon.nv.observe()[3].instances[-1]  # a 1g.10gb: another process destroys it
    sim.destroy_ci(3, gi.gi_id, gi.cis[0].ci_id)
    sim.destroy_gi(3, gi.gi_id)
    counter = count_calls()
    daemon.check("interval")
    # One observation to decide: the geometry alone, since restoring creates and
    # destroys nothing, so processes cannot change the answer. One to verify.
    assert _observations(counter) == 2
    assert counter.calls["nvmlDeviceCreateGpuInstanceWithPlacement"] == 1
    assert counter.calls["nvmlGpuInstanceCreateComputeInstanceWithPlacement"] == 1
    # The MIG device scan is the verification's (it feeds the state file), once, plus
    # the read-back of the one new CI's MIG device.
    scans = counter.calls[DEVICE_SCAN_CALL]
    counter.clear()
    daemon.nv.observe()
    assert scans == counter.calls[DEVICE_SCAN_CALL] + 1
    assert engine.look(daemon.nv, daemon.cfg, force=False).converged


def test_processes_are_read_only_when_the_plan_would_destroy(daemon: Daemon) -> None:
    """GPU 5's 2g.20gb was replaced by two 1g.10gb, one running a process: deciding
    without force reads the processes and refuses before anything is touched; with
    force (or for a pass that only reports drift) the geometry alone decides."""
    assert daemon.nv is not None and isinstance(daemon.nv.backend, Simulated)
    sim = daemon.nv.backend.simulator
    old = daemon.nv.observe()[5].instances[0]
    assert (old.profile, old.placement.start) == ("2g.20gb", 0)
    sim.destroy_ci(5, old.gi_id, old.cis[0].ci_id)
    sim.destroy_gi(5, old.gi_id)
    first = sim.create_gi(5, "1g.10gb", 0)
    sim.create_ci(5, first)
    sim.create_ci(5, sim.create_gi(5, "1g.10gb", 1))
    sim.run_process(5, first)
    counter = count_calls()
    with pytest.raises(BusyError) as info:
        engine.look(daemon.nv, daemon.cfg, force=False)
    assert _observations(counter) == 2  # the geometry, then the processes
    assert "processes" in str(info.value)
    counter.clear()
    forced = engine.look(daemon.nv, daemon.cfg, force=True)
    assert _observations(counter) == 1 and counter.calls[DEVICE_SCAN_CALL] == 0
    assert forced.destroys and not forced.devices_read
