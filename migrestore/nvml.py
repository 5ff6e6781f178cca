"""The NVML layer: the only module of migrestore that imports ``pynvml``.

Rules:

1. Every NVML failure leaves this module as a ``migrestore.errors`` error: ``nvmlInit``
   failing is ``DriverUnavailable`` (exit 69); any other call failing is ``NvmlError``
   carrying NVML's own name for the code (``NVML_ERROR_IN_USE``) and naming the GPU and
   the object (``GPU 0 (GPU-...): create GI 3g.40gb at 4:4``). pynvml exceptions never
   escape.
2. pynvml is called the way its wrappers are written (nvidia-ml-py 13.x): placement and
   instance queries get caller-allocated ctypes arrays and a ``byref(c_uint)`` count
   (the placement count is asked first with a NULL array, as nvml.h documents);
   ``CreateGpuInstanceWithPlacement`` gets ``byref(placement)``; ``SetMigMode`` returns
   the activation status as an int and does not raise when the activation failed, so
   its value is returned by name and never ignored.
3. Profiles are enumerated by index until ``INVALID_ARGUMENT``, skipping
   ``NOT_SUPPORTED``; profile IDs (not indices) are what every other call takes. A
   driver answers ``INVALID_ARGUMENT`` for every index past its table, so that answer
   is read again (a profile, or ``NOT_SUPPORTED``: skipped) and the end is confirmed
   only by the same index and the next one answering it again; any other answer, or
   the table going on past an index that keeps failing, is an ``NvmlError`` (exit 1)
   naming the GPU, the call and the error, never a shorter table cached for the model
   (which would make a valid config look infeasible, exit 78).
4. IDs are read back, never predicted: a created GI or CI is returned as
   ``nvmlGpuInstanceGetInfo`` / ``nvmlComputeInstanceGetInfo`` report it.
5. What cannot change is read once per session: the GPU list and identities, and per
   GPU and MIG mode the GI profile table with its placements and the CI profiles of
   each GI profile. Mode, instances, MIG device UUIDs and processes are read on every
   observe.
6. The GPU is the authority: profile names, IDs, sizes and placements come from NVML,
   never from a bundled table. CI profiles are a property of a GI, so they are read
   from an existing GI of the profile; while no GI of a profile exists its CI list is
   empty and marked unread (``GiProfile.cis_read``), and the planner creates the GI
   first and plans its CIs once they are read. A driver that lists GI profiles only with
   MIG mode on (before R550) gives an empty table while MIG is off.
7. A GPU reset has one code path: NVML is shut down (an open NVML client counts as a
   user of the GPU and makes the reset fail), the backend's reset tool runs on the
   GPU's PCI bus id (``nvidia-smi --gpu-reset`` on hardware, the simulator's model of
   it when simulating), and NVML is initialised again. The reset waits for NVML calls
   of other threads to end and holds new ones back until NVML is open again; cached
   handles are dropped.
8. This module knows neither the simulator nor the bundled tables: the edge chooses
   the backend (``migrestore.backend``) and passes it in.
9. An observation asks for the GIs of a profile only while one could exist: GIs never
   share a memory slice, so a profile whose every possible placement overlaps the GIs
   found already has none (a GPU that seven 1g.10gb fill needs one GI list, not seven;
   each list is a ~0.36 ms driver call on an H100).
10. One sick GPU never fails the observation of the others. A GPU whose handle,
    identity or MIG mode reads fail with an error that says the GPU itself is unwell
    (``SICK``: GPU_IS_LOST, IRQ_ISSUE, UNKNOWN..., what nvml.h lists for
    ``nvmlDeviceGetHandleByIndex_v2`` and the device reads) is read once more; failing
    again, it is observed as sick
    (``GpuIdentity.error`` and ``failed``; its UUID and PCI bus id when they were read
    before the failure, else "": without a handle NVML gives neither) and stays so for
    the session. Any other error still fails the observation.
11. NVSwitch membership is read only when a reset is about to run (``nvswitch_gpus``),
    once per session: a GPU belongs to the node's NVSwitch fabric when
    ``nvmlDeviceGetNvLinkRemoteDeviceType`` names a switch at one of its links (links
    are asked from 0 until the GPU answers NOT_SUPPORTED or INVALID_ARGUMENT: no such
    link; FUNCTION_NOT_FOUND: a driver without the call, no NVLink known). Every GPU of
    one node's fabric is taken as one peer group (a DGX/HGX A100 has one baseboard).
    Several GPUs are reset in one command (``reset_gpus``), as nvidia-smi(1) requires
    for NVLink peers while Fabric Manager is not running.
12. Processes unknown is an observed state, not an error and not zero processes: a MIG
    device whose process query answers NOT_SUPPORTED (a vGPU host: nvml.h, "querying
    per-instance information using MIG device handles is not supported if the device is
    in vGPU Host virtualization mode") is observed with ``pids_error`` set; the
    observation, verification and the post-READY scan go on. A GPU whose
    ``nvmlDeviceGetVirtualizationMode`` reads HOST_VGPU or HOST_VSGA is observed as a
    vGPU host (``GpuIdentity.vgpu_host``, read once per session; a call that fails
    concludes nothing): a VM may use any of its GIs, CIs or not, without NVML listing
    a process.
"""

from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Type,
)

import pynvml

from migrestore.errors import DriverUnavailable, NvmlError
from migrestore.model import (
    CiProfile,
    ComputeInstance,
    GiProfile,
    GpuIdentity,
    GpuInstance,
    GpuState,
    Placement,
)

if TYPE_CHECKING:
    from types import TracebackType

# Upper bound on profile indices: drivers end the enumeration with INVALID_ARGUMENT;
# this only stops a driver that never does (every index NOT_SUPPORTED).
MAX_PROFILE_INDEX = 64

