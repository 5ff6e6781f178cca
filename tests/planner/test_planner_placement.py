"""solve_gis / solve_cis on the hand-written H100 80GB table: placements, keeps, errors."""

# Python 3.9 spelling (typing.Dict/Tuple/Optional), as docs/ARCHITECTURE.md asks.

from __future__ import annotations

from typing import List, Sequence, Tuple

import pytest

from migrestore.errors import EXIT_CONFIG, InfeasibleError
from migrestore.model import (
    CiProfile,
    ComputeInstance,
    GiProfile,
    InstanceSpec,
    Placement,
)
from migrestore.placement import solve_cis, solve_gis
from tests.planner._support import h100_profiles, make_gi

H100 = h100_profiles()
GPU = "0 (GPU-a2df41b2-0ba1-1d44-e4c4-79338246060e)"


def specs(*names: str) -> Tuple[InstanceSpec, ...]:
    return tuple(InstanceSpec(n) for n in names)


def shape(result: Sequence[Tuple[InstanceSpec, Placement, object]]) -> List[Tuple[str, str]]:
    return [(spec.profile, str(pl)) for spec, pl, _ in result]


def profile(name: str) -> GiProfile:
    return next(p for p in H100 if p.name == name)


def reason(call: object) -> str:
    assert callable(call)
    with pytest.raises(InfeasibleError) as info:
        call()
    assert info.value.exit_code == EXIT_CONFIG
    assert str(info.value).startswith(f"GPU {GPU}: ")
    assert str(info.value).endswith("; nothing was changed")
    return info.value.reason


# --------------------------------------------------------------------------- placements


def test_mig_parted_trap_balanced_h100_puts_3g_at_4() -> None:
    """{3g, 2g, 1g x2} fits only with the 3g at 4: mig-parted's largest-first driver
    placement (3g at 0) fails; the solver places it right in one pass."""
    result = solve_gis(GPU, H100, (), specs("1g.10gb", "3g.40gb", "1g.10gb", "2g.20gb"))
    assert shape(result) == [
        ("2g.20gb", "0:2"),
        ("1g.10gb", "2:1"),
        ("1g.10gb", "3:1"),
        ("3g.40gb", "4:4"),
    ]
    assert all(kept is None for _, _, kept in result)


def test_tie_break_larger_profiles_first_at_lowest_start() -> None:
    assert shape(solve_gis(GPU, H100, (), specs("1g.10gb", "3g.40gb"))) == [
        ("3g.40gb", "0:4"),
        ("1g.10gb", "4:1"),
    ]
    assert shape(solve_gis(GPU, H100, (), specs("1g.10gb", "1g.10gb", "1g.10gb"))) == [
        ("1g.10gb", "0:1"),
        ("1g.10gb", "1:1"),
        ("1g.10gb", "2:1"),
    ]


def test_full_gpu_of_seven_1g_and_four_1g20() -> None:
    assert [pl.start for _, pl, _ in solve_gis(GPU, H100, (), specs(*["1g.10gb"] * 7))] == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert shape(solve_gis(GPU, H100, (), specs(*["1g.20gb"] * 4))) == [
        ("1g.20gb", "0:2"),
        ("1g.20gb", "2:2"),
        ("1g.20gb", "4:2"),
        ("1g.20gb", "6:2"),
    ]


def test_fixed_placement_is_honoured_and_others_fit_around_it() -> None:
    wanted = (InstanceSpec("1g.10gb", placement=0), *specs("3g.40gb", "2g.20gb"))
    assert shape(solve_gis(GPU, H100, (), wanted)) == [
        ("1g.10gb", "0:1"),
        ("2g.20gb", "2:2"),
        ("3g.40gb", "4:4"),
    ]


def test_result_does_not_depend_on_the_order_of_wanted() -> None:
    wanted = [
        InstanceSpec("1g.10gb"),
        InstanceSpec("2g.20gb", compute=("1c.2g.20gb", "1c.2g.20gb")),
        InstanceSpec("3g.40gb"),
        InstanceSpec("1g.10gb"),
    ]
    current = (make_gi(H100, 3, "1g.10gb", 6), make_gi(H100, 4, "2g.20gb", 2))
    first = solve_gis(GPU, H100, current, wanted)
    assert solve_gis(GPU, H100, current, list(reversed(wanted))) == first
    assert solve_gis(GPU, H100, current, wanted[1:] + wanted[:1]) == first
    assert solve_gis(GPU, H100, current, wanted) == first


