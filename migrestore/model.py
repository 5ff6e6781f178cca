"""The vocabulary of migrestore: immutable values shared by every module.

Rules:

1. Pure data: this module imports nothing but the standard library and does no I/O.
2. Everything is frozen and built from tuples, so values can be compared, hashed and
   used as the input of pure functions (placement, planner) whose output is
   deterministic.
3. Names follow NVML: a *GPU instance* (GI) owns memory slices; a *compute instance*
   (CI) lives inside a GI and owns compute slices of it. Profile names are written as
   NVML prints them without the ``MIG `` prefix (``1g.10gb``, ``1g.10gb+me``,
   ``1c.3g.40gb``).
4. A GI is identified on its GPU by its placement start: GI placements never overlap,
   so ``(gpu uuid, placement.start)`` names one GI for its whole life. GI IDs are read
   back from the driver, never predicted.
5. Processes unknown is not zero processes: a MIG device whose process query NVML
   does not answer (NOT_SUPPORTED on a vGPU host) carries the NVML error in
   ``ComputeInstance.pids_error`` and ``pids`` says nothing about it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn, Optional, Tuple, Union

# --------------------------------------------------------------------------- slices


@dataclass(frozen=True, order=True)
class Placement:
    """``start`` and ``size`` in the unit of the table: memory slices for a GI
    (placement units on parts that have them), compute slices for a CI."""

    start: int
    size: int

    @property
    def end(self) -> int:
        """One past the last slice."""
        return self.start + self.size

    def mask(self) -> int:
        """The slices as a bit mask (bit i = slice i)."""
        return ((1 << self.size) - 1) << self.start

    def overlaps(self, other: Placement) -> bool:
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"{self.start}:{self.size}"


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class CiProfile:
    """A compute-instance profile available inside GIs of one GI profile."""

    id: int  # NVML_COMPUTE_INSTANCE_PROFILE_* value; equals the index
    name: str  # "1c.3g.40gb", or the GI's name for the CI covering the whole GI
    slices: int  # compute slices
    max: int  # instanceCount inside one GI
    sms: int
    placements: Tuple[Placement, ...]  # in compute slices of the GI
    default: bool = False  # the CI nvidia-smi -C creates (covers the GI)


@dataclass(frozen=True)
class GiProfile:
    """A GPU-instance profile as NVML reports it."""

    index: int  # the NVML_GPU_INSTANCE_PROFILE_* index passed to GetGpuInstanceProfileInfo
    id: int  # the profile ID every other call takes
    name: str  # "1g.10gb", "1g.10gb+me"
    slices: int  # compute slices (sliceCount)
    memory_mib: int
    sms: int
    max: int  # instanceCount
    placements: Tuple[Placement, ...]
    ci_profiles: Tuple[CiProfile, ...] = ()
    copy_engines: int = 0
    decoders: int = 0
    encoders: int = 0
    jpeg: int = 0
    ofa: int = 0
    # False: the CI profiles were not read yet (no GI of this profile exists; the CI
    # profiles of a GI can only be read from a GI), so ``ci_profiles`` is empty.
    cis_read: bool = True

    def ci_profile(self, name: str) -> Optional[CiProfile]:
        for ci in self.ci_profiles:
            if ci.name == name:
                return ci
        return None

    def default_ci(self) -> Optional[CiProfile]:
        for ci in self.ci_profiles:
            if ci.default:
                return ci
        return None


def find_profile(
    profiles: Tuple[GiProfile, ...],
    *,
    name: Optional[str] = None,
    profile_id: Optional[int] = None,
    index: Optional[int] = None,
) -> Optional[GiProfile]:
    """The profile of a table with that name, profile ID or profile index."""
    for p in profiles:
        if (
            (name is None or p.name == name)
            and (profile_id is None or p.id == profile_id)
            and (index is None or p.index == index)
        ):
            return p
    return None


def media_class(profile_name: str) -> str:
    """The media-engine class a profile name carries: ``all`` (+me.all), ``none`` (-me),
    ``me`` (+me), ``gfx`` (+gfx) or ``plain``. nvml.h: allocating an *_ALL_ME instance
    prevents allocation of all but *_NO_ME profiles."""
    if profile_name.endswith("+me.all"):
        return "all"
    if profile_name.endswith("-me"):
        return "none"
    if profile_name.endswith("+me"):
        return "me"
    if profile_name.endswith("+gfx"):
        return "gfx"
    return "plain"


# --------------------------------------------------------------------------- observed


ARCH_AMPERE = "ampere"
ARCH_HOPPER = "hopper"
ARCH_BLACKWELL = "blackwell"


@dataclass(frozen=True)
class GpuIdentity:
    """Who a GPU is, as NVML names it; read once per session."""

    index: int
    uuid: str  # "GPU-..."
    pci_bus_id: str  # "00000000:18:00.0"
    pci_device_id: int  # e.g. 0x233010DE
    name: str  # "NVIDIA H100 80GB HBM3"
    architecture: str  # ARCH_* (lower case), or "unknown"
    mig_capable: bool
    pci_subsystem_id: int = 0  # e.g. 0x16C010DE (subsystem device, vendor); 0: not read
    # A sick GPU (fell off the bus, its reads fail): the NVML error name ("" when healthy)
    # and what failed ("get its handle"). Its uuid and pci_bus_id are "" when unreadable.
    error: str = ""
    failed: str = ""
    # NVML reads the GPU's virtualization mode as a vGPU host's (HOST_VGPU/HOST_VSGA):
    # a VM may use any of its instances, so their processes are unknown (rule 5)
    vgpu_host: bool = False

    @property
    def sick(self) -> bool:
        return bool(self.error)

    def describe_sick(self) -> str:
        """``GPU 3 (bus id unknown): get its handle: NVML_ERROR_GPU_IS_LOST``."""
        where = self.pci_bus_id or "bus id unknown"
        return f"GPU {self.index} ({where}): {self.failed}: {self.error}"

    @property
    def resets_for_mode(self) -> bool:
        """Ampere activates a MIG mode change through a GPU reset; Hopper and later
        change the mode at once."""
        return self.architecture == ARCH_AMPERE


@dataclass(frozen=True)
class ComputeInstance:
    """A CI as observed, with its MIG device UUID and the processes on it."""

    ci_id: int
    profile_id: int
    profile: str  # CI profile name
    placement: Placement  # compute slices inside the GI
    uuid: str  # MIG device UUID ("MIG-..."); "" when the driver exposes none
    pids: Tuple[int, ...] = ()
    # the NVML error name when its processes cannot be read (NVML_ERROR_NOT_SUPPORTED on
    # a vGPU host): processes unknown, never "no process" (rule 5); "" when read
    pids_error: str = ""


@dataclass(frozen=True)
class GpuInstance:
    """A GI as observed, with its CIs."""

    gi_id: int
    profile_id: int
    profile: str  # GI profile name
    placement: Placement  # memory slices
    cis: Tuple[ComputeInstance, ...] = ()

    @property
    def pids(self) -> Tuple[int, ...]:
        return tuple(sorted({pid for ci in self.cis for pid in ci.pids}))

    @property
    def pids_error(self) -> str:
        """The NVML error of the first CI whose processes cannot be read, or ""."""
        return next((ci.pids_error for ci in self.cis if ci.pids_error), "")

    def describe(self) -> str:
        return f"GI {self.gi_id} ({self.profile} at {self.placement})"


@dataclass(frozen=True)
class GpuState:
    """One GPU as observed: identity, MIG mode, profile table and geometry."""

    identity: GpuIdentity
    mig_current: bool
    mig_pending: bool
    profiles: Tuple[GiProfile, ...]
    instances: Tuple[GpuInstance, ...]  # sorted by placement start

    @property
    def uuid(self) -> str:
        return self.identity.uuid

    @property
    def index(self) -> int:
        return self.identity.index

    def profile(self, name: str) -> Optional[GiProfile]:
        return find_profile(self.profiles, name=name)

    def profile_by_id(self, profile_id: int) -> Optional[GiProfile]:
        return find_profile(self.profiles, profile_id=profile_id)

    @property
    def sick(self) -> bool:
        """NVML could not read this GPU (``identity.error``): nothing is planned for it."""
        return self.identity.sick

    def label(self) -> str:
        """How log lines and errors name a GPU: index and UUID (the PCI bus id, or
        that neither is known, for a sick GPU whose UUID cannot be read)."""
        ident = self.identity
        return f"{ident.index} ({ident.uuid or ident.pci_bus_id or 'UUID unreadable'})"


Observed = Tuple[GpuState, ...]


# --------------------------------------------------------------------------- desired


@dataclass(frozen=True)
class InstanceSpec:
    """One GI wanted on a GPU."""

    profile: str  # GI profile name
    placement: Optional[int] = None  # start slice, or None: the solver chooses
    compute: Tuple[str, ...] = ()  # CI profile names; () = one CI covering the GI
    # ``compute: []``: a GI with no compute instance (a vGPU host's GI, which the
    # hypervisor hands to a VM whole); ``compute`` is then ()
    no_compute: bool = False
    # Where the config wrote it (line and key path), for messages; not part of its value.
    line: Optional[int] = field(default=None, compare=False)
    key: str = field(default="", compare=False)


@dataclass(frozen=True)
class GpuSpec:
    """What one GPU should look like."""

    mig: bool
    instances: Tuple[InstanceSpec, ...] = ()
    source: str = ""  # "file:line" of the rule that produced it, for messages


class DriftPolicy(str, enum.Enum):
    """What the watch does when the geometry drifts (``drift.policy``)."""

    RESTORE = "restore"  # converge again
    WARN = "warn"  # log, STATUS= and state file ``drift``; change nothing
    IGNORE = "ignore"  # a debug line only

    def __str__(self) -> str:
        return str(self.value)


class ResetPolicy(str, enum.Enum):
    """Whether a GPU reset may apply an Ampere MIG mode change (``ampere-reset``)."""

    ALLOW = "allow"
    NEVER = "never"

    def __str__(self) -> str:
        return str(self.value)


class CdiRefresh(str, enum.Enum):
    """Whether a pass that changed the geometry refreshes the device nodes and the CDI
    spec (``cdi.refresh``, ``migrestore.cdi``)."""

    AUTO = "auto"  # nvidia-cdi-refresh.service when installed, else nvidia-ctk directly
    NEVER = "never"

    def __str__(self) -> str:
        return str(self.value)


class RunResult(str, enum.Enum):
    """How a run ended, as the state file and ``status`` say it."""

    CONVERGED = "converged"  # nothing needed changing
    APPLIED = "applied"  # the geometry was changed and verified
    FAILED = "failed"  # the run failed (the message says why)
    DRIFT = "drift"  # the watch found drift and only warned (drift.policy: warn)
    # some GPUs could not be restored (sick: NVML cannot read them; or declared and not
    # listed); every other GPU was restored and verified
    PARTIAL = "partial"

    def __str__(self) -> str:
        return str(self.value)


# The config's spellings, kept as names for callers and tests.
DRIFT_RESTORE = DriftPolicy.RESTORE
DRIFT_WARN = DriftPolicy.WARN
DRIFT_IGNORE = DriftPolicy.IGNORE
RESET_ALLOW = ResetPolicy.ALLOW
RESET_NEVER = ResetPolicy.NEVER

DEFAULT_CLIENTS: Tuple[str, ...] = (
    "nvidia-dcgm.service",
    "dcgm.service",
    "nvsm.service",
    "dcgm-exporter.service",
)


@dataclass(frozen=True)
class Selector:
    """Which GPUs a rule matches. ``kind`` is one of ``all``, ``index``, ``uuid``,
    ``pci-bus-id``, ``model`` (glob on the NVML name) and ``device-id``; a GPU matches
    when any of ``values`` matches it."""

    kind: str
    values: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """A GPU matches when it matches every selector (``()`` matches every GPU)."""

    match: Tuple[Selector, ...]
    spec: GpuSpec
    line: Optional[int] = None


@dataclass(frozen=True)
class Hook:
    """A post-apply hook: an argv run without a shell, bounded by ``timeout``."""

    argv: Tuple[str, ...]
    timeout: float = 60.0
    line: Optional[int] = None


@dataclass(frozen=True)
class Config:
    """A validated config file: desired geometry plus the daemon's policies."""

    path: str
    rules: Tuple[Rule, ...]
    clients: Tuple[str, ...] = DEFAULT_CLIENTS
    drift_policy: DriftPolicy = DriftPolicy.RESTORE
    drift_interval: float = 60.0
    ampere_reset: ResetPolicy = ResetPolicy.ALLOW
    driver_wait: float = 120.0
    hooks: Tuple[Hook, ...] = ()
    selected: Optional[str] = None  # the mig-parted config name used, if any
    unit_timeout: float = 90.0  # bound on stopping one client unit
    # metrics.textfile: "" the key is absent (the default path when its directory
    # exists), None turned off, else the .prom file to write
    metrics_textfile: Optional[str] = ""
    cdi_refresh: CdiRefresh = CdiRefresh.AUTO
    cdi_timeout: float = 60.0  # bound on the whole device node and CDI refresh
    # of the config file's bytes (with a mig-parted file: of both); not part of equality
    sha256: str = field(default="", compare=False)


