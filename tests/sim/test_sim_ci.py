"""Compute instances, MIG devices and the processes running on them."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Callable, List, Tuple

import pynvml
import pytest

from migrestore import simulator
from tests.sim.support import (
    ci_handles,
    ci_id_of,
    ci_placements,
    create_ci,
    create_gi,
    device,
    mig_devices,
)

# every test runs on the fake library and on the simulated libnvidia-ml.so.1
NVML_LIBRARIES = ("fake", "libnvidia-ml")


def _h100_3g(
    attach: Callable[[str], simulator.Simulator], spec: str = "h100-80gb-hbm3"
) -> Tuple[simulator.Simulator, Any, Any, int]:
    sim = attach(spec)
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    gi, gi_id, _, _ = create_gi(dev, 9, 4)
    return sim, dev, gi, gi_id


def test_ci_profiles_of_a_gi(attach: Callable[[str], simulator.Simulator]) -> None:
    _, _, gi, _ = _h100_3g(attach)
    rows: List[Tuple[Any, ...]] = []
    for index in range(10):
        try:
            info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, 0)
        except pynvml.NVMLError as err:
            rows.append((index, type(err).__name__))
            continue
        rows.append((index, info.name, info.id, info.sliceCount, info.instanceCount))
        assert (info.sharedCopyEngineCount, info.sharedDecoderCount, info.sharedJpegCount) == (
            3,
            3,
            3,
        )
    assert rows == [
        (0, "MIG 1c.3g.40gb", 0, 1, 3),
        (1, "MIG 2c.3g.40gb", 1, 2, 1),
        (2, "MIG 3g.40gb", 2, 3, 1),
        *((i, "NVMLError_NotSupported") for i in range(3, 9)),
        (9, "NVMLError_InvalidArgument"),
    ]
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 0, 1)  # engine profile 1
    assert ci_placements(gi, 0) == [(0, 1), (1, 1), (2, 1)]
    assert ci_placements(gi, 2) == [(0, 3)]
    with pytest.raises(pynvml.NVMLError_NotSupported):
        ci_placements(gi, 4)


def test_ci_rules(attach: Callable[[str], simulator.Simulator]) -> None:
    sim, _, gi, _ = _h100_3g(attach)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        create_ci(gi, 0, 3, 1)  # outside the GI's three compute slices
    with pytest.raises(pynvml.NVMLError_NotSupported):
        create_ci(gi, 4)  # a 7-slice CI in a 3-slice GI
    one = create_ci(gi, 0, 1, 1)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_ci(gi, 1, 0, 2)  # 2c at 0:2 overlaps the 1c at 1
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_ci(gi, 2)  # the full CI needs every slice
    assert pynvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, 0) == 2
    assert pynvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, 1) == 0
    default = create_ci(gi, 0)  # lowest free placement
    assert pynvml.nvmlComputeInstanceGetInfo(default).placement.start == 0
    assert [ci_id_of(one), ci_id_of(default)] == [0, 1]
    before = sim.change_count
    pynvml.nvmlComputeInstanceDestroy(one)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlComputeInstanceGetInfo(one)
    again = create_ci(gi, 0, 2, 1)
    assert ci_id_of(again) == 0  # the lowest free CI ID
    assert sim.change_count == before + 2
    assert sorted(ci_id_of(h) for h in ci_handles(gi, 0)) == [0, 1]
    found = pynvml.nvmlGpuInstanceGetComputeInstanceById(gi, 1)
    assert pynvml.nvmlComputeInstanceGetInfo(found).placement.start == 0
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlGpuInstanceGetComputeInstanceById(gi, 5)


def test_ci_info_names_its_gi_and_device(attach: Callable[[str], simulator.Simulator]) -> None:
    _, dev, gi, gi_id = _h100_3g(attach)
    ci = create_ci(gi, 1, 0, 2)
    info = pynvml.nvmlComputeInstanceGetInfo(ci)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (0, 1, 0, 2)
    assert pynvml.nvmlGpuInstanceGetInfo(info.gpuInstance).id == gi_id
    assert pynvml.nvmlDeviceGetUUID(info.device) == pynvml.nvmlDeviceGetUUID(dev)


def test_rev2_gi_offers_its_full_ci_as_id_7(attach: Callable[[str], simulator.Simulator]) -> None:
    attach("h100-80gb-hbm3")
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    gi, _, _, _ = create_gi(dev, 15, 2)
    info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 7, 0)
    assert (info.id, info.name) == (7, "MIG 1g.20gb")
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 0, 0)
    assert pynvml.nvmlComputeInstanceGetInfo(create_ci(gi, 7)).profileId == 7


def test_mig_devices_are_cis_in_gi_then_ci_id_order(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    attach("a100-sxm4-40gb")
    dev = device()
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(dev) == 0
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(dev) == 7
    lone, _, _, _ = create_gi(dev, 19, 6)  # GI 13, no CI: no MIG device
    big, _, _, _ = create_gi(dev, 9, 0)  # GI 1
    small, _, _, _ = create_gi(dev, 14, 4)  # GI 5
    create_ci(small, 1)
    create_ci(big, 0, 2, 1)
    create_ci(big, 0, 0, 1)
    devices = mig_devices(dev)
    assert [(g, c) for g, c, _ in devices] == [(1, 0), (1, 1), (5, 0)]
    assert len({u for _, _, u in devices}) == 3 and all(u.startswith("MIG-") for _, _, u in devices)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, 3)
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, 2)
    assert pynvml.nvmlDeviceIsMigDeviceHandle(mig).value == 1
    assert pynvml.nvmlDeviceIsMigDeviceHandle(dev).value == 0
    parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert pynvml.nvmlDeviceGetUUID(parent) == pynvml.nvmlDeviceGetUUID(dev)
    assert pynvml.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-40GB MIG 2g.10gb"
    assert pynvml.nvmlDeviceGetMemoryInfo(mig).total == 9984 * 1024 * 1024
    assert pynvml.nvmlDeviceGetUUID(mig) == devices[2][2]
    by_uuid = pynvml.nvmlDeviceGetHandleByUUID(devices[2][2])
    assert pynvml.nvmlDeviceGetGpuInstanceId(by_uuid) == 5
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuInstanceId(dev)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(dev)
    del lone


def test_mig_uuids_are_new_per_creation_and_reproducible(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    def run() -> Tuple[str, str]:
        attach("h100-80gb-hbm3")
        dev = device()
        pynvml.nvmlDeviceSetMigMode(dev, 1)
        gi, _, _, _ = create_gi(dev, 0)
        ci = create_ci(gi, 4)
        first = mig_devices(dev)[0][2]
        pynvml.nvmlComputeInstanceDestroy(ci)
        create_ci(gi, 4)
        return first, mig_devices(dev)[0][2]

    first, second = run()
    assert first != second
    assert run() == (first, second)


def test_processes_on_mig_devices(attach: Callable[[str], simulator.Simulator]) -> None:
    sim, dev, gi, gi_id = _h100_3g(attach)
    create_ci(gi, 0, 0, 1)
    other = create_ci(gi, 0, 1, 1)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert sim.run_process(0, gi_id, 1, worker.pid)[0] == 1
        first, second = (
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0),
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, 1),
        )
        assert pynvml.nvmlDeviceGetComputeRunningProcesses(first) == []
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(second)
        assert [(p.pid, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [
            (worker.pid, gi_id, 1)
        ]
        assert procs[0].usedGpuMemory is None  # NVML_VALUE_NOT_AVAILABLE
        parent = pynvml.nvmlDeviceGetComputeRunningProcesses_v2(dev)
        assert [p.pid for p in parent] == [worker.pid]
        with pytest.raises(pynvml.NVMLError_InUse):
            pynvml.nvmlComputeInstanceDestroy(other)
        with pytest.raises(pynvml.NVMLError_InUse):
            pynvml.nvmlGpuInstanceDestroy(gi)
        sim.stop_process(worker.pid)
        pynvml.nvmlComputeInstanceDestroy(other)
        sim.run_process(0, gi_id, None, worker.pid)  # default: the lowest CI
        assert sim.state().gpus[0].gis[0].cis[0].pids == [worker.pid]
    finally:
        worker.kill()
        worker.wait()
    # A dead process is pruned: the CI can go.
    pynvml.nvmlComputeInstanceDestroy(pynvml.nvmlGpuInstanceGetComputeInstanceById(gi, 0))
    pynvml.nvmlGpuInstanceDestroy(gi)
