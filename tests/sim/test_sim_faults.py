"""Injected faults, per-call latency, and the count and log of changes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, List

import pynvml
import pytest

from migrestore import simulator
from migrestore.errors import MigrestoreError, NvmlError
from migrestore.simulator import cli
from tests.sim.support import create_gi, device

ROOT = Path(__file__).resolve().parents[2]


def test_the_nth_call_fails_once_and_changes_nothing(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("h100-80gb-hbm3")
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    sim.fail("nvmlDeviceCreateGpuInstanceWithPlacement", 2, "NVML_ERROR_IN_USE")
    create_gi(dev, 19, 0)
    count = sim.change_count
    with pytest.raises(pynvml.NVMLError_InUse):
        create_gi(dev, 19, 1)
    assert sim.change_count == count
    assert [g.start for g in sim.state().gpus[0].gis] == [0]
    create_gi(dev, 19, 1)  # one-shot
    assert sim.state().faults == []


def test_faults_count_calls_across_processes(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str]
) -> None:
    path = state_file("a30-24gb")
    assert (
        cli.main(
            ["fail", path, "--call", "nvmlDeviceGetMigMode", "--nth", "2", "--error", "GPU_IS_LOST"]
        )
        == 0
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first_call = (
        "import sys, pynvml\n"
        "from migrestore import simulator\n"
        "simulator.attach(pynvml, sys.argv[1])\n"
        "pynvml.nvmlInit()\n"
        "print(pynvml.nvmlDeviceGetMigMode(pynvml.nvmlDeviceGetHandleByIndex(0)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", first_call, path], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "[0, 0]", done.stderr
    attach(path)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetMigMode(device())
    assert pynvml.nvmlDeviceGetMigMode(device()) == [0, 0]


def test_init_and_reset_can_fail(attach: Callable[[str], simulator.Simulator]) -> None:
    sim = attach("a100-80gb")
    sim.fail("nvmlInitWithFlags", 1, "DRIVER_NOT_LOADED")
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    sim.fail("gpu_reset", 1, "NVML_ERROR_TIMEOUT")
    with pytest.raises(NvmlError) as err:
        sim.reset_gpu(0)
    assert err.value.nvml_error == "NVML_ERROR_TIMEOUT"
    sim.reset_gpu(0)


def test_bad_fault_requests_are_refused(attach: Callable[[str], simulator.Simulator]) -> None:
    sim = attach("a30-24gb")
    with pytest.raises(MigrestoreError, match="not an NVML function"):
        sim.fail("nvmlDeviceGetPowerUsage", 1, "IN_USE")
    with pytest.raises(MigrestoreError, match="unknown NVML error name"):
        sim.fail("nvmlDeviceGetMigMode", 1, "NVML_ERROR_BROKEN")
    with pytest.raises(MigrestoreError, match="1 or more"):
        sim.fail("nvmlDeviceGetMigMode", 0, "IN_USE")
    with pytest.raises(MigrestoreError, match="not an NVML function"):
        sim.latency(10, "nvmlNothing")


def test_latency_is_slept_per_call_outside_the_lock(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("h100-80gb-hbm3")
    slept: List[float] = []
    other_thread_ran: List[int] = []

    def sleep(seconds: float) -> None:
        # While this call "sleeps", another thread must be able to use the simulator.
        helper = threading.Thread(target=lambda: other_thread_ran.append(sim.change_count))
        helper.start()
        helper.join(timeout=10)
        slept.append(seconds)

    dev = device()
    sim.sleep = sleep
    sim.latency(250)
    sim.latency(1000, "nvmlDeviceGetMigMode")
    pynvml.nvmlDeviceGetMigMode(dev)
    pynvml.nvmlDeviceGetName(dev)
    assert slept == [0.001, 0.00025]  # per function, else "*"
    assert other_thread_ran == [0, 0]
    sim.latency(0)
    sim.latency(0, "nvmlDeviceGetMigMode")
    pynvml.nvmlDeviceGetMigMode(dev)
    assert len(slept) == 2


def test_changes_are_counted_and_logged(attach: Callable[[str], simulator.Simulator]) -> None:
    sim = attach("h100-80gb-hbm3")
    dev = device()
    for _ in range(3):
        pynvml.nvmlDeviceGetMigMode(dev)
    assert sim.change_count == 0
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    gi, gi_id, _, _ = create_gi(dev, 9, 4)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_gi(dev, 9, 4)  # a refused call is no change
    sim.create_gi(0, "1g.10gb", 0)
    assert sim.change_count == 3
    log = sim.changes()
    assert [c["function"] for c in log] == [
        "nvmlDeviceSetMigMode",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
    ]
    assert log[1]["args"] == {
        "profile_id": 9,
        "placement": "4:4",
        "result": {"gi_id": gi_id, "placement": "4:4"},
    }
    assert [c["via"] for c in log] == ["nvml", "nvml", "simulator"]
    assert log[0]["args"]["activation"] == "NVML_SUCCESS"
    for _ in range(70):
        pynvml.nvmlDeviceSetMigMode(dev, 1)
    assert sim.change_count == 73
    log = sim.changes()
    assert len(log) == 64 and log[-1]["seq"] == 73
    del gi


def test_a_freeze_stops_the_process_right_after_the_nth_change_once(
    state_file: Callable[..., str],
) -> None:
    path = state_file("h100-80gb-hbm3")
    sim = simulator.Simulator(path)
    try:
        sim.set_mode(0, True)
        base = sim.change_count
        sim.freeze_after(2)
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys\n"
                "from migrestore.simulator import Simulator\n"
                "sim = Simulator(sys.argv[1])\n"
                "for start in (0, 1, 2):\n"
                "    sim.create_gi(0, '1g.10gb', start)\n",
                path,
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            # a condition, not a time: the child is stopped (or has ended, a failure)
            _pid, status = os.waitpid(child.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status), status
            assert sim.change_count == base + 2  # stopped right after its 2nd change
            assert sim.state().freeze_at == 0  # one-shot: disarmed by the freeze
            os.kill(child.pid, signal.SIGCONT)
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert sim.change_count == base + 3
        sim.freeze_after(1)
        sim.freeze_after(0)  # disarmed
        assert sim.state().freeze_at == 0
        with pytest.raises(MigrestoreError, match="0 or more"):
            sim.freeze_after(-1)
    finally:
        sim.close()