# --------------------------------------------------------------------------- actions
#
# One frozen class per kind of change, each with exactly its fields (no optional field
# stands for "not this kind"). ``Action`` is their union; code that handles actions
# dispatches with isinstance and ends in ``assert_never``, so mypy rejects a handler
# that forgets a kind. GIs are named by their placement start (``gi_start``): the
# executor maps it to the driver's GI ID, read back after creation. ``gi_id`` and
# ``ci_id`` are the observed IDs of instances that exist already (destroy actions).


def assert_never(value: NoReturn) -> NoReturn:
    """The end of an exhaustive isinstance chain over a union: mypy reports a missing
    branch as an error here, and at run time an unknown value is a bug."""
    raise AssertionError(f"unhandled value: {value!r}")


@dataclass(frozen=True)
class SetMode:
    """Enable or disable MIG mode (Ampere: pending until a reset)."""

    gpu: str  # GPU uuid
    gpu_index: int
    enabled: bool
    kind: ClassVar[str] = "set_mode"

    def describe(self) -> str:
        return f"GPU {self.gpu_index}: {'enable' if self.enabled else 'disable'} MIG mode"


@dataclass(frozen=True)
class Reset:
    """Reset the GPU; ``if_pending``: only when the mode change stayed pending."""

    gpu: str
    gpu_index: int
    if_pending: bool
    kind: ClassVar[str] = "reset"

    def describe(self) -> str:
        cond = " if the mode change stays pending" if self.if_pending else ""
        return f"GPU {self.gpu_index}: reset the GPU{cond}"


