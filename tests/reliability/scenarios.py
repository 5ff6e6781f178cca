"""The six scenarios of the reliability tests, and the NVML errors each call can return.

Rules:

1. A scenario is a starting geometry, a config, client units that hold GPUs and worker
   processes on instances the config keeps. ``prepare`` builds the start on a fresh rig,
   which keeps it as its template; every run starts from that template.
2. Which NVML error a call can return comes from the team's nvml-semantics.md and
   nvml.h, as ``FAULTS`` records (the table, with sources, is in docs/RELIABILITY.md): a
   fault is only injected where the error can occur.
3. Call positions are counted on a fault-free run with never-firing faults (the
   simulator's own ``seen`` counter), so they follow whatever the code does today.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

import pytest

from migrestore.model import Config
from migrestore.simulator import fakelib
from migrestore.simulator.core import GPU_RESET
from tests.reliability.rig import Rig, destroy_gi_at

NEVER = 1 << 30  # an nth no run reaches: the fault only counts calls

IN_USE = "NVML_ERROR_IN_USE"
INSUFFICIENT_RESOURCES = "NVML_ERROR_INSUFFICIENT_RESOURCES"
UNKNOWN = "NVML_ERROR_UNKNOWN"
GPU_IS_LOST = "NVML_ERROR_GPU_IS_LOST"
TIMEOUT = "NVML_ERROR_TIMEOUT"
NO_PERMISSION = "NVML_ERROR_NO_PERMISSION"
RESET_REQUIRED = "NVML_ERROR_RESET_REQUIRED"
ERRORS: Tuple[str, ...] = (
    IN_USE,
    INSUFFICIENT_RESOURCES,
    UNKNOWN,
    GPU_IS_LOST,
    TIMEOUT,
    NO_PERMISSION,
    RESET_REQUIRED,
)

CREATE_GI = "nvmlDeviceCreateGpuInstanceWithPlacement"
CREATE_CI = "nvmlGpuInstanceCreateComputeInstanceWithPlacement"
DESTROY_GI = "nvmlGpuInstanceDestroy"
DESTROY_CI = "nvmlComputeInstanceDestroy"
SET_MODE = "nvmlDeviceSetMigMode"
INIT = "nvmlInitWithFlags"

# Calls that change a GPU. A fault on one of them must never end in success.
CHANGES: FrozenSet[str] = frozenset(
    {CREATE_GI, CREATE_CI, DESTROY_GI, DESTROY_CI, SET_MODE, GPU_RESET}
)
# Calls that take no GPU: their errors cannot name one.
SYSTEM_CALLS: FrozenSet[str] = frozenset(
    {INIT, "nvmlInit_v2", "nvmlShutdown", "nvmlDeviceGetCount_v2", "nvmlSystemGetDriverVersion"}
)
# Every call migrestore could make (the reset is the simulator's stand-in for
# `nvidia-smi --gpu-reset`); nvmlErrorString only turns a code into text.
CALLS: Tuple[str, ...] = (*(n for n in fakelib.SYMBOL_NAMES if n != "nvmlErrorString"), GPU_RESET)

# error -> the calls that can return it (docs/RELIABILITY.md gives the sources).
_PRIVILEGED = frozenset(
    {
        INIT,
        SET_MODE,
        CREATE_GI,
        CREATE_CI,
        DESTROY_GI,
        DESTROY_CI,
        "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
        "nvmlDeviceGetGpuInstanceRemainingCapacity",
        "nvmlGpuInstanceGetComputeInstancePossiblePlacements",
        "nvmlGpuInstanceGetComputeInstanceRemainingCapacity",
        GPU_RESET,
    }
)
FAULTS: Dict[str, FrozenSet[str]] = {
    IN_USE: frozenset({CREATE_GI, DESTROY_GI, DESTROY_CI, GPU_RESET}),
    INSUFFICIENT_RESOURCES: frozenset({CREATE_GI, CREATE_CI}),
    UNKNOWN: frozenset(CALLS),
    GPU_IS_LOST: frozenset(CALLS) - SYSTEM_CALLS,
    TIMEOUT: frozenset({GPU_RESET}),
    NO_PERMISSION: _PRIVILEGED,
    RESET_REQUIRED: frozenset({GPU_RESET}),
}


def errors_for(function: str) -> Tuple[str, ...]:
    return tuple(e for e in ERRORS if function in FAULTS[e])


@dataclass(frozen=True)
class Fault:
    function: str
    nth: int
    error: str

    def __str__(self) -> str:
        return f"{self.error} on call {self.nth} of {self.function}"


def positions(counts: Dict[str, int], sample: Optional[int]) -> List[Tuple[str, int]]:
    """The call positions to hit: all of them (``sample`` None), or per function the
    first call (``sample`` 1), or the first, the last and ``sample - 2`` evenly spread
    between them."""
    out: List[Tuple[str, int]] = []
    for function in sorted(counts):
        n = counts[function]
        if n <= 0:
            continue
        if sample is None or n <= sample:
            picks = list(range(1, n + 1))
        elif sample == 1:
            picks = [1]
        else:
            step = (n - 1) / (sample - 1)
            picks = sorted({1 + round(i * step) for i in range(sample)})
        out.extend((function, k) for k in picks)
    return out


def faults_at(where: List[Tuple[str, int]]) -> List[Fault]:
    return [Fault(f, k, e) for f, k in where for e in errors_for(f)]


READ_SAMPLE = 1  # positions per read function in the default run: its first call
CHANGE_SAMPLE = 3  # positions per change function: first, middle, last


def select(counts: Dict[str, int], full: bool) -> List[Fault]:
    """The faults of one scenario: at every call position (``full``), or at the sampled
    ones; each with every error its call can return."""
    if full:
        return faults_at(positions(counts, None))
    reads = {f: n for f, n in counts.items() if f not in CHANGES}
    changes = {f: n for f, n in counts.items() if f in CHANGES}
    # A failed read ends the run the same way whichever error it is: in the sample each
    # read gets one of its errors, in turn, so every error still meets some read.
    sampled_reads = [
        Fault(f, k, errors_for(f)[i % len(errors_for(f))])
        for i, (f, k) in enumerate(positions(reads, READ_SAMPLE))
        if errors_for(f)
    ]
    return sampled_reads + faults_at(positions(changes, CHANGE_SAMPLE))


# --------------------------------------------------------------------------- scenarios


def _layout(entries: str, clients: str = "[nvidia-dcgm.service]", extra: str = "") -> str:
    return (
        "version: 1\n"
        f"clients: {clients}\n"
        "drift: {policy: restore, interval: 60}\n"
        f"{extra}"
        "gpus:\n"
        "  - match: all\n"
        "    mig: true\n"
        "    instances:\n"
        f"{entries}"
    )


ALL_1G = _layout("      - {profile: 1g.10gb, count: 7}\n")

MIXED_BEFORE = _layout(
    "      - {profile: 3g.40gb, placement: 4}\n"
    "      - {profile: 2g.20gb, placement: 0}\n"
    "      - {profile: 1g.10gb, placement: [2, 3]}\n"
)
MIXED_AFTER = _layout(
    "      - {profile: 3g.40gb, placement: 4}\n"
    "      - {profile: 1g.10gb, placement: [0, 1]}\n"
    "      - {profile: 2g.20gb, placement: 2}\n"
)

HALVES = _layout("      - {profile: 3g.40gb, placement: [0, 4]}\n")
SUBDIVIDED = _layout(
    "      - profile: 3g.40gb\n"
    "        placement: 0\n"
    "        compute: [1c.3g.40gb, 1c.3g.40gb, 1c.3g.40gb]\n"
    "      - {profile: 3g.40gb, placement: 4}\n"
)

AMPERE = _layout(
    "      - {profile: 3g.40gb, placement: 4}\n      - {profile: 1g.10gb, count: 2}\n",
    extra="ampere-reset: allow\n",
)

HALF_AND_HALF = _layout(
    "      - {profile: 4g.40gb, placement: 0}\n      - {profile: 3g.40gb, placement: 4}\n"
)
SUBSET_OFF = (
    "version: 1\n"
    "clients: [nvidia-dcgm.service]\n"
    "gpus:\n"
    "  - match: {index: [0, 1]}\n"
    "    mig: false\n"
    "  - match: all\n"
    "    mig: true\n"
    "    instances:\n"
    "      - {profile: 4g.40gb, placement: 0}\n"
    "      - {profile: 3g.40gb, placement: 4}\n"
)

WATCHED = _layout(
    "      - {profile: 3g.40gb, placement: 4}\n      - {profile: 1g.10gb, placement: [0, 1]}\n"
)


@dataclass(frozen=True)
class Scenario:
    """One row group of the fault matrix (rule 1)."""

    name: str
    title: str
    spec: str  # the simulated GPUs
    config: str  # the config every run applies
    prepare: Callable[[Rig, pytest.CaptureFixture[str]], None]
    watch: bool = False  # the run is a watch tick of the daemon, after drift
    drift: Optional[Callable[[Rig], None]] = None


def _start_with(rig: Rig, capsys: pytest.CaptureFixture[str], text: str) -> None:
    rig.write_config(text)
    done = rig.migrestore(capsys, "apply", "--no-clients")
    assert done.code == 0, done.err


def _cold(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.client("nvidia-dcgm.service", 0)


def _mixed(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    _start_with(rig, capsys, MIXED_BEFORE)
    rig.worker(0, 4)
    rig.client("nvidia-dcgm.service", 1)


def _subdivide(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    _start_with(rig, capsys, HALVES)
    rig.worker(0, 4)
    rig.client("nvidia-dcgm.service", 0)


def _ampere_pending(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    # A process migrestore does not manage holds the GPU while MIG is enabled, so the
    # change stays pending; then it is gone and a client unit holds the GPU instead.
    stray = subprocess.Popen(
        ["sleep", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        rig.sim.hold(0, stray.pid)
        status = rig.sim.set_mode(0, True)
        assert status == IN_USE, status
        rig.sim.release(0, stray.pid)
    finally:
        stray.kill()
        stray.wait()
    gpu = rig.gpu(0)
    assert (gpu.mig_current, gpu.mig_pending) == (False, True)
    rig.client("nvidia-dcgm.service", 0)


def _subset(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    _start_with(rig, capsys, HALF_AND_HALF)
    rig.worker(2, 4)
    rig.client("nvidia-dcgm.service", 3)


def _watched(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    _start_with(rig, capsys, WATCHED)
    rig.worker(1, 4)
    rig.client("nvidia-dcgm.service", 1)


def _drift(rig: Rig) -> None:
    destroy_gi_at(rig, (0, 1), 0)


SCENARIOS: Tuple[Scenario, ...] = (
    Scenario(
        "cold-boot-8",
        "cold Hopper boot: 8 H100, MIG off, to 7x 1g.10gb each",
        "h100-80gb-hbm3:8",
        ALL_1G,
        _cold,
    ),
    Scenario(
        "mixed-change",
        "mixed layout change on 2 H100, the 3g.40gb kept with a process on it",
        "h100-80gb-hbm3:2",
        MIXED_AFTER,
        _mixed,
    ),
    Scenario(
        "ci-subdivision",
        "a 3g.40gb split into 3x 1c.3g.40gb, the other 3g.40gb kept with a process",
        "h100-80gb-hbm3:1",
        SUBDIVIDED,
        _subdivide,
    ),
    Scenario(
        "ampere-pending",
        "A100: MIG enable pending, a client unit holds the GPU, reset then create",
        "a100-80gb:1",
        AMPERE,
        _ampere_pending,
    ),
    Scenario(
        "mig-off-subset",
        "4 H100: MIG disabled on GPUs 0-1, GPUs 2-3 kept (a process on GPU 2)",
        "h100-80gb-hbm3:4",
        SUBSET_OFF,
        _subset,
    ),
    Scenario(
        "watch-drift",
        "daemon watch tick restores a GI removed on 2 H100 (process on a kept GI)",
        "h100-80gb-hbm3:2",
        WATCHED,
        _watched,
        watch=True,
        drift=_drift,
    ),
)

BY_NAME: Dict[str, Scenario] = {s.name: s for s in SCENARIOS}


def config_of(scenario: Scenario, rig: Rig) -> Config:
    return rig.write_config(scenario.config)
