"""GPU instances: the create/destroy rules with their NVML errors, capacity, GI IDs, and
the driver's default placement."""

from __future__ import annotations

from typing import Callable, List, Tuple

import pynvml
import pytest

from migrestore import simulator, tables
from tests.sim.conftest import BootId
from tests.sim.support import (
    create_ci,
    create_gi,
    create_gi_at,
    device,
    gi_handles,
    gi_id_of,
    gi_placements,
    remaining,
)

# every test runs on the fake library and on the simulated libnvidia-ml.so.1
NVML_LIBRARIES = ("fake", "libnvidia-ml")

# H100 80GB HBM3 profile IDs (the probe's): index 0..4 -> 19, 14, 9, 5, 0; +me 20; 1g.20gb 15.
G1, G2, G3, G4, G7, G1ME, G1R2 = 19, 14, 9, 5, 0, 20, 15


def _mig_on(attach: Callable[[str], simulator.Simulator], spec: str) -> simulator.Simulator:
    sim = attach(spec)
    for i in range(pynvml.nvmlDeviceGetCount()):
        assert pynvml.nvmlDeviceSetMigMode(device(i), 1) == pynvml.NVML_SUCCESS
    return sim


def test_profile_table_is_readable_with_mig_on_and_off(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    attach("h100-nvl-94gb")
    dev = device()

    def read() -> List[Tuple[int, int, int, List[Tuple[int, int]]]]:
        rows: List[Tuple[int, int, int, List[Tuple[int, int]]]] = []
        for index in range(18):
            try:
                info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, index)
            except pynvml.NVMLError as err:
                rows.append((index, -err.value, 0, []))
                continue
            rows.append((index, info.id, info.memorySizeMB, gi_placements(dev, info.id)))
        return rows

    off = read()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    assert read() == off
    assert (17, -pynvml.NVML_ERROR_INVALID_ARGUMENT, 0, []) in off
    assert (5, -pynvml.NVML_ERROR_NOT_SUPPORTED, 0, []) in off


