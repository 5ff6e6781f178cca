"""The MIG rules of the simulator: what NVML allows, refuses and chooses.

Rules (sources in ``docs/SIMULATOR.md`` and ``nvml-semantics.md``):

1. Every operation checks all its conditions before it changes anything, and fails by
   raising ``SimNvmlError`` with the code real NVML returns; so a failed call never leaves
   a half-made change. The fake library (C symbols) and the ``Simulator`` methods (and
   through them ``migrestore-sim``) run the same functions here.
2. Profile tables are static and the simulator's own (``models``: a GPU's model and its
   driver branch); GI placements count memory slices (placement units), CI placements
   count the compute slices of their GI.
3. GI IDs come from the RM swizzId table by placement (``swizz_id``), optionally through a
   per-GPU permutation, so callers must read them back. CI IDs are the lowest free from 0
   in their GI. MIG device UUIDs are new on every CI creation, derived from a counter in
   the state, so runs are reproducible.
4. The default GI placement (no placement given) is a recursive best fit over the buddy
   halves (``default_gi_placement``); the default CI placement is the lowest free one.
5. Mode: Hopper and later switch at once; Ampere switches only through a reset, which the
   driver does itself when nobody holds the GPU; a mode change while GIs exist is refused
   with IN_USE.
6. A process with NVML initialised is a client of every GPU (nvidia-smi(1) --gpu-reset:
   "There can't be any applications using these devices (e.g. ... monitoring application
   like other instance of nvidia-smi)"): while ANOTHER process holds a session, a reset
   fails IN_USE and an Ampere activation answers IN_USE. The caller's own session is
   not counted here (the reset tool's own check covers the calling process).
7. A GPU that fell off the bus (``GpuRecord.lost``, Xid 79) answers its error to every
   call that names it, a reset included (nvidia-smi --gpu-reset exits 15, "fallen off
   the bus"); a reboot brings it back with no instances, as any GPU after a reboot.
8. Resets (``reset_gpus``, the model of ``nvidia-smi --gpu-reset -i BUS[,BUS...]``): a
   passthrough GPU's platform refuses it (NOT_SUPPORTED, nvidia-smi's exit 3: "Resetting
   GPU ... is not supported", MIG guide), and its Ampere activation answers the status
   the state gives (RESET_REQUIRED as nvml.h says, or NOT_SUPPORTED as the guide's
   transcript shows); a loaded ``nvidia_drm`` module holds every GPU (IN_USE, mig-parted
   Known Issues); on an NVSwitch node an Ampere GPU is reset alone only while Fabric
   Manager runs, else the command must name every GPU of its NVSwitch group, and
   otherwise fails naming the missing ones (nvidia-smi(1); its exit status is not
   documented: modelled as 255, "other error", NVML_ERROR_UNKNOWN). The driver's own
   activation of an Ampere mode change is such a single-GPU reset: what blocks one
   leaves the change pending with IN_USE (inferred; mig-parted#181 shows it for
   nvidia_drm).
9. A hidden holder of an instance (``GiRecord.holders``, ``CiRecord.holders``: a leaked
   handle, DCGM; NVIDIA/DCGM#276 and #95) is listed by no process query, yet the
   instance's destroy answers IN_USE while the pid runs.
10. A GPU in vGPU host mode (``GpuRecord.vgpu_host``) answers NOT_SUPPORTED to process
    queries on its MIG device handles (nvml.h, ``nvmlDeviceGetComputeRunningProcesses_v3``:
    "not supported if the device is in vGPU Host virtualization mode"); the aggregate
    query on the GPU's own handle still answers, and its virtualization mode reads
    HOST_VGPU.
"""

from __future__ import annotations

import os
import random
import uuid as uuidlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from migrestore import tables
from migrestore.model import ARCH_AMPERE, CiProfile, GiProfile, Placement, media_class
from migrestore.simulator import codes, models
from migrestore.simulator.codes import SimNvmlError
from migrestore.simulator.state import (
    CHANGE_LOG_SIZE,
    Change,
    CiRecord,
    GiRecord,
    GpuRecord,
    SimState,
)

