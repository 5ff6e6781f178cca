"""Test support for the placement solver and the planner (pure, no I/O).

- ``h100_profiles()``: the H100 80GB HBM3 GI profile table written out by hand from the
  driver-580 probe (IDs, sizes, caps, possible placements) with the CI profiles of
  ``mig-profiles.json``. A100 80GB has the same names, IDs and placements.
- ``layouts()``: every GI layout a profile table allows, by brute force over the possible
  placements (caps and the +me.all media rule included), independent of the solver.
- ``Simulated``: a small pure model of one GPU that applies plan actions and checks each
  one the way the driver would (possible placement, overlap, caps, IDs, processes).
"""

# Python 3.9 spelling (typing.Dict/Tuple/Optional), as docs/ARCHITECTURE.md asks.

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

from migrestore.model import (
    ARCH_AMPERE,
    ARCH_HOPPER,
    Action,
    CiProfile,
    ComputeInstance,
    CreateCi,
    CreateGi,
    DestroyCi,
    DestroyGi,
    GiProfile,
    GpuIdentity,
    GpuInstance,
    GpuSpec,
    GpuState,
    InstanceSpec,
    Placement,
    Reset,
    SetMode,
    media_class,
)


def _p(*pairs: Tuple[int, int]) -> Tuple[Placement, ...]:
    return tuple(Placement(s, n) for s, n in pairs)


def _ones(count: int, size: int = 1) -> Tuple[Placement, ...]:
    return tuple(Placement(i * size, size) for i in range(count))


def _full_ci(name: str, ci_id: int, slices: int, sms: int) -> CiProfile:
    return CiProfile(ci_id, name, slices, 1, sms, (Placement(0, slices),), default=True)


def h100_profiles() -> Tuple[GiProfile, ...]:
    """H100 80GB HBM3, driver 580.159.04 (probe), in NVML index order."""
    return (
        GiProfile(
            0, 19, "1g.10gb", 1, 9984, 16, 7, _ones(7), (_full_ci("1g.10gb", 0, 1, 16),), 1, 1
        ),
        GiProfile(
            1,
            14,
            "2g.20gb",
            2,
            20096,
            32,
            3,
            _p((0, 2), (2, 2), (4, 2)),
            (
                CiProfile(0, "1c.2g.20gb", 1, 2, 16, _ones(2)),
                _full_ci("2g.20gb", 1, 2, 32),
            ),
            2,
            2,
        ),
        GiProfile(
            2,
            9,
            "3g.40gb",
            3,
            40448,
            60,
            2,
            _p((0, 4), (4, 4)),
            (
                CiProfile(0, "1c.3g.40gb", 1, 3, 16, _ones(3)),
                CiProfile(1, "2c.3g.40gb", 2, 1, 32, _p((0, 2))),
                _full_ci("3g.40gb", 2, 3, 60),
            ),
            3,
            3,
        ),
        GiProfile(
            3,
            5,
            "4g.40gb",
            4,
            40448,
            64,
            1,
            _p((0, 4)),
            (
                CiProfile(0, "1c.4g.40gb", 1, 4, 16, _ones(4)),
                CiProfile(1, "2c.4g.40gb", 2, 2, 32, _ones(2, 2)),
                _full_ci("4g.40gb", 3, 4, 64),
            ),
            4,
            4,
        ),
        GiProfile(
            4,
            0,
            "7g.80gb",
            7,
            81152,
            132,
            1,
            _p((0, 8)),
            (
                CiProfile(0, "1c.7g.80gb", 1, 7, 16, _ones(7)),
                CiProfile(1, "2c.7g.80gb", 2, 3, 32, _ones(3, 2)),
                CiProfile(2, "3c.7g.80gb", 3, 2, 48, _p((0, 3), (4, 3))),
                CiProfile(3, "4c.7g.80gb", 4, 1, 64, _p((0, 4))),
                _full_ci("7g.80gb", 4, 7, 132),
            ),
            8,
            7,
        ),
        GiProfile(
            7,
            20,
            "1g.10gb+me",
            1,
            9984,
            16,
            1,
            _ones(7),
            (_full_ci("1g.10gb+me", 0, 1, 16),),
            1,
            1,
        ),
        GiProfile(
            9,
            15,
            "1g.20gb",
            1,
            20096,
            26,
            4,
            _ones(4, 2),
            (_full_ci("1g.20gb", 7, 1, 26),),
            1,
            1,
        ),
    )


