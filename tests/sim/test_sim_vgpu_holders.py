"""vGPU host mode and hidden holders of an instance, on both NVML libraries (the fake
one beneath pynvml and the C library): a vGPU host's virtualization mode reads
HOST_VGPU and process queries on its MIG device handles answer NOT_SUPPORTED (the GPU
handle's still answers); a hidden holder of a GI
or CI is listed by no process query and makes its destroy answer IN_USE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pynvml
import pytest

from migrestore import simulator
from migrestore.simulator import cli
from tests.sim.support import create_ci, create_gi, device

NVML_LIBRARIES = ("fake", "libnvidia-ml")


def test_a_vgpu_host_answers_not_supported_for_mig_device_processes(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("h100-80gb-hbm3:2")
    for index in (0, 1):
        dev = device(index)
        pynvml.nvmlDeviceSetMigMode(dev, 1)
        gi, _, _, _ = create_gi(dev, 9, 0)
        create_ci(gi, 2)
    assert pynvml.nvmlDeviceGetVirtualizationMode(device(0)) == 0  # NONE
    sim.set_vgpu_host(0)
    assert pynvml.nvmlDeviceGetVirtualizationMode(device(0)) == 3  # HOST_VGPU
    assert pynvml.nvmlDeviceGetVirtualizationMode(device(1)) == 0
    mig0 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(device(0), 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetComputeRunningProcesses(mig0)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(device(0)) == []  # aggregate
    mig1 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(device(1), 0)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(mig1) == []  # not a vGPU host
    # everything else goes on: the MIG device's UUID, destroying and creating
    assert pynvml.nvmlDeviceGetUUID(mig0).startswith("MIG-")
    sim.set_vgpu_host(0, False)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(mig0) == []


def test_a_hidden_holder_makes_the_destroy_answer_in_use_and_lists_no_process(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = attach("h100-80gb-hbm3:1")
    dev = device(0)
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    held_gi, held_id, _, _ = create_gi(dev, 9, 0)
    held_ci = create_ci(held_gi, 2)
    free_gi, free_id, _, _ = create_gi(dev, 9, 4)
    free_ci = create_ci(free_gi, 2)
    sim.hold_instance(0, held_id)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(dev) == []
    pynvml.nvmlComputeInstanceDestroy(held_ci)  # the GI is held, its CI is not
    with pytest.raises(pynvml.NVMLError_InUse):
        pynvml.nvmlGpuInstanceDestroy(held_gi)
    pynvml.nvmlComputeInstanceDestroy(free_ci)
    pynvml.nvmlGpuInstanceDestroy(free_gi)  # the other GI goes
    sim.release_instance(0, held_id)
    pynvml.nvmlGpuInstanceDestroy(held_gi)
    assert free_id != held_id

    gi, gi_id, _, _ = create_gi(dev, 9, 0)
    ci = create_ci(gi, 2)
    ci_id = pynvml.nvmlComputeInstanceGetInfo(ci).id
    sim.hold_instance(0, gi_id, ci_id)
    with pytest.raises(pynvml.NVMLError_InUse):
        pynvml.nvmlComputeInstanceDestroy(ci)
    with pytest.raises(pynvml.NVMLError_InUse):
        pynvml.nvmlGpuInstanceDestroy(gi)  # it still has its CI


def test_the_verbs_show_and_store_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "gpus.json")
    assert cli.main(["init", state, "h100-80gb-hbm3:1"]) == 0
    assert cli.main(["vgpu-host", state, "--gpu", "0", "on"]) == 0
    assert cli.main(["set-mode", state, "--gpu", "0", "on"]) == 0
    assert (
        cli.main(["create-gi", state, "--gpu", "0", "--profile", "3g.40gb", "--placement", "0"])
        == 0
    )
    sim = simulator.Simulator(state)
    try:
        gi_id = sim.state().gpus[0].gis[0].id
        sim.hold_instance(0, gi_id)
        capsys.readouterr()
        assert cli.main(["show", state]) == 0
        text = capsys.readouterr().out
        assert "vGPU host" in text and "held by pid" in text
        assert cli.main(["show", state, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["gpus"][0]["vgpu_host"] is True
        assert doc["gpus"][0]["gis"][0]["holders"]
    finally:
        sim.close()
