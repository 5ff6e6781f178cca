"""The fake ``libnvidia-ml.so``: the C symbols pynvml looks up, answering from the simulator.

Rules:

1. ``attach`` installs a ``FakeNvmlLibrary`` as ``pynvml.nvmlLib``; pynvml then runs
   unchanged: it gets each function with ``getattr(nvmlLib, "nvml...")`` and calls it with
   ctypes arguments. A symbol the simulator does not answer raises ``AttributeError``, so
   pynvml reports ``NVMLError_FunctionNotFound`` as it does for an older driver; the
   same holds for a symbol the node's driver branch does not export (``models.Branch``).
2. Every symbol returns an ``nvmlReturn_t`` integer (``nvmlErrorString`` returns bytes).
   Outputs are written into the caller's memory (``cabi``). Until ``nvmlInitWithFlags``
   succeeded every call but ``nvmlErrorString`` returns NVML_ERROR_UNINITIALIZED.
3. Handles are distinct non-NULL addresses encoding (simulator, kind, GPU, serial). GI, CI
   and MIG device handles name an instance by its serial, which is never reused: a handle
   of a destroyed instance (or from before a reset or reboot) answers INVALID_ARGUMENT.
4. Each call is one transaction of the simulator (``Simulator._call``): armed faults are
   checked first, then the rules in ``engine`` run, then the configured latency is slept
   outside every lock.
5. Caller-allocated arrays: a NULL array returns the count; otherwise NVML writes every
   element, so the array must hold them all. A count that comes in non-zero and smaller
   than needed answers INSUFFICIENT_SIZE (with the count needed); an array ctypes knows to
   be too small is a caller bug (``cabi.CallerError``). nvml.h treats the count of
   ``GetGpuInstances``/``GetComputeInstances``/``PossiblePlacements`` as output only (DCGM
   passes 0 with a full-size buffer), so a count of 0 with a buffer is accepted.
6. A lost GPU (``Simulator.lose``: fell off the bus) is still counted by
   ``nvmlDeviceGetCount``, but getting its handle (by index, UUID or PCI bus id) and every
   call on a handle of it (device, GI, CI, MIG device, taken before it was lost) answers
   its error (GPU_IS_LOST, IRQ_ISSUE, UNKNOWN...), as nvml.h documents for
   ``nvmlDeviceGetHandleByIndex_v2``. With no handle, NVML gives neither its UUID nor
   its PCI bus id: a caller knows its index only.
7. NVLink topology: a GPU of an NVSwitch group (``GpuRecord.nvlink_group``) has
   ``NVLINKS_PER_GPU`` links, each to an NVSwitch (``nvmlDeviceGetNvLinkRemoteDeviceType``
   answers NVML_NVLINK_DEVICE_TYPE_SWITCH); a link it does not have answers
   NOT_SUPPORTED, a link number past ``NVML_NVLINK_MAX_LINKS`` INVALID_ARGUMENT. A GPU
   outside every group (PCIe boards) has no NVLink.
"""

from __future__ import annotations

import ctypes
import itertools
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from migrestore.model import Placement
from migrestore.simulator import cabi, codes, engine
from migrestore.simulator.codes import SimNvmlError
from migrestore.simulator.state import (
    CiRecord,
    GiRecord,
    GpuRecord,
    Txn,
)

if TYPE_CHECKING:
    from migrestore.simulator.core import Simulator

KIND_DEVICE = 1
KIND_GI = 2
KIND_CI = 3
KIND_MIG = 4

_TAGS = itertools.count(1)

NO_INIT_NEEDED = frozenset({"nvmlInit_v2", "nvmlInitWithFlags", "nvmlErrorString"})

MIB = 1024 * 1024

NVLINKS_PER_GPU = 12  # A100 SXM4: 12 third-generation NVLinks, all to NVSwitches (DGX A100)
NVML_NVLINK_MAX_LINKS = 18  # nvml.h (NVML 12)
NVLINK_DEVICE_TYPE_SWITCH = 2  # nvmlIntNvLinkDeviceType_t


