"""What an observe costs in NVML calls: the profile tables are read once per session and
MIG mode, so a converged observe of 8 GPUs reads only the mode and the geometry."""

from __future__ import annotations

from pathlib import Path

from migrestore.backend import Simulated
from migrestore.model import Placement
from migrestore.nvml import Nvml
from migrestore.simulator.engine import fresh_state
from migrestore.simulator.state import write_new
from tests.nvml.support import count_calls

# Never called by an observe once the tables are cached.
TABLE_CALLS = (
    "nvmlDeviceGetGpuInstanceProfileInfoV",
    "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
    "nvmlGpuInstanceGetComputeInstancePossiblePlacements",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetName",
    "nvmlDeviceGetArchitecture",
)


def test_converged_observe_of_8_h100_reads_only_mode_and_geometry(tmp_path: Path) -> None:
    path = str(tmp_path / "sim.json")
    write_new(path, fresh_state(["h100-80gb-hbm3"] * 8))
    with Nvml(Simulated(path)) as nv:
        for gpu in nv.observe():
            assert nv.set_mig_mode(gpu.uuid, True) == "NVML_SUCCESS"
            for start in range(7):
                gi = nv.create_gi(gpu.uuid, 19, Placement(start, 1))  # 1g.10gb
                nv.create_ci(gpu.uuid, gi.gi_id, 0, None)
    # a new session (the daemon after a restart) on the converged GPUs
    with Nvml(Simulated(path)) as nv:
        counter = count_calls()
        first = nv.observe()
        cold = counter.total
        counter.clear()
        second = nv.observe()
        steady = counter.total
        assert second == first
        assert sum(len(gpu.instances) for gpu in second) == 56
        assert all(ci.uuid for gpu in second for gi in gpu.instances for ci in gi.cis)
        assert not any(counter.calls[name] for name in TABLE_CALLS)
        # per GPU: the mode (1), the GIs of each of the 7 profiles (7), per GI its info,
        # its CIs and their info (3), per MIG device its handle, IDs, UUID and processes
        # (5), and the MIG device count (1): 65
        assert counter.calls["nvmlDeviceGetMigMode"] == 8
        assert steady <= 8 * 65
        assert cold > steady
    print(f"observe of 8 converged H100s: {cold} NVML calls cold, {steady} steady")


def test_mig_off_observe_is_one_call_per_gpu() -> None:
    with Nvml(Simulated("h100-80gb-hbm3:8")) as nv:
        nv.observe()
        counter = count_calls()
        nv.observe()
        assert dict(counter.calls) == {"nvmlDeviceGetMigMode": 8}


def test_mig_device_scan_stops_once_every_ci_is_found() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        (gpu,) = nv.observe()
        assert nv.set_mig_mode(gpu.uuid, True) == "NVML_SUCCESS"
        for start in (0, 4):
            gi = nv.create_gi(gpu.uuid, 9, Placement(start, 4))  # 3g.40gb
            nv.create_ci(gpu.uuid, gi.gi_id, 2, None)
        counter = count_calls()
        observed = nv.observe_gpu(gpu.uuid)
        assert [len(gi.cis) for gi in observed.instances] == [1, 1]
        assert counter.calls["nvmlDeviceGetMaxMigDeviceCount"] == 1
        assert counter.calls["nvmlDeviceGetMigDeviceHandleByIndex"] == 2


def test_geometry_only_observe_skips_the_mig_device_scan(tmp_path: Path) -> None:
    """What the idle watch loop reads every interval: the geometry, without UUIDs and
    processes; the planner sees the same layout as from a full observe."""
    path = str(tmp_path / "sim.json")
    write_new(path, fresh_state(["h100-80gb-hbm3"] * 8))
    with Nvml(Simulated(path)) as nv:
        for gpu in nv.observe():
            assert nv.set_mig_mode(gpu.uuid, True) == "NVML_SUCCESS"
            for start in range(7):
                gi = nv.create_gi(gpu.uuid, 19, Placement(start, 1))
                nv.create_ci(gpu.uuid, gi.gi_id, 0, None)
        full = nv.observe()
        counter = count_calls()
        light = nv.observe(devices=False)
        # per GPU: the mode, one GI list (the seven 1g.10gb leave no room for a GI of
        # any other profile: nvml rule 9), per GI its info, its CI list and CI info
        assert counter.total == 8 * (1 + 1 + 7 * 3)
        assert not counter.calls["nvmlDeviceGetMigDeviceHandleByIndex"]
    for a, b in zip(full, light):
        assert [(gi.profile, gi.placement) for gi in a.instances] == [
            (gi.profile, gi.placement) for gi in b.instances
        ]
        assert [[(c.profile, c.placement) for c in gi.cis] for gi in a.instances] == [
            [(c.profile, c.placement) for c in gi.cis] for gi in b.instances
        ]
        assert all(ci.uuid == "" for gi in b.instances for ci in gi.cis)


def test_identical_gpus_share_one_profile_table_read() -> None:
    """Eight H100s read the GI profile table (and its placements) once, not eight times."""
    with Nvml(Simulated("h100-80gb-hbm3:1")) as nv:
        counter = count_calls()
        nv.observe()
        one = dict(counter.calls)
    with Nvml(Simulated("h100-80gb-hbm3:8,a100-80gb:1")) as nv:
        counter = count_calls()
        observed = nv.observe()
        many = dict(counter.calls)
    table_calls = (
        "nvmlDeviceGetGpuInstanceProfileInfoV",
        "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
    )
    for name in table_calls:
        assert one[name] > 0
        # the eight H100s cost what one does; the A100 reads its own table
        assert many[name] <= 2 * one[name]
    assert observed[8].profiles != observed[0].profiles
    assert all(gpu.profiles == observed[0].profiles for gpu in observed[:8])


def test_gi_lists_are_asked_only_for_profiles_that_still_fit() -> None:
    """nvml rule 9: a profile whose every placement overlaps the GIs found so far is not
    listed; one with a free placement is, whatever else was found."""
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        (gpu,) = nv.observe()
        assert nv.set_mig_mode(gpu.uuid, True) == "NVML_SUCCESS"
        for profile_id, placement in ((9, Placement(0, 4)), (19, Placement(4, 1))):
            gi = nv.create_gi(gpu.uuid, profile_id, placement)  # 3g.40gb, 1g.10gb
            nv.create_ci(gpu.uuid, gi.gi_id, 0, None)
        counter = count_calls()
        observed = nv.observe_gpu(gpu.uuid)
        assert [(gi.profile, str(gi.placement)) for gi in observed.instances] == [
            ("3g.40gb", "0:4"),
            ("1g.10gb", "4:1"),
        ]
        # In table order: 1g.10gb, 2g.20gb, 3g.40gb are listed; 4g.40gb (0:4) and
        # 7g.80gb (0:8) cannot fit; 1g.10gb+me (slices 5, 6) and 1g.20gb (6:2) can.
        assert counter.calls["nvmlDeviceGetGpuInstances"] == 5