_ARCHITECTURES: Dict[int, str] = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
}

_ERROR_NAMES: Dict[int, str] = {
    value: name
    for name, value in sorted(vars(pynvml).items())
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}
_ERROR_NAMES[pynvml.NVML_SUCCESS] = "NVML_SUCCESS"

_DRIVER_HINTS: Dict[int, str] = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: (
        "no NVIDIA driver found (NVML_ERROR_LIBRARY_NOT_FOUND): is the nvidia kernel module "
        "loaded? libnvidia-ml.so.1 could not be loaded; install the NVIDIA driver or check "
        "`nvidia-smi`"
    ),
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: (
        "NVIDIA driver not loaded (NVML_ERROR_DRIVER_NOT_LOADED): load it with "
        "`modprobe nvidia` and check `dmesg` for why it failed"
    ),
    pynvml.NVML_ERROR_NO_PERMISSION: (
        "no permission to use the NVIDIA driver (NVML_ERROR_NO_PERMISSION): run as root "
        "or check the permissions of /dev/nvidia*"
    ),
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "NVML library and kernel driver versions differ "
        "(NVML_ERROR_LIB_RM_VERSION_MISMATCH): reload the nvidia module or reboot after "
        "the driver upgrade"
    ),
}


def error_name(code: int) -> str:
    """NVML's name for a return code: 19 -> ``NVML_ERROR_IN_USE``."""
    return _ERROR_NAMES.get(code, f"NVML_ERROR_UNKNOWN_CODE_{code}")


def _translate(err: pynvml.NVMLError, what: str, change: bool = False) -> NvmlError:
    code = int(err.value)
    return NvmlError(nvml_error=error_name(code), what=what, code=code, change=change)


def _driver_unavailable(err: pynvml.NVMLError) -> DriverUnavailable:
    code = int(err.value)
    hint = _DRIVER_HINTS.get(code)
    if hint is None:
        hint = (
            f"NVIDIA driver unavailable ({error_name(code)}): nvmlInit failed; check "
            "`nvidia-smi` and `dmesg`"
        )
    return DriverUnavailable(hint)


@contextmanager
def _nvml(what: str, change: bool = False) -> Iterator[None]:
    """Translate a pynvml error raised in the block into ``NvmlError`` naming ``what``;
    ``change``: the block is the call that changes the GPU (``NvmlError.change``)."""
    try:
        yield
    except pynvml.NVMLError as err:
        raise _translate(err, what, change) from err


def _code(err: pynvml.NVMLError) -> int:
    return int(err.value)


def _profile_name(raw: Any) -> str:
    """``info.name`` without NVML's ``MIG `` prefix (``MIG 1g.10gb`` -> ``1g.10gb``)."""
    name = raw.decode() if isinstance(raw, bytes) else str(raw)
    return name[4:] if name.startswith("MIG ") else name


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# Reads of one observation when instances vanish under it. A foreign NVML client that
# creates and destroys instances in a tight loop makes most attempts meet a vanished
# handle; each attempt takes milliseconds, so ten stay well under a second.
OBSERVE_ATTEMPTS = 10
# The first attempts read strictly (any vanished read starts the observation again); the
# later ones leave out an instance that vanished under them, so a client that churns
# faster than a whole observation cannot fail it, and a read that fails once by chance
# does not drop an instance that is still there.
STRICT_ATTEMPTS = 3
# What a read answers when another process changed the GPU under it: an instance gone
# (its handle), or MIG mode switched off between two reads.
# nvmlGpuVirtualizationMode_t: NVML_GPU_VIRTUALIZATION_MODE_HOST_VGPU (3) and
# NVML_GPU_VIRTUALIZATION_MODE_HOST_VSGA (4): the GPU is a vGPU host's (rule 12)
VGPU_HOST_MODES = (3, 4)

VANISHED = ("NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_NOT_FOUND", "NVML_ERROR_NOT_SUPPORTED")
# What says that one GPU itself is unwell (rule 10): nvml.h lists these for
# nvmlDeviceGetHandleByIndex_v2 ("GPU_IS_LOST if the target GPU has fallen off the bus or
# is otherwise inaccessible", IRQ_ISSUE, INSUFFICIENT_POWER, NO_PERMISSION, UNKNOWN) and
# for the device reads (TIMEOUT, GPU_NOT_FOUND).
SICK = (
    "NVML_ERROR_GPU_IS_LOST",
    "NVML_ERROR_IRQ_ISSUE",
    "NVML_ERROR_UNKNOWN",
    "NVML_ERROR_INSUFFICIENT_POWER",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_TIMEOUT",
    "NVML_ERROR_GPU_NOT_FOUND",
)


# nvml.h NVML_NVLINK_MAX_LINKS (18 in NVML 12; pynvml's constant may be larger)
NVLINK_MAX_LINKS = 18
# Answers of nvmlDeviceGetNvLinkRemoteDeviceType that say "no such link" (rule 11).
_NO_LINK = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    }
)


class Backend(Protocol):
    """What the edge (``migrestore.backend``) hands a session: what lies beneath pynvml
    (rule 8) and the reset tool (rule 7)."""

    def attach(self, pynvml_module: Any) -> None:
        """Install the library beneath ``pynvml_module`` (nothing for the real driver)."""

    def detach(self, pynvml_module: Any) -> None:
        """Undo ``attach``."""

    def reset(self, pci_bus_id: str, what: str) -> None:
        """Reset the GPU at ``pci_bus_id`` (or the GPUs of a comma-separated list, in one
        command) while NVML is shut down; raises NvmlError."""


