"""The fake library speaks the C ABI pynvml expects: struct layouts, return codes, symbol
lookup, initialisation, and caller bugs that real C would turn into crashes."""

from __future__ import annotations

import ctypes
from typing import Any, Callable, Tuple

import pynvml
import pytest

from migrestore import simulator
from migrestore.simulator import cabi, codes
from tests.sim.support import create_gi, device, gi_handles

LAYOUTS: Tuple[Tuple[Any, Any], ...] = (
    (cabi.Placement, pynvml.c_nvmlGpuInstancePlacement_t),
    (cabi.Placement, pynvml.c_nvmlComputeInstancePlacement_t),
    (cabi.GpuInstanceProfileInfoV1, pynvml.c_nvmlGpuInstanceProfileInfo_t),
    (cabi.GpuInstanceProfileInfoV2, pynvml.c_nvmlGpuInstanceProfileInfo_v2_t),
    (cabi.ComputeInstanceProfileInfoV1, pynvml.c_nvmlComputeInstanceProfileInfo_t),
    (cabi.ComputeInstanceProfileInfoV2, pynvml.c_nvmlComputeInstanceProfileInfo_v2_t),
    (cabi.GpuInstanceInfo, pynvml.c_nvmlGpuInstanceInfo_t),
    (cabi.ComputeInstanceInfo, pynvml.c_nvmlComputeInstanceInfo_t),
    (cabi.PciInfo, pynvml.nvmlPciInfo_t),
    (cabi.Memory, pynvml.c_nvmlMemory_t),
    (cabi.ProcessInfo, pynvml.c_nvmlProcessInfo_v3_t),
)


@pytest.mark.parametrize(("mine", "theirs"), LAYOUTS, ids=lambda t: t.__name__)
def test_struct_layouts_match_pynvml(mine: Any, theirs: Any) -> None:
    assert ctypes.sizeof(mine) == ctypes.sizeof(theirs)
    assert [(name, getattr(mine, name).offset) for name, *_ in mine._fields_] == [
        (name, getattr(theirs, name).offset) for name, *_ in theirs._fields_
    ]


def test_versions_and_return_codes_match_nvml_h() -> None:
    assert cabi.GI_PROFILE_INFO_V2 == pynvml.nvmlGpuInstanceProfileInfo_v2 == 0x02000098
    assert cabi.CI_PROFILE_INFO_V2 == pynvml.nvmlComputeInstanceProfileInfo_v2 == 0x02000088
    theirs = {
        name: getattr(pynvml, name)
        for name in dir(pynvml)
        if name.startswith("NVML_ERROR_") or name == "NVML_SUCCESS"
    }
    assert theirs == codes.CODES


def test_error_strings_are_the_drivers(attach: Callable[[str], simulator.Simulator]) -> None:
    attach("h100-80gb-hbm3")
    assert pynvml.nvmlErrorString(pynvml.NVML_ERROR_IN_USE) == "In use by another client"
    assert str(pynvml.NVMLError(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)) == (
        "Insufficient Resources"
    )