# --------------------------------------------------------------------------- brute force

Layout = Tuple[Tuple[str, Placement], ...]  # (profile name, placement), sorted by start


def layouts(profiles: Sequence[GiProfile]) -> List[Layout]:
    """Every non-empty set of non-overlapping GIs the table allows (caps and media rule),
    found by trying every candidate (profile, placement) in or out."""
    candidates = [(p.name, pl) for p in profiles for pl in p.placements]
    caps = {p.name: p.max for p in profiles}
    out: List[Layout] = []

    def walk(
        i: int, used: int, chosen: List[Tuple[str, Placement]], counts: Dict[str, int]
    ) -> None:
        if i == len(candidates):
            if chosen and media_ok([n for n, _ in chosen]):
                out.append(tuple(sorted(chosen, key=lambda c: c[1].start)))
            return
        walk(i + 1, used, chosen, counts)
        name, pl = candidates[i]
        if used & pl.mask() or counts.get(name, 0) >= caps[name]:
            return
        counts[name] = counts.get(name, 0) + 1
        chosen.append((name, pl))
        walk(i + 1, used | pl.mask(), chosen, counts)
        chosen.pop()
        counts[name] -= 1

    walk(0, 0, [], {})
    return out


def media_ok(names: Sequence[str]) -> bool:
    """nvml.h: an *_ALL_ME instance prevents the allocation of all but *_NO_ME profiles."""
    takers = [n for n in names if media_class(n) == "all"]
    if not takers:
        return True
    return len(takers) == 1 and all(media_class(n) == "none" for n in names if n != takers[0])


def multiset(names: Sequence[str]) -> Tuple[str, ...]:
    return tuple(sorted(names))


def ci_layouts(profile: GiProfile) -> List[Tuple[Tuple[str, Placement], ...]]:
    """Every non-empty CI layout a GI of ``profile`` allows, by brute force."""
    candidates = [(c.name, pl) for c in profile.ci_profiles for pl in c.placements]
    caps = {c.name: c.max for c in profile.ci_profiles}
    out: List[Tuple[Tuple[str, Placement], ...]] = []
    for r in range(1, len(candidates) + 1):
        for combo in itertools.combinations(candidates, r):
            mask = 0
            ok = True
            counts: Dict[str, int] = {}
            for name, pl in combo:
                counts[name] = counts.get(name, 0) + 1
                if mask & pl.mask() or counts[name] > caps[name]:
                    ok = False
                    break
                mask |= pl.mask()
            if ok:
                out.append(tuple(sorted(combo, key=lambda c: c[1].start)))
    return out


# --------------------------------------------------------------------------- states


def identity(index: int, arch: str = ARCH_HOPPER, capable: bool = True) -> GpuIdentity:
    name = "NVIDIA A100 80GB PCIe" if arch == ARCH_AMPERE else "NVIDIA H100 80GB HBM3"
    return GpuIdentity(
        index=index,
        uuid=f"GPU-{index:08d}-0000-0000-0000-000000000000",
        pci_bus_id=f"00000000:{index + 0x18:02X}:00.0",
        pci_device_id=0x233010DE,
        name=name,
        architecture=arch,
        mig_capable=capable,
    )


def make_gi(
    profiles: Sequence[GiProfile],
    gi_id: int,
    name: str,
    start: int,
    cis: Sequence[Tuple[str, int]] = (),
    pids: Optional[Dict[int, Tuple[int, ...]]] = None,
) -> GpuInstance:
    """A GI of ``name`` at ``start`` with CIs ``(ci profile, ci start)``, CI IDs from 0;
    ``pids`` maps a CI ID to its processes. ``cis`` empty: the default CI."""
    profile = next(p for p in profiles if p.name == name)
    placement = next(p for p in profile.placements if p.start == start)
    if not cis:
        default = profile.default_ci()
        assert default is not None
        cis = ((default.name, 0),)
    built = []
    for ci_id, (ci_name, ci_start) in enumerate(cis):
        ci_profile = profile.ci_profile(ci_name)
        assert ci_profile is not None, ci_name
        ci_placement = next(p for p in ci_profile.placements if p.start == ci_start)
        built.append(
            ComputeInstance(
                ci_id,
                ci_profile.id,
                ci_name,
                ci_placement,
                f"MIG-{gi_id:04d}-{ci_id:04d}",
                (pids or {}).get(ci_id, ()),
            )
        )
    return GpuInstance(gi_id, profile.id, name, placement, tuple(built))


