"""A GPU that fell off the bus (``Simulator.lose``, ``migrestore-sim lose``): still
counted, every call that names it answers its error, a reboot or ``recover`` brings it
back; the other GPUs are untouched."""

from __future__ import annotations

import json
from typing import Callable

import pynvml
import pytest

from migrestore import simulator
from migrestore.errors import MigrestoreError, NvmlError
from migrestore.simulator import cli
from tests.sim.support import create_ci, create_gi, device

NVML_LIBRARIES = ("fake", "libnvidia-ml")


def test_a_lost_gpu_is_counted_but_its_handle_fails(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("h100-80gb-hbm3:3")
    bus_id = sim.state().gpus[1].pci_bus_id
    uuid = sim.state().gpus[1].uuid
    sim.lose(1)
    assert pynvml.nvmlDeviceGetCount() == 3
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByUUID(uuid)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    # the others answer as before
    for index in (0, 2):
        dev = device(index)
        pynvml.nvmlDeviceSetMigMode(dev, 1)
        assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]


def test_every_handle_taken_before_the_loss_answers_the_error(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("h100-80gb-hbm3:2")
    dev = device(0)
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    gi, gi_id, _, _ = create_gi(dev, 9, 0)
    ci = create_ci(gi, 2)
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    sim.lose(0, "IRQ_ISSUE")
    calls = [
        lambda: pynvml.nvmlDeviceGetUUID(dev),
        lambda: pynvml.nvmlDeviceGetPciInfo(dev),
        lambda: pynvml.nvmlDeviceGetMigMode(dev),
        lambda: pynvml.nvmlDeviceGetGpuInstanceById(dev, gi_id),
        lambda: pynvml.nvmlGpuInstanceGetInfo(gi),
        lambda: pynvml.nvmlComputeInstanceGetInfo(ci),
        lambda: pynvml.nvmlDeviceGetUUID(mig),
        lambda: pynvml.nvmlGpuInstanceDestroy(gi),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_IrqIssue):
            call()
    assert len(sim.state().gpus[0].gis) == 1  # the failed destroy changed nothing
    assert pynvml.nvmlDeviceGetMigMode(device(1)) == [0, 0]


def test_reset_cannot_bring_it_back_recover_and_reboot_do(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("h100-80gb-hbm3:2")
    pynvml.nvmlDeviceSetMigMode(device(1), 1)
    sim.lose(1, "NVML_ERROR_UNKNOWN")
    with pytest.raises(NvmlError) as failed:
        sim.reset_gpu(1)
    assert failed.value.nvml_error == "NVML_ERROR_UNKNOWN"
    sim.recover(1)
    assert pynvml.nvmlDeviceGetMigMode(device(1)) == [1, 1]
    sim.lose(1)
    sim.reboot()
    assert pynvml.nvmlDeviceGetMigMode(device(1)) == [0, 0]  # Hopper after a reboot


def test_lose_refuses_an_unknown_error_name(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("a30-24gb")
    with pytest.raises(MigrestoreError, match="unknown NVML error name"):
        sim.lose(0, "NVML_ERROR_MADE_UP")
    assert sim.state().gpus[0].lost == ""


def test_cli_lose_and_recover_through_the_state_file(
    state_file: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = state_file("h100-80gb-hbm3:8")
    assert cli.main(["lose", path, "--gpu", "3"]) == 0
    assert "NVML_ERROR_GPU_IS_LOST" in capsys.readouterr().out
    sim = simulator.Simulator(path)
    try:
        assert [g.lost for g in sim.state().gpus].count("NVML_ERROR_GPU_IS_LOST") == 1
        assert sim.state().gpus[3].lost == "NVML_ERROR_GPU_IS_LOST"
    finally:
        sim.close()
    assert cli.main(["show", path]) == 0
    assert "LOST: every call answers NVML_ERROR_GPU_IS_LOST" in capsys.readouterr().out
    assert cli.main(["show", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["gpus"][3]["lost"] == "NVML_ERROR_GPU_IS_LOST"
    assert cli.main(["lose", path, "--gpu", "3", "--error", "NOPE"]) == 1
    assert "unknown NVML error name" in capsys.readouterr().err
    assert cli.main(["recover", path, "--gpu", "3"]) == 0
    sim = simulator.Simulator(path)
    try:
        assert sim.state().gpus[3].lost == ""
    finally:
        sim.close()


def test_an_armed_loss_strikes_at_the_nth_change_from_then(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    """``lose(gpu, error, after_changes=N)``: the GPU answers until the node's Nth
    change from then, made on any GPU, and the error from the next call on."""
    sim = attach("h100-80gb-hbm3:2")
    sim.lose(1, "GPU_IS_LOST", after_changes=3)
    one = device(1)
    pynvml.nvmlDeviceSetMigMode(device(0), 1)  # change 1, on another GPU
    pynvml.nvmlDeviceSetMigMode(one, 1)  # change 2
    # change 3: made, and the GPU falls off the bus right after it
    pynvml.nvmlDeviceCreateGpuInstance(one, pynvml.nvmlDeviceGetGpuInstanceProfileInfo(one, 0).id)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetMigMode(one)
    assert pynvml.nvmlDeviceGetMigMode(device(0)) == [1, 1]
    gpu = sim.state().gpus[1]
    assert gpu.lost == "NVML_ERROR_GPU_IS_LOST" and gpu.lose_at == 0
    with pytest.raises(MigrestoreError, match="0 or more"):
        sim.lose(0, after_changes=-1)