class _Gate:
    """Many NVML users at once, or one exclusive user (a reset that shuts NVML down).

    Shared holders never wait for a waiting exclusive holder, so a thread that already
    holds the gate shared can take it shared again."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._shared:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@dataclass
class _Gpu:
    """What the session knows about one GPU."""

    index: int
    handle: Any
    uuid: str
    pci_bus_id: str
    pci_device_id: int
    name: str
    architecture: str
    pci_subsystem_id: int = 0
    # the GI profile table (without CI lists), for the MIG mode it was read in
    table_mode: Optional[bool] = None
    gi_profiles: Tuple[GiProfile, ...] = ()
    # CI profiles per GI profile ID, read from an existing GI of that profile
    ci_read: Dict[int, Tuple[CiProfile, ...]] = field(default_factory=dict)
    # sick (rule 10): the NVML error name and what failed; "" while healthy
    error: str = ""
    failed: str = ""
    vgpu_host: bool = False  # rule 12: nvmlDeviceGetVirtualizationMode read HOST_VGPU

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.uuid})" if self.uuid else f"GPU {self.index}"

    def identity(self, mig_capable: bool) -> GpuIdentity:
        return GpuIdentity(
            index=self.index,
            uuid=self.uuid,
            pci_bus_id=self.pci_bus_id,
            pci_device_id=self.pci_device_id,
            name=self.name,
            architecture=self.architecture,
            mig_capable=mig_capable,
            pci_subsystem_id=self.pci_subsystem_id,
            error=self.error,
            failed=self.failed,
            vgpu_host=self.vgpu_host,
        )


class Nvml:
    """One NVML session over every GPU of the node (or of the simulator).

    ``backend`` is chosen by the edge (``migrestore.backend.choose``): it attaches
    what lies beneath pynvml when the session opens, so the same code runs against
    simulated and real GPUs (rule 8)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._attached = False
        self._open = False
        self._gate = _Gate()
        self._gpus: Optional[List[_Gpu]] = None
        # Profile tables are a property of the model and the MIG mode, not of one board:
        # GPUs of the same name and PCI device ID share them, read once per session.
        self._tables: Dict[Tuple[str, int, bool], Tuple[GiProfile, ...]] = {}
        self._ci_tables: Dict[Tuple[str, int, bool], Dict[int, Tuple[CiProfile, ...]]] = {}
        self._nvswitch: Optional[Tuple[str, ...]] = None  # rule 11, by UUID

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Nvml:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is None:
            self.close()
            return
        # Already failing: do not let a shutdown error hide the original one.
        with suppress(NvmlError):
            self.close()

    def open(self) -> None:
        """Attach the backend's library and initialise NVML.

        Raises:
            DriverUnavailable: NVML could not be initialised (no driver, no permission,
                library/driver mismatch).
            MigrestoreError: the backend could not be attached (a bad simulator spec).
        """
        if self._open:
            return
        if not self._attached:
            self.backend.attach(pynvml)
            self._attached = True
        try:
            self._init()
        except DriverUnavailable:
            self._detach()
            raise
        self._open = True

    def close(self) -> None:
        """Shut NVML down and take the backend's library from beneath pynvml.

        Raises:
            NvmlError: ``nvmlShutdown`` failed.
        """
        if not self._open:
            return
        self._open = False
        self._gpus = None
        self._nvswitch = None
        self._tables.clear()
        self._ci_tables.clear()
        try:
            with _nvml("NVML: shut down"):
                pynvml.nvmlShutdown()
        finally:
            self._detach()

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            self.backend.detach(pynvml)

    def _init(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            raise _driver_unavailable(err) from err

    # ------------------------------------------------------------------ queries

    def driver_version(self) -> str:
        with self._gate.shared(), _nvml("NVML: read the driver version"):
            return _text(pynvml.nvmlSystemGetDriverVersion())

    def observe(self, devices: bool = True) -> Tuple[GpuState, ...]:
        """Every GPU, by index: identity, MIG mode, profile table, GIs with their CIs,
        MIG device UUIDs and the processes on each MIG device.

        ``devices=False`` skips the MIG device scan (UUIDs and processes, most of the
        NVML calls of a MIG GPU): enough to tell whether the geometry drifted, which is
        what the idle watch loop asks every interval."""
        # Another process may destroy an instance between two reads of one observation
        # (its handle then answers INVALID_ARGUMENT or NOT_FOUND): read the whole
        # observation again, a bounded number of times.
        for attempt in range(OBSERVE_ATTEMPTS):
            try:
                tolerant = attempt >= STRICT_ATTEMPTS
                with self._gate.shared():
                    return tuple(
                        self._observe_one(gpu, devices, tolerant) for gpu in self._devices()
                    )
            except NvmlError as err:
                if err.nvml_error not in VANISHED or attempt == OBSERVE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def observe_gpu(self, uuid: str) -> GpuState:
        with self._gate.shared():
            return self._observe(self._gpu(uuid))

    def mig_mode(self, uuid: str) -> Tuple[bool, bool]:
        """``(current, pending)``; ``(False, False)`` on a GPU that is not MIG capable."""
        with self._gate.shared():
            gpu = self._gpu(uuid)
            mode = self._mig_mode(gpu)
            return (False, False) if mode is None else mode

    # ------------------------------------------------------------------ actions

    def set_mig_mode(self, uuid: str, enabled: bool) -> str:
        """Request MIG mode on or off; returns the activation status by name
        (``NVML_SUCCESS``, ``NVML_ERROR_IN_USE``, ``NVML_ERROR_RESET_REQUIRED``, ...).
        A status other than success is not raised: the mode change is then pending.

        Raises:
            NvmlError: the request itself failed (``NOT_SUPPORTED`` on a GPU without
                MIG, ``NO_PERMISSION``).
        """
        with self._gate.shared():
            gpu = self._gpu(uuid)
            mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
            verb = "enable" if enabled else "disable"
            with _nvml(f"{gpu.label}: {verb} MIG mode", change=True):
                status = pynvml.nvmlDeviceSetMigMode(gpu.handle, mode)
            # The profile table is cached per current mode (rule 5): a mode that took
            # effect is read afresh at the next observe.
            return error_name(int(status))

    def create_gi(self, uuid: str, profile_id: int, placement: Placement) -> GpuInstance:
        """Create a GI of ``profile_id`` at ``placement`` and read it back.

        Raises:
            NvmlError: e.g. ``NVML_ERROR_INSUFFICIENT_RESOURCES`` (overlap, cap),
                ``NVML_ERROR_INVALID_ARGUMENT`` (placement not possible for the profile),
                ``NVML_ERROR_NOT_SUPPORTED`` (MIG mode off).
        """
        with self._gate.shared():
            gpu = self._gpu(uuid)
            profile = self._gi_profile(gpu, profile_id)
            name = profile.name if profile is not None else f"profile {profile_id}"
            what = f"{gpu.label}: create GI {name} at {placement}"
            c_placement = pynvml.c_nvmlGpuInstancePlacement_t(placement.start, placement.size)
            with _nvml(what, change=True):
                gi = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(
                    gpu.handle, profile_id, ctypes.byref(c_placement)
                )
            with _nvml(f"{what}: read it back"):
                info = pynvml.nvmlGpuInstanceGetInfo(gi)
            return GpuInstance(
                gi_id=int(info.id),
                profile_id=int(info.profileId),
                profile=name,
                placement=Placement(int(info.placement.start), int(info.placement.size)),
            )

    def create_ci(
        self, uuid: str, gi_id: int, ci_profile_id: int, placement: Optional[Placement]
    ) -> ComputeInstance:
        """Create a CI of ``ci_profile_id`` in GI ``gi_id``, at ``placement`` (compute
        slices of the GI) or where the driver puts it when ``placement`` is None, and
        read it back with its MIG device UUID.

        Raises:
            NvmlError: e.g. ``NVML_ERROR_NOT_FOUND`` (no such GI),
                ``NVML_ERROR_INSUFFICIENT_RESOURCES`` (overlap, cap).
        """
        with self._gate.shared():
            gpu = self._gpu(uuid)
            gi = self._gi_handle(gpu, gi_id, f"create CI in GI {gi_id}")
            with _nvml(f"{gpu.label}: read GI {gi_id}"):
                gi_info = pynvml.nvmlGpuInstanceGetInfo(gi)
            ci_profiles = self._ci_profiles_of(gpu, int(gi_info.profileId), gi)
            name = next(
                (p.name for p in ci_profiles if p.id == ci_profile_id),
                f"profile {ci_profile_id}",
            )
            where = f" at {placement}" if placement is not None else ""
            what = f"{gpu.label}: create CI {name}{where} in GI {gi_id}"
            with _nvml(what, change=True):
                if placement is None:
                    ci = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, ci_profile_id)
                else:
                    c_placement = pynvml.c_nvmlComputeInstancePlacement_t(
                        placement.start, placement.size
                    )
                    ci = pynvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(
                        gi, ci_profile_id, ctypes.byref(c_placement)
                    )
            with _nvml(f"{what}: read it back"):
                info = pynvml.nvmlComputeInstanceGetInfo(ci)
            ci_id = int(info.id)
            devices = self._mig_devices(gpu, stop_at=(gi_id, ci_id))
            found = devices.get((gi_id, ci_id))
            return ComputeInstance(
                ci_id=ci_id,
                profile_id=int(info.profileId),
                profile=name,
                placement=Placement(int(info.placement.start), int(info.placement.size)),
                uuid=found[0] if found is not None else "",
            )

    def destroy_ci(self, uuid: str, gi_id: int, ci_id: int) -> None:
        """Raises ``NvmlError`` (``NVML_ERROR_IN_USE`` while processes run on it)."""
        with self._gate.shared():
            gpu = self._gpu(uuid)
            what = f"destroy CI {ci_id} in GI {gi_id}"
            gi = self._gi_handle(gpu, gi_id, what)
            with _nvml(f"{gpu.label}: {what}"):
                ci = pynvml.nvmlGpuInstanceGetComputeInstanceById(gi, ci_id)
            with _nvml(f"{gpu.label}: {what}", change=True):
                pynvml.nvmlComputeInstanceDestroy(ci)

    def destroy_gi(self, uuid: str, gi_id: int) -> None:
        """Raises ``NvmlError`` (``NVML_ERROR_IN_USE`` while it has CIs or processes)."""
        with self._gate.shared():
            gpu = self._gpu(uuid)
            what = f"destroy GI {gi_id}"
            gi = self._gi_handle(gpu, gi_id, what)
            with _nvml(f"{gpu.label}: {what}", change=True):
                pynvml.nvmlGpuInstanceDestroy(gi)

    def reset_gpu(self, uuid: str) -> None:
        """Reset one GPU (activates a pending MIG mode change; destroys every instance),
        with the backend's reset tool while NVML is shut down (rule 7); other threads'
        NVML calls wait for it.

        Raises:
            NvmlError: the reset failed (``NVML_ERROR_IN_USE`` when a client holds the
                GPU), with the tool's message.
            DriverUnavailable: NVML could not be initialised again after the reset.
        """
        self.reset_gpus((uuid,))

    def reset_gpus(self, uuids: Sequence[str]) -> None:
        """Reset several GPUs in one command (NVLink peers while Fabric Manager is not
        running, rule 11), as ``reset_gpu`` does one."""
        with self._gate.exclusive():
            gpus = [self._gpu(uuid) for uuid in uuids]
            if len(gpus) == 1:
                what = f"{gpus[0].label}: reset the GPU"
            else:
                what = "GPUs " + ", ".join(str(g.index) for g in gpus) + ": reset together"
            bus_ids = ",".join(g.pci_bus_id for g in gpus)
            with _nvml(f"{what}: shut NVML down first"):
                pynvml.nvmlShutdown()
            # Handles do not survive the shutdown: enumerate again afterwards.
            self._gpus = None
            self._open = False
            try:
                self.backend.reset(bus_ids, what)
            finally:
                self._init()
                self._open = True

    def nvswitch_gpus(self) -> Tuple[str, ...]:
        """The UUIDs of the GPUs whose NVLinks go to an NVSwitch (rule 11), by index;
        empty on a node without one.

        Raises:
            NvmlError: a link read failed with another error than "no such link".
        """
        if self._nvswitch is not None:
            return self._nvswitch
        with self._gate.shared():
            members = tuple(
                gpu.uuid
                for gpu in self._devices()
                if gpu.handle is not None and not gpu.error and self._on_nvswitch(gpu)
            )
        self._nvswitch = members
        return members

    @staticmethod
    def _on_nvswitch(gpu: _Gpu) -> bool:
        for link in range(NVLINK_MAX_LINKS):
            try:
                kind = pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(gpu.handle, link)
            except pynvml.NVMLError as err:
                if _code(err) in _NO_LINK:
                    return False
                raise _translate(err, f"{gpu.label}: read the far end of NVLink {link}") from err
            if int(kind) == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH:
                return True
        return False

    # ------------------------------------------------------------------ devices

    def _devices(self) -> List[_Gpu]:
        gpus = self._gpus
        if gpus is not None:
            return gpus
        with _nvml("NVML: count the GPUs"):
            count = int(pynvml.nvmlDeviceGetCount())
        gpus = [self._identify(index) for index in range(count)]
        self._gpus = gpus
        return gpus

    def _identify(self, index: int) -> _Gpu:
        """One GPU's identity; a sick GPU (rule 10) is read once more, then returned as
        sick with what could be read."""
        try:
            return self._read_identity(index)
        except _SickRead:
            pass
        try:
            return self._read_identity(index)
        except _SickRead as sick:
            return _Gpu(
                index=index,
                handle=None,
                uuid=sick.uuid,
                pci_bus_id=sick.pci_bus_id,
                pci_device_id=0,
                name="",
                architecture="unknown",
                error=sick.error.nvml_error,
                failed=sick.step,
            )

    def _read_identity(self, index: int) -> _Gpu:
        step = "get its handle"
        uuid = bus_id = ""
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            step = "read its UUID"
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            step = "read its PCI info"
            pci = pynvml.nvmlDeviceGetPciInfo(handle)
            bus_id = _text(pci.busId)
            step = "read its name"
            name = _text(pynvml.nvmlDeviceGetName(handle))
        except pynvml.NVMLError as err:
            label = f"GPU {index} ({uuid})" if uuid else f"GPU {index}"
            failure = _translate(err, f"{label}: {step}")
            if failure.nvml_error in SICK:
                raise _SickRead(failure, step, uuid, bus_id) from err
            raise failure from err
        label = f"GPU {index} ({uuid})"
        try:
            arch = _ARCHITECTURES.get(int(pynvml.nvmlDeviceGetArchitecture(handle)), "unknown")
        except pynvml.NVMLError as err:
            if _code(err) not in (
                pynvml.NVML_ERROR_NOT_SUPPORTED,
                pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
            ):
                failure = _translate(err, f"{label}: read its architecture")
                if failure.nvml_error in SICK:
                    raise _SickRead(failure, "read its architecture", uuid, bus_id) from err
                raise failure from err
            arch = "unknown"
        try:
            mode = int(pynvml.nvmlDeviceGetVirtualizationMode(handle))
        except pynvml.NVMLError:
            mode = -1  # not answered: nothing is concluded from it (rule 12)
        return _Gpu(
            index=index,
            handle=handle,
            uuid=uuid,
            pci_bus_id=bus_id,
            pci_device_id=int(pci.pciDeviceId),
            name=name,
            architecture=arch,
            pci_subsystem_id=int(pci.pciSubSystemId),
            vgpu_host=mode in VGPU_HOST_MODES,
        )

    def _gpu(self, uuid: str) -> _Gpu:
        gpus = self._devices()
        for gpu in gpus:
            if gpu.uuid == uuid and not gpu.error:
                return gpu
        raise NvmlError(
            nvml_error=error_name(pynvml.NVML_ERROR_NOT_FOUND),
            what=f"GPU {uuid}: not among the {len(gpus)} GPUs NVML lists (`nvidia-smi -L` "
            "shows them)",
            code=pynvml.NVML_ERROR_NOT_FOUND,
        )

    def _mig_mode(self, gpu: _Gpu) -> Optional[Tuple[bool, bool]]:
        """``(current, pending)``, or None when the GPU is not MIG capable."""
        try:
            current, pending = pynvml.nvmlDeviceGetMigMode(gpu.handle)
        except pynvml.NVMLError as err:
            if _code(err) == pynvml.NVML_ERROR_NOT_SUPPORTED:
                return None
            raise _translate(err, f"{gpu.label}: read the MIG mode") from err
        return bool(current), bool(pending)

    # ------------------------------------------------------------------ observe

    def _observe_one(self, gpu: _Gpu, devices: bool, tolerant: bool) -> GpuState:
        """One GPU of ``observe``; a sick one (rule 10: its MIG mode, the first read of
        every observation, fails twice) is observed as such, not raised. The reads after
        it (profile tables, instances) fail the observation as before (rule 3)."""
        if not gpu.error:
            try:
                mode = self._mig_mode(gpu)
            except NvmlError as err:
                if err.nvml_error not in SICK:
                    raise
                try:  # once more: a read that fails once by chance is not a sick GPU
                    mode = self._mig_mode(gpu)
                except NvmlError as again:
                    if again.nvml_error not in SICK:
                        raise
                    prefix = gpu.label + ": "
                    what = again.what
                    gpu.error = again.nvml_error
                    gpu.failed = what[len(prefix) :] if what.startswith(prefix) else what
            if not gpu.error:
                return self._observe(gpu, devices, tolerant, (mode,))
        return GpuState(gpu.identity(mig_capable=False), False, False, (), ())

    def _observe(
        self,
        gpu: _Gpu,
        devices: bool = True,
        tolerant: bool = False,
        known: Optional[Tuple[Optional[Tuple[bool, bool]]]] = None,
    ) -> GpuState:
        """One GPU's state; ``tolerant``: an instance that vanishes while it is read is
        left out (else its error is raised); ``known``: ``(the MIG mode,)`` when it was
        read already (``_observe_one``)."""
        mode = known[0] if known is not None else self._mig_mode(gpu)
        capable = mode is not None
        current, pending = mode if mode is not None else (False, False)
        identity = gpu.identity(mig_capable=capable)
        if not capable:
            return GpuState(identity, False, False, (), ())
        self._load_table(gpu, current)
        instances: Tuple[GpuInstance, ...] = ()
        if current:
            instances = self._instances(gpu, devices, tolerant)
        return GpuState(identity, current, pending, self._profiles(gpu), instances)

    def _instances(
        self, gpu: _Gpu, devices: bool = True, tolerant: bool = False
    ) -> Tuple[GpuInstance, ...]:
        found: List[Tuple[GpuInstance, List[ComputeInstance]]] = []
        taken = 0  # the memory slices of the GIs found so far, as a mask
        for profile in gpu.gi_profiles:
            if profile.placements and all(p.mask() & taken for p in profile.placements):
                continue  # rule 9: no GI of this profile can exist
            for gi in self._gi_handles(gpu, profile):
                try:
                    with _nvml(f"{gpu.label}: read a GI of {profile.name}"):
                        info = pynvml.nvmlGpuInstanceGetInfo(gi)
                    gi_id = int(info.id)
                    cis = self._cis(gpu, profile, gi, gi_id, tolerant)
                except NvmlError as err:
                    if tolerant and err.nvml_error in VANISHED and _gi_gone(gi):
                        continue  # another process destroyed it while it was read
                    raise
                placement = Placement(int(info.placement.start), int(info.placement.size))
                taken |= placement.mask()
                found.append(
                    (GpuInstance(gi_id, int(info.profileId), profile.name, placement), cis)
                )
        ci_count = sum(len(cis) for _, cis in found)
        if not ci_count:
            return tuple(sorted((gi for gi, _ in found), key=lambda g: g.placement))
        if not devices:
            return tuple(
                sorted(
                    (
                        replace(gi, cis=tuple(sorted(cis, key=lambda c: c.placement)))
                        for gi, cis in found
                    ),
                    key=lambda g: g.placement,
                )
            )
        scanned = self._mig_devices(gpu, want=ci_count, tolerant=tolerant)
        instances = []
        for gi, cis in found:
            full = []
            for ci in cis:
                device = scanned.get((gi.gi_id, ci.ci_id))
                if device is not None:
                    ci = replace(ci, uuid=device[0], pids=device[1], pids_error=device[2])
                full.append(ci)
            full.sort(key=lambda c: c.placement)
            instances.append(replace(gi, cis=tuple(full)))
        return tuple(sorted(instances, key=lambda g: g.placement))

    def _gi_handles(self, gpu: _Gpu, profile: GiProfile) -> List[Any]:
        if profile.max <= 0:
            return []
        buf = (pynvml.c_nvmlGpuInstance_t * profile.max)()
        count = ctypes.c_uint(profile.max)
        with _nvml(f"{gpu.label}: list the GIs of {profile.name} (ID {profile.id})"):
            pynvml.nvmlDeviceGetGpuInstances(gpu.handle, profile.id, buf, ctypes.byref(count))
        return [buf[i] for i in range(min(count.value, profile.max))]

    def _cis(
        self, gpu: _Gpu, profile: GiProfile, gi: Any, gi_id: int, tolerant: bool = False
    ) -> List[ComputeInstance]:
        cis: List[ComputeInstance] = []
        for ci_profile in self._ci_profiles_of(gpu, profile.id, gi):
            if ci_profile.max <= 0:
                continue
            buf = (pynvml.c_nvmlComputeInstance_t * ci_profile.max)()
            count = ctypes.c_uint(ci_profile.max)
            what = f"{gpu.label}: list the CIs of {ci_profile.name} in GI {gi_id}"
            with _nvml(what):
                pynvml.nvmlGpuInstanceGetComputeInstances(
                    gi, ci_profile.id, buf, ctypes.byref(count)
                )
            for i in range(min(count.value, ci_profile.max)):
                try:
                    with _nvml(f"{gpu.label}: read a CI of {ci_profile.name} in GI {gi_id}"):
                        info = pynvml.nvmlComputeInstanceGetInfo(buf[i])
                except NvmlError as err:
                    if tolerant and err.nvml_error in VANISHED:
                        continue  # another process destroyed it after the listing
                    raise
                cis.append(
                    ComputeInstance(
                        ci_id=int(info.id),
                        profile_id=int(info.profileId),
                        profile=ci_profile.name,
                        placement=Placement(int(info.placement.start), int(info.placement.size)),
                        uuid="",
                    )
                )
        return cis

    def _mig_devices(
        self,
        gpu: _Gpu,
        stop_at: Optional[Tuple[int, int]] = None,
        want: int = 0,
        tolerant: bool = False,
    ) -> Dict[Tuple[int, int], Tuple[str, Tuple[int, ...], str]]:
        """(GI ID, CI ID) -> (MIG device UUID, pids, the NVML error when the processes
        cannot be read: rule 12), from the MIG device handles.

        Indices without a device answer NOT_FOUND or INVALID_ARGUMENT and are skipped.
        The scan ends once ``want`` devices are found (the CIs just listed); with
        ``stop_at`` it ends at that CI and reads no processes."""
        with _nvml(f"{gpu.label}: read the MIG device count"):
            count = int(pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu.handle))
        devices: Dict[Tuple[int, int], Tuple[str, Tuple[int, ...], str]] = {}
        for index in range(count):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, index)
            except pynvml.NVMLError as err:
                if _code(err) in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_INVALID_ARGUMENT):
                    continue
                raise _translate(err, f"{gpu.label}: get MIG device {index}") from err
            what = f"{gpu.label}: read MIG device {index}"
            try:
                with _nvml(what):
                    key = (
                        int(pynvml.nvmlDeviceGetGpuInstanceId(mig)),
                        int(pynvml.nvmlDeviceGetComputeInstanceId(mig)),
                    )
                    mig_uuid = _text(pynvml.nvmlDeviceGetUUID(mig))
                if stop_at is not None:
                    if key == stop_at:
                        return {key: (mig_uuid, (), "")}
                    continue
                pids, pids_error = self._pids(mig, f"{what} (GI {key[0]}, CI {key[1]})")
            except NvmlError as err:
                if (tolerant or stop_at is not None) and err.nvml_error in VANISHED:
                    continue  # its CI was destroyed between the handle and the reads
                raise
            devices[key] = (mig_uuid, pids, pids_error)
            if want and len(devices) >= want:
                break
        return devices

    @staticmethod
    def _pids(mig: Any, what: str) -> Tuple[Tuple[int, ...], str]:
        """The pids on a MIG device and "", or () and the NVML error name when NVML does
        not answer the per-instance query (rule 12)."""
        with _nvml(f"{what}: list its processes"):
            try:
                try:
                    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(mig)
                except pynvml.NVMLLibraryMismatchError:
                    # Drivers older than the _v3 call still have _v2.
                    procs = pynvml.nvmlDeviceGetComputeRunningProcesses_v2(mig)
            except pynvml.NVMLError as err:
                if _code(err) == pynvml.NVML_ERROR_NOT_SUPPORTED:
                    return (), error_name(_code(err))
                raise
        return tuple(sorted({int(p.pid) for p in procs})), ""

    # ------------------------------------------------------------------ profiles

    def _load_table(self, gpu: _Gpu, current: bool) -> None:
        if gpu.table_mode is current:
            return
        key = (gpu.name, gpu.pci_device_id, current)
        shared = self._tables.get(key)
        if shared is None:
            shared = self._tables[key] = self._read_table(gpu)
        gpu.gi_profiles = shared
        gpu.ci_read = self._ci_tables.setdefault(key, {})
        gpu.table_mode = current

    def _read_table(self, gpu: _Gpu) -> Tuple[GiProfile, ...]:
        profiles: List[GiProfile] = []

        def read(i: int) -> Any:
            return pynvml.nvmlDeviceGetGpuInstanceProfileInfo(gpu.handle, i)

        for index in range(MAX_PROFILE_INDEX):
            what = f"{gpu.label}: read GI profile index {index}"
            try:
                info = read(index)
            except pynvml.NVMLError as err:
                if _code(err) == pynvml.NVML_ERROR_NOT_SUPPORTED:
                    continue
                if _code(err) == pynvml.NVML_ERROR_INVALID_ARGUMENT:
                    info = _past_the_end(read, index, what)
                    if info is None:
                        break
                    if info is _SKIP:
                        continue
                else:
                    raise _translate(err, what) from err
            name = _profile_name(info.name)
            profile_id = int(info.id)
            what = f"{gpu.label}: read the placements of GI profile {name} (ID {profile_id})"
            placements = _placements(
                pynvml.nvmlDeviceGetGpuInstancePossiblePlacements,
                pynvml.c_nvmlGpuInstancePlacement_t,
                gpu.handle,
                profile_id,
                what,
            )
            profiles.append(
                GiProfile(
                    index=index,
                    id=profile_id,
                    name=name,
                    slices=int(info.sliceCount),
                    memory_mib=int(info.memorySizeMB),
                    sms=int(info.multiprocessorCount),
                    max=int(info.instanceCount),
                    placements=placements,
                    copy_engines=int(info.copyEngineCount),
                    decoders=int(info.decoderCount),
                    encoders=int(info.encoderCount),
                    jpeg=int(info.jpegCount),
                    ofa=int(info.ofaCount),
                )
            )
        return tuple(profiles)

    def _gi_profile(self, gpu: _Gpu, profile_id: int) -> Optional[GiProfile]:
        for profile in gpu.gi_profiles:
            if profile.id == profile_id:
                return profile
        mode = self._mig_mode(gpu)
        if mode is None:
            return None
        self._load_table(gpu, mode[0])
        for profile in gpu.gi_profiles:
            if profile.id == profile_id:
                return profile
        return None

    def _profiles(self, gpu: _Gpu) -> Tuple[GiProfile, ...]:
        """The GI profile table with each profile's CI list (rule 6)."""
        out = []
        for profile in gpu.gi_profiles:
            cis = gpu.ci_read.get(profile.id)
            if cis is None:
                out.append(replace(profile, ci_profiles=(), cis_read=False))
            else:
                out.append(replace(profile, ci_profiles=cis, cis_read=True))
        return tuple(out)

    def _ci_profiles_of(self, gpu: _Gpu, gi_profile_id: int, gi: Any) -> Tuple[CiProfile, ...]:
        """The CI profiles of a GI profile, read from ``gi`` (a GI of that profile) once
        per session and MIG mode."""
        cached = gpu.ci_read.get(gi_profile_id)
        if cached is not None:
            return cached
        gi_profile = self._gi_profile(gpu, gi_profile_id)
        gi_name = gi_profile.name if gi_profile is not None else f"profile {gi_profile_id}"
        read: List[CiProfile] = []

        def read_ci(i: int) -> Any:
            return pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, i, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
            )

        for index in range(MAX_PROFILE_INDEX):
            what = f"{gpu.label}: read CI profile index {index} in a GI of {gi_name}"
            try:
                info = read_ci(index)
            except pynvml.NVMLError as err:
                if _code(err) == pynvml.NVML_ERROR_NOT_SUPPORTED:
                    continue
                if _code(err) == pynvml.NVML_ERROR_INVALID_ARGUMENT:
                    info = _past_the_end(read_ci, index, what)
                    if info is None:
                        break
                    if info is _SKIP:
                        continue
                else:
                    raise _translate(err, what) from err
            name = _profile_name(info.name)
            what = f"{gpu.label}: read the placements of CI profile {name} in a GI of {gi_name}"
            placements = _placements(
                pynvml.nvmlGpuInstanceGetComputeInstancePossiblePlacements,
                pynvml.c_nvmlComputeInstancePlacement_t,
                gi,
                int(info.id),
                what,
            )
            read.append(
                CiProfile(
                    id=int(info.id),
                    name=name,
                    slices=int(info.sliceCount),
                    max=int(info.instanceCount),
                    sms=int(info.multiprocessorCount),
                    placements=placements,
                )
            )
        # A GI another process destroyed mid-read answers INVALID_ARGUMENT, which the loop
        # above takes for the end of the table: only a GI still there vouches for what
        # was read (else the observation reads again and nothing short is cached).
        with _nvml(f"{gpu.label}: a GI of {gi_name} went away while its CI profiles were read"):
            pynvml.nvmlGpuInstanceGetInfo(gi)
        result = _mark_default(tuple(read), gi_name, gi_profile.slices if gi_profile else None)
        gpu.ci_read[gi_profile_id] = result
        return result

    def _gi_handle(self, gpu: _Gpu, gi_id: int, doing: str) -> Any:
        with _nvml(f"{gpu.label}: {doing}: find GI {gi_id}"):
            return pynvml.nvmlDeviceGetGpuInstanceById(gpu.handle, gi_id)