_IMPLS: Dict[str, str] = {
    "nvmlInit_v2": "_init",
    "nvmlInitWithFlags": "_init_with_flags",
    "nvmlShutdown": "_shutdown",
    "nvmlSystemGetDriverVersion": "_driver_version",
    "nvmlSystemGetNVMLVersion": "_nvml_version",
    "nvmlSystemGetCudaDriverVersion": "_cuda_version",
    "nvmlSystemGetCudaDriverVersion_v2": "_cuda_version",
    "nvmlDeviceGetCount_v2": "_count",
    "nvmlDeviceGetHandleByIndex_v2": "_by_index",
    "nvmlDeviceGetHandleByUUID": "_by_uuid",
    "nvmlDeviceGetHandleByPciBusId_v2": "_by_pci",
    "nvmlDeviceGetName": "_name",
    "nvmlDeviceGetUUID": "_uuid",
    "nvmlDeviceGetPciInfo_v3": "_pci_info",
    "nvmlDeviceGetArchitecture": "_architecture",
    "nvmlDeviceGetMemoryInfo": "_memory_info",
    "nvmlDeviceGetPersistenceMode": "_persistence_mode",
    "nvmlDeviceGetNvLinkRemoteDeviceType": "_nvlink_remote_type",
    "nvmlDeviceGetMigMode": "_get_mig_mode",
    "nvmlDeviceSetMigMode": "_set_mig_mode",
    "nvmlDeviceGetGpuInstanceProfileInfo": "_gi_profile_info_v1",
    "nvmlDeviceGetGpuInstanceProfileInfoV": "_gi_profile_info_v2",
    "nvmlDeviceGetGpuInstanceProfileInfoByIdV": "_gi_profile_info_by_id",
    "nvmlDeviceGetGpuInstancePossiblePlacements_v2": "_gi_placements",
    "nvmlDeviceGetGpuInstanceRemainingCapacity": "_gi_capacity",
    "nvmlDeviceCreateGpuInstance": "_create_gi",
    "nvmlDeviceCreateGpuInstanceWithPlacement": "_create_gi_placed",
    "nvmlDeviceGetGpuInstances": "_gi_list",
    "nvmlDeviceGetGpuInstanceById": "_gi_by_id",
    "nvmlGpuInstanceGetInfo": "_gi_info",
    "nvmlGpuInstanceDestroy": "_destroy_gi",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo": "_ci_profile_info_v1",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV": "_ci_profile_info_v2",
    "nvmlGpuInstanceGetComputeInstancePossiblePlacements": "_ci_placements",
    "nvmlGpuInstanceGetComputeInstanceRemainingCapacity": "_ci_capacity",
    "nvmlGpuInstanceCreateComputeInstance": "_create_ci",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement": "_create_ci_placed",
    "nvmlGpuInstanceGetComputeInstances": "_ci_list",
    "nvmlGpuInstanceGetComputeInstanceById": "_ci_by_id",
    "nvmlComputeInstanceGetInfo_v2": "_ci_info",
    "nvmlComputeInstanceDestroy": "_destroy_ci",
    "nvmlDeviceGetMaxMigDeviceCount": "_max_mig_devices",
    "nvmlDeviceGetMigDeviceHandleByIndex": "_mig_by_index",
    "nvmlDeviceIsMigDeviceHandle": "_is_mig",
    "nvmlDeviceGetGpuInstanceId": "_mig_gi_id",
    "nvmlDeviceGetComputeInstanceId": "_mig_ci_id",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": "_mig_parent",
    "nvmlDeviceGetComputeRunningProcesses_v3": "_processes",
    "nvmlDeviceGetComputeRunningProcesses_v2": "_processes",
    "nvmlDeviceGetVirtualizationMode": "_virtualization_mode",
}

SYMBOL_NAMES: Tuple[str, ...] = tuple(sorted([*_IMPLS, "nvmlErrorString"]))


def new_tag() -> int:
    """A small number that makes this simulator's handles differ from an earlier one's."""
    return next(_TAGS) % 255 + 1


def encode(tag: int, kind: int, gpu: int, serial: int) -> int:
    return (tag << 52) | (kind << 48) | (gpu << 32) | serial


def decode(value: int) -> Tuple[int, int, int, int]:
    return (value >> 52) & 0xFF, (value >> 48) & 0xF, (value >> 32) & 0xFFFF, value & 0xFFFFFFFF


class _Symbol:
    """One exported function. ctypes lets callers set ``restype``/``argtypes`` on a
    function pointer (pynvml sets ``restype`` on ``nvmlErrorString``); they are kept and
    have no effect."""

    def __init__(self, name: str, impl: Callable[..., Any]) -> None:
        self.__name__ = name
        self._impl = impl
        self.restype: Any = ctypes.c_int
        self.argtypes: Any = None
        self.errcheck: Any = None

    def __call__(self, *args: Any) -> Any:
        return self._impl(*args)

    def __repr__(self) -> str:
        return f"<simulated NVML function {self.__name__}>"


