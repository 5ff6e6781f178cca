"""The per-call NVML latency model used by the cold-restore and small-change benchmarks.

Rules:

1. Every simulated NVML function has an explicit latency in microseconds, with where
   the number comes from: ``probe`` (the median of the calls measured on a real H100 80GB
   HBM3, driver 580, in the team's reference probe), ``analogy`` (an unmeasured read given
   the cost of the measured reads it resembles), or ``assumed`` (a changing call: no
   public measurement exists; the reasoning is in ``NOTES`` and docs/BENCHMARKS.md).
2. The model is configurable: ``overrides`` replace single entries and ``scale``
   multiplies all of them (``--smoke`` scales it down to nothing).
3. The simulator sleeps the latency after each call, outside its locks, whether the
   call succeeded or was refused; ``Recorder`` replaces ``Simulator.sleep`` (the hook the
   simulator offers for this) to also add up the modelled NVML time, which is the time a
   driver that serialised every call would take.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from migrestore.simulator import Simulator
from migrestore.simulator.fakelib import SYMBOL_NAMES

PROBE = "probe"
ANALOGY = "analogy"
ASSUMED = "assumed"

# Medians of the probe's "calls" (µs): GetMigMode 409.8, GetMaxMigDeviceCount 377.0,
# GetGpuInstanceProfileInfo 186.35 (18 calls), GetGpuInstancePossiblePlacements 209.1 (7),
# GetGpuInstanceRemainingCapacity 218.3 (7), GetGpuInstances 357.8 (7),
# GetArchitecture 11.7, GetPersistenceMode 17.5; init_us 10260.
_PROBED: Dict[str, int] = {
    "nvmlDeviceGetMigMode": 410,
    "nvmlDeviceGetMaxMigDeviceCount": 377,
    "nvmlDeviceGetGpuInstanceProfileInfo": 186,
    "nvmlDeviceGetGpuInstanceProfileInfoV": 186,
    "nvmlDeviceGetGpuInstanceProfileInfoByIdV": 186,
    "nvmlDeviceGetGpuInstancePossiblePlacements_v2": 209,
    "nvmlDeviceGetGpuInstanceRemainingCapacity": 218,
    "nvmlDeviceGetGpuInstances": 358,
    "nvmlDeviceGetArchitecture": 12,
    "nvmlDeviceGetPersistenceMode": 18,
    "nvmlInit_v2": 10260,
    "nvmlInitWithFlags": 10260,
}

# Unmeasured reads that ask the driver about MIG objects (an RM control call, like the
# probed MIG reads): the median of the six probed MIG reads above (186, 209, 218, 358,
# 377, 410 -> 288).
RM_QUERY_US = 288
_RM_QUERIES: Tuple[str, ...] = (
    "nvmlDeviceGetNvLinkRemoteDeviceType",
    "nvmlDeviceGetGpuInstanceById",
    "nvmlGpuInstanceGetInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
    "nvmlGpuInstanceGetComputeInstancePossiblePlacements",
    "nvmlGpuInstanceGetComputeInstanceRemainingCapacity",
    "nvmlGpuInstanceGetComputeInstances",
    "nvmlGpuInstanceGetComputeInstanceById",
    "nvmlComputeInstanceGetInfo_v2",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetMemoryInfo",
)

# Unmeasured reads NVML answers from what it already holds for a handle (like the probed
# GetArchitecture, 11.7 µs, and GetPersistenceMode, 17.5 µs): 15 µs.
CACHED_US = 15
_CACHED: Tuple[str, ...] = (
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetHandleByPciBusId_v2",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetVirtualizationMode",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetNVMLVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlErrorString",
)

# Changing calls (assumed; docs/BENCHMARKS.md "Latency model" gives the reasoning).
_CHANGES: Dict[str, int] = {
    "nvmlDeviceSetMigMode": 500_000,
    "nvmlDeviceCreateGpuInstance": 300_000,
    "nvmlDeviceCreateGpuInstanceWithPlacement": 300_000,
    "nvmlGpuInstanceCreateComputeInstance": 100_000,
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement": 100_000,
    "nvmlGpuInstanceDestroy": 100_000,
    "nvmlComputeInstanceDestroy": 50_000,
    "nvmlShutdown": 1_000,
}

NOTES: Dict[str, str] = {
    "nvmlDeviceSetMigMode": (
        "Hopper applies the mode at once, without a reset, but the driver tears down and "
        "re-initialises the GPU's partitioning state: taken as 500 ms"
    ),
    "nvmlDeviceCreateGpuInstance": (
        "operators report GI creation in the hundreds of ms (memory partition set up and "
        "scrubbed): 300 ms, with or without an explicit placement"
    ),
    "nvmlGpuInstanceCreateComputeInstance": (
        "a CI takes engines inside an existing GI and carves no memory: a third of a GI, 100 ms"
    ),
    "nvmlGpuInstanceDestroy": "releasing a GI's memory partition: 100 ms",
    "nvmlComputeInstanceDestroy": "releasing a CI's engines: 50 ms",
    "nvmlShutdown": "closing the driver handles: 1 ms",
}


@dataclass(frozen=True)
class Entry:
    us: int
    source: str


def default_model() -> Dict[str, Entry]:
    """Every function the simulator answers -> its latency and source."""
    model: Dict[str, Entry] = {}
    for name, us in _PROBED.items():
        model[name] = Entry(us, PROBE)
    for name in _RM_QUERIES:
        model[name] = Entry(RM_QUERY_US, ANALOGY)
    for name in _CACHED:
        model[name] = Entry(CACHED_US, ANALOGY)
    for name, us in _CHANGES.items():
        model[name] = Entry(us, ASSUMED)
    missing = sorted(set(SYMBOL_NAMES) - set(model))
    if missing:
        raise ValueError(
            f"bench.latency: no latency for {', '.join(missing)}: add them to the model "
            "(the simulator answers functions the model does not know)"
        )
    return model


def build(overrides: Optional[Mapping[str, int]] = None, scale: float = 1.0) -> Dict[str, int]:
    """The latency of each function in µs, after ``overrides`` and ``scale``."""
    model = {name: entry.us for name, entry in default_model().items()}
    for name, us in (overrides or {}).items():
        if name not in model:
            raise ValueError(
                f"--latency {name}={us}: {name} is not an NVML function the simulator "
                "answers (see migrestore-sim fail --help for the list)"
            )
        if us < 0:
            raise ValueError(f"--latency {name}={us}: microseconds must be >= 0")
        model[name] = us
    return {name: round(us * scale) for name, us in model.items()}


def parse_override(text: str) -> Tuple[str, int]:
    """``FUNCTION=MICROSECONDS`` -> (function, µs)."""
    name, sep, value = text.partition("=")
    if not sep or not value.strip().isdigit():
        raise ValueError(
            f"--latency {text!r}: expected FUNCTION=MICROSECONDS, e.g. "
            "nvmlDeviceCreateGpuInstanceWithPlacement=250000"
        )
    return name.strip(), int(value)


class Recorder:
    """Stands in for ``Simulator.sleep``: sleeps (unless ``sleep`` is False) and adds up
    the modelled NVML time and the number of calls that had a latency."""

    def __init__(self, sleep: bool = True) -> None:
        self.sleep = sleep
        self.total = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.total += seconds
            self.calls += 1
        if self.sleep:
            time.sleep(seconds)


def install(sim: Simulator, latencies: Mapping[str, int], recorder: Recorder) -> None:
    """Give ``sim`` the model and route its sleeps through ``recorder``."""
    for name, us in sorted(latencies.items()):
        if us:
            sim.latency(us, name)
    sim.sleep = recorder


def remove(sim: Simulator, latencies: Mapping[str, int]) -> None:
    for name in sorted(latencies):
        sim.latency(0, name)