class _SickRead(Exception):
    """A GPU's identity read failed with a ``SICK`` error, after ``uuid`` and
    ``pci_bus_id`` were read ("" when not)."""

    def __init__(self, error: NvmlError, step: str, uuid: str, pci_bus_id: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.step = step
        self.uuid = uuid
        self.pci_bus_id = pci_bus_id


def _gi_gone(gi: Any) -> bool:
    """Whether NVML no longer knows the GI behind ``gi`` (another process destroyed it)."""
    try:
        pynvml.nvmlGpuInstanceGetInfo(gi)
    except pynvml.NVMLError as err:
        return _code(err) in (pynvml.NVML_ERROR_INVALID_ARGUMENT, pynvml.NVML_ERROR_NOT_FOUND)
    return False


def _past_the_end(read: Callable[[int], Any], index: int, what: str) -> Any:
    """After ``INVALID_ARGUMENT`` at ``index`` (rule 3): ``index`` read again answers
    the profile, ``_SKIP`` (``NOT_SUPPORTED``: not offered), or ``INVALID_ARGUMENT``
    once more; then None when the next index answers the same too (the table ends).
    A one-shot misleading answer on the last entry thus never shortens a table.

    Raises:
        NvmlError: any other error, on ``index`` or the next one (naming which), or
            the table goes on but ``index`` keeps failing.
    """
    try:
        return read(index)
    except pynvml.NVMLError as err:
        if _code(err) == pynvml.NVML_ERROR_NOT_SUPPORTED:
            return _SKIP
        if _code(err) != pynvml.NVML_ERROR_INVALID_ARGUMENT:
            raise _translate(err, f"{what} (read again)") from err
        again = err
    try:
        read(index + 1)
    except pynvml.NVMLError as err:
        if _code(err) == pynvml.NVML_ERROR_INVALID_ARGUMENT:
            return None
        if _code(err) != pynvml.NVML_ERROR_NOT_SUPPORTED:
            raise _translate(err, f"{what}, then index {index + 1}") from err
    raise _translate(again, f"{what} (the indices after it answer)") from again


_SKIP = object()
"""``_past_the_end``: the index is not offered (``NOT_SUPPORTED`` when read again)."""


def _placements(
    query: Callable[..., Any], struct: Any, owner: Any, profile_id: int, what: str
) -> Tuple[Placement, ...]:
    """A possible-placements query: the count first (NULL array), then the array."""
    count = ctypes.c_uint(0)
    with _nvml(what):
        query(owner, profile_id, None, ctypes.byref(count))
        if count.value == 0:
            return ()
        buf = (struct * count.value)()
        query(owner, profile_id, buf, ctypes.byref(count))
    return tuple(sorted(Placement(int(buf[i].start), int(buf[i].size)) for i in range(count.value)))


def _mark_default(
    profiles: Tuple[CiProfile, ...], gi_name: str, gi_slices: Optional[int]
) -> Tuple[CiProfile, ...]:
    """Mark the CI that covers the whole GI (the one ``nvidia-smi -C`` creates): the
    profile named like the GI, else the largest one spanning all its compute slices."""
    chosen: Optional[int] = None
    for ci in profiles:
        if ci.name == gi_name:
            chosen = ci.id
    if chosen is None and gi_slices is not None:
        covering = [ci.id for ci in profiles if ci.slices == gi_slices]
        if covering:
            chosen = max(covering)
    return tuple(replace(ci, default=ci.id == chosen) for ci in profiles)