# NVML_COMPUTE_INSTANCE_PROFILE_COUNT and NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT.
CI_PROFILE_COUNT = 9
CI_ENGINE_PROFILE_COUNT = 1

# Namespace of the simulator's deterministic UUIDs (GPU and MIG devices).
UUID_NAMESPACE = uuidlib.UUID("6d1f3c2a-5b7e-4c1d-9a0f-3e8b2c4d6f10")

# PCI buses of the eight GPUs of a DGX (A100/H100), in index order.
DGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)


# --------------------------------------------------------------------------- identity


MAX_GPUS = 64  # more than any node has; bounds what a spec can make the simulator build


def pci_subsystem_id(gpu: GpuRecord) -> int:
    """nvmlPciInfo_t.pciSubSystemId (subsystem device << 16 | subsystem vendor): the
    model's data field (``SimModel.pci_subsystem_id``, with its provenance), the one source
    of it for the simulator and for the tests that match device filters against it."""
    return model_of(gpu).pci_subsystem_id


def table_of(gpu: GpuRecord) -> tables.ModelTable:
    return models.table(gpu.model)


def branch_of(gpu: GpuRecord) -> models.Branch:
    return models.branch(gpu.branch)


def model_of(gpu: GpuRecord) -> models.SimModel:
    return models.get(gpu.model)


def node_branch(state: SimState) -> models.Branch:
    """The node's driver branch (every GPU runs the same driver)."""
    if state.gpus:
        return branch_of(state.gpus[0])
    return models.branch(models.branch_of_version(state.driver_version))


def check_profiles_readable(gpu: GpuRecord) -> None:
    """Before R550 GI profile queries answer NOT_SUPPORTED while MIG mode is off
    (nvml.h: NOT_SUPPORTED "if device doesn't have MIG mode enabled"; mig-parted PR #312:
    "Older drivers such as R535 does not support querying MIG profiles when MIG mode is
    disabled"); the 580 probes read them with MIG off."""
    if branch_of(gpu).profiles_need_mig and not gpu.mig_current:
        raise SimNvmlError(
            codes.NOT_SUPPORTED,
            f"driver branch {gpu.branch} answers profile queries only with MIG mode on",
        )


def gpu_uuid(model: str, index: int) -> str:
    return "GPU-" + str(uuidlib.uuid5(UUID_NAMESPACE, f"gpu/{model}/{index}"))


def pci_bus_id(index: int) -> str:
    """DGX bus numbers for indices 0-7; further GPUs continue on the next PCI domain."""
    domain, slot = divmod(index, len(DGX_BUSES))
    return f"{domain:08X}:{DGX_BUSES[slot]:02X}:00.0"


def new_gpu(
    model: str,
    index: int,
    passthrough: bool = False,
    permute_seed: Optional[int] = None,
    branch: int = models.DEFAULT_BRANCH,
) -> GpuRecord:
    """A fresh simulated GPU: MIG off, nothing created, nobody holding it."""
    table = models.table(model)
    id_map = None
    if permute_seed is not None:
        id_map = list(range(gi_id_count(table)))
        random.Random(f"{permute_seed}/{index}").shuffle(id_map)
    return GpuRecord(
        index=index,
        model=model,
        uuid=gpu_uuid(model, index),
        pci_bus_id=pci_bus_id(index),
        passthrough=passthrough,
        gi_id_map=id_map,
        branch=branch,
    )