class FakeNvmlLibrary:
    """The object installed as ``pynvml.nvmlLib`` (rule 1)."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._tag = sim.tag
        impls: Dict[str, Callable[..., None]] = {
            name: getattr(self, attr) for name, attr in _IMPLS.items()
        }
        symbols: Dict[str, _Symbol] = {
            name: _Symbol(name, self._entry(name, impl)) for name, impl in impls.items()
        }
        symbols["nvmlErrorString"] = _Symbol("nvmlErrorString", self._error_string)
        self._symbols = symbols

    def __getattr__(self, name: str) -> _Symbol:
        symbols = self.__dict__.get("_symbols", {})
        if name in symbols and name not in self._sim.missing_symbols():
            return symbols[name]  # type: ignore[no-any-return]
        raise AttributeError(f"the simulated libnvidia-ml.so has no symbol {name}")

    def __dir__(self) -> List[str]:
        return sorted(self._symbols)

    # ------------------------------------------------------------------ plumbing

    def _entry(self, name: str, impl: Callable[..., None]) -> Callable[..., int]:
        sim = self._sim

        def call(*args: Any) -> int:
            if name not in NO_INIT_NEEDED and sim.init_count == 0:
                return codes.UNINITIALIZED
            return sim._call(name, lambda txn: impl(txn, *args))

        return call

    def _error_string(self, result: Any) -> bytes:
        return codes.string_of(cabi.uint(result, "nvmlErrorString result")).encode()

    def _handle(self, kind: int, gpu: GpuRecord, serial: int = 0) -> int:
        return encode(self._tag, kind, gpu.index, serial)

    def _decode(self, txn: Txn, arg: Any, what: str) -> Tuple[int, GpuRecord, int]:
        value = cabi.handle(arg, what)
        tag, kind, index, serial = decode(value)
        gpu = txn.state.gpu(index)
        if not value or tag != self._tag or gpu is None:
            raise SimNvmlError(codes.INVALID_ARGUMENT, f"{what} is not a valid handle")
        _check_lost(gpu)
        return kind, gpu, serial

    def _gpu(self, txn: Txn, arg: Any, what: str = "device") -> GpuRecord:
        """A full-GPU handle."""
        kind, gpu, _ = self._decode(txn, arg, what)
        if kind != KIND_DEVICE:
            raise SimNvmlError(codes.INVALID_ARGUMENT, f"{what} is not a GPU handle")
        return gpu

    def _device(
        self, txn: Txn, arg: Any, what: str = "device"
    ) -> Tuple[GpuRecord, Optional[Tuple[GiRecord, CiRecord]]]:
        """A GPU handle, or a MIG device handle with its GI and CI."""
        kind, gpu, serial = self._decode(txn, arg, what)
        if kind == KIND_DEVICE:
            return gpu, None
        if kind == KIND_MIG:
            found = _find_ci(gpu, serial)
            if found is not None and gpu.mig_current:
                return gpu, found
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"{what} is not a valid device handle")

    def _gi(self, txn: Txn, arg: Any, what: str = "gpuInstance") -> Tuple[GpuRecord, GiRecord]:
        kind, gpu, serial = self._decode(txn, arg, what)
        if kind == KIND_GI:
            for gi in gpu.gis:
                if gi.serial == serial:
                    return gpu, gi
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"{what} is not a valid GPU instance")

    def _ci(
        self, txn: Txn, arg: Any, what: str = "computeInstance"
    ) -> Tuple[GpuRecord, GiRecord, CiRecord]:
        kind, gpu, serial = self._decode(txn, arg, what)
        if kind == KIND_CI:
            found = _find_ci(gpu, serial)
            if found is not None:
                return gpu, found[0], found[1]
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"{what} is not a valid compute instance")

    def _fill(
        self,
        arr_arg: Any,
        count_arg: Any,
        ctype: Any,
        items: Sequence[Any],
        write: Callable[[Any, int, Any], None],
        what: str,
    ) -> None:
        """Caller-allocated output array with its count (rule 5)."""
        count = cabi.out(count_arg, ctypes.c_uint, f"{what} count")
        needed = len(items)
        address, _ = cabi.pointer(arr_arg, what)
        if not address:
            count.value = needed
            return
        if 0 < count.value < needed:
            room = count.value
            count.value = needed
            raise SimNvmlError(
                codes.INSUFFICIENT_SIZE, f"{what}: {needed} entries, room for {room}"
            )
        target = cabi.array(arr_arg, ctype, needed, what)
        if target is not None:
            for i, item in enumerate(items):
                write(target, i, item)
        count.value = needed

    # ------------------------------------------------------------------ system

    def _init(self, txn: Txn) -> None:
        self._session_opened(txn)

    def _init_with_flags(self, txn: Txn, flags: Any) -> None:
        cabi.uint(flags, "flags")
        self._session_opened(txn)

    def _session_opened(self, txn: Txn) -> None:
        """NVML's init is counted per process; the first one registers this process as
        a session holder in the state (engine rule 6), seen by other processes."""
        if self._sim.init_count == 0:
            txn.state.sessions.append(os.getpid())
            txn.dirty = True
        self._sim.init_count += 1

    def _shutdown(self, txn: Txn) -> None:
        if self._sim.init_count == 0:
            return
        self._sim.init_count -= 1
        if self._sim.init_count == 0 and os.getpid() in txn.state.sessions:
            txn.state.sessions.remove(os.getpid())
            txn.dirty = True

    def _driver_version(self, txn: Txn, buf: Any, length: Any) -> None:
        cabi.text_out(buf, length, txn.state.driver_version, "version")

    def _nvml_version(self, txn: Txn, buf: Any, length: Any) -> None:
        version = engine.node_branch(txn.state).nvml_version
        cabi.text_out(buf, length, version, "version")

    def _cuda_version(self, txn: Txn, out: Any) -> None:
        version = engine.node_branch(txn.state).cuda_version
        cabi.out(out, ctypes.c_int, "cudaDriverVersion").value = version

    def _count(self, txn: Txn, out: Any) -> None:
        cabi.out(out, ctypes.c_uint, "deviceCount").value = len(txn.state.gpus)

    def _by_index(self, txn: Txn, index: Any, out: Any) -> None:
        i = cabi.uint(index, "index")
        gpu = txn.state.gpu(i)
        if gpu is None:
            raise SimNvmlError(codes.INVALID_ARGUMENT, f"no GPU {i}")
        _check_lost(gpu)
        cabi.write_handle(out, self._handle(KIND_DEVICE, gpu), "device")

    def _by_uuid(self, txn: Txn, uuid: Any, out: Any) -> None:
        wanted = cabi.text_in(uuid, "uuid")
        for gpu in txn.state.gpus:
            if gpu.uuid == wanted:
                _check_lost(gpu)
                cabi.write_handle(out, self._handle(KIND_DEVICE, gpu), "device")
                return
            for _, ci in engine.mig_devices(gpu):
                if ci.uuid == wanted:
                    _check_lost(gpu)
                    cabi.write_handle(out, self._handle(KIND_MIG, gpu, ci.serial), "device")
                    return
        raise SimNvmlError(codes.NOT_FOUND, f"no device with UUID {wanted}")

    def _by_pci(self, txn: Txn, bus_id: Any, out: Any) -> None:
        wanted = cabi.text_in(bus_id, "pciBusId").upper()
        for gpu in txn.state.gpus:
            if gpu.pci_bus_id.upper() in (wanted, "0000" + wanted):
                _check_lost(gpu)
                cabi.write_handle(out, self._handle(KIND_DEVICE, gpu), "device")
                return
        raise SimNvmlError(codes.NOT_FOUND, f"no device at PCI bus ID {wanted}")

    # ------------------------------------------------------------------ identity

    def _name(self, txn: Txn, dev: Any, buf: Any, length: Any) -> None:
        gpu, mig = self._device(txn, dev)
        table = engine.table_of(gpu)
        name = table.nvml_name
        if mig is not None:
            gi, ci = mig
            _, profile = engine.gi_ci_profile(gpu, gi, ci.profile_id)
            name = f"{table.nvml_name} MIG {profile.name}"
        cabi.text_out(buf, length, name, "name")

    def _uuid(self, txn: Txn, dev: Any, buf: Any, length: Any) -> None:
        gpu, mig = self._device(txn, dev)
        cabi.text_out(buf, length, gpu.uuid if mig is None else mig[1].uuid, "uuid")

    def _pci_info(self, txn: Txn, dev: Any, out: Any) -> None:
        gpu, _ = self._device(txn, dev)
        info = cabi.out(out, cabi.PciInfo, "pci")
        domain_text, bus_text, _ = gpu.pci_bus_id.split(":")
        domain, bus = int(domain_text, 16), int(bus_text, 16)
        info.busIdLegacy = cabi.fixed_text(f"{domain:04X}:{bus:02X}:00.0", cabi.PCI_BUS_ID_LEGACY)
        info.domain = domain
        info.bus = bus
        info.device = 0
        info.pciDeviceId = engine.table_of(gpu).pci_device_id
        info.pciSubSystemId = engine.pci_subsystem_id(gpu)
        info.busId = cabi.fixed_text(gpu.pci_bus_id, cabi.PCI_BUS_ID)

    def _architecture(self, txn: Txn, dev: Any, out: Any) -> None:
        gpu, _ = self._device(txn, dev)
        cabi.out(out, ctypes.c_uint, "arch").value = engine.table_of(gpu).arch_code

    def _memory_info(self, txn: Txn, dev: Any, out: Any) -> None:
        gpu, mig = self._device(txn, dev)
        table = engine.table_of(gpu)
        total = table.memory_mib * MIB
        if mig is not None:
            total = engine.gi_profile(table, mig[0]).memory_mib * MIB
        memory = cabi.out(out, cabi.Memory, "memory")
        memory.total = total
        memory.used = 0
        memory.free = total

    def _persistence_mode(self, txn: Txn, dev: Any, out: Any) -> None:
        self._device(txn, dev)
        cabi.out(out, ctypes.c_uint, "mode").value = 1

    def _nvlink_remote_type(self, txn: Txn, dev: Any, link: Any, out: Any) -> None:
        gpu = self._gpu(txn, dev)
        number = cabi.uint(link, "link")
        if number >= NVML_NVLINK_MAX_LINKS:
            raise SimNvmlError(codes.INVALID_ARGUMENT, f"link {number} is past the last")
        if not gpu.nvlink_group or number >= NVLINKS_PER_GPU:
            raise SimNvmlError(codes.NOT_SUPPORTED, f"the GPU has no NVLink {number}")
        cabi.out(out, ctypes.c_uint, "pNvLinkDeviceType").value = NVLINK_DEVICE_TYPE_SWITCH

    # ------------------------------------------------------------------ MIG mode

    def _get_mig_mode(self, txn: Txn, dev: Any, current: Any, pending: Any) -> None:
        gpu = self._gpu(txn, dev)
        cur = cabi.out(current, ctypes.c_uint, "currentMode")
        pend = cabi.out(pending, ctypes.c_uint, "pendingMode")
        cur.value = int(gpu.mig_current)
        pend.value = int(gpu.mig_pending)

    def _set_mig_mode(self, txn: Txn, dev: Any, mode: Any, status: Any) -> None:
        gpu = self._gpu(txn, dev)
        value = cabi.uint(mode, "mode")
        activation = cabi.out(status, ctypes.c_uint, "activationStatus")
        result = engine.set_mig_mode(
            gpu,
            value,
            engine.other_sessions(txn.state),
            txn.state,
            self._sim.module_loaded("nvidia_drm"),
        )
        activation.value = result
        engine.record_change(
            txn.state,
            "nvmlDeviceSetMigMode",
            gpu,
            {"mode": value, "activation": codes.name_of(result)},
            "nvml",
        )
        txn.dirty = True

    # ------------------------------------------------------------------ GI profiles

    def _gi_profile_by_index(self, gpu: GpuRecord, index: int) -> Any:
        table = engine.table_of(gpu)
        engine.check_profiles_readable(gpu)
        if index >= engine.branch_of(gpu).gi_profile_count:
            raise SimNvmlError(codes.INVALID_ARGUMENT, f"profile index {index} is past the end")
        profile = table.profile_by_index(index)
        if profile is None:
            raise SimNvmlError(codes.NOT_SUPPORTED, f"profile index {index} is not supported")
        return profile

    @staticmethod
    def _write_gi_info(info: Any, profile: Any) -> None:
        info.id = profile.id
        if not isinstance(info, cabi.GpuInstanceProfileInfoV3):  # v3 has no such field
            info.isP2pSupported = 0
        info.sliceCount = profile.slices
        info.instanceCount = profile.max
        info.multiprocessorCount = profile.sms
        info.copyEngineCount = profile.copy_engines
        info.decoderCount = profile.decoders
        info.encoderCount = profile.encoders
        info.jpegCount = profile.jpeg
        info.ofaCount = profile.ofa
        info.memorySizeMB = profile.memory_mib

    def _gi_profile_info_v1(self, txn: Txn, dev: Any, index: Any, out: Any) -> None:
        gpu = self._gpu(txn, dev)
        profile = self._gi_profile_by_index(gpu, cabi.uint(index, "profile"))
        self._write_gi_info(cabi.out(out, cabi.GpuInstanceProfileInfoV1, "info"), profile)

    def _gi_info_v2(self, out: Any, profile: Any) -> None:
        """The v2 or v3 struct, by its version (capabilities: none modelled)."""
        layout = _GI_INFO_BY_VERSION.get(cabi.version_of(out, "info"))
        if layout is None:
            raise SimNvmlError(codes.INVALID_ARGUMENT, "info->version is not v2 or v3")
        info = cabi.out(out, layout, "info")
        self._write_gi_info(info, profile)
        info.name = cabi.fixed_text(f"MIG {profile.name}", cabi.NAME_BUFFER)
        if layout is cabi.GpuInstanceProfileInfoV3:
            info.capabilities = 0

    def _gi_profile_info_v2(self, txn: Txn, dev: Any, index: Any, out: Any) -> None:
        gpu = self._gpu(txn, dev)
        profile = self._gi_profile_by_index(gpu, cabi.uint(index, "profile"))
        self._gi_info_v2(out, profile)

    def _gi_profile_info_by_id(self, txn: Txn, dev: Any, profile_id: Any, out: Any) -> None:
        gpu = self._gpu(txn, dev)
        engine.check_profiles_readable(gpu)
        pid = cabi.uint(profile_id, "profileId")
        profile = engine.table_of(gpu).profile_by_id(pid)
        if profile is None:
            raise SimNvmlError(codes.NOT_SUPPORTED, f"GI profile ID {pid} is not supported")
        self._gi_info_v2(out, profile)

    def _gi_profile_by_id(self, gpu: GpuRecord, profile_id: Any) -> Any:
        pid = cabi.uint(profile_id, "profileId")
        profile = engine.table_of(gpu).profile_by_id(pid)
        if profile is None:
            raise SimNvmlError(codes.INVALID_ARGUMENT, f"no GI profile ID {pid}")
        return profile

    def _gi_placements(self, txn: Txn, dev: Any, profile_id: Any, arr: Any, count: Any) -> None:
        gpu = self._gpu(txn, dev)
        profile = self._gi_profile_by_id(gpu, profile_id)
        self._fill(arr, count, cabi.Placement, profile.placements, _write_placement, "placements")

    def _gi_capacity(self, txn: Txn, dev: Any, profile_id: Any, out: Any) -> None:
        gpu = self._gpu(txn, dev)
        engine.check_profiles_readable(gpu)
        profile = self._gi_profile_by_id(gpu, profile_id)
        count = cabi.out(out, ctypes.c_uint, "count")
        count.value = engine.gi_remaining_capacity(engine.table_of(gpu), gpu, profile)

    # ------------------------------------------------------------------ GIs

    def _new_gi(
        self, txn: Txn, dev: Any, profile_id: Any, placement: Optional[Placement], out: Any
    ) -> None:
        gpu = self._gpu(txn, dev)
        pid = cabi.uint(profile_id, "profileId")
        target = cabi.out(out, ctypes.c_void_p, "gpuInstance")
        gi = engine.create_gi(txn.state, gpu, pid, placement)
        txn.dirty = True
        target.value = self._handle(KIND_GI, gpu, gi.serial)
        function = "nvmlDeviceCreateGpuInstance"
        args: Dict[str, Any] = {"profile_id": pid}
        if placement is not None:
            function += "WithPlacement"
            args["placement"] = str(placement)
        args["result"] = {"gi_id": gi.id, "placement": f"{gi.start}:{gi.size}"}
        engine.record_change(txn.state, function, gpu, args, "nvml")

    def _create_gi(self, txn: Txn, dev: Any, profile_id: Any, out: Any) -> None:
        self._new_gi(txn, dev, profile_id, None, out)

    def _create_gi_placed(
        self, txn: Txn, dev: Any, profile_id: Any, placement: Any, out: Any
    ) -> None:
        self._new_gi(txn, dev, profile_id, _read_placement(placement), out)

    def _gi_list(self, txn: Txn, dev: Any, profile_id: Any, arr: Any, count: Any) -> None:
        gpu = self._gpu(txn, dev)
        engine.check_profiles_readable(gpu)
        profile = self._gi_profile_by_id(gpu, profile_id)
        gis = sorted((g for g in gpu.gis if g.profile_id == profile.id), key=lambda g: g.start)
        handles = [self._handle(KIND_GI, gpu, g.serial) for g in gis]
        self._fill(arr, count, ctypes.c_void_p, handles, _write_pointer, "gpuInstances")

    def _gi_by_id(self, txn: Txn, dev: Any, gi_id: Any, out: Any) -> None:
        gpu = self._gpu(txn, dev)
        wanted = cabi.uint(gi_id, "id")
        if not gpu.mig_current:
            raise SimNvmlError(codes.NOT_SUPPORTED, "MIG mode is not enabled")
        gi = engine.find_gi(gpu, wanted)
        if gi is None:
            raise SimNvmlError(codes.NOT_FOUND, f"no GI {wanted}")
        cabi.write_handle(out, self._handle(KIND_GI, gpu, gi.serial), "gpuInstance")

    def _gi_info(self, txn: Txn, handle: Any, out: Any) -> None:
        gpu, gi = self._gi(txn, handle)
        info = cabi.out(out, cabi.GpuInstanceInfo, "info")
        info.device = self._handle(KIND_DEVICE, gpu)
        info.id = gi.id
        info.profileId = gi.profile_id
        info.placement.start = gi.start
        info.placement.size = gi.size

    def _destroy_gi(self, txn: Txn, handle: Any) -> None:
        gpu, gi = self._gi(txn, handle)
        engine.destroy_gi(gpu, gi)
        txn.dirty = True
        engine.record_change(
            txn.state,
            "nvmlGpuInstanceDestroy",
            gpu,
            {"gi_id": gi.id, "profile_id": gi.profile_id, "placement": f"{gi.start}:{gi.size}"},
            "nvml",
        )

    # ------------------------------------------------------------------ CI profiles

    def _ci_profile_by_index(
        self, gpu: GpuRecord, gi: GiRecord, index: Any, engine_profile: Any
    ) -> Tuple[Any, Any]:
        i = cabi.uint(index, "profile")
        eng = cabi.uint(engine_profile, "engProfile")
        if eng >= engine.CI_ENGINE_PROFILE_COUNT:
            raise SimNvmlError(codes.INVALID_ARGUMENT, f"engine profile {eng} is out of range")
        return engine.gi_ci_profile(gpu, gi, i)

    @staticmethod
    def _write_ci_info(info: Any, gi_profile: Any, profile: Any) -> None:
        info.id = profile.id
        info.sliceCount = profile.slices
        info.instanceCount = profile.max
        info.multiprocessorCount = profile.sms
        info.sharedCopyEngineCount = gi_profile.copy_engines
        info.sharedDecoderCount = gi_profile.decoders
        info.sharedEncoderCount = gi_profile.encoders
        info.sharedJpegCount = gi_profile.jpeg
        info.sharedOfaCount = gi_profile.ofa

    def _ci_profile_info_v1(self, txn: Txn, handle: Any, index: Any, eng: Any, out: Any) -> None:
        gpu, gi = self._gi(txn, handle)
        gi_prof, profile = self._ci_profile_by_index(gpu, gi, index, eng)
        self._write_ci_info(
            cabi.out(out, cabi.ComputeInstanceProfileInfoV1, "info"), gi_prof, profile
        )

    def _ci_profile_info_v2(self, txn: Txn, handle: Any, index: Any, eng: Any, out: Any) -> None:
        gpu, gi = self._gi(txn, handle)
        gi_prof, profile = self._ci_profile_by_index(gpu, gi, index, eng)
        layout = _CI_INFO_BY_VERSION.get(cabi.version_of(out, "info"))
        if layout is None:
            raise SimNvmlError(codes.INVALID_ARGUMENT, "info->version is not v2 or v3")
        info = cabi.out(out, layout, "info")
        self._write_ci_info(info, gi_prof, profile)
        info.name = cabi.fixed_text(f"MIG {profile.name}", cabi.NAME_BUFFER)
        if layout is cabi.ComputeInstanceProfileInfoV3:
            info.capabilities = 0

    def _ci_placements(self, txn: Txn, handle: Any, profile_id: Any, arr: Any, count: Any) -> None:
        gpu, gi = self._gi(txn, handle)
        _, profile = engine.gi_ci_profile(gpu, gi, cabi.uint(profile_id, "profileId"))
        self._fill(arr, count, cabi.Placement, profile.placements, _write_placement, "placements")

    def _ci_capacity(self, txn: Txn, handle: Any, profile_id: Any, out: Any) -> None:
        gpu, gi = self._gi(txn, handle)
        _, profile = engine.gi_ci_profile(gpu, gi, cabi.uint(profile_id, "profileId"))
        cabi.out(out, ctypes.c_uint, "count").value = engine.ci_remaining_capacity(gi, profile)

    # ------------------------------------------------------------------ CIs

    def _new_ci(
        self, txn: Txn, handle: Any, profile_id: Any, placement: Optional[Placement], out: Any
    ) -> None:
        gpu, gi = self._gi(txn, handle)
        pid = cabi.uint(profile_id, "profileId")
        target = cabi.out(out, ctypes.c_void_p, "computeInstance")
        ci = engine.create_ci(txn.state, gpu, gi, pid, placement)
        txn.dirty = True
        target.value = self._handle(KIND_CI, gpu, ci.serial)
        function = "nvmlGpuInstanceCreateComputeInstance"
        args: Dict[str, Any] = {"gi_id": gi.id, "profile_id": pid}
        if placement is not None:
            function += "WithPlacement"
            args["placement"] = str(placement)
        args["result"] = {"ci_id": ci.id, "placement": f"{ci.start}:{ci.size}", "uuid": ci.uuid}
        engine.record_change(txn.state, function, gpu, args, "nvml")

    def _create_ci(self, txn: Txn, handle: Any, profile_id: Any, out: Any) -> None:
        self._new_ci(txn, handle, profile_id, None, out)

    def _create_ci_placed(
        self, txn: Txn, handle: Any, profile_id: Any, placement: Any, out: Any
    ) -> None:
        self._new_ci(txn, handle, profile_id, _read_placement(placement), out)

    def _ci_list(self, txn: Txn, handle: Any, profile_id: Any, arr: Any, count: Any) -> None:
        gpu, gi = self._gi(txn, handle)
        _, profile = engine.gi_ci_profile(gpu, gi, cabi.uint(profile_id, "profileId"))
        cis = sorted((c for c in gi.cis if c.profile_id == profile.id), key=lambda c: c.start)
        handles = [self._handle(KIND_CI, gpu, c.serial) for c in cis]
        self._fill(arr, count, ctypes.c_void_p, handles, _write_pointer, "computeInstances")

    def _ci_by_id(self, txn: Txn, handle: Any, ci_id: Any, out: Any) -> None:
        gpu, gi = self._gi(txn, handle)
        wanted = cabi.uint(ci_id, "id")
        ci = engine.find_ci(gi, wanted)
        if ci is None:
            raise SimNvmlError(codes.NOT_FOUND, f"no CI {wanted} in GI {gi.id}")
        cabi.write_handle(out, self._handle(KIND_CI, gpu, ci.serial), "computeInstance")

    def _ci_info(self, txn: Txn, handle: Any, out: Any) -> None:
        gpu, gi, ci = self._ci(txn, handle)
        info = cabi.out(out, cabi.ComputeInstanceInfo, "info")
        info.device = self._handle(KIND_DEVICE, gpu)
        info.gpuInstance = self._handle(KIND_GI, gpu, gi.serial)
        info.id = ci.id
        info.profileId = ci.profile_id
        info.placement.start = ci.start
        info.placement.size = ci.size

    def _destroy_ci(self, txn: Txn, handle: Any) -> None:
        gpu, gi, ci = self._ci(txn, handle)
        engine.destroy_ci(gi, ci)
        txn.dirty = True
        engine.record_change(
            txn.state,
            "nvmlComputeInstanceDestroy",
            gpu,
            {"gi_id": gi.id, "ci_id": ci.id, "profile_id": ci.profile_id},
            "nvml",
        )

    # ------------------------------------------------------------------ MIG devices

    def _max_mig_devices(self, txn: Txn, dev: Any, out: Any) -> None:
        gpu = self._gpu(txn, dev)
        count = cabi.out(out, ctypes.c_uint, "count")
        count.value = engine.table_of(gpu).compute_slices if gpu.mig_current else 0

    def _mig_by_index(self, txn: Txn, dev: Any, index: Any, out: Any) -> None:
        gpu = self._gpu(txn, dev)
        i = cabi.uint(index, "index")
        devices = engine.mig_devices(gpu)
        if i >= len(devices):
            raise SimNvmlError(codes.NOT_FOUND, f"no MIG device {i}")
        handle = self._handle(KIND_MIG, gpu, devices[i][1].serial)
        cabi.write_handle(out, handle, "migDevice")

    def _is_mig(self, txn: Txn, dev: Any, out: Any) -> None:
        _, mig = self._device(txn, dev)
        cabi.out(out, ctypes.c_uint, "isMigDevice").value = int(mig is not None)

    def _mig_gi_id(self, txn: Txn, dev: Any, out: Any) -> None:
        _, mig = self._device(txn, dev)
        if mig is None:
            raise SimNvmlError(codes.NOT_SUPPORTED, "not a MIG device handle")
        cabi.out(out, ctypes.c_uint, "id").value = mig[0].id

    def _mig_ci_id(self, txn: Txn, dev: Any, out: Any) -> None:
        _, mig = self._device(txn, dev)
        if mig is None:
            raise SimNvmlError(codes.NOT_SUPPORTED, "not a MIG device handle")
        cabi.out(out, ctypes.c_uint, "id").value = mig[1].id

    def _mig_parent(self, txn: Txn, dev: Any, out: Any) -> None:
        gpu, mig = self._device(txn, dev, "migDevice")
        if mig is None:
            raise SimNvmlError(codes.INVALID_ARGUMENT, "not a MIG device handle")
        cabi.write_handle(out, self._handle(KIND_DEVICE, gpu), "device")

    def _virtualization_mode(self, txn: Txn, dev: Any, out: Any) -> None:
        gpu = self._gpu(txn, dev)
        # nvmlGpuVirtualizationMode_t: NONE 0, PASSTHROUGH 2, HOST_VGPU 3
        mode = 3 if gpu.vgpu_host else 2 if gpu.passthrough else 0
        cabi.out(out, ctypes.c_uint, "pVirtualMode").value = mode

    def _processes(self, txn: Txn, dev: Any, count_arg: Any, arr: Any) -> None:
        gpu, mig = self._device(txn, dev)
        if mig is not None and gpu.vgpu_host:
            raise SimNvmlError(
                codes.NOT_SUPPORTED, "per-instance queries are not supported on a vGPU host"
            )
        procs = [
            (pid, gi, ci)
            for pid, gi, ci in engine.pids_on(gpu)
            if mig is None or ci.serial == mig[1].serial
        ]
        count = cabi.out(count_arg, ctypes.c_uint, "infoCount")
        needed = len(procs)
        if needed == 0:
            count.value = 0
            return
        address, _ = cabi.pointer(arr, "infos")
        if not address or count.value < needed:
            count.value = needed
            raise SimNvmlError(codes.INSUFFICIENT_SIZE, f"{needed} processes")
        target = cabi.array(arr, cabi.ProcessInfo, needed, "infos")
        assert target is not None
        for i, (pid, gi, ci) in enumerate(procs):
            target[i].pid = pid
            target[i].usedGpuMemory = cabi.VALUE_NOT_AVAILABLE
            target[i].gpuInstanceId = gi.id
            target[i].computeInstanceId = ci.id
        count.value = needed


_GI_INFO_BY_VERSION: Dict[int, Any] = {
    cabi.GI_PROFILE_INFO_V2: cabi.GpuInstanceProfileInfoV2,
    cabi.GI_PROFILE_INFO_V3: cabi.GpuInstanceProfileInfoV3,
}
_CI_INFO_BY_VERSION: Dict[int, Any] = {
    cabi.CI_PROFILE_INFO_V2: cabi.ComputeInstanceProfileInfoV2,
    cabi.CI_PROFILE_INFO_V3: cabi.ComputeInstanceProfileInfoV3,
}


def _check_lost(gpu: GpuRecord) -> None:
    """A GPU that fell off the bus answers its error to every call that names it (rule 6)."""
    if gpu.lost:
        raise SimNvmlError(codes.parse_error_name(gpu.lost), f"GPU {gpu.index} fell off the bus")


def _find_ci(gpu: GpuRecord, serial: int) -> Optional[Tuple[GiRecord, CiRecord]]:
    for gi in gpu.gis:
        for ci in gi.cis:
            if ci.serial == serial:
                return gi, ci
    return None


def _read_placement(arg: Any) -> Placement:
    """The ``const nvml*Placement_t *`` argument of the *WithPlacement calls."""
    raw = cabi.out(arg, cabi.Placement, "placement")
    return Placement(int(raw.start), int(raw.size))


def _write_placement(target: Any, i: int, placement: Placement) -> None:
    target[i].start = placement.start
    target[i].size = placement.size


def _write_pointer(target: Any, i: int, value: int) -> None:
    # An array of c_void_p reads and writes plain ints.
    target[i] = value