def test_media_rule_allows_only_no_me_profiles_beside_me_all() -> None:
    rtx = _rtx_pro_6000()
    ok = solve_gis(GPU, rtx, (), specs("1g.24gb+me.all", "1g.24gb-me", "2g.48gb-me"))
    assert shape(ok) == [("2g.48gb-me", "0:6"), ("1g.24gb+me.all", "6:3"), ("1g.24gb-me", "9:3")]
    text = reason(lambda: solve_gis(GPU, rtx, (), specs("1g.24gb+me.all", "1g.24gb", "1g.24gb-me")))
    assert text == (
        "1g.24gb+me.all takes every media engine, so only -me profiles can share the GPU "
        "with it (also wanted: 1g.24gb)"
    )
    text = reason(lambda: solve_gis(GPU, rtx, (), specs("1g.24gb+me.all", "2g.48gb+me.all")))
    assert "only -me profiles can share the GPU" in text


# --------------------------------------------------------------------------- keeping


def test_keeps_current_instances_at_their_placements() -> None:
    current = (make_gi(H100, 7, "1g.10gb", 5), make_gi(H100, 1, "3g.40gb", 0))
    result = solve_gis(GPU, H100, current, specs("3g.40gb", "1g.10gb", "1g.10gb"))
    assert shape(result) == [("3g.40gb", "0:4"), ("1g.10gb", "4:1"), ("1g.10gb", "5:1")]
    kept = {pl.start: k.gi_id for _, pl, k in result if k is not None}
    assert kept == {0: 1, 5: 7}


def test_a_current_gi_of_another_profile_is_not_kept() -> None:
    current = (make_gi(H100, 7, "1g.20gb", 0),)
    result = solve_gis(GPU, H100, current, specs("1g.10gb"))
    assert shape(result) == [("1g.10gb", "0:1")]
    assert result[0][2] is None


def test_keeps_the_most_current_instances() -> None:
    """Keeping 1g at 4 and 5 (two kept, 3g at 0) beats keeping the 3g at 4 (one kept)."""
    current = (
        make_gi(H100, 1, "1g.10gb", 4),
        make_gi(H100, 2, "1g.10gb", 5),
    )
    result = solve_gis(GPU, H100, current, specs("3g.40gb", "1g.10gb", "1g.10gb"))
    assert shape(result) == [("3g.40gb", "0:4"), ("1g.10gb", "4:1"), ("1g.10gb", "5:1")]
    assert sum(k is not None for _, _, k in result) == 2


def test_an_instance_with_processes_outweighs_more_idle_ones() -> None:
    """Idle 1g at 4 and 5 would both survive with the 3g at 0, but the 1g at 0 runs a
    process: the solver keeps it and moves the 3g to 4."""
    current = (
        make_gi(H100, 1, "1g.10gb", 0, pids={0: (4242,)}),
        make_gi(H100, 2, "1g.10gb", 4),
        make_gi(H100, 3, "1g.10gb", 5),
    )
    result = solve_gis(GPU, H100, current, specs("3g.40gb", "1g.10gb", "1g.10gb"))
    assert shape(result) == [("1g.10gb", "0:1"), ("1g.10gb", "1:1"), ("3g.40gb", "4:4")]
    assert [k.gi_id if k else None for _, _, k in result] == [1, None, None]


def test_a_gi_whose_cis_already_match_is_preferred() -> None:
    """Two 3g GIs exist; the spec with three 1c CIs goes to the GI that has them (at 0),
    although the plain spec sorts first and would take the lowest start on a tie."""
    three = (("1c.3g.40gb", 0), ("1c.3g.40gb", 1), ("1c.3g.40gb", 2))
    current = (make_gi(H100, 1, "3g.40gb", 0, cis=three), make_gi(H100, 2, "3g.40gb", 4))
    split = InstanceSpec("3g.40gb", compute=("1c.3g.40gb",) * 3)
    result = solve_gis(GPU, H100, current, (InstanceSpec("3g.40gb"), split))
    assert [(spec, pl.start, k) for spec, pl, k in result] == [
        (split, 0, current[0]),
        (InstanceSpec("3g.40gb"), 4, current[1]),
    ]


def test_ci_lists_in_another_order_are_the_same_layout() -> None:
    a = InstanceSpec("3g.40gb", compute=("1c.3g.40gb", "2c.3g.40gb"))
    b = InstanceSpec("3g.40gb", compute=("2c.3g.40gb", "1c.3g.40gb"))
    current = (make_gi(H100, 1, "3g.40gb", 4, cis=(("2c.3g.40gb", 0), ("1c.3g.40gb", 2))),)
    first = solve_gis(GPU, H100, current, (InstanceSpec("1g.10gb"), a))
    assert [(s, pl.start, k) for s, pl, k in first] == [
        (InstanceSpec("1g.10gb"), 0, None),
        (a, 4, current[0]),
    ]
    assert solve_gis(GPU, H100, (), (a, b)) == solve_gis(GPU, H100, (), (b, a))