@dataclass(frozen=True)
class DestroyCi:
    """Destroy an observed CI (it names the GI by ID and by start)."""

    gpu: str
    gpu_index: int
    profile: str  # CI profile name
    profile_id: int
    placement: Placement  # compute slices of the GI
    gi_start: int
    gi_id: int
    ci_id: int
    kind: ClassVar[str] = "destroy_ci"

    def describe(self) -> str:
        return (
            f"GPU {self.gpu_index}: destroy CI {self.ci_id} ({self.profile} at "
            f"{self.placement}) in GI {self.gi_id}"
        )


@dataclass(frozen=True)
class DestroyGi:
    """Destroy an observed GI (its CIs are destroyed before)."""

    gpu: str
    gpu_index: int
    profile: str  # GI profile name
    profile_id: int
    placement: Placement  # memory slices
    gi_id: int
    kind: ClassVar[str] = "destroy_gi"

    def describe(self) -> str:
        return f"GPU {self.gpu_index}: destroy GI {self.gi_id} ({self.profile} at {self.placement})"


@dataclass(frozen=True)
class CreateGi:
    """Create a GI at an exact placement."""

    gpu: str
    gpu_index: int
    profile: str
    profile_id: int
    placement: Placement  # the GI is named by placement.start from here on
    kind: ClassVar[str] = "create_gi"

    def describe(self) -> str:
        return f"GPU {self.gpu_index}: create GI {self.profile} at {self.placement}"


