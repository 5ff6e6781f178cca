"""Exact placement search for GPU instances (GIs) and compute instances (CIs).

Rules:

1. Pure: the standard library, ``migrestore.model`` and ``migrestore.errors`` only. No
   I/O, no logging, no clock, no randomness: the same input always gives the same answer.
2. We choose every placement; the driver never does. Each wanted instance gets one of its
   profile's possible placements (memory slices for a GI, compute slices of the GI for a
   CI), occupancy is a bit mask (``Placement.mask()``), and no two instances overlap.
   This is what lets one attempt succeed where creation-order retries fail.
3. Exact: whenever an assignment honouring the fixed starts, the per-profile caps
   (``max``) and the media rule (a ``+me.all`` instance shares the GPU with ``-me``
   profiles only) exists, it is found. Otherwise ``InfeasibleError`` says why, in the
   words of the config file: the profile, the slice, the count, the cap.
4. Minimal: among valid assignments, the one that keeps the most current instances wins.
   A current instance is *kept* when a wanted instance of the same profile is assigned to
   its exact placement. Ties are broken in tiers: first the kept instances that have
   running processes, then all kept instances, then (GIs only) kept GIs whose CI layout is
   already the wanted one.
5. Deterministic tie-break among assignments of equal worth: groups are placed largest
   profile first (most constrained first on a tie, then by name), each group takes its
   placements in increasing start order, and the first best assignment in that search
   order is returned. Wanted instances that are identical are interchangeable, so a group
   of k of them picks k starts as one increasing combination, never as permutations.
   Results are listed by placement start, whatever the order of ``wanted``.
"""

# Python 3.9 spelling (typing.Dict/Tuple/Optional), as docs/ARCHITECTURE.md asks.

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, TypeVar, Union

from migrestore.errors import InfeasibleError
from migrestore.model import (
    CiProfile,
    ComputeInstance,
    GiProfile,
    GpuInstance,
    InstanceSpec,
    Placement,
    media_class,
)

# Worth of one kept instance, in tiers that cannot overflow into each other: a GPU holds
# at most 8 GIs and a GI at most 8 CIs, far below 2**8.
_W_UNTOUCHED = 1
_W_KEEP = 1 << 8
_W_BUSY = 1 << 16

_Kept = TypeVar("_Kept", GpuInstance, ComputeInstance)

GiAssignment = Tuple[InstanceSpec, Placement, Optional[GpuInstance]]
CiAssignment = Tuple[str, Placement, Optional[ComputeInstance]]


@dataclass(frozen=True)
class _Slot:
    """One possible placement for the members of a group, with what taking it is worth."""

    placement: Placement
    mask: int
    weight: int
    kept: Optional[Union[GpuInstance, ComputeInstance]]


@dataclass(frozen=True)
class _Group:
    """Identical wanted instances: they take ``len(members)`` slots in increasing start."""

    order: Tuple[object, ...]  # the search order key (larger, then more constrained, first)
    size: int
    slots: Tuple[_Slot, ...]
    members: Tuple[int, ...]  # indices into the caller's wanted sequence
    top: Tuple[int, ...]  # top[r]: the sum of the r best slot weights (an upper bound)


def _top_sums(slots: Sequence[_Slot], count: int) -> Tuple[int, ...]:
    best = sorted((s.weight for s in slots), reverse=True)
    sums = [0]
    for w in best[:count]:
        sums.append(sums[-1] + w)
    while len(sums) <= count:
        sums.append(sums[-1])
    return tuple(sums)


def _popcount(value: int) -> int:
    return bin(value).count("1")


