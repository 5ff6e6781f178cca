"""The Python side of the simulated ``libnvidia-ml.so.1`` (``csrc/nvml_sim.c``).

Rules:

1. The C library exports the NVML functions of ``fakelib.SYMBOL_NAMES`` with nvml.h's
   prototypes and forwards every call here with its raw arguments as integers (pointers
   as addresses, handles as the values the caller holds). ``entry(name)`` returns the
   callable the C side keeps for one function; it wraps each argument the way ctypes
   would (``c_void_p`` for pointers and handles, ``int`` for ``unsigned int``, ``c_char_p``
   for ``const char *``) and calls the fake library, so the library answers with the same
   rules, faults, latency, locking and state files as ``attach`` and ``--simulate``.
2. The simulator is chosen at ``nvmlInit_v2``/``nvmlInitWithFlags`` from the client's
   ``MIGRESTORE_SIMULATE`` (a state file path, or ``MODEL[:COUNT],...`` for GPUs that live
   in the process); it is kept while NVML stays initialised and replaced by the next
   first ``nvmlInit`` when the variable changed. Without it, or with a state file that
   cannot be read, ``nvmlInit`` answers NVML_ERROR_DRIVER_NOT_LOADED and one line on
   stderr says why. Before the first ``nvmlInit`` every call but ``nvmlErrorString``
   answers NVML_ERROR_UNINITIALIZED.
3. Handles are addresses: every handle given to the caller is a distinct address inside
   a region the C library reserved (``PROT_NONE``) in this process, from a random first
   slot on; the simulator's own handle value stays inside. A handle from another process, one never given out or
   garbage is not in this process's table and answers NVML_ERROR_INVALID_ARGUMENT, as a
   handle of a destroyed instance does; nothing is ever dereferenced.
4. No Python exception crosses into C: one that escapes (a bug) is printed on stderr and
   answers NVML_ERROR_UNKNOWN.
5. The C library's symbols are fixed when it is built; a function the selected
   simulator's fake library does not answer (a state whose driver generation lacks it)
   answers NVML_ERROR_FUNCTION_NOT_FOUND, as the real library does for a function the
   loaded driver does not implement.
"""

from __future__ import annotations

import ctypes
import os
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from migrestore.errors import MigrestoreError
from migrestore.simulator import codes, fakelib

ENV = "MIGRESTORE_SIMULATE"
SONAME = "libnvidia-ml.so.1"
HANDLE_STRIDE = 16
PREFIX = "libnvidia-ml.so.1 (migrestore simulator)"