def make_gpu(
    index: int,
    profiles: Sequence[GiProfile],
    instances: Sequence[GpuInstance] = (),
    *,
    arch: str = ARCH_HOPPER,
    current: bool = True,
    pending: Optional[bool] = None,
    capable: bool = True,
) -> GpuState:
    return GpuState(
        identity=identity(index, arch, capable),
        mig_current=current,
        mig_pending=current if pending is None else pending,
        profiles=tuple(profiles),
        instances=tuple(sorted(instances, key=lambda g: g.placement.start)),
    )


def spec_of(gpu: GpuState) -> GpuSpec:
    """The spec that describes ``gpu`` exactly as it is (pinned placements)."""
    return GpuSpec(
        mig=gpu.mig_current,
        instances=tuple(
            InstanceSpec(gi.profile, gi.placement.start, tuple(ci.profile for ci in gi.cis))
            for gi in gpu.instances
        ),
    )


# --------------------------------------------------------------------------- simulation


class ActionRejected(AssertionError):
    """The pure GPU model refused an action, as the driver would."""


@dataclass
class Simulated:
    """A mutable copy of one GPU that applies plan actions with the driver's checks."""

    gpu: GpuState
    current: bool = False
    pending: bool = False
    gis: Dict[int, GpuInstance] = field(default_factory=dict)  # by GI ID
    force: bool = False  # the plan was made with force: processes may be killed
    next_gi: int = 100

    @classmethod
    def of(cls, gpu: GpuState, force: bool = False) -> Simulated:
        gis = {g.gi_id: g for g in gpu.instances}
        return cls(gpu, gpu.mig_current, gpu.mig_pending, gis, force)

    def profile(self, name: str) -> GiProfile:
        found = self.gpu.profile(name)
        if found is None:
            raise ActionRejected(f"unknown GI profile {name}")
        return found

    def gi_at(self, start: Optional[int]) -> GpuInstance:
        for gi in self.gis.values():
            if gi.placement.start == start:
                return gi
        raise ActionRejected(f"no GI at slice {start}")

    def apply(self, action: Action) -> None:
        if action.gpu != self.gpu.uuid or action.gpu_index != self.gpu.index:
            raise ActionRejected(f"action for another GPU: {action}")
        if isinstance(action, SetMode):
            self._set_mode(action)
        elif isinstance(action, Reset):
            self._reset(action)
        elif isinstance(action, DestroyCi):
            self._destroy_ci(action)
        elif isinstance(action, DestroyGi):
            self._destroy_gi(action)
        elif isinstance(action, CreateGi):
            self._create_gi(action)
        else:
            self._create_ci(action)

    def _set_mode(self, action: SetMode) -> None:
        if self.gis and action.enabled != self.current:
            raise ActionRejected("mode change with instances present")
        if not self.gpu.identity.mig_capable:
            raise ActionRejected("mode change on a GPU that is not MIG-capable")
        self.pending = action.enabled
        if not self.gpu.identity.resets_for_mode:
            self.current = action.enabled

    def _reset(self, action: Reset) -> None:
        if not self.gpu.identity.resets_for_mode:
            raise ActionRejected("a reset planned on a GPU that changes its mode at once")
        if self.gis:
            raise ActionRejected("reset with instances left (the plan must destroy them first)")
        if action.if_pending and self.current == self.pending:
            return
        self.current = self.pending
        self.gis.clear()

    def _destroy_ci(self, action: DestroyCi) -> None:
        gi = self.gis.get(action.gi_id)
        if gi is None:
            raise ActionRejected(f"destroy CI in missing GI {action.gi_id}")
        if gi.placement.start != action.gi_start:
            raise ActionRejected(f"destroy CI: GI {gi.gi_id} is not at {action.gi_start}")
        ci = next((c for c in gi.cis if c.ci_id == action.ci_id), None)
        if ci is None:
            raise ActionRejected(f"destroy of missing CI {action.ci_id} in GI {gi.gi_id}")
        if ci.pids and not self.force:
            raise ActionRejected(f"destroy of CI {ci.ci_id} with processes {ci.pids}")
        if (ci.profile, ci.placement) != (action.profile, action.placement):
            raise ActionRejected(f"destroy CI names {action.profile} at {action.placement}")
        self.gis[gi.gi_id] = replace(gi, cis=tuple(c for c in gi.cis if c is not ci))

    def _destroy_gi(self, action: DestroyGi) -> None:
        gi = self.gis.get(action.gi_id)
        if gi is None:
            raise ActionRejected(f"destroy of missing GI {action.gi_id}")
        if gi.cis:
            raise ActionRejected(f"destroy of GI {gi.gi_id} that still has CIs (IN_USE)")
        if (gi.profile, gi.placement) != (action.profile, action.placement):
            raise ActionRejected(f"destroy GI names {action.profile} at {action.placement}")
        del self.gis[gi.gi_id]

    def _create_gi(self, action: CreateGi) -> None:
        if not self.current:
            raise ActionRejected("create GI with MIG mode off (NOT_SUPPORTED)")
        profile = self.profile(action.profile)
        if action.profile_id != profile.id:
            raise ActionRejected(f"create GI {profile.name} with profile ID {action.profile_id}")
        placement = action.placement
        if placement not in profile.placements:
            raise ActionRejected(f"{profile.name} at {placement} is not a possible placement")
        for gi in self.gis.values():
            if gi.placement.overlaps(placement):
                raise ActionRejected(f"{profile.name} at {placement} overlaps {gi.describe()}")
        if sum(1 for g in self.gis.values() if g.profile == profile.name) >= profile.max:
            raise ActionRejected(f"{profile.name} above its cap {profile.max}")
        if not media_ok([g.profile for g in self.gis.values()] + [profile.name]):
            raise ActionRejected(f"{profile.name} breaks the media-engine rule")
        self.next_gi += 1
        self.gis[self.next_gi] = GpuInstance(self.next_gi, profile.id, profile.name, placement)

    def _create_ci(self, action: CreateCi) -> None:
        gi = self.gi_at(action.gi_start)
        profile = self.profile(gi.profile)
        ci_profile = profile.ci_profile(action.profile)
        if ci_profile is None or ci_profile.id != action.profile_id:
            raise ActionRejected(f"CI profile {action.profile} is not one of {profile.name}")
        placement = action.placement
        if placement not in ci_profile.placements:
            raise ActionRejected(f"{ci_profile.name} at {placement} is not a possible placement")
        for ci in gi.cis:
            if ci.placement.overlaps(placement):
                raise ActionRejected(f"CI {ci_profile.name} at {placement} overlaps CI {ci.ci_id}")
        if sum(1 for c in gi.cis if c.profile == ci_profile.name) >= ci_profile.max:
            raise ActionRejected(f"{ci_profile.name} above its cap {ci_profile.max}")
        ci_id = min(set(range(len(gi.cis) + 1)) - {c.ci_id for c in gi.cis})
        new = ComputeInstance(ci_id, ci_profile.id, ci_profile.name, placement, f"MIG-new-{ci_id}")
        self.gis[gi.gi_id] = replace(gi, cis=tuple(sorted((*gi.cis, new), key=lambda c: c.ci_id)))

    def state(self) -> GpuState:
        instances = tuple(sorted(self.gis.values(), key=lambda g: g.placement.start))
        return replace(
            self.gpu, mig_current=self.current, mig_pending=self.pending, instances=instances
        )