def _first_slice(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


class _Search:
    """Branch and bound over groups; keeps the first best assignment in search order."""

    def __init__(self, groups: Sequence[_Group], occupied: int, universe: int) -> None:
        self.groups = tuple(groups)
        self.universe = universe
        n = len(self.groups)
        # bound[i]: the most the groups i.. can still add; need[i]: the slices they need.
        bound = [0] * (n + 1)
        need = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            g = self.groups[i]
            bound[i] = bound[i + 1] + g.top[len(g.members)]
            need[i] = need[i + 1] + g.size * len(g.members)
        self.bound = bound
        self.need = need
        self.ceiling = bound[0]
        self.best_weight = -1
        self.best: Optional[Tuple[Tuple[int, ...], ...]] = None
        self.chosen: List[Tuple[int, ...]] = [()] * n
        self.start_occupied = occupied

    def run(self) -> Optional[Tuple[Tuple[int, ...], ...]]:
        self._group(0, self.start_occupied, 0)
        return self.best

    def _done(self) -> bool:
        return self.best_weight >= self.ceiling

    def _group(self, gi: int, occupied: int, weight: int) -> None:
        if weight + self.bound[gi] <= self.best_weight:
            return
        if gi == len(self.groups):
            self.best_weight = weight
            self.best = tuple(self.chosen)
            return
        if _popcount(self.universe & ~occupied) < self.need[gi]:
            return
        self._pick(gi, 0, occupied, weight, ())

    def _pick(
        self, gi: int, first: int, occupied: int, weight: int, picked: Tuple[int, ...]
    ) -> None:
        group = self.groups[gi]
        left = len(group.members) - len(picked)
        if left == 0:
            self.chosen[gi] = picked
            self._group(gi + 1, occupied, weight)
            return
        if weight + group.top[left] + self.bound[gi + 1] <= self.best_weight:
            return
        slots = group.slots
        for j in range(first, len(slots) - left + 1):
            slot = slots[j]
            if occupied & slot.mask:
                continue
            self._pick(gi, j + 1, occupied | slot.mask, weight + slot.weight, (*picked, j))
            if self._done():
                return


def _count_text(names: Sequence[str]) -> str:
    """``3g.40gb x2, 1g.10gb`` in the given order of first appearance."""
    counts: Dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in counts.items())


def _universe(placements: Sequence[Placement], at_least: int = 0) -> int:
    mask = 0
    for p in placements:
        mask |= p.mask()
    return mask | ((1 << at_least) - 1)


def _index_current(current: Sequence[_Kept]) -> Dict[Tuple[str, int, int], _Kept]:
    """Current instances by (profile, start, size); on a duplicate the lowest ID wins."""
    out: Dict[Tuple[str, int, int], _Kept] = {}
    for inst in sorted(current, key=_instance_sort_key):
        out.setdefault((inst.profile, inst.placement.start, inst.placement.size), inst)
    return out


def _instance_sort_key(inst: Union[GpuInstance, ComputeInstance]) -> Tuple[int, int, int]:
    ident = inst.gi_id if isinstance(inst, GpuInstance) else inst.ci_id
    return (inst.placement.start, inst.placement.size, ident)


def _ci_layout_matches(
    profile: GiProfile, gi: GpuInstance, compute: Sequence[str], no_compute: bool = False
) -> bool:
    """True when the GI's CIs are already the wanted ones, each at a valid placement
    (``no_compute``: none at all)."""
    if no_compute:
        return not gi.cis
    wanted = tuple(compute)
    if not wanted:
        default = profile.default_ci()
        if default is None:
            return False
        wanted = (default.name,)
    if sorted(wanted) != sorted(ci.profile for ci in gi.cis):
        return False
    for ci in gi.cis:
        ci_profile = profile.ci_profile(ci.profile)
        if ci_profile is None or ci.placement not in ci_profile.placements:
            return False
    return True


def _gi_weight(
    profile: GiProfile, gi: Optional[GpuInstance], compute: Sequence[str], no_compute: bool
) -> int:
    if gi is None:
        return 0
    weight = _W_KEEP
    if gi.pids or gi.pids_error:  # processes unknown may be processes: keep it too
        weight += _W_BUSY
    if _ci_layout_matches(profile, gi, compute, no_compute):
        weight += _W_UNTOUCHED
    return weight


def _ci_weight(ci: Optional[ComputeInstance]) -> int:
    if ci is None:
        return 0
    return _W_KEEP + (_W_BUSY if ci.pids or ci.pids_error else 0)


def _profile_size(placements: Sequence[Placement]) -> int:
    return min(p.size for p in placements)


# --------------------------------------------------------------------------- GIs