# Argument kinds: h = handle in, H = pointer to one handle out, A = array of handles out
# (its count pointer is the next argument), I = nvmlGpuInstanceInfo_t out (device at 0),
# C = nvmlComputeInstanceInfo_t out (device at 0, gpuInstance at 8), p = any other pointer,
# u = unsigned int, s = const char *.
KINDS: Dict[str, str] = {
    "nvmlInit_v2": "",
    "nvmlInitWithFlags": "u",
    "nvmlShutdown": "",
    "nvmlSystemGetDriverVersion": "pu",
    "nvmlSystemGetNVMLVersion": "pu",
    "nvmlSystemGetCudaDriverVersion": "p",
    "nvmlSystemGetCudaDriverVersion_v2": "p",
    "nvmlDeviceGetCount_v2": "p",
    "nvmlDeviceGetHandleByIndex_v2": "uH",
    "nvmlDeviceGetHandleByUUID": "sH",
    "nvmlDeviceGetHandleByPciBusId_v2": "sH",
    "nvmlDeviceGetName": "hpu",
    "nvmlDeviceGetUUID": "hpu",
    "nvmlDeviceGetPciInfo_v3": "hp",
    "nvmlDeviceGetArchitecture": "hp",
    "nvmlDeviceGetMemoryInfo": "hp",
    "nvmlDeviceGetPersistenceMode": "hp",
    "nvmlDeviceGetNvLinkRemoteDeviceType": "hup",
    "nvmlDeviceGetMigMode": "hpp",
    "nvmlDeviceSetMigMode": "hup",
    "nvmlDeviceGetGpuInstanceProfileInfo": "hup",
    "nvmlDeviceGetGpuInstanceProfileInfoV": "hup",
    "nvmlDeviceGetGpuInstanceProfileInfoByIdV": "hup",
    "nvmlDeviceGetGpuInstancePossiblePlacements_v2": "hupp",
    "nvmlDeviceGetGpuInstanceRemainingCapacity": "hup",
    "nvmlDeviceCreateGpuInstance": "huH",
    "nvmlDeviceCreateGpuInstanceWithPlacement": "hupH",
    "nvmlDeviceGetGpuInstances": "huAp",
    "nvmlDeviceGetGpuInstanceById": "huH",
    "nvmlGpuInstanceGetInfo": "hI",
    "nvmlGpuInstanceDestroy": "h",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo": "huup",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV": "huup",
    "nvmlGpuInstanceGetComputeInstancePossiblePlacements": "hupp",
    "nvmlGpuInstanceGetComputeInstanceRemainingCapacity": "hup",
    "nvmlGpuInstanceCreateComputeInstance": "huH",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement": "hupH",
    "nvmlGpuInstanceGetComputeInstances": "huAp",
    "nvmlGpuInstanceGetComputeInstanceById": "huH",
    "nvmlComputeInstanceGetInfo_v2": "hC",
    "nvmlComputeInstanceDestroy": "h",
    "nvmlDeviceGetMaxMigDeviceCount": "hp",
    "nvmlDeviceGetMigDeviceHandleByIndex": "huH",
    "nvmlDeviceIsMigDeviceHandle": "hp",
    "nvmlDeviceGetGpuInstanceId": "hp",
    "nvmlDeviceGetComputeInstanceId": "hp",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": "hH",
    "nvmlDeviceGetComputeRunningProcesses_v3": "hpp",
    "nvmlDeviceGetComputeRunningProcesses_v2": "hpp",
    "nvmlDeviceGetVirtualizationMode": "hp",
}

INIT = frozenset({"nvmlInit_v2", "nvmlInitWithFlags"})
# Offsets of the handles inside the info structs (nvml.h; cabi.GpuInstanceInfo and
# cabi.ComputeInstanceInfo).
STRUCT_HANDLES: Dict[str, Tuple[int, ...]] = {"I": (0,), "C": (0, 8)}


