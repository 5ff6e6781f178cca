"""MIG mode: activation on Hopper and Ampere, clients, passthrough, resets and reboots."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

import pynvml
import pytest

from migrestore import simulator
from migrestore.errors import NvmlError
from tests.sim.conftest import BootId
from tests.sim.support import create_gi, device, mig_devices

# every test runs on the fake library and on the simulated libnvidia-ml.so.1
NVML_LIBRARIES = ("fake", "libnvidia-ml")

ACTIVATED = pynvml.NVML_SUCCESS


@pytest.mark.parametrize("model", ["h100-80gb-hbm3", "gh200-144gb", "rtx-pro-6000-blackwell"])
def test_hopper_and_later_switch_at_once_even_when_held(
    attach: Callable[[str], simulator.Simulator], model: str
) -> None:
    sim = attach(model)
    sim.hold(0)
    dev = device()
    assert pynvml.nvmlDeviceSetMigMode(dev, 1) == ACTIVATED
    assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert pynvml.nvmlDeviceSetMigMode(dev, 0) == ACTIVATED
    assert pynvml.nvmlDeviceGetMigMode(dev) == [0, 0]


def test_ampere_resets_itself_when_nobody_holds_it(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    attach("a100-80gb")
    dev = device()
    assert pynvml.nvmlDeviceSetMigMode(dev, 1) == ACTIVATED
    assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]


def test_ampere_held_stays_pending_until_a_reset_without_clients(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("a100-sxm4-40gb")
    sim.hold(0)
    dev = device()
    status = pynvml.nvmlDeviceSetMigMode(dev, 1)
    assert status == pynvml.NVML_ERROR_IN_USE  # the activation failed; the call did not
    assert pynvml.nvmlDeviceGetMigMode(dev) == [0, 1]
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceCreateGpuInstance(dev, 9)
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(dev) == 0
    uuid = pynvml.nvmlDeviceGetUUID(dev)
    with pytest.raises(NvmlError) as err:
        sim.reset_gpu(uuid)
    assert err.value.nvml_error == "NVML_ERROR_IN_USE"
    assert "held by pid" in str(err.value)
    sim.release(0)
    sim.reset_gpu(uuid)
    assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]
    create_gi(dev, 9)


def test_ampere_passthrough_needs_a_reboot(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str]
) -> None:
    sim = attach(state_file("a30-24gb", "--passthrough"))
    dev = device()
    assert pynvml.nvmlDeviceSetMigMode(dev, 1) == pynvml.NVML_ERROR_RESET_REQUIRED
    assert pynvml.nvmlDeviceGetMigMode(dev) == [0, 1]
    with pytest.raises(NvmlError) as err:
        sim.reset_gpu(0)
    # nvidia-smi --gpu-reset in a VM: "Resetting GPU ... is not supported." (exit 3)
    assert err.value.nvml_error == "NVML_ERROR_NOT_SUPPORTED"
    assert "is not supported" in str(err.value)
    sim.reboot()
    assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]


def test_mode_change_with_instances_is_in_use(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("h100-80gb-hbm3")
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    create_gi(dev, 9, 4)
    before = sim.change_count
    with pytest.raises(pynvml.NVMLError_InUse):
        pynvml.nvmlDeviceSetMigMode(dev, 0)
    assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert sim.change_count == before
    # Asking for the mode it has is harmless and keeps the instances.
    assert pynvml.nvmlDeviceSetMigMode(dev, 1) == ACTIVATED
    assert len(sim.state().gpus[0].gis) == 1
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceSetMigMode(dev, 2)


def test_reset_removes_instances_and_their_handles(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("h100-80gb-hbm3")
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    gi, _, _, _ = create_gi(dev, 0)
    pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 4)
    assert len(mig_devices(dev)) == 1
    sim.reset_gpu(0)
    assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert mig_devices(dev) == []
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceGetInfo(gi)


def test_reset_refused_while_a_process_runs_on_a_mig_device(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("a100-80gb")
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    gi, gi_id, _, _ = create_gi(dev, 0)
    pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 4)
    sim.run_process(0, gi_id)
    with pytest.raises(NvmlError) as err:
        sim.reset_gpu(0)
    assert err.value.nvml_error == "NVML_ERROR_IN_USE"


def _reboot_check(sim: simulator.Simulator, boot_id: BootId) -> None:
    # GPU 0 is Ampere (A100), GPU 1 Hopper (H100); both in MIG mode with a GI and a holder.
    for index in (0, 1):
        dev = device(index)
        assert pynvml.nvmlDeviceSetMigMode(dev, 1) == ACTIVATED
        gi, _, _, _ = create_gi(dev, 0)
        pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 4)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sim.hold(0, holder.pid)
        sim.hold(1, holder.pid)
        boot_id.set("boot-2")
        ampere, hopper = device(0), device(1)
        assert pynvml.nvmlDeviceGetMigMode(ampere) == [1, 1]
        assert pynvml.nvmlDeviceGetMigMode(hopper) == [0, 0]
        state = sim.state()
        assert state.boot_id == "boot-2"
        assert [g.gis for g in state.gpus] == [[], []]
        assert [g.holders for g in state.gpus] == [[], []]
    finally:
        holder.kill()
        holder.wait()


def test_reboot_when_the_boot_id_changes(
    attach: Callable[[str], simulator.Simulator],
    state_file: Callable[..., str],
    boot_id: BootId,
) -> None:
    path = state_file("a100-80gb", "h100-80gb-hbm3")
    _reboot_check(attach(path), boot_id)
    # Another process (here: another simulator on the file) sees the same rebooted state.
    other = simulator.Simulator(path)
    try:
        assert [g.mig_current for g in other.state().gpus] == [True, False]
    finally:
        other.close()


def test_ampere_pending_change_takes_effect_at_reboot(
    attach: Callable[[str], simulator.Simulator],
    state_file: Callable[..., str],
    boot_id: BootId,
) -> None:
    sim = attach(state_file("a100-80gb"))
    sim.hold(0)
    dev = device()
    assert pynvml.nvmlDeviceSetMigMode(dev, 1) == pynvml.NVML_ERROR_IN_USE
    boot_id.set("boot-2")
    assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert sim.state().gpus[0].holders == []


def test_in_memory_reboot(attach: Callable[[str], simulator.Simulator]) -> None:
    sim = attach("a30-24gb,h200-141gb")
    for index in (0, 1):
        pynvml.nvmlDeviceSetMigMode(device(index), 1)
        create_gi(device(index), 0)
    sim.reboot()
    assert pynvml.nvmlDeviceGetMigMode(device(0)) == [1, 1]
    assert pynvml.nvmlDeviceGetMigMode(device(1)) == [0, 0]
    assert [g.gis for g in sim.state().gpus] == [[], []]


# A process that opens NVML on a state file, says "up", and shuts NVML down when told
# (or never, when killed).
_SESSION = """
import sys, pynvml
from migrestore import simulator
simulator.attach(pynvml, sys.argv[1])
pynvml.nvmlInit()
print("up", flush=True)
sys.stdin.readline()
pynvml.nvmlShutdown()
print("down", flush=True)
sys.stdin.readline()
"""


def _session(path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SESSION, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    return proc


def test_another_process_with_nvml_open_blocks_an_ampere_activation_and_a_reset(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str]
) -> None:
    """A process with NVML initialised is a client of every GPU (engine rule 6): while
    it holds its session an Ampere activation answers IN_USE and a reset is refused; a
    session shut down, or its process dead, no longer counts."""
    path = state_file("a100-80gb:2")
    sim = attach(path)
    other = _session(path)
    try:
        assert sim.state().sessions.count(other.pid) == 1
        dev = device(0)
        assert pynvml.nvmlDeviceSetMigMode(dev, 1) == pynvml.NVML_ERROR_IN_USE
        assert pynvml.nvmlDeviceGetMigMode(dev) == [0, 1]
        # reset through the reset tool's model, this process's NVML shut down first
        checker = simulator.Simulator(path)
        try:
            with pytest.raises(NvmlError) as err:
                checker.reset_gpu(0)
            assert err.value.nvml_error == "NVML_ERROR_IN_USE"
            assert f"NVML initialised by pid {other.pid}" in str(err.value)
            assert other.stdin is not None and other.stdout is not None
            other.stdin.write("\n")
            other.stdin.flush()
            assert other.stdout.readline() == "down\n"
            assert other.pid not in sim.state().sessions
            checker.reset_gpu(0)
        finally:
            checker.close()
        assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]
        # a session whose process died without shutting NVML down is dropped
        killed = _session(path)
        assert pynvml.nvmlDeviceSetMigMode(device(1), 1) == pynvml.NVML_ERROR_IN_USE
        killed.kill()
        killed.wait()
        assert killed.pid not in sim.state().sessions
        assert pynvml.nvmlDeviceSetMigMode(device(1), 1) == ACTIVATED
    finally:
        other.kill()
        other.wait()


def test_the_own_session_does_not_count_and_ends_at_shutdown_or_close(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str], nvml_lib: str
) -> None:
    path = state_file("a100-80gb")
    sim = attach(path)
    assert sim.state().sessions.count(os.getpid()) == 1
    assert pynvml.nvmlDeviceSetMigMode(device(0), 1) == ACTIVATED
    pynvml.nvmlInit()  # counted per process: one entry
    assert sim.state().sessions.count(os.getpid()) == 1
    pynvml.nvmlShutdown()
    assert sim.state().sessions.count(os.getpid()) == 1
    if nvml_lib == "fake":
        # a simulator closed with NVML never shut down (detached) ends its session
        sim.close()
        assert os.getpid() not in simulator.Simulator(path).state().sessions
    else:
        pynvml.nvmlShutdown()
        assert os.getpid() not in sim.state().sessions
