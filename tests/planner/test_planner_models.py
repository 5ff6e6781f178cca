"""solve_gis against every shipped model table, checked by brute force.

For each model, every multiset of GI profiles that has *some* valid layout (found by
trying every set of non-overlapping possible placements) must be solved with a valid
layout; multisets next to them that have none must be rejected with InfeasibleError.
"""

# Python 3.9 spelling (typing.Dict/Tuple/Optional), as docs/ARCHITECTURE.md asks.

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

import pytest

from migrestore import tables
from migrestore.errors import InfeasibleError
from migrestore.model import GiProfile, GpuInstance, InstanceSpec, Placement
from migrestore.placement import solve_gis
from tests.planner._support import h100_profiles, layouts, media_ok, multiset

MODELS = tables.load_models()
NAMES = sorted(MODELS)

Multiset = Tuple[str, ...]


def _feasible(profiles: Sequence[GiProfile]) -> Set[Multiset]:
    return {multiset([name for name, _ in layout]) for layout in layouts(profiles)}


FEASIBLE: Dict[str, Set[Multiset]] = {name: _feasible(MODELS[name].profiles) for name in NAMES}


def _width(profiles: Sequence[GiProfile]) -> int:
    return max(p.end for prof in profiles for p in prof.placements)


def _near_misses(profiles: Sequence[GiProfile], feasible: Set[Multiset]) -> List[Multiset]:
    """Multisets that have no layout: every one whose slices fit the GPU (up to one over
    each cap), plus every feasible multiset with one more instance of any profile."""
    width = _width(profiles)
    out: Set[Multiset] = set()

    def walk(i: int, names: List[str], demand: int) -> None:
        if i == len(profiles):
            if names:
                out.add(multiset(names))
            return
        p = profiles[i]
        size = min(pl.size for pl in p.placements)
        for k in range(p.max + 2):
            if demand + k * size > width:
                break
            walk(i + 1, names + [p.name] * k, demand + k * size)

    walk(0, [], 0)
    for base in feasible:
        for p in profiles:
            out.add(multiset([*base, p.name]))
    return sorted(out - feasible)


def _check_layout(
    profiles: Sequence[GiProfile],
    wanted: Sequence[InstanceSpec],
    result: Sequence[Tuple[InstanceSpec, Placement, Optional[GpuInstance]]],
) -> None:
    by_name = {p.name: p for p in profiles}
    assert sorted(s.profile for s, _, _ in result) == sorted(s.profile for s in wanted)
    used = 0
    for spec, placement, _ in result:
        assert placement in by_name[spec.profile].placements, (spec, placement)
        assert not used & placement.mask(), f"overlap at {placement}"
        used |= placement.mask()
        if spec.placement is not None:
            assert placement.start == spec.placement
    for name in {s.profile for s in wanted}:
        assert sum(s.profile == name for s in wanted) <= by_name[name].max
    assert media_ok([s.profile for s in wanted])


def test_every_shipped_model_is_covered() -> None:
    assert set(NAMES) == set(tables.MODEL_NAMES)
    for name in NAMES:
        assert len(FEASIBLE[name]) > 10, name


def test_hand_written_h100_table_matches_the_shipped_one() -> None:
    shipped = MODELS["h100-80gb-hbm3"].profiles
    mine = h100_profiles()
    key = lambda p: (p.name, p.id, p.max, p.placements)  # noqa: E731
    assert sorted(map(key, mine)) == sorted(map(key, shipped))


@pytest.mark.parametrize("model", NAMES)
def test_every_feasible_multiset_is_solved(model: str) -> None:
    profiles = MODELS[model].profiles
    for names in sorted(FEASIBLE[model]):
        wanted = [InstanceSpec(n) for n in names]
        result = solve_gis("0", profiles, (), wanted)
        _check_layout(profiles, wanted, result)


@pytest.mark.parametrize("model", NAMES)
def test_every_near_miss_is_infeasible(model: str) -> None:
    profiles = MODELS[model].profiles
    misses = _near_misses(profiles, FEASIBLE[model])
    assert misses
    for names in misses:
        with pytest.raises(InfeasibleError):
            solve_gis("0", profiles, (), [InstanceSpec(n) for n in names])


@pytest.mark.parametrize("model", NAMES)
def test_every_layout_pinned_is_solved_exactly(model: str) -> None:
    """Each concrete layout, every instance pinned, is returned as it is, and, given as
    the current geometry, is kept whole when its multiset is wanted unpinned."""
    profiles = MODELS[model].profiles
    by_name = {p.name: p for p in profiles}
    for layout in layouts(profiles)[::7]:
        pinned = [InstanceSpec(n, pl.start) for n, pl in layout]
        result = solve_gis("0", profiles, (), pinned)
        assert [(s.profile, pl) for s, pl, _ in result] == list(layout)
        current = tuple(
            GpuInstance(i + 1, by_name[n].id, n, pl) for i, (n, pl) in enumerate(layout)
        )
        free = [InstanceSpec(n) for n, _ in layout]
        kept = solve_gis("0", profiles, current, free)
        assert all(k is not None for _, _, k in kept)
        assert [(s.profile, pl) for s, pl, _ in kept] == list(layout)


@pytest.mark.parametrize("model", NAMES)
def test_answers_are_deterministic_and_order_free(model: str) -> None:
    profiles = MODELS[model].profiles
    for names in sorted(FEASIBLE[model])[::5]:
        wanted = [InstanceSpec(n) for n in names]
        first = solve_gis("0", profiles, (), wanted)
        assert solve_gis("0", profiles, (), wanted) == first
        assert solve_gis("0", profiles, (), list(reversed(wanted))) == first
        assert solve_gis("0", profiles, (), wanted[1:] + wanted[:1]) == first
        assert solve_gis("0", tuple(reversed(profiles)), (), wanted) == first