@dataclass(frozen=True)
class CreateCi:
    """Create a CI at an exact placement in the GI that starts at ``gi_start``."""

    gpu: str
    gpu_index: int
    profile: str
    profile_id: int
    placement: Placement  # compute slices of the GI
    gi_start: int  # the GI, by its placement start
    kind: ClassVar[str] = "create_ci"

    def describe(self) -> str:
        return (
            f"GPU {self.gpu_index}: create CI {self.profile} at {self.placement} "
            f"in the GI at slice {self.gi_start}"
        )


Action = Union[SetMode, Reset, DestroyCi, DestroyGi, CreateGi, CreateCi]


@dataclass(frozen=True)
class GpuPlan:
    """The actions of one GPU, in order."""

    gpu: str  # uuid
    gpu_index: int
    actions: Tuple[Action, ...]
    spec: Optional[GpuSpec] = None  # None: no rule matched, the GPU is left alone
    # the step of each action (same length as ``actions``; () = one step): a step is
    # destroys and the creations that need them; steps are independent of each other,
    # so a failed destroy stops its own step only (issue 12 item 8)
    steps: Tuple[int, ...] = ()

    def step_of(self, i: int) -> int:
        return self.steps[i] if self.steps else 0


@dataclass(frozen=True)
class Plan:
    """The actions of every GPU; converged exactly when the GPUs show the config (no
    action, and nothing deferred to a later round)."""

    gpus: Tuple[GpuPlan, ...]
    unmatched: Tuple[str, ...] = ()  # labels of GPUs no rule matched (left untouched)
    notes: Tuple[str, ...] = field(default=())  # no-op reasons, one line each
    # uuids of GPUs with work that can only be planned after this plan ran: the GI
    # profiles (read once MIG is on, on drivers before R550) or the CI profiles of GIs
    # about to be made (read from the GIs)
    deferred: Tuple[str, ...] = ()
    # GPUs that cannot be restored, one line each: sick (NVML cannot read them) or
    # declared by a rule and not listed; non-empty makes the run's result PARTIAL
    unrestored: Tuple[str, ...] = field(default=())

    @property
    def actions(self) -> Tuple[Action, ...]:
        return tuple(a for g in self.gpus for a in g.actions)

    @property
    def converged(self) -> bool:
        return not self.actions and not self.deferred