def test_a_symbol_the_simulator_lacks_is_function_not_found(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    attach("h100-80gb-hbm3")
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetPowerUsage(device())


def test_calls_before_init_and_after_shutdown_are_uninitialized() -> None:
    sim = simulator.attach(pynvml, "a30-24gb")
    try:
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            pynvml.nvmlDeviceGetCount()
        pynvml.nvmlInit()
        assert pynvml.nvmlDeviceGetCount() == 1
        pynvml.nvmlShutdown()
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            pynvml.nvmlDeviceGetCount()
    finally:
        simulator.detach(pynvml)
    assert pynvml.nvmlLib is None
    assert sim.init_count == 0


def test_handles_are_distinct_and_typed(attach: Callable[[str], simulator.Simulator]) -> None:
    attach("h100-80gb-hbm3:2")
    first, second = device(0), device(1)
    values = {ctypes.cast(h, ctypes.c_void_p).value for h in (first, second)}
    assert len(values) == 2 and None not in values
    pynvml.nvmlDeviceSetMigMode(first, 1)
    gi, _, _, _ = create_gi(first, 9, 0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetMigMode(gi)  # a GI handle is no device handle
    assert pynvml.nvmlDeviceGetHandleByUUID(pynvml.nvmlDeviceGetUUID(second)) is not None
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(2)


def test_placement_by_value_is_a_caller_bug(attach: Callable[[str], simulator.Simulator]) -> None:
    sim = attach("h100-80gb-hbm3")
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    placement = pynvml.c_nvmlGpuInstancePlacement_t()
    placement.start, placement.size = 4, 4
    with pytest.raises(simulator.CallerError, match="byref"):
        pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(dev, 9, placement)
    assert sim.state().gpus[0].gis == []
    gi = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(dev, 9, ctypes.pointer(placement))
    ci_placement = pynvml.c_nvmlComputeInstancePlacement_t()
    ci_placement.start, ci_placement.size = 0, 3
    with pytest.raises(simulator.CallerError):
        pynvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(gi, 2, ci_placement)


def test_a_python_int_is_no_handle(attach: Callable[[str], simulator.Simulator]) -> None:
    attach("a30-24gb")
    value = ctypes.cast(device(), ctypes.c_void_p).value
    with pytest.raises(simulator.CallerError):
        pynvml.nvmlDeviceGetMigMode(value)


def test_caller_allocated_arrays(attach: Callable[[str], simulator.Simulator]) -> None:
    attach("h100-80gb-hbm3")
    dev = device()
    query = pynvml.nvmlDeviceGetGpuInstancePossiblePlacements
    count = ctypes.c_uint(0)
    query(dev, 19, None, ctypes.byref(count))  # NULL array: the count
    assert count.value == 7
    small = (pynvml.c_nvmlGpuInstancePlacement_t * 2)()
    count = ctypes.c_uint(2)  # the count says the array holds 2
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        query(dev, 19, small, ctypes.byref(count))
    assert count.value == 7
    count = ctypes.c_uint(0)  # nvml.h: count is output only; C would overrun this array
    with pytest.raises(simulator.CallerError, match="holds 2"):
        query(dev, 19, small, ctypes.byref(count))
    with pytest.raises(simulator.CallerError):
        query(dev, 19, None, count)  # the count by value
    # DCGM's way: a full-size buffer and a count of 0 in.
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    create_gi(dev, 19, 3)
    buf = (pynvml.c_nvmlGpuInstance_t * 7)()
    count = ctypes.c_uint(0)
    pynvml.nvmlDeviceGetGpuInstances(dev, 19, buf, ctypes.byref(count))
    assert count.value == 1 and pynvml.nvmlGpuInstanceGetInfo(buf[0]).placement.start == 3


def test_versioned_structs_check_their_version(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    attach("a100-80gb")
    dev = device()
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetGpuInstanceProfileInfoV")
    old = pynvml.c_nvmlGpuInstanceProfileInfo_t()  # v1 layout: no version field
    assert fn(dev, 0, ctypes.byref(old)) == pynvml.NVML_ERROR_INVALID_ARGUMENT
    v1 = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0, version=1)
    assert (v1.id, v1.sliceCount, v1.memorySizeMB) == (19, 1, 9728)
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    gi, _, _, _ = create_gi(dev, 9, 0)
    ci_fn = pynvml._nvmlGetFunctionPointer("nvmlGpuInstanceGetComputeInstanceProfileInfoV")
    info = pynvml.c_nvmlComputeInstanceProfileInfo_v2_t()
    info.version = 1
    assert ci_fn(gi, 0, 0, ctypes.byref(info)) == pynvml.NVML_ERROR_INVALID_ARGUMENT
    ci_v1 = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 0, 0, version=1)
    assert (ci_v1.id, ci_v1.sliceCount, ci_v1.instanceCount) == (0, 1, 3)


def test_null_output_pointer_is_invalid_argument(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    attach("a30-24gb")
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetMigMode")
    mode = ctypes.c_uint()
    assert fn(device(), ctypes.byref(mode), None) == pynvml.NVML_ERROR_INVALID_ARGUMENT


def test_identity_of_a_gpu(attach: Callable[[str], simulator.Simulator]) -> None:
    attach("a100-sxm4-40gb:9")
    names = [pynvml.nvmlDeviceGetPciInfo(device(i)).busId for i in range(9)]
    assert [_text(n) for n in names] == [
        "00000000:18:00.0",
        "00000000:2A:00.0",
        "00000000:3A:00.0",
        "00000000:5D:00.0",
        "00000000:9A:00.0",
        "00000000:AB:00.0",
        "00000000:BA:00.0",
        "00000000:DB:00.0",
        "00000001:18:00.0",
    ]
    pci = pynvml.nvmlDeviceGetPciInfo(device(0))
    assert pci.pciDeviceId == 0x20B010DE and pci.bus == 0x18
    uuids = {pynvml.nvmlDeviceGetUUID(device(i)) for i in range(9)}
    assert len(uuids) == 9 and all(u.startswith("GPU-") for u in uuids)
    by_bus = pynvml.nvmlDeviceGetHandleByPciBusId("00000000:2A:00.0")
    assert pynvml.nvmlDeviceGetUUID(by_bus) == pynvml.nvmlDeviceGetUUID(device(1))
    assert pynvml.nvmlDeviceGetArchitecture(device(0)) == pynvml.NVML_DEVICE_ARCH_AMPERE
    assert gi_handles(device(0), 19) == []


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