class Handles:
    """This process's handles: addresses in the reserved region <-> simulator values."""

    def __init__(self, base: int, size: int) -> None:
        # A random first slot, so two processes never hand out the same addresses even
        # where address-space randomisation is off.
        slots = max(size // HANDLE_STRIDE, 2)
        self.base = base + HANDLE_STRIDE * (int.from_bytes(os.urandom(4), "little") % (slots // 2))
        self.limit = base + size
        self._address: Dict[int, int] = {}
        self._value: Dict[int, int] = {}

    def address(self, value: int) -> int:
        """The address given to the caller for a simulator handle value (0 stays 0)."""
        if not value:
            return 0
        found = self._address.get(value)
        if found is None:
            found = self.base + HANDLE_STRIDE * (len(self._address) + 1)
            if found >= self.limit:
                raise codes.SimNvmlError(codes.MEMORY, "the handle region is full")
            self._address[value] = found
            self._value[found] = value
        return found

    def value(self, address: int) -> int:
        """The simulator handle value behind an address the caller passed (0: unknown)."""
        return self._value.get(address, 0)


class _Library:
    """The process-wide state: the reserved handle region and the current simulator."""

    def __init__(self) -> None:
        self.handles = Handles(0, 0)
        self.sim: Optional[Any] = None  # core.Simulator
        self.spec: Optional[str] = None

    def open(self) -> int:
        """Pick the simulator for an nvmlInit (rule 2); SUCCESS or DRIVER_NOT_LOADED."""
        spec = os.environ.get(ENV, "").strip()
        if not spec:
            _say(
                f"{ENV} is not set: set it to a state file made by "
                "'migrestore-sim init' (or MODEL[:COUNT]); no simulated GPUs"
            )
            return codes.DRIVER_NOT_LOADED
        if self.sim is not None and (self.spec == spec or self.sim.init_count > 0):
            return codes.SUCCESS
        from migrestore.simulator.core import Simulator

        try:
            sim = Simulator(spec)
        except MigrestoreError as err:
            _say(f"{ENV}={spec}: {err}")
            return codes.DRIVER_NOT_LOADED
        if self.sim is not None:
            self.sim.close()
        self.sim, self.spec = sim, spec
        return codes.SUCCESS


LIBRARY = _Library()


def _say(text: str) -> None:
    print(f"{PREFIX}: {text}", file=sys.stderr, flush=True)


def start(base: int, size: int) -> None:
    """Called once by the C library: the region its handles live in (rule 3)."""
    LIBRARY.handles = Handles(base, size)


def error_string(code: int) -> bytes:
    """``nvmlErrorString``."""
    return codes.string_of(code).encode()


def symbol_names() -> Tuple[str, ...]:
    """The functions the C library exports and forwards (every one the simulator answers)."""
    return tuple(sorted(KINDS))


def entry(name: str) -> Callable[..., int]:
    """The callable the C library calls for ``name`` with raw integer arguments."""
    kinds = KINDS[name]

    def call(*raw: int) -> int:
        try:
            return _call(name, kinds, raw)
        except Exception:
            _say(f"{name}: internal error (a bug in the simulator), answering NVML_ERROR_UNKNOWN")
            traceback.print_exc()
            return codes.UNKNOWN

    call.__name__ = name
    return call


def _call(name: str, kinds: str, raw: Tuple[int, ...]) -> int:
    lib = LIBRARY
    if name in INIT:
        opened = lib.open()
        if opened != codes.SUCCESS:
            return opened
    sim = lib.sim
    if sim is None:
        return codes.UNINITIALIZED
    handles = lib.handles
    args: List[Any] = []
    for kind, value in zip(kinds, raw):
        if kind == "u":
            args.append(value & 0xFFFFFFFF)
        elif kind == "h":
            args.append(ctypes.c_void_p(handles.value(value)))
        elif kind == "s":
            args.append(ctypes.c_char_p(value) if value else None)
        else:
            args.append(ctypes.c_void_p(value) if value else None)
    function = getattr(sim.library, name, None)
    if function is None:  # this state's driver generation lacks it (rule 5)
        return codes.FUNCTION_NOT_FOUND
    try:
        code: int = function(*args)
    except codes.SimNvmlError as err:
        return err.code
    if code == codes.SUCCESS:
        try:
            _publish(kinds, raw, handles)
        except codes.SimNvmlError as err:
            return err.code
    return code


def _publish(kinds: str, raw: Tuple[int, ...], handles: Handles) -> None:
    """Replace the simulator's handle values the call wrote by this process's addresses."""
    for i, kind in enumerate(kinds):
        address = raw[i]
        if not address:
            continue
        if kind == "H":
            slot = ctypes.c_void_p.from_address(address)
            slot.value = handles.address(slot.value or 0)
        elif kind == "A":
            count = ctypes.c_uint.from_address(raw[i + 1]).value
            array = (ctypes.c_void_p * max(count, 1)).from_address(address)
            for j in range(count):
                array[j] = handles.address(array[j] or 0)
        elif kind in STRUCT_HANDLES:
            for offset in STRUCT_HANDLES[kind]:
                slot = ctypes.c_void_p.from_address(address + offset)
                slot.value = handles.address(slot.value or 0)


def library_path() -> str:
    """Where ``make sim-lib`` puts the library: ``build/sim/`` of the source tree this
    package was imported from (it may not be built yet)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(os.path.dirname(package), "build", "sim", SONAME)


def check_symbols() -> None:
    """Every function the fake library answers (but ``nvmlErrorString``) has its kinds."""
    missing = set(fakelib.SYMBOL_NAMES) - set(KINDS) - {"nvmlErrorString"}
    extra = set(KINDS) - set(fakelib.SYMBOL_NAMES)
    if missing or extra:
        raise AssertionError(f"clib.KINDS out of step: missing {missing}, extra {extra}")