def parse_spec(spec: str) -> List[Tuple[str, int]]:
    """``MODEL[:COUNT][@BRANCH][,...]`` -> (model name, driver branch) per GPU, in index
    order. A part without a branch runs the branch of the others, or the model's
    default (580, or its first supported branch when later).

    Raises:
        models.UnknownSimModel: a model the simulator has no table for.
        models.BadBranch: an unknown branch, one too old for the model, or two branches
            on one node (a node runs one driver).
        ValueError: a count that is not a positive integer.
    """
    parsed: List[Tuple[str, int, Optional[int]]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty model in simulator spec {spec!r}")
        part, at, branch_text = part.partition("@")
        wanted: Optional[int] = None
        if at:
            if not branch_text.isdigit():
                raise ValueError(
                    f"bad driver branch {branch_text!r} in simulator spec {spec!r} "
                    "(write MODEL[:COUNT]@BRANCH, e.g. h100-80gb-hbm3:2@535)"
                )
            wanted = int(branch_text)
            models.branch(wanted)
        name, _, count_text = part.partition(":")
        count = 1
        if count_text:
            if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_GPUS:
                raise ValueError(
                    f"bad GPU count {count_text!r} in simulator spec {spec!r} "
                    f"(write MODEL:COUNT with COUNT from 1 to {MAX_GPUS})"
                )
            count = int(count_text)
        models.get(name)
        parsed.extend([(name, count, wanted)])
    total = sum(count for _, count, _ in parsed)
    if total > MAX_GPUS:
        raise ValueError(f"simulator spec {spec!r} asks for {total} GPUs; at most {MAX_GPUS}")
    given = sorted({b for _, _, b in parsed if b is not None})
    if len(given) > 1:
        raise models.BadBranch(
            f"simulator spec {spec!r} mixes driver branches {', '.join(map(str, given))}: "
            "a node runs one driver"
        )
    if given:
        node_branch = given[0]
    else:
        node_branch = max(models.get(name).default_branch() for name, _, _ in parsed)
    out: List[Tuple[str, int]] = []
    for name, count, _ in parsed:
        models.check_branch(models.get(name), node_branch)
        out.extend([(name, node_branch)] * count)
    return out


def fresh_state(
    gpus: Sequence[Union[str, Tuple[str, int]]],
    passthrough: bool = False,
    permute_seed: Optional[int] = None,
    boot_id: str = "",
    nvswitch: bool = False,
) -> SimState:
    """A new node of ``gpus``: (model, branch) per GPU as ``parse_spec`` gives them, or a
    bare model name (the model's default branch)."""
    pairs = [
        (g, models.get(g).default_branch()) if isinstance(g, str) else (g[0], g[1]) for g in gpus
    ]
    branches = {b for _, b in pairs} or {models.DEFAULT_BRANCH}
    if len(branches) > 1:
        raise models.BadBranch("a node runs one driver: one branch for every GPU")
    records = [new_gpu(m, i, passthrough, permute_seed, b) for i, (m, b) in enumerate(pairs)]
    if nvswitch:  # one NVSwitch fabric joins every GPU (DGX/HGX A100 8-GPU)
        for record in records:
            record.nvlink_group = 1
    return SimState(
        gpus=records,
        boot_id=boot_id,
        driver_version=models.branch(branches.pop()).driver_version,
    )


# --------------------------------------------------------------------------- GI IDs


def swizz_id(span: int, start: int, size: int) -> int:
    """The RM swizzId of a placement: a buddy-tree node number (full span -> 0, halves
    -> 1, 2, quarters -> 3..6, eighths -> 7..14 on 8-slot parts; 4-slot A30: 0, 1-2,
    3-6; 12-unit RTX PRO 6000: 0, 1-2, 3-6)."""
    return span // size - 1 + start // size


def gi_id_count(table: tables.ModelTable) -> int:
    smallest = min(p.size for gi in table.profiles for p in gi.placements)
    return 2 * (table.memory_slices // smallest) - 1


def gi_id(gpu: GpuRecord, table: tables.ModelTable, placement: Placement) -> int:
    sid = swizz_id(table.memory_slices, placement.start, placement.size)
    if gpu.gi_id_map is not None and sid < len(gpu.gi_id_map):
        return gpu.gi_id_map[sid]
    return sid


# --------------------------------------------------------------------------- lookups


def gi_profile(table: tables.ModelTable, gi: GiRecord) -> GiProfile:
    profile = table.profile_by_id(gi.profile_id)
    if profile is None:
        raise SimNvmlError(codes.UNKNOWN, f"GI {gi.id} has profile ID {gi.profile_id}, unknown")
    return profile


def ci_profile(profile: GiProfile, ci_profile_id: int) -> Optional[CiProfile]:
    for ci in profile.ci_profiles:
        if ci.id == ci_profile_id:
            return ci
    return None


def find_gi(gpu: GpuRecord, gi_id_value: int) -> Optional[GiRecord]:
    for gi in gpu.gis:
        if gi.id == gi_id_value:
            return gi
    return None


def find_ci(gi: GiRecord, ci_id_value: int) -> Optional[CiRecord]:
    for ci in gi.cis:
        if ci.id == ci_id_value:
            return ci
    return None


def placement_of(record: Any) -> Placement:
    return Placement(int(record.start), int(record.size))


def describe_gi(table: tables.ModelTable, gi: GiRecord) -> str:
    profile = table.profile_by_id(gi.profile_id)
    name = profile.name if profile is not None else f"profile {gi.profile_id}"
    return f"GI {gi.id} ({name} at {gi.start}:{gi.size})"


def mig_devices(gpu: GpuRecord) -> List[Tuple[GiRecord, CiRecord]]:
    """The MIG devices of a GPU, ordered as NVML enumerates them: by GI ID, then CI ID.
    A GI without a CI has none."""
    if not gpu.mig_current:
        return []
    pairs = [(gi, ci) for gi in gpu.gis for ci in gi.cis]
    pairs.sort(key=lambda pair: (pair[0].id, pair[1].id))
    return pairs


def pids_on(gpu: GpuRecord) -> List[Tuple[int, GiRecord, CiRecord]]:
    return [(pid, gi, ci) for gi, ci in mig_devices(gpu) for pid in ci.pids]


def other_sessions(state: SimState) -> List[int]:
    """The pids other than this process with an NVML session open (rule 6)."""
    me = os.getpid()
    return sorted({p for p in state.sessions if p != me})


def busy_reason(gpu: GpuRecord, sessions: Sequence[int] = ()) -> str:
    """Why the GPU cannot be reset or change mode now ("" when idle); ``sessions``: the
    other processes with NVML initialised (rule 6)."""
    reasons = []
    if sessions:
        reasons.append(
            "NVML initialised by pid " + ", ".join(str(p) for p in sessions) + " (a client)"
        )
    if gpu.holders:
        reasons.append("held by pid " + ", ".join(str(p) for p in gpu.holders))
    running = sorted({pid for gi in gpu.gis for ci in gi.cis for pid in ci.pids})
    if running:
        reasons.append("processes " + ", ".join(str(p) for p in running) + " run on MIG devices")
    return "; ".join(reasons)


# --------------------------------------------------------------------------- GI rules


def occupied(gpu: GpuRecord) -> int:
    mask = 0
    for gi in gpu.gis:
        mask |= placement_of(gi).mask()
    return mask


def media_blocked(table: tables.ModelTable, gpu: GpuRecord, profile: GiProfile) -> str:
    """nvml.h: an *_ALL_ME instance "prevents allocation of all but _NO_ME profiles";
    likewise it needs every media engine, so it waits for all but -me GIs to go."""
    mine = media_class(profile.name)
    for gi in gpu.gis:
        other = media_class(gi_profile(table, gi).name)
        if other == "all" and mine != "none":
            return f"{describe_gi(table, gi)} holds every media engine (+me.all)"
        if mine == "all" and other != "none":
            return f"{profile.name} needs every media engine and {describe_gi(table, gi)} uses some"
    return ""


def gi_cap_reached(gpu: GpuRecord, profile: GiProfile) -> bool:
    return sum(1 for gi in gpu.gis if gi.profile_id == profile.id) >= profile.max


def _fit_count(placements: Sequence[Placement], taken: int) -> int:
    """How many of ``placements`` can be used together given the ``taken`` slices
    (interval scheduling: earliest end first is optimal)."""
    count = 0
    mask = taken
    for p in sorted(placements, key=lambda x: (x.end, x.start)):
        if not p.mask() & mask:
            mask |= p.mask()
            count += 1
    return count


def gi_remaining_capacity(table: tables.ModelTable, gpu: GpuRecord, profile: GiProfile) -> int:
    """Further instances of ``profile`` that still fit (0 when capped or blocked)."""
    if media_blocked(table, gpu, profile):
        return 0
    existing = sum(1 for gi in gpu.gis if gi.profile_id == profile.id)
    fit = _fit_count(profile.placements, occupied(gpu))
    return max(0, min(fit, profile.max - existing))


def _popcount(value: int) -> int:
    return bin(value).count("1")


def _range_mask(lo: int, hi: int) -> int:
    return ((1 << (hi - lo)) - 1) << lo


def default_gi_placement(
    table: tables.ModelTable, profile: GiProfile, taken: int
) -> Optional[Placement]:
    """Where the driver puts a GI when no placement is given (rule 4).

    From the whole span down: split the region into its two buddy halves, keep the
    halves that still have a free placement for the profile, and go into the fuller one
    (best fit), counting as full the slices the profile cannot use there (1g cannot start
    at slice 7 of an 8-slot part). A tie goes to the upper half (the one holding the last
    memory slice) at the top of an 8-slot part, and to the lower half everywhere else.
    When the region cannot be split further, the lowest free placement in it wins. This
    reproduces the driver's choices the MIG User Guide shows for A100-40GB and the A30
    transcript (tests/sim/test_gi.py)."""
    free = [p for p in profile.placements if not p.mask() & taken]
    if not free:
        return None
    lo, hi = 0, table.memory_slices
    top = True
    while True:
        inside = [p for p in free if lo <= p.start and p.end <= hi]
        if not inside:
            return None
        size = hi - lo
        half = size // 2
        smallest = min(p.size for p in inside)
        if size % 2 or half < smallest:
            return min(inside)
        mid = lo + half
        options = []
        for a, b in ((lo, mid), (mid, hi)):
            if not any(a <= p.start and p.end <= b for p in inside):
                continue
            usable = 0
            for p in profile.placements:
                if a <= p.start and p.end <= b:
                    usable |= p.mask()
            region = _range_mask(a, b)
            full = (taken | (region & ~usable)) & region
            options.append((a, b, _popcount(full)))
        if not options:
            return min(inside)
        best = max(score for _, _, score in options)
        ties = [(a, b) for a, b, score in options if score == best]
        if len(ties) > 1 and top and table.memory_slices == 8:
            lo, hi = ties[-1]
        else:
            lo, hi = ties[0]
        top = False


def create_gi(
    state: SimState, gpu: GpuRecord, profile_id: int, placement: Optional[Placement]
) -> GiRecord:
    """nvmlDeviceCreateGpuInstance[WithPlacement] (placement None: the default)."""
    table = table_of(gpu)
    if not gpu.mig_current:
        raise SimNvmlError(codes.NOT_SUPPORTED, "MIG mode is not enabled")
    profile = table.profile_by_id(profile_id)
    if profile is None:
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"no GI profile ID {profile_id} on {table.name}")
    if placement is not None and placement not in profile.placements:
        starts = ", ".join(str(p) for p in profile.placements)
        raise SimNvmlError(
            codes.INVALID_ARGUMENT,
            f"{placement} is not a placement of {profile.name} (possible: {starts})",
        )
    if gi_cap_reached(gpu, profile):
        raise SimNvmlError(
            codes.INSUFFICIENT_RESOURCES,
            f"{profile.name} allows {profile.max} instance(s) per GPU",
        )
    blocked = media_blocked(table, gpu, profile)
    if blocked:
        raise SimNvmlError(codes.INSUFFICIENT_RESOURCES, blocked)
    taken = occupied(gpu)
    if placement is None:
        placement = default_gi_placement(table, profile, taken)
        if placement is None:
            raise SimNvmlError(
                codes.INSUFFICIENT_RESOURCES, f"no free placement for {profile.name}"
            )
    elif placement.mask() & taken:
        clash = [g for g in gpu.gis if placement_of(g).overlaps(placement)]
        raise SimNvmlError(
            codes.INSUFFICIENT_RESOURCES,
            f"{placement} overlaps {', '.join(describe_gi(table, g) for g in clash)}",
        )
    record = GiRecord(
        serial=state.take_serial(),
        id=gi_id(gpu, table, placement),
        profile_id=profile.id,
        start=placement.start,
        size=placement.size,
    )
    gpu.gis.append(record)
    return record


def destroy_gi(gpu: GpuRecord, gi: GiRecord) -> None:
    table = table_of(gpu)
    if gi.holders:
        held = ", ".join(str(p) for p in gi.holders)
        raise SimNvmlError(codes.IN_USE, f"{describe_gi(table, gi)} is held open by pid {held}")
    if gi.cis:
        running = sorted({pid for ci in gi.cis for pid in ci.pids})
        detail = f"{describe_gi(table, gi)} has {len(gi.cis)} compute instance(s)"
        if running:
            detail += " with processes " + ", ".join(str(p) for p in running)
        raise SimNvmlError(codes.IN_USE, detail)
    gpu.gis.remove(gi)


# --------------------------------------------------------------------------- CI rules


def gi_ci_profile(gpu: GpuRecord, gi: GiRecord, ci_profile_id: int) -> Tuple[GiProfile, CiProfile]:
    """The CI profile ``ci_profile_id`` of a GI (INVALID_ARGUMENT past the profile count,
    NOT_SUPPORTED when this GI does not offer it)."""
    table = table_of(gpu)
    profile = gi_profile(table, gi)
    if not 0 <= ci_profile_id < CI_PROFILE_COUNT:
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"CI profile {ci_profile_id} is out of range")
    found = ci_profile(profile, ci_profile_id)
    if found is None:
        raise SimNvmlError(
            codes.NOT_SUPPORTED, f"a {profile.name} GI has no CI profile {ci_profile_id}"
        )
    return profile, found