# --------------------------------------------------------------------------- errors


def test_unknown_profile_lists_the_valid_names() -> None:
    assert reason(lambda: solve_gis(GPU, H100, (), specs("5g.50gb"))) == (
        "no GI profile 5g.50gb on this GPU (valid: 1g.10gb, 2g.20gb, 3g.40gb, 4g.40gb, "
        "7g.80gb, 1g.10gb+me, 1g.20gb)"
    )


def test_start_not_possible_lists_the_possible_starts() -> None:
    text = reason(lambda: solve_gis(GPU, H100, (), (InstanceSpec("3g.40gb", placement=2),)))
    assert text == "3g.40gb cannot start at slice 2 (possible starts: 0, 4)"


def test_overlapping_fixed_placements_name_the_shared_slice() -> None:
    wanted = (InstanceSpec("2g.20gb", placement=2), InstanceSpec("3g.40gb", placement=0))
    text = reason(lambda: solve_gis(GPU, H100, (), wanted))
    assert text == "3g.40gb at 0:4 and 2g.20gb at 2:2 both need slice 2"


def test_more_instances_than_the_cap() -> None:
    text = reason(lambda: solve_gis(GPU, H100, (), specs("1g.10gb+me", "1g.10gb+me")))
    assert text == "1g.10gb+me: 2 wanted, at most 1 per GPU"


def test_more_slices_than_the_gpu_has() -> None:
    text = reason(lambda: solve_gis(GPU, H100, (), specs("1g.10gb", "3g.40gb", "3g.40gb")))
    assert text == "needs 9 of 8 memory slices (3g.40gb x2, 1g.10gb)"


def test_no_arrangement_names_total_and_profiles() -> None:
    text = reason(lambda: solve_gis(GPU, H100, (), specs(*["2g.20gb"] * 3, "1g.10gb", "1g.10gb")))
    assert text == (
        "no arrangement of 2g.20gb x3, 1g.10gb x2 (8 of 8 memory slices) fits the possible "
        "placements; `migrestore profiles` lists them"
    )


def test_no_arrangement_mentions_the_fixed_placements() -> None:
    wanted = (InstanceSpec("3g.40gb", placement=0), InstanceSpec("4g.40gb"))
    text = reason(lambda: solve_gis(GPU, H100, (), wanted))
    assert text == (
        "no arrangement of 3g.40gb, 4g.40gb (8 of 8 memory slices) fits the possible "
        "placements with 3g.40gb at 0:4 fixed; `migrestore profiles` lists them"
    )
    # The same pair fits when the 3g is pinned to the other half.
    moved = (InstanceSpec("3g.40gb", placement=4), InstanceSpec("4g.40gb"))
    assert shape(solve_gis(GPU, H100, (), moved)) == [("4g.40gb", "0:4"), ("3g.40gb", "4:4")]


def test_nothing_wanted_places_nothing() -> None:
    assert solve_gis(GPU, H100, (make_gi(H100, 1, "7g.80gb", 0),), ()) == ()


# --------------------------------------------------------------------------- CIs


def test_cis_fill_the_gi_larger_first() -> None:
    result = solve_cis(GPU, profile("3g.40gb"), (), ["1c.3g.40gb", "2c.3g.40gb"])
    assert [(n, str(p), k) for n, p, k in result] == [
        ("2c.3g.40gb", "0:2", None),
        ("1c.3g.40gb", "2:1", None),
    ]


def test_ci_trap_needs_the_2c_at_0_even_when_listed_last() -> None:
    result = solve_cis(GPU, profile("7g.80gb"), (), ["1c.7g.80gb", "3c.7g.80gb", "3c.7g.80gb"])
    assert [(n, str(p)) for n, p, _ in result] == [
        ("3c.7g.80gb", "0:3"),
        ("1c.7g.80gb", "3:1"),
        ("3c.7g.80gb", "4:3"),
    ]


def test_cis_keep_current_ones_at_exact_placement() -> None:
    gi = make_gi(H100, 1, "3g.40gb", 0, cis=(("1c.3g.40gb", 2), ("1c.3g.40gb", 0)))
    result = solve_cis(GPU, profile("3g.40gb"), gi.cis, ["1c.3g.40gb"] * 3)
    assert [(n, str(p), k.ci_id if k else None) for n, p, k in result] == [
        ("1c.3g.40gb", "0:1", 1),
        ("1c.3g.40gb", "1:1", None),
        ("1c.3g.40gb", "2:1", 0),
    ]