def solve_gis(
    gpu: str,
    profiles: Sequence[GiProfile],
    current: Sequence[GpuInstance],
    wanted: Sequence[InstanceSpec],
) -> Tuple[GiAssignment, ...]:
    """Place every wanted GI, keeping as many ``current`` GIs as possible.

    ``gpu`` names the GPU in errors (``GpuState.label()``). Returns one
    ``(spec, placement, kept)`` per wanted spec, sorted by placement start; ``kept`` is the
    current GI of the same profile at exactly that placement, or None (create it). Current
    GIs not named in the result are not part of the layout (the planner destroys them).

    Raises:
        InfeasibleError: an unknown profile, a start the profile cannot use, two fixed
            placements that overlap, more instances than a profile's cap, a media-engine
            conflict, more slices than the GPU has, or no arrangement at all.
    """
    if not wanted:
        return ()
    by_name = {p.name: p for p in profiles}
    valid = ", ".join(p.name for p in profiles) or "none"

    unknown = sorted({s.profile for s in wanted if s.profile not in by_name})
    if unknown:
        noun = "profile" if len(unknown) == 1 else "profiles"
        raise InfeasibleError(
            gpu, f"no GI {noun} {', '.join(unknown)} on this GPU (valid: {valid})"
        )
    for name in sorted({s.profile for s in wanted}):
        if not by_name[name].placements:
            raise InfeasibleError(
                gpu, f"{name}: this GPU's profile table lists no possible placement for it"
            )

    fixed = sorted(
        (s for s in wanted if s.placement is not None),
        key=lambda s: (s.placement, s.profile, s.compute, s.no_compute),
    )
    for spec in fixed:
        profile = by_name[spec.profile]
        starts = [p.start for p in profile.placements]
        if spec.placement not in starts:
            possible = ", ".join(str(s) for s in starts)
            raise InfeasibleError(
                gpu,
                f"{spec.profile} cannot start at slice {spec.placement} "
                f"(possible starts: {possible})",
            )

    counts: Dict[str, int] = {}
    for spec in wanted:
        counts[spec.profile] = counts.get(spec.profile, 0) + 1
    for name in sorted(counts):
        cap = by_name[name].max
        if counts[name] > cap:
            raise InfeasibleError(gpu, f"{name}: {counts[name]} wanted, at most {cap} per GPU")

    _check_media(gpu, sorted(counts))

    fixed_placements: List[Tuple[InstanceSpec, Placement]] = []
    for spec in fixed:
        placement = next(p for p in by_name[spec.profile].placements if p.start == spec.placement)
        fixed_placements.append((spec, placement))
    for i, (a, pa) in enumerate(fixed_placements):
        for b, pb in fixed_placements[i + 1 :]:
            both = pa.mask() & pb.mask()
            if both:
                raise InfeasibleError(
                    gpu,
                    f"{a.profile} at {pa} and {b.profile} at {pb} both need slice "
                    f"{_first_slice(both)}",
                )

    universe = _universe([p for prof in profiles for p in prof.placements])
    width = _popcount(universe)
    ordered_names = sorted(counts, key=lambda n: (-_profile_size(by_name[n].placements), n))
    demand = sum(_profile_size(by_name[n].placements) * counts[n] for n in ordered_names)
    listing = _count_text([n for n in ordered_names for _ in range(counts[n])])
    if demand > width:
        raise InfeasibleError(gpu, f"needs {demand} of {width} memory slices ({listing})")

    keep_at = _index_current(current)

    # Fixed instances occupy their slices from the start: the search places the rest.
    result: List[GiAssignment] = []
    occupied = 0
    for spec, placement in fixed_placements:
        kept = keep_at.get((spec.profile, placement.start, placement.size))
        occupied |= placement.mask()
        result.append((spec, placement, kept))

    members: Dict[Tuple[str, Tuple[str, ...], bool], List[int]] = {}
    for i, spec in enumerate(wanted):
        if spec.placement is None:
            # The order CIs are listed in does not matter: ("1c", "2c") == ("2c", "1c").
            key = (spec.profile, tuple(sorted(spec.compute)), spec.no_compute)
            members.setdefault(key, []).append(i)

    groups: List[_Group] = []
    for (name, compute, no_compute), idx in members.items():
        idx.sort(key=lambda i: wanted[i].compute)  # equal specs: any order; others: stable
        profile = by_name[name]
        slots = tuple(
            _Slot(p, p.mask(), _gi_weight(profile, kept, compute, no_compute), kept)
            for p in sorted(profile.placements)
            for kept in (keep_at.get((name, p.start, p.size)),)
        )
        size = _profile_size(profile.placements)
        groups.append(
            _Group(
                order=(-size, len(slots), name, compute, no_compute),
                size=size,
                slots=slots,
                members=tuple(idx),
                top=_top_sums(slots, len(idx)),
            )
        )
    groups.sort(key=lambda g: g.order)

    best = _Search(groups, occupied, universe).run()
    if best is None:
        where = ""
        if fixed_placements:
            pinned = ", ".join(f"{s.profile} at {p}" for s, p in fixed_placements)
            where = f" with {pinned} fixed"
        raise InfeasibleError(
            gpu,
            f"no arrangement of {listing} ({demand} of {width} memory slices) fits the "
            f"possible placements{where}; `migrestore profiles` lists them",
        )
    for group, picked in zip(groups, best):
        for member, j in zip(group.members, picked):
            slot = group.slots[j]
            kept_gi = slot.kept if isinstance(slot.kept, GpuInstance) else None
            result.append((wanted[member], slot.placement, kept_gi))
    result.sort(key=lambda r: r[1].start)
    return tuple(result)


