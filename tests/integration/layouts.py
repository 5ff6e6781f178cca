"""Brute-force enumeration of GI layouts, independent of migrestore's solver.

Used to check the solver and the whole apply path against every layout a model allows.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, List, Set, Tuple

from migrestore.model import GiProfile, media_class

Multiset = Tuple[str, ...]  # sorted profile names


def _media_ok(names: List[str]) -> bool:
    classes = [media_class(n) for n in names]
    if "all" in classes:
        return all(c in ("all", "none") for c in classes) and classes.count("all") == 1
    return True


def feasible_multisets(profiles: Tuple[GiProfile, ...]) -> Set[Multiset]:
    """Every multiset of GI profiles that fits: some choice of possible placements that do
    not overlap, within each profile's cap and the media rule."""
    options = [(p.name, pl.mask(), p.max) for p in profiles for pl in p.placements]
    found: Set[Multiset] = set()
    seen: Set[Tuple[int, FrozenSet[Tuple[str, int]]]] = set()

    def walk(start: int, used: int, chosen: List[str]) -> None:
        key = tuple(sorted(chosen))
        found.add(key)
        for i in range(start, len(options)):
            name, mask, cap = options[i]
            if used & mask or chosen.count(name) >= cap:
                continue
            nxt = [*chosen, name]
            if not _media_ok(nxt):
                continue
            sig = (used | mask, frozenset((n, nxt.count(n)) for n in nxt))
            if sig in seen:
                continue
            seen.add(sig)
            walk(i + 1, used | mask, nxt)

    walk(0, 0, [])
    return found


def infeasible_neighbours(
    profiles: Tuple[GiProfile, ...], feasible: Set[Multiset]
) -> Set[Multiset]:
    """Multisets one instance larger than a maximal feasible one: none of them fits."""
    out: Set[Multiset] = set()
    names = [p.name for p in profiles]
    for layout in feasible:
        for extra in names:
            bigger = tuple(sorted((*layout, extra)))
            if bigger not in feasible:
                out.add(bigger)
    return out


def counts(layout: Multiset) -> Dict[str, int]:
    result: Dict[str, int] = {}
    for name in layout:
        result[name] = result.get(name, 0) + 1
    return result