def ci_occupied(gi: GiRecord) -> int:
    mask = 0
    for ci in gi.cis:
        mask |= placement_of(ci).mask()
    return mask


def ci_remaining_capacity(gi: GiRecord, profile: CiProfile) -> int:
    existing = sum(1 for ci in gi.cis if ci.profile_id == profile.id)
    fit = _fit_count(profile.placements, ci_occupied(gi))
    return max(0, min(fit, profile.max - existing))


def create_ci(
    state: SimState,
    gpu: GpuRecord,
    gi: GiRecord,
    ci_profile_id: int,
    placement: Optional[Placement],
) -> CiRecord:
    """nvmlGpuInstanceCreateComputeInstance[WithPlacement]."""
    gi_prof, profile = gi_ci_profile(gpu, gi, ci_profile_id)
    if placement is not None and placement not in profile.placements:
        starts = ", ".join(str(p) for p in profile.placements)
        raise SimNvmlError(
            codes.INVALID_ARGUMENT,
            f"{placement} is not a placement of {profile.name} in a {gi_prof.name} GI "
            f"(possible: {starts})",
        )
    if sum(1 for ci in gi.cis if ci.profile_id == profile.id) >= profile.max:
        raise SimNvmlError(
            codes.INSUFFICIENT_RESOURCES,
            f"{profile.name} allows {profile.max} instance(s) per GI",
        )
    taken = ci_occupied(gi)
    if placement is None:
        free = [p for p in profile.placements if not p.mask() & taken]
        if not free:
            raise SimNvmlError(
                codes.INSUFFICIENT_RESOURCES,
                f"no free compute slices for {profile.name} in GI {gi.id}",
            )
        placement = min(free)
    elif placement.mask() & taken:
        clash = [c for c in gi.cis if placement_of(c).overlaps(placement)]
        raise SimNvmlError(
            codes.INSUFFICIENT_RESOURCES,
            f"{placement} overlaps CI "
            + ", ".join(f"{c.id} at {c.start}:{c.size}" for c in clash)
            + f" in GI {gi.id}",
        )
    used = {ci.id for ci in gi.cis}
    ci_id_value = 0
    while ci_id_value in used:
        ci_id_value += 1
    state.mig_uuid_counter += 1
    mig_uuid = "MIG-" + str(
        uuidlib.uuid5(UUID_NAMESPACE, f"mig/{gpu.uuid}/{state.mig_uuid_counter}")
    )
    record = CiRecord(
        serial=state.take_serial(),
        id=ci_id_value,
        profile_id=profile.id,
        start=placement.start,
        size=placement.size,
        uuid=mig_uuid,
    )
    gi.cis.append(record)
    return record