def apply_plan(gpu: GpuState, actions: Sequence[Action], force: bool = False) -> GpuState:
    sim = Simulated.of(gpu, force)
    for action in actions:
        sim.apply(action)
    return sim.state()


def geometry_is(spec: GpuSpec, gpu: GpuState) -> bool:
    """An independent check that ``gpu`` shows ``spec``: mode, then a one-to-one match of
    specs to GIs (profile, pinned start, CI profile multiset)."""
    if gpu.mig_current != spec.mig or gpu.mig_pending != spec.mig:
        return False
    if not spec.mig:
        return True
    if len(spec.instances) != len(gpu.instances):
        return False

    def cis_wanted(s: InstanceSpec) -> Tuple[str, ...]:
        if s.compute:
            return multiset(s.compute)
        profile = gpu.profile(s.profile)
        default = profile.default_ci() if profile else None
        return (default.name,) if default else ()

    free = list(gpu.instances)
    for s in sorted(spec.instances, key=lambda s: s.placement is None):
        match = next(
            (
                g
                for g in free
                if g.profile == s.profile
                and (s.placement is None or g.placement.start == s.placement)
                and multiset([c.profile for c in g.cis]) == cis_wanted(s)
            ),
            None,
        )
        if match is None:
            return False
        free.remove(match)
    return True