def _check_media(gpu: str, names: Sequence[str]) -> None:
    """nvml.h: an *_ALL_ME instance prevents the allocation of all but *_NO_ME profiles."""
    takers = [n for n in names if media_class(n) == "all"]
    if not takers:
        return
    for taker in takers:
        others = [n for n in names if n != taker and media_class(n) != "none"]
        if others:
            raise InfeasibleError(
                gpu,
                f"{taker} takes every media engine, so only -me profiles can share the GPU "
                f"with it (also wanted: {', '.join(others)})",
            )


# --------------------------------------------------------------------------- CIs


def solve_cis(
    gpu: str,
    gi_profile: GiProfile,
    current: Sequence[ComputeInstance],
    wanted: Sequence[str],
) -> Tuple[CiAssignment, ...]:
    """Place every wanted CI inside one GI of ``gi_profile``, keeping current CIs.

    ``wanted`` holds CI profile names (``1c.3g.40gb``, or the GI's own name for the CI
    that covers the GI). Returns one ``(name, placement, kept)`` per wanted CI, sorted by
    placement start, placements in compute slices of the GI.

    Raises:
        InfeasibleError: an unknown CI profile, more CIs than a profile's cap, more
            compute slices than the GI has, or no arrangement at all.
    """
    if not wanted:
        return ()
    gi = gi_profile.name
    by_name: Dict[str, CiProfile] = {c.name: c for c in gi_profile.ci_profiles}
    if not by_name:
        raise InfeasibleError(
            gpu, f"this GPU's profile table lists no compute-instance profiles for a {gi} GI"
        )
    valid = ", ".join(c.name for c in gi_profile.ci_profiles)
    unknown = sorted({n for n in wanted if n not in by_name})
    if unknown:
        noun = "profile" if len(unknown) == 1 else "profiles"
        raise InfeasibleError(
            gpu, f"no CI {noun} {', '.join(unknown)} in a {gi} GI (valid: {valid})"
        )
    counts: Dict[str, int] = {}
    for name in wanted:
        counts[name] = counts.get(name, 0) + 1
    for name in sorted(counts):
        ci = by_name[name]
        if not ci.placements:
            raise InfeasibleError(
                gpu,
                f"{name}: this GPU's profile table lists no possible placement for it in a {gi} GI",
            )
        if counts[name] > ci.max:
            raise InfeasibleError(
                gpu, f"{name}: {counts[name]} wanted, at most {ci.max} per {gi} GI"
            )

    universe = _universe(
        [p for c in gi_profile.ci_profiles for p in c.placements], gi_profile.slices
    )
    width = _popcount(universe)
    ordered = sorted(counts, key=lambda n: (-_profile_size(by_name[n].placements), n))
    demand = sum(_profile_size(by_name[n].placements) * counts[n] for n in ordered)
    listing = _count_text([n for n in ordered for _ in range(counts[n])])
    if demand > width:
        raise InfeasibleError(
            gpu, f"needs {demand} of {width} compute slices of a {gi} GI ({listing})"
        )

    keep_at = _index_current(current)
    members: Dict[str, List[int]] = {}
    for i, name in enumerate(wanted):
        members.setdefault(name, []).append(i)
    groups: List[_Group] = []
    for name, idx in members.items():
        ci = by_name[name]
        slots = tuple(
            _Slot(p, p.mask(), _ci_weight(kept), kept)
            for p in sorted(ci.placements)
            for kept in (keep_at.get((name, p.start, p.size)),)
        )
        size = _profile_size(ci.placements)
        groups.append(
            _Group(
                order=(-size, len(slots), name),
                size=size,
                slots=slots,
                members=tuple(idx),
                top=_top_sums(slots, len(idx)),
            )
        )
    groups.sort(key=lambda g: g.order)

    best = _Search(groups, 0, universe).run()
    if best is None:
        raise InfeasibleError(
            gpu,
            f"no arrangement of {listing} ({demand} of {width} compute slices) fits the "
            f"possible placements in a {gi} GI",
        )
    result: List[CiAssignment] = []
    for group, picked in zip(groups, best):
        for member, j in zip(group.members, picked):
            slot = group.slots[j]
            kept_ci = slot.kept if isinstance(slot.kept, ComputeInstance) else None
            result.append((wanted[member], slot.placement, kept_ci))
    result.sort(key=lambda r: r[1].start)
    return tuple(result)