def destroy_ci(gi: GiRecord, ci: CiRecord) -> None:
    if ci.holders:
        held = ", ".join(str(p) for p in ci.holders)
        raise SimNvmlError(codes.IN_USE, f"CI {ci.id} of GI {gi.id} is held open by pid {held}")
    if ci.pids:
        raise SimNvmlError(
            codes.IN_USE,
            f"processes {', '.join(str(p) for p in ci.pids)} run on CI {ci.id} of GI {gi.id}",
        )
    gi.cis.remove(ci)


# --------------------------------------------------------------------------- mode


def set_mig_mode(
    gpu: GpuRecord,
    enable: int,
    sessions: Sequence[int] = (),
    state: Optional[SimState] = None,
    drm_loaded: bool = False,
) -> int:
    """nvmlDeviceSetMigMode: returns the activation status (rules 5, 6 and 8). The
    driver's own activation is a reset of this GPU alone: whatever blocks one (a loaded
    nvidia_drm, Fabric Manager down on an NVSwitch node: inferred) leaves it pending
    with IN_USE."""
    if enable not in (0, 1):
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"MIG mode {enable} is neither 0 nor 1")
    wanted = bool(enable)
    table = table_of(gpu)
    if gpu.gis and wanted != gpu.mig_current:
        raise SimNvmlError(
            codes.IN_USE,
            f"{len(gpu.gis)} GPU instance(s) exist; destroy them before changing the mode",
        )
    gpu.mig_pending = wanted
    if table.architecture != ARCH_AMPERE:
        gpu.mig_current = wanted
        return codes.SUCCESS
    if gpu.mig_current == wanted:
        return codes.SUCCESS
    if gpu.passthrough:
        return codes.parse_error_name(gpu.passthrough_status)
    if busy_reason(gpu, sessions) or drm_loaded:
        return codes.IN_USE
    if state is not None and missing_peers(state, [gpu]):
        return codes.IN_USE
    gpu.mig_current = wanted
    return codes.SUCCESS