def test_ci_with_processes_is_kept_first() -> None:
    """2c fits only at 0; the busy 1c at 2 stays, the idle one at 0 must give way."""
    busy = ComputeInstance(5, 0, "1c.3g.40gb", Placement(2, 1), "MIG-b", (77,))
    idle = ComputeInstance(4, 0, "1c.3g.40gb", Placement(0, 1), "MIG-i")
    result = solve_cis(GPU, profile("3g.40gb"), (idle, busy), ["2c.3g.40gb", "1c.3g.40gb"])
    assert [(n, str(p), k) for n, p, k in result] == [
        ("2c.3g.40gb", "0:2", None),
        ("1c.3g.40gb", "2:1", busy),
    ]


def test_ci_errors() -> None:
    p3 = profile("3g.40gb")
    assert reason(lambda: solve_cis(GPU, p3, (), ["4c.3g.40gb"])) == (
        "no CI profile 4c.3g.40gb in a 3g.40gb GI (valid: 1c.3g.40gb, 2c.3g.40gb, 3g.40gb)"
    )
    assert reason(lambda: solve_cis(GPU, p3, (), ["1c.3g.40gb"] * 4)) == (
        "1c.3g.40gb: 4 wanted, at most 3 per 3g.40gb GI"
    )
    assert reason(lambda: solve_cis(GPU, p3, (), ["3g.40gb", "1c.3g.40gb"])) == (
        "needs 4 of 3 compute slices of a 3g.40gb GI (3g.40gb, 1c.3g.40gb)"
    )


def test_ci_no_arrangement() -> None:
    """Every shipped GI table packs any CI mix that fits its slices, so this GI is made up:
    a 1c cannot use slice 3, so 3c + 1c fit the 4 slices in total but in no arrangement."""
    gi = GiProfile(
        3, 5, "4g.x", 4, 40448, 64, 1, (Placement(0, 4),),
        (
            CiProfile(0, "1c.4g.x", 1, 3, 16, tuple(Placement(s, 1) for s in range(3))),
            CiProfile(2, "3c.4g.x", 3, 1, 48, (Placement(0, 3),)),
        ),
    )  # fmt: skip
    text = reason(lambda: solve_cis(GPU, gi, (), ["1c.4g.x", "3c.4g.x"]))
    assert text == (
        "no arrangement of 3c.4g.x, 1c.4g.x (4 of 4 compute slices) fits the possible "
        "placements in a 4g.x GI"
    )


def test_ci_table_without_profiles_or_placements() -> None:
    bare = GiProfile(0, 19, "1g.10gb", 1, 9984, 16, 7, (Placement(0, 1),))
    assert reason(lambda: solve_cis(GPU, bare, (), ["1g.10gb"])) == (
        "this GPU's profile table lists no compute-instance profiles for a 1g.10gb GI"
    )
    unplaced = GiProfile(
        2, 9, "3g.20gb", 3, 19968, 42, 2, (Placement(0, 4),),
        (CiProfile(0, "1c.3g.20gb", 1, 3, 14, ()),),
    )  # fmt: skip
    assert reason(lambda: solve_cis(GPU, unplaced, (), ["1c.3g.20gb"])) == (
        "1c.3g.20gb: this GPU's profile table lists no possible placement for it in a 3g.20gb GI"
    )


# --------------------------------------------------------------------------- tables


def _rtx_pro_6000() -> Tuple[GiProfile, ...]:
    """RTX PRO 6000 Blackwell: 12 placement units, media variants (mig-profiles.json)."""
    q = tuple(Placement(s, 3) for s in (0, 3, 6, 9))
    h = (Placement(0, 6), Placement(6, 6))
    f = (Placement(0, 12),)
    rows = [
        (0, 14, "1g.24gb", 1, 4, q),
        (7, 21, "1g.24gb+me", 1, 1, q),
        (10, 47, "1g.24gb+gfx", 1, 4, q),
        (15, 65, "1g.24gb+me.all", 1, 1, q),
        (13, 67, "1g.24gb-me", 1, 4, q),
        (1, 5, "2g.48gb", 2, 2, h),
        (11, 35, "2g.48gb+gfx", 2, 2, h),
        (16, 64, "2g.48gb+me.all", 2, 1, h),
        (14, 66, "2g.48gb-me", 2, 2, h),
        (3, 0, "4g.96gb", 4, 1, f),
        (12, 32, "4g.96gb+gfx", 4, 1, f),
    ]
    return tuple(GiProfile(i, pid, n, s, 24576 * s, 47 * s, m, pl) for i, pid, n, s, m, pl in rows)