def test_create_needs_mig_mode(attach: Callable[[str], simulator.Simulator]) -> None:
    sim = attach("h100-80gb-hbm3")
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceCreateGpuInstance(device(), G1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuInstanceById(device(), 7)
    assert sim.change_count == 0


def test_profile_id_and_index_are_kept_apart(attach: Callable[[str], simulator.Simulator]) -> None:
    _mig_on(attach, "h100-80gb-hbm3")
    dev = device()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceCreateGpuInstance(dev, 2)  # the 3g *index*: no such profile ID
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        gi_placements(dev, 4)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuInstanceProfileInfoById(dev, 2)
    _, _, _, size = create_gi(dev, G3)  # the 3g profile ID
    assert size == 4


def test_placement_must_be_a_possible_one(attach: Callable[[str], simulator.Simulator]) -> None:
    _mig_on(attach, "h100-80gb-hbm3")
    dev = device()
    for profile, start, size in ((G3, 2, 4), (G1, 7, 1), (G3, 4, 3), (G2, 6, 2)):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            create_gi_at(dev, profile, start, size)


def test_overlap_is_insufficient_resources(attach: Callable[[str], simulator.Simulator]) -> None:
    sim = _mig_on(attach, "h100-80gb-hbm3")
    dev = device()
    create_gi(dev, G3, 4)
    for profile, start in ((G1, 5), (G2, 4), (G3, 4), (G1R2, 6), (G7, 0)):
        with pytest.raises(pynvml.NVMLError_InsufficientResources):
            create_gi(dev, profile, start)
    assert len(sim.state().gpus[0].gis) == 1
    create_gi(dev, G4, 0)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        pynvml.nvmlDeviceCreateGpuInstance(dev, G1)  # full: no default placement left


def test_instance_count_caps(attach: Callable[[str], simulator.Simulator]) -> None:
    _mig_on(attach, "h100-80gb-hbm3")
    dev = device()
    create_gi(dev, G1ME, 0)
    assert remaining(dev, G1ME) == 0
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_gi(dev, G1ME, 1)  # +me: one per GPU, though slice 1 is free
    create_gi(dev, G1, 1)


def test_remaining_capacity_counts_what_still_fits(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    _mig_on(attach, "h100-80gb-hbm3")
    dev = device()
    full = {p: remaining(dev, p) for p in (G1, G2, G3, G4, G7, G1ME, G1R2)}
    assert full == {G1: 7, G2: 3, G3: 2, G4: 1, G7: 1, G1ME: 1, G1R2: 4}
    gi, _, _, _ = create_gi(dev, G3, 0)
    # nvidia-smi: one 3g.40gb takes 3g from 2/2 to 1/2 and 1g from 7/7 to 3/7.
    assert {p: remaining(dev, p) for p in (G1, G2, G3, G4, G7, G1R2)} == {
        G1: 3,
        G2: 1,
        G3: 1,
        G4: 0,
        G7: 0,
        G1R2: 2,
    }
    pynvml.nvmlGpuInstanceDestroy(gi)
    create_gi(dev, G3, 4)  # in the upper half, 1g can use all four lower slices
    assert (remaining(dev, G1), remaining(dev, G2), remaining(dev, G4)) == (4, 2, 1)


def test_all_media_engines_exclude_all_but_no_media_profiles(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    _mig_on(attach, "rtx-pro-6000-blackwell")
    dev = device()
    one, one_all, one_none, one_gfx = 14, 65, 67, 47
    create_gi(dev, one_all, 0)
    assert remaining(dev, one) == 0 and remaining(dev, one_none) == 3
    for profile in (one, one_gfx, 21):
        with pytest.raises(pynvml.NVMLError_InsufficientResources):
            create_gi(dev, profile, 3)
    create_gi(dev, one_none, 3)
    pynvml.nvmlGpuInstanceDestroy(gi_handles(dev, one_all)[0])
    create_gi(dev, one, 0)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_gi(dev, one_all, 6)  # a plain GI uses media engines +me.all needs


def _ids(spec: str, profile: str, attach: Callable[[str], simulator.Simulator]) -> List[int]:
    """GI IDs of ``profile`` created at each possible placement, in placement order."""
    _mig_on(attach, spec)
    dev = device()
    table = tables.model(spec)
    prof = table.profile(profile)
    assert prof is not None
    ids = []
    for placement in prof.placements:
        gi, gi_id, _, _ = create_gi(dev, prof.id, placement.start)
        ids.append(gi_id)
        pynvml.nvmlGpuInstanceDestroy(gi)
    return ids


@pytest.mark.parametrize(
    ("spec", "profile", "expected"),
    [
        ("h100-80gb-hbm3", "7g.80gb", [0]),
        ("h100-80gb-hbm3", "3g.40gb", [1, 2]),
        ("h100-80gb-hbm3", "4g.40gb", [1]),
        ("h100-80gb-hbm3", "2g.20gb", [3, 4, 5]),
        ("h100-80gb-hbm3", "1g.20gb", [3, 4, 5, 6]),
        ("h100-80gb-hbm3", "1g.10gb", [7, 8, 9, 10, 11, 12, 13]),
        ("a30-24gb", "4g.24gb", [0]),
        ("a30-24gb", "2g.12gb", [1, 2]),
        ("a30-24gb", "1g.6gb", [3, 4, 5, 6]),
        ("rtx-pro-6000-blackwell", "4g.96gb", [0]),
        ("rtx-pro-6000-blackwell", "2g.48gb", [1, 2]),
        ("rtx-pro-6000-blackwell", "1g.24gb", [3, 4, 5, 6]),
    ],
)
def test_gi_ids_follow_the_swizzid_table(
    attach: Callable[[str], simulator.Simulator], spec: str, profile: str, expected: List[int]
) -> None:
    assert _ids(spec, profile, attach) == expected


def test_permuted_gi_ids_are_read_back_consistently(
    attach: Callable[[str], simulator.Simulator],
    state_file: Callable[..., str],
    boot_id: BootId,
) -> None:
    path = state_file("h100-80gb-hbm3:2", "--permute-gi-ids", "7")
    sim = _mig_on(attach, path)
    maps = [g.gi_id_map for g in sim.state().gpus]
    assert maps[0] is not None and maps[1] is not None and maps[0] != maps[1]
    assert sorted(maps[0]) == list(range(15))
    dev = device()
    seen = []
    for start in range(7):
        _, gi_id, _, _ = create_gi(dev, G1, start)
        assert gi_id == maps[0][7 + start]
        found = pynvml.nvmlDeviceGetGpuInstanceById(dev, gi_id)
        assert pynvml.nvmlGpuInstanceGetInfo(found).placement.start == start
        seen.append(gi_id)
    assert len(set(seen)) == 7
    assert seen != list(range(7, 14))


def _defaults(dev: object, profiles: List[int]) -> List[Tuple[int, str]]:
    out = []
    for profile in profiles:
        _, gi_id, start, size = create_gi(dev, profile)
        out.append((gi_id, f"{start}:{size}"))
    return out


def test_default_placement_reproduces_the_mig_user_guide(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    # A100-40GB: 19 = 1g.5gb, 14 = 2g.10gb, 9 = 3g.20gb (MIG User Guide transcripts).
    _mig_on(attach, "a100-sxm4-40gb:4")
    assert _defaults(device(0), [9, 19, 14, 19]) == [(2, "4:4"), (7, "0:1"), (4, "2:2"), (8, "1:1")]
    assert _defaults(device(1), [14, 19, 19, 19, 19, 19]) == [
        (5, "4:2"),
        (13, "6:1"),
        (7, "0:1"),
        (8, "1:1"),
        (9, "2:1"),
        (10, "3:1"),
    ]
    assert _defaults(device(2), [19, 19, 14]) == [(13, "6:1"), (11, "4:1"), (3, "0:2")]
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        pynvml.nvmlDeviceCreateGpuInstance(device(2), 9)
    assert _defaults(device(3), [9, 9]) == [(2, "4:4"), (1, "0:4")]


def test_default_placement_on_a30_and_rtx_pro(attach: Callable[[str], simulator.Simulator]) -> None:
    _mig_on(attach, "a30-24gb,rtx-pro-6000-blackwell")
    # A30 driver 535: 1g -> GI 3 at 0, 1g -> GI 4 at 1, 2g -> GI 2 at 2.
    assert _defaults(device(0), [14, 14, 5]) == [(3, "0:1"), (4, "1:1"), (2, "2:2")]
    # RTX PRO 6000 driver 580: the first 1g.24gb on an empty GPU is GI 3.
    assert _defaults(device(1), [14]) == [(3, "0:3")]


def test_destroy_in_use_until_the_cis_are_gone_then_the_handle_dies(
    attach: Callable[[str], simulator.Simulator],
) -> None:
    sim = _mig_on(attach, "h100-80gb-hbm3")
    dev = device()
    gi, gi_id, _, _ = create_gi(dev, G3, 0)
    ci = create_ci(gi, 2)
    with pytest.raises(pynvml.NVMLError_InUse):
        pynvml.nvmlGpuInstanceDestroy(gi)
    pynvml.nvmlComputeInstanceDestroy(ci)
    pynvml.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceGetInfo(gi)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetGpuInstanceById(dev, gi_id)
    assert [c["function"] for c in sim.changes()][-4:] == [
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlComputeInstanceDestroy",
        "nvmlGpuInstanceDestroy",
    ]


def test_instances_are_listed_per_profile(attach: Callable[[str], simulator.Simulator]) -> None:
    _mig_on(attach, "h100-80gb-hbm3")
    dev = device()
    create_gi(dev, G1, 6)
    create_gi(dev, G1, 0)
    create_gi(dev, G2, 2)
    assert sorted(gi_id_of(h) for h in gi_handles(dev, G1)) == [7, 13]
    assert [gi_id_of(h) for h in gi_handles(dev, G2)] == [4]
    assert gi_handles(dev, G3) == []