def reset_gpu(gpu: GpuRecord, sessions: Sequence[int] = ()) -> None:
    """A GPU reset (``nvidia-smi --gpu-reset``): the pending mode takes effect and every
    instance is gone. Refused on a passthrough GPU and while anyone uses the GPU,
    another process's NVML session included (rule 6)."""
    if gpu.lost:
        raise SimNvmlError(codes.parse_error_name(gpu.lost), "the GPU fell off the bus")
    if gpu.passthrough:
        raise SimNvmlError(codes.NOT_SUPPORTED, f"Resetting GPU {gpu.pci_bus_id} is not supported.")
    reason = busy_reason(gpu, sessions)
    if reason:
        raise SimNvmlError(codes.IN_USE, reason)
    gpu.mig_current = gpu.mig_pending
    gpu.gis = []


def reset_gpus(
    state: SimState,
    gpus: Sequence[GpuRecord],
    sessions: Sequence[int] = (),
    drm_loaded: bool = False,
) -> None:
    """``nvidia-smi --gpu-reset -i`` of ``gpus`` in one command (rule 8): every check
    first, then every GPU reset, or none."""
    for gpu in gpus:
        if gpu.lost:
            raise SimNvmlError(codes.parse_error_name(gpu.lost), "the GPU fell off the bus")
        if gpu.passthrough:
            raise SimNvmlError(
                codes.NOT_SUPPORTED, f"Resetting GPU {gpu.pci_bus_id} is not supported."
            )
    if drm_loaded:
        raise SimNvmlError(
            codes.IN_USE,
            f"GPU {gpus[0].pci_bus_id} is currently in use by another client",
        )
    missing = missing_peers(state, gpus)
    if missing:
        raise SimNvmlError(
            codes.UNKNOWN,
            "Fabric Manager is not running: GPUs with NVLink connections to a GPU being "
            "reset must be reset in the same command; include "
            + ",".join(g.pci_bus_id for g in missing),
        )
    for gpu in gpus:
        reason = busy_reason(gpu, sessions)
        if reason:
            raise SimNvmlError(codes.IN_USE, reason)
    for gpu in gpus:
        reset_gpu(gpu, sessions)


