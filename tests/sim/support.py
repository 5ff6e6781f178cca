"""Helpers of the simulator tests: pynvml calls written the way a caller writes them."""

from __future__ import annotations

import ctypes
from typing import Any, List, Optional, Tuple

import pynvml


def device(index: int = 0) -> Any:
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def create_gi(dev: Any, profile_id: int, start: Optional[int] = None) -> Tuple[Any, int, int, int]:
    """Create a GI (at ``start``, with the size the profile's placements give, or where
    the driver chooses); returns (handle, GI ID, start, size) read back from the driver."""
    if start is None:
        gi = pynvml.nvmlDeviceCreateGpuInstance(dev, profile_id)
    else:
        sizes = [size for first, size in gi_placements(dev, profile_id) if first == start]
        gi = create_gi_at(dev, profile_id, start, sizes[0] if sizes else 1)
    got = pynvml.nvmlGpuInstanceGetInfo(gi)
    return gi, int(got.id), int(got.placement.start), int(got.placement.size)


def create_gi_at(dev: Any, profile_id: int, start: int, size: int) -> Any:
    placement = pynvml.c_nvmlGpuInstancePlacement_t()
    placement.start = start
    placement.size = size
    return pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(dev, profile_id, ctypes.byref(placement))


def create_ci(gi: Any, profile_id: int, start: Optional[int] = None, size: int = 1) -> Any:
    if start is None:
        return pynvml.nvmlGpuInstanceCreateComputeInstance(gi, profile_id)
    placement = pynvml.c_nvmlComputeInstancePlacement_t()
    placement.start = start
    placement.size = size
    return pynvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(
        gi, profile_id, ctypes.byref(placement)
    )


def gi_placements(dev: Any, profile_id: int) -> List[Tuple[int, int]]:
    count = ctypes.c_uint(0)
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(dev, profile_id, None, ctypes.byref(count))
    buf = (pynvml.c_nvmlGpuInstancePlacement_t * count.value)()
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(dev, profile_id, buf, ctypes.byref(count))
    return [(int(buf[i].start), int(buf[i].size)) for i in range(count.value)]


def ci_placements(gi: Any, profile_id: int) -> List[Tuple[int, int]]:
    count = ctypes.c_uint(0)
    pynvml.nvmlGpuInstanceGetComputeInstancePossiblePlacements(
        gi, profile_id, None, ctypes.byref(count)
    )
    buf = (pynvml.c_nvmlComputeInstancePlacement_t * count.value)()
    pynvml.nvmlGpuInstanceGetComputeInstancePossiblePlacements(
        gi, profile_id, buf, ctypes.byref(count)
    )
    return [(int(buf[i].start), int(buf[i].size)) for i in range(count.value)]


def gi_handles(dev: Any, profile_id: int, room: int = 8) -> List[Any]:
    count = ctypes.c_uint(room)
    buf = (pynvml.c_nvmlGpuInstance_t * room)()
    pynvml.nvmlDeviceGetGpuInstances(dev, profile_id, buf, ctypes.byref(count))
    return [buf[i] for i in range(count.value)]


def ci_handles(gi: Any, profile_id: int, room: int = 8) -> List[Any]:
    count = ctypes.c_uint(room)
    buf = (pynvml.c_nvmlComputeInstance_t * room)()
    pynvml.nvmlGpuInstanceGetComputeInstances(gi, profile_id, buf, ctypes.byref(count))
    return [buf[i] for i in range(count.value)]


def gi_id_of(gi: Any) -> int:
    return int(pynvml.nvmlGpuInstanceGetInfo(gi).id)


def ci_id_of(ci: Any) -> int:
    return int(pynvml.nvmlComputeInstanceGetInfo(ci).id)


def mig_devices(dev: Any) -> List[Tuple[int, int, str]]:
    """(GI ID, CI ID, MIG UUID) of every MIG device, in NVML's enumeration order."""
    out = []
    for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(dev)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, i)
        except pynvml.NVMLError_NotFound:
            continue
        out.append(
            (
                pynvml.nvmlDeviceGetGpuInstanceId(mig),
                pynvml.nvmlDeviceGetComputeInstanceId(mig),
                pynvml.nvmlDeviceGetUUID(mig),
            )
        )
    return out


def remaining(dev: Any, profile_id: int) -> int:
    return int(pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, profile_id))