def missing_peers(state: SimState, gpus: Sequence[GpuRecord]) -> List[GpuRecord]:
    """The NVSwitch peers a reset of ``gpus`` must include (rule 8): none while Fabric
    Manager runs or when no Ampere GPU of an NVSwitch group is reset."""
    if state.fabric_manager:
        return []
    named = {g.index for g in gpus}
    groups = {
        g.nvlink_group for g in gpus if g.nvlink_group and table_of(g).architecture == ARCH_AMPERE
    }
    return [g for g in state.gpus if g.nvlink_group in groups and g.index not in named]


def reboot(state: SimState) -> None:
    """What a reboot leaves: Hopper and later lose MIG mode, Ampere keeps it (a pending
    change takes effect); instances, holders and processes are gone."""
    for gpu in state.gpus:
        if table_of(gpu).architecture == ARCH_AMPERE:
            gpu.mig_current = gpu.mig_pending
        else:
            gpu.mig_current = False
            gpu.mig_pending = False
        gpu.gis = []
        gpu.holders = []
        gpu.lost = ""
    state.sessions = []


# --------------------------------------------------------------------------- clients


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as dead)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True  # the caller itself (its own NVML session): no need to ask /proc
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return True
    fields = stat.rpartition(")")[2].split()
    return not (fields and fields[0] in ("Z", "X"))


def prune_dead(state: SimState) -> bool:
    """Drop NVML sessions, holders and MIG-device processes that died; True if any was
    dropped.

    It runs before every call, so it allocates nothing where no process is listed."""
    changed = False
    if state.sessions:
        alive_sessions = [p for p in state.sessions if pid_alive(p)]
        if alive_sessions != state.sessions:
            state.sessions = alive_sessions
            changed = True
    for gpu in state.gpus:
        if gpu.holders:
            alive = [p for p in gpu.holders if pid_alive(p)]
            if alive != gpu.holders:
                gpu.holders = alive
                changed = True
        for gi in gpu.gis:
            if gi.holders:
                alive = [p for p in gi.holders if pid_alive(p)]
                if alive != gi.holders:
                    gi.holders = alive
                    changed = True
            for ci in gi.cis:
                if ci.holders:
                    alive = [p for p in ci.holders if pid_alive(p)]
                    if alive != ci.holders:
                        ci.holders = alive
                        changed = True
                if not ci.pids:
                    continue
                alive = [p for p in ci.pids if pid_alive(p)]
                if alive != ci.pids:
                    ci.pids = alive
                    changed = True
    return changed


# --------------------------------------------------------------------------- changes


def record_change(
    state: SimState, function: str, gpu: GpuRecord, args: Dict[str, Any], via: str
) -> None:
    """Count a successful state-changing call and keep it in the bounded log."""
    state.change_count += 1
    state.changes.append(
        Change(
            seq=state.change_count,
            function=function,
            gpu=gpu.index,
            args=args,
            pid=os.getpid(),
            via=via,
        )
    )
    del state.changes[:-CHANGE_LOG_SIZE]
