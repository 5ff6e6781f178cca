"""The production NVML layer on the simulator, for every shipped model: the real pynvml
runs unchanged on the simulated C library beneath it."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Tuple

import pynvml
import pytest

from migrestore import tables
from migrestore.backend import Simulated
from migrestore.errors import NvmlError
from migrestore.model import GiProfile, GpuState, Placement
from migrestore.nvml import Nvml
from tests.nvml.support import AMPERE, MODELS, NOT_AMPERE, count_calls


def _enabled(nv: Nvml) -> str:
    """Enable MIG on the only GPU of the session; its UUID."""
    (gpu,) = nv.observe()
    assert nv.set_mig_mode(gpu.uuid, True) == "NVML_SUCCESS"
    return gpu.uuid


def _geometry(gpu: GpuState) -> Tuple[Tuple[object, ...], ...]:
    """GIs as (GI ID, profile, placement, ((CI ID, profile, placement), ...))."""
    return tuple(
        (
            gi.gi_id,
            gi.profile,
            gi.placement,
            tuple((c.ci_id, c.profile, c.placement) for c in gi.cis),
        )
        for gi in gpu.instances
    )


# --------------------------------------------------------------------------- observe


def _unread(profiles: Tuple[GiProfile, ...]) -> Tuple[GiProfile, ...]:
    """The GI profiles as read before any GI exists: CI profiles not read yet."""
    return tuple(replace(p, ci_profiles=(), cis_read=False) for p in profiles)


@pytest.mark.parametrize("model", MODELS)
def test_observe_reads_identity_and_the_model_table(model: str) -> None:
    table = tables.model(model)
    with Nvml(Simulated(model)) as nv:
        (gpu,) = nv.observe()
        ident = gpu.identity
        assert ident.index == 0
        assert ident.uuid.startswith("GPU-")
        assert ident.name == table.nvml_name
        assert ident.pci_device_id == table.pci_device_id
        assert ident.pci_bus_id.count(":") == 2
        assert ident.architecture == table.architecture
        assert ident.mig_capable
        assert (gpu.mig_current, gpu.mig_pending) == (False, False)
        assert gpu.instances == ()
        # profile table read from the GPU; no GI exists yet, so no CI profile is read and
        # none is taken from a bundled table
        assert gpu.profiles == _unread(table.profiles)
        # and the same once MIG is on
        assert nv.set_mig_mode(ident.uuid, True) == "NVML_SUCCESS"
        again = nv.observe_gpu(ident.uuid)
        assert (again.mig_current, again.mig_pending) == (True, True)
        assert again.profiles == _unread(table.profiles)
        assert again.instances == ()


@pytest.mark.parametrize("model", MODELS)
def test_ci_profiles_read_from_a_gi_equal_the_model_table(model: str) -> None:
    table = tables.model(model)
    with Nvml(Simulated(model)) as nv:
        uuid = _enabled(nv)
        counter = count_calls()
        for profile in table.profiles:
            gi = nv.create_gi(uuid, profile.id, profile.placements[0])
            counter.clear()
            observed = nv.observe_gpu(uuid).profile_by_id(profile.id)
            assert observed is not None
            assert observed.ci_profiles == profile.ci_profiles
            if profile.ci_profiles:
                # read from the GI (not the bundled table) ...
                assert counter.calls["nvmlGpuInstanceGetComputeInstanceProfileInfoV"] > 0
            counter.clear()
            nv.observe_gpu(uuid)
            # ... once per session
            assert counter.calls["nvmlGpuInstanceGetComputeInstanceProfileInfoV"] == 0
            nv.destroy_gi(uuid, gi.gi_id)
        # what was read once stays known for the session
        assert nv.observe_gpu(uuid).profiles == table.profiles


def test_several_gpus_by_index() -> None:
    with Nvml(Simulated("h100-80gb-hbm3:2,a100-sxm4-40gb")) as nv:
        observed = nv.observe()
        assert [g.index for g in observed] == [0, 1, 2]
        assert [g.identity.name for g in observed] == [
            "NVIDIA H100 80GB HBM3",
            "NVIDIA H100 80GB HBM3",
            tables.model("a100-sxm4-40gb").nvml_name,
        ]
        assert len({g.uuid for g in observed}) == 3
        assert len({g.identity.pci_bus_id for g in observed}) == 3
        assert [nv.observe_gpu(g.uuid) for g in observed] == list(observed)
        assert nv.driver_version() == "580.159.04"


# --------------------------------------------------------------------------- GIs


@pytest.mark.parametrize("model", MODELS)
def test_create_gi_at_every_possible_placement(model: str) -> None:
    table = tables.model(model)
    with Nvml(Simulated(model)) as nv:
        uuid = _enabled(nv)
        for profile in table.profiles:
            for placement in profile.placements:
                gi = nv.create_gi(uuid, profile.id, placement)
                assert (gi.profile_id, gi.profile, gi.placement, gi.cis) == (
                    profile.id,
                    profile.name,
                    placement,
                    (),
                )
                observed = nv.observe_gpu(uuid)
                assert _geometry(observed) == ((gi.gi_id, profile.name, placement, ()),)
                assert observed.instances[0].profile_id == profile.id
                nv.destroy_gi(uuid, gi.gi_id)
                assert nv.observe_gpu(uuid).instances == ()


def test_gis_sorted_by_placement_with_driver_ids() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        made = [
            nv.create_gi(uuid, 19, Placement(6, 1)),
            nv.create_gi(uuid, 9, Placement(0, 4)),
            nv.create_gi(uuid, 14, Placement(4, 2)),
        ]
        observed = nv.observe_gpu(uuid)
        assert [gi.placement for gi in observed.instances] == [
            Placement(0, 4),
            Placement(4, 2),
            Placement(6, 1),
        ]
        assert sorted(gi.gi_id for gi in observed.instances) == sorted(g.gi_id for g in made)
        assert len({gi.gi_id for gi in made}) == 3


# --------------------------------------------------------------------------- CIs


def _with_cis(model: str) -> Tuple[GiProfile, ...]:
    return tuple(p for p in tables.model(model).profiles if p.ci_profiles)


@pytest.mark.parametrize("model", [m for m in MODELS if _with_cis(m)])
def test_create_ci_at_every_placement_and_by_default(model: str) -> None:
    with Nvml(Simulated(model)) as nv:
        uuid = _enabled(nv)
        for profile in _with_cis(model):
            gi = nv.create_gi(uuid, profile.id, profile.placements[-1])
            for ci_profile in profile.ci_profiles:
                for placement in ci_profile.placements:
                    ci = nv.create_ci(uuid, gi.gi_id, ci_profile.id, placement)
                    assert (ci.profile_id, ci.profile, ci.placement, ci.pids) == (
                        ci_profile.id,
                        ci_profile.name,
                        placement,
                        (),
                    )
                    assert ci.uuid.startswith("MIG-")
                    (observed,) = nv.observe_gpu(uuid).instances
                    assert observed.gi_id == gi.gi_id
                    assert observed.cis == (ci,)
                    nv.destroy_ci(uuid, gi.gi_id, ci.ci_id)
                # no placement: the driver chooses one of the possible ones
                ci = nv.create_ci(uuid, gi.gi_id, ci_profile.id, None)
                assert ci.placement in ci_profile.placements
                assert ci.profile == ci_profile.name
                (observed,) = nv.observe_gpu(uuid).instances
                assert observed.cis == (ci,)
                nv.destroy_ci(uuid, gi.gi_id, ci.ci_id)
            nv.destroy_gi(uuid, gi.gi_id)


def test_cis_filling_a_gi_are_sorted_with_distinct_mig_uuids() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        gi = nv.create_gi(uuid, 0, Placement(0, 8))  # 7g.80gb
        for start in (6, 0, 3, 1, 5, 2, 4):
            nv.create_ci(uuid, gi.gi_id, 0, Placement(start, 1))  # 1c.7g.80gb
        (observed,) = nv.observe_gpu(uuid).instances
        assert [ci.placement.start for ci in observed.cis] == list(range(7))
        assert {ci.profile for ci in observed.cis} == {"1c.7g.80gb"}
        uuids = [ci.uuid for ci in observed.cis]
        assert all(u.startswith("MIG-") for u in uuids)
        assert len(set(uuids)) == 7


def test_cis_of_different_profiles_are_sorted_by_placement() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        gi = nv.create_gi(uuid, 0, Placement(0, 8))  # 7g.80gb
        nv.create_ci(uuid, gi.gi_id, 0, Placement(6, 1))  # 1c.7g.80gb
        nv.create_ci(uuid, gi.gi_id, 2, Placement(0, 3))  # 3c.7g.80gb
        nv.create_ci(uuid, gi.gi_id, 1, Placement(4, 2))  # 2c.7g.80gb
        (observed,) = nv.observe_gpu(uuid).instances
        assert [(ci.profile, ci.placement) for ci in observed.cis] == [
            ("3c.7g.80gb", Placement(0, 3)),
            ("2c.7g.80gb", Placement(4, 2)),
            ("1c.7g.80gb", Placement(6, 1)),
        ]


def test_processes_on_a_mig_device_are_observed() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        gi = nv.create_gi(uuid, 9, Placement(4, 4))
        first = nv.create_ci(uuid, gi.gi_id, 0, Placement(0, 1))
        second = nv.create_ci(uuid, gi.gi_id, 0, Placement(1, 1))
        assert nv.backend.attached
        ci_id, mig_uuid = nv.backend.simulator.run_process(uuid, gi.gi_id, second.ci_id)
        assert (ci_id, mig_uuid) == (second.ci_id, second.uuid)
        (observed,) = nv.observe_gpu(uuid).instances
        by_id = {ci.ci_id: ci for ci in observed.cis}
        assert by_id[second.ci_id].pids == (os.getpid(),)
        assert by_id[first.ci_id].pids == ()
        assert observed.pids == (os.getpid(),)
        with pytest.raises(NvmlError) as info:
            nv.destroy_ci(uuid, gi.gi_id, second.ci_id)
        assert info.value.nvml_error == "NVML_ERROR_IN_USE"
        nv.backend.simulator.stop_process()
        nv.destroy_ci(uuid, gi.gi_id, second.ci_id)
        (observed,) = nv.observe_gpu(uuid).instances
        assert [ci.ci_id for ci in observed.cis] == [first.ci_id]


# --------------------------------------------------------------------------- MIG mode


@pytest.mark.parametrize("model", NOT_AMPERE)
def test_mode_changes_at_once_after_ampere(model: str) -> None:
    with Nvml(Simulated(model)) as nv:
        (gpu,) = nv.observe()
        assert nv.set_mig_mode(gpu.uuid, True) == "NVML_SUCCESS"
        assert nv.mig_mode(gpu.uuid) == (True, True)
        assert nv.set_mig_mode(gpu.uuid, False) == "NVML_SUCCESS"
        assert nv.mig_mode(gpu.uuid) == (False, False)
        assert nv.observe_gpu(gpu.uuid).mig_current is False


@pytest.mark.parametrize("model", AMPERE)
def test_ampere_held_by_a_client_stays_pending_until_reset(model: str) -> None:
    with Nvml(Simulated(model)) as nv:
        (gpu,) = nv.observe()
        sim = nv.backend.simulator
        assert sim is not None
        sim.hold(gpu.uuid)
        assert nv.set_mig_mode(gpu.uuid, True) == "NVML_ERROR_IN_USE"
        assert nv.mig_mode(gpu.uuid) == (False, True)
        pending = nv.observe_gpu(gpu.uuid)
        assert (pending.mig_current, pending.mig_pending) == (False, True)
        assert pending.instances == ()
        # the reset is refused while the client holds the GPU
        with pytest.raises(NvmlError) as info:
            nv.reset_gpu(gpu.uuid)
        assert info.value.nvml_error == "NVML_ERROR_IN_USE"
        assert nv.mig_mode(gpu.uuid) == (False, True)
        sim.release(gpu.uuid)
        nv.reset_gpu(gpu.uuid)
        assert nv.mig_mode(gpu.uuid) == (True, True)
        active = nv.observe_gpu(gpu.uuid)
        assert active.mig_current
        assert active.profiles == _unread(tables.model(model).profiles)
        # an idle Ampere GPU switches without a reset
        assert nv.set_mig_mode(gpu.uuid, False) == "NVML_SUCCESS"
        assert nv.mig_mode(gpu.uuid) == (False, False)


def test_a_reset_runs_the_reset_tool_with_nvml_shut_down() -> None:
    # nvml rule 7: one code path on hardware and simulator; the simulated tool, like the
    # driver, refuses while this process still has NVML open
    backend = Simulated("a100-80gb")
    with Nvml(backend) as nv:
        uuid = _enabled(nv)
        (gpu,) = nv.observe()
        with pytest.raises(NvmlError) as info:
            backend.reset(gpu.identity.pci_bus_id, "GPU 0: reset the GPU")
        assert info.value.nvml_error == "NVML_ERROR_IN_USE"
        assert "shut NVML down first" in str(info.value)
        nv.reset_gpu(uuid)
        last = backend.simulator.changes()[-1]
        assert (last["function"], last["gpu"]) == ("gpu_reset", 0)
        assert nv.observe()[0].mig_current


def test_reset_destroys_instances() -> None:
    with Nvml(Simulated("a100-80gb")) as nv:
        uuid = _enabled(nv)
        gi = nv.create_gi(uuid, 9, Placement(4, 4))
        nv.create_ci(uuid, gi.gi_id, 2, None)
        assert len(nv.observe_gpu(uuid).instances) == 1
        nv.reset_gpu(uuid)
        after = nv.observe_gpu(uuid)
        assert after.instances == ()
        assert after.mig_current


# --------------------------------------------------------------------------- errors


def test_create_gi_with_mig_off_names_gpu_and_object() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        (gpu,) = nv.observe()
        with pytest.raises(NvmlError) as info:
            nv.create_gi(gpu.uuid, 9, Placement(4, 4))
        err = info.value
        assert err.nvml_error == "NVML_ERROR_NOT_SUPPORTED"
        assert err.code == 3
        assert str(err) == (
            f"GPU 0 ({gpu.uuid}): create GI 3g.40gb at 4:4: NVML_ERROR_NOT_SUPPORTED"
        )
        assert err.exit_code == 1


def test_overlap_is_insufficient_resources() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        nv.create_gi(uuid, 9, Placement(4, 4))
        with pytest.raises(NvmlError) as info:
            nv.create_gi(uuid, 14, Placement(4, 2))
        assert info.value.nvml_error == "NVML_ERROR_INSUFFICIENT_RESOURCES"
        assert info.value.code == 23
        assert str(info.value) == (
            f"GPU 0 ({uuid}): create GI 2g.20gb at 4:2: NVML_ERROR_INSUFFICIENT_RESOURCES"
        )


def test_injected_fault_keeps_the_nvml_name() -> None:
    with Nvml(Simulated("h100-80gb-hbm3:2")) as nv:
        second = nv.observe()[1].uuid
        assert nv.set_mig_mode(second, True) == "NVML_SUCCESS"
        assert nv.backend.attached
        nv.backend.simulator.fail(
            "nvmlDeviceCreateGpuInstanceWithPlacement", 1, "NVML_ERROR_IN_USE"
        )
        with pytest.raises(NvmlError) as info:
            nv.create_gi(second, 19, Placement(2, 1))
        assert (info.value.nvml_error, info.value.code) == ("NVML_ERROR_IN_USE", 19)
        assert str(info.value) == f"GPU 1 ({second}): create GI 1g.10gb at 2:1: NVML_ERROR_IN_USE"
        # one-shot: the next try succeeds
        assert nv.create_gi(second, 19, Placement(2, 1)).placement == Placement(2, 1)


def test_destroy_errors_name_the_instance() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        gi = nv.create_gi(uuid, 14, Placement(2, 2))
        ci = nv.create_ci(uuid, gi.gi_id, 1, None)
        with pytest.raises(NvmlError) as info:
            nv.destroy_gi(uuid, gi.gi_id)
        assert info.value.nvml_error == "NVML_ERROR_IN_USE"
        assert str(info.value) == f"GPU 0 ({uuid}): destroy GI {gi.gi_id}: NVML_ERROR_IN_USE"
        missing = gi.gi_id + 1
        with pytest.raises(NvmlError) as info:
            nv.destroy_gi(uuid, missing)
        assert info.value.nvml_error == "NVML_ERROR_NOT_FOUND"
        assert f"GPU 0 ({uuid}): destroy GI {missing}: find GI {missing}" in str(info.value)
        with pytest.raises(NvmlError) as info:
            nv.destroy_ci(uuid, gi.gi_id, ci.ci_id + 1)
        assert info.value.nvml_error == "NVML_ERROR_NOT_FOUND"
        assert f"destroy CI {ci.ci_id + 1} in GI {gi.gi_id}" in str(info.value)
        nv.destroy_ci(uuid, gi.gi_id, ci.ci_id)
        nv.destroy_gi(uuid, gi.gi_id)
        assert nv.observe_gpu(uuid).instances == ()


def test_ci_errors_name_gpu_gi_and_profile() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        gi = nv.create_gi(uuid, 9, Placement(0, 4))
        nv.create_ci(uuid, gi.gi_id, 0, Placement(1, 1))
        with pytest.raises(NvmlError) as info:
            nv.create_ci(uuid, gi.gi_id, 1, Placement(0, 2))  # 2c overlaps 1:1
        assert info.value.nvml_error == "NVML_ERROR_INSUFFICIENT_RESOURCES"
        assert str(info.value) == (
            f"GPU 0 ({uuid}): create CI 2c.3g.40gb at 0:2 in GI {gi.gi_id}: "
            "NVML_ERROR_INSUFFICIENT_RESOURCES"
        )


def test_unknown_gpu_is_not_found() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        with pytest.raises(NvmlError) as info:
            nv.set_mig_mode("GPU-00000000-0000-0000-0000-000000000000", True)
        assert info.value.nvml_error == "NVML_ERROR_NOT_FOUND"
        assert "GPU GPU-00000000-0000-0000-0000-000000000000: not among the 1 GPUs" in str(
            info.value
        )


def test_observe_failure_is_translated() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        (gpu,) = nv.observe()
        assert nv.backend.attached
        nv.backend.simulator.fail("nvmlDeviceGetMigMode", 1, "NVML_ERROR_MEMORY")
        with pytest.raises(NvmlError) as info:
            nv.observe()
        assert info.value.nvml_error == "NVML_ERROR_MEMORY"
        assert info.value.code == 20
        assert str(info.value) == f"GPU 0 ({gpu.uuid}): read the MIG mode: NVML_ERROR_MEMORY"


def test_a_sick_read_that_fails_once_is_read_again() -> None:
    with Nvml(Simulated("h100-80gb-hbm3:2")) as nv:
        nv.observe()
        nv.backend.simulator.fail("nvmlDeviceGetMigMode", 1, "NVML_ERROR_GPU_IS_LOST")
        assert [g.sick for g in nv.observe()] == [False, False]


def test_a_gpu_whose_reads_keep_failing_is_observed_sick_with_what_was_read() -> None:
    with Nvml(Simulated("h100-80gb-hbm3:3")) as nv:
        before = nv.observe()
        sim = nv.backend.simulator
        sim.lose(1, "NVML_ERROR_IRQ_ISSUE")  # after its handle and identity were read
        after = nv.observe()
        assert [g.sick for g in after] == [False, True, False]
        ident = after[1].identity
        assert (ident.index, ident.uuid, ident.pci_bus_id) == (
            1,
            before[1].uuid,
            before[1].identity.pci_bus_id,
        )
        assert (ident.error, ident.failed) == ("NVML_ERROR_IRQ_ISSUE", "read the MIG mode")
        assert ident.describe_sick() == (
            f"GPU 1 ({ident.pci_bus_id}): read the MIG mode: NVML_ERROR_IRQ_ISSUE"
        )
        assert after[1].instances == () and not after[1].mig_current


def test_a_gpu_without_a_handle_is_observed_by_index_only() -> None:
    with Nvml(Simulated("h100-80gb-hbm3:8")) as nv:
        nv.backend.simulator.lose(3)
        observed = nv.observe()
        assert [g.index for g in observed] == list(range(8))
        sick = observed[3]
        assert sick.sick and sick.label() == "3 (UUID unreadable)"
        assert (sick.uuid, sick.identity.pci_bus_id) == ("", "")
        assert (sick.identity.error, sick.identity.failed) == (
            "NVML_ERROR_GPU_IS_LOST",
            "get its handle",
        )
        assert all(not g.sick and g.uuid for i, g in enumerate(observed) if i != 3)


def test_gpu_without_mig_is_observed_as_not_capable() -> None:
    # NVML answers GetMigMode with NOT_SUPPORTED on a GPU without MIG.
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        assert nv.backend.attached
        nv.backend.simulator.fail("nvmlDeviceGetMigMode", 1, "NVML_ERROR_NOT_SUPPORTED")
        (gpu,) = nv.observe()
        assert gpu.identity.mig_capable is False
        assert (gpu.mig_current, gpu.mig_pending, gpu.profiles, gpu.instances) == (
            False,
            False,
            (),
            (),
        )


def test_set_mode_refused_is_an_error_not_a_status() -> None:
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        nv.create_gi(uuid, 19, Placement(0, 1))
        # a mode change with GIs present is refused by the call itself
        with pytest.raises(NvmlError) as info:
            nv.set_mig_mode(uuid, False)
        assert info.value.nvml_error == "NVML_ERROR_IN_USE"
        assert str(info.value) == f"GPU 0 ({uuid}): disable MIG mode: NVML_ERROR_IN_USE"


# --------------------------------------------------------------------------- session


def test_close_takes_the_simulator_away() -> None:
    import pynvml

    nv = Nvml(Simulated("h100-80gb-hbm3"))
    with nv:
        assert nv.backend.attached
        assert pynvml.nvmlLib is not None
    assert not nv.backend.attached
    assert pynvml.nvmlLib is None


def test_error_in_the_block_is_not_hidden_by_close() -> None:
    with pytest.raises(NvmlError) as info, Nvml(Simulated("h100-80gb-hbm3")) as nv:
        assert nv.backend.attached
        nv.backend.simulator.fail("nvmlShutdown", 1, "NVML_ERROR_UNKNOWN")
        nv.create_gi(nv.observe()[0].uuid, 19, Placement(0, 1))
    assert info.value.nvml_error == "NVML_ERROR_NOT_SUPPORTED"


# --------------------------------------------------------------------------- other clients

# The C functions an observation calls on a GI, a CI or a MIG device after listing it.
_READS_AFTER_LISTING = (
    "nvmlGpuInstanceGetInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
    "nvmlGpuInstanceGetComputeInstances",
    "nvmlComputeInstanceGetInfo_v2",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetUUID",
)


class _Churner:
    """Another NVML client in a tight loop: before every call of ``function`` it destroys
    the 1g.10gb GI at slice 6 (with its CI) and creates it again, under a new GI ID."""

    def __init__(self, nv: Nvml, uuid: str, function: str) -> None:
        self._lib = pynvml.nvmlLib
        self._sim = nv.backend.simulator
        self._uuid = uuid
        self._function = function
        self.gi_id, self._ci_id = self._create()
        self.churns = 0

    def _create(self) -> Tuple[int, int]:
        gi_id = self._sim.create_gi(self._uuid, "1g.10gb", 6, via="other")
        return gi_id, self._sim.create_ci(self._uuid, gi_id, via="other")

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._lib, name)
        if name != self._function:
            return fn

        def call(*args: Any) -> Any:
            self._sim.destroy_ci(self._uuid, self.gi_id, self._ci_id, via="other")
            self._sim.destroy_gi(self._uuid, self.gi_id, via="other")
            self.gi_id, self._ci_id = self._create()
            self.churns += 1
            return fn(*args)

        return call


@pytest.mark.parametrize("function", _READS_AFTER_LISTING)
def test_instances_another_client_churns_do_not_fail_the_observation(function: str) -> None:
    """An instance destroyed between its listing and its reads is gone, not an error: the
    observation goes on without it, however fast the other client churns (a whole re-read
    would meet the churn again every time)."""
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        ours = nv.create_gi(uuid, 9, Placement(0, 4))  # 3g.40gb
        nv.create_ci(uuid, ours.gi_id, 2, None)  # 3g.40gb
        churner = _Churner(nv, uuid, function)
        pynvml.nvmlLib = churner
        pynvml._nvmlGetFunctionPointer_cache.clear()
        for _ in range(3):
            (observed,) = nv.observe()
            kept = [gi for gi in observed.instances if gi.gi_id == ours.gi_id]
            assert [(gi.profile, gi.placement, len(gi.cis)) for gi in kept] == [
                ("3g.40gb", Placement(0, 4), 1)
            ]
            assert kept[0].cis[0].uuid.startswith("MIG-")
            # the churned GI is either the one that now exists, or left out
            others = [gi for gi in observed.instances if gi.gi_id != ours.gi_id]
            assert [gi.gi_id for gi in others] in ([], [churner.gi_id])
        assert churner.churns > 0
        # the CI profiles cached for 1g.10gb are whole, not cut short by the churn
        pynvml.nvmlLib = churner._lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
        profile = nv.observe_gpu(uuid).profile_by_id(19)
        assert profile is not None
        assert profile.ci_profiles == tables.model("h100-80gb-hbm3").profile_by_id(19).ci_profiles


CI_TABLE = "nvmlGpuInstanceGetComputeInstanceProfileInfoV"


def test_one_misleading_ci_table_read_never_shortens_the_table() -> None:
    """Rule 3: INVALID_ARGUMENT once, at any call of a GI's CI-table read (an entry
    followed by indices not offered, the last entry, past the end): the table read
    is whole, or an NvmlError names the read; never a shorter table."""
    table = tables.model("h100-80gb-hbm3")
    profile = max(table.profiles, key=lambda p: len(p.ci_profiles))
    with Nvml(Simulated("h100-80gb-hbm3")) as nv:
        uuid = _enabled(nv)
        nv.create_gi(uuid, profile.id, profile.placements[0])
        nv.backend.simulator.fail(CI_TABLE, 1 << 30, "NVML_ERROR_UNKNOWN")
        nv.observe_gpu(uuid)
        (counted,) = nv.backend.simulator.state().faults
        calls = counted.seen
        nv.backend.simulator.clear_faults()
    assert calls > len(profile.ci_profiles)
    for nth in range(1, calls + 1):
        with Nvml(Simulated("h100-80gb-hbm3")) as nv:
            uuid = _enabled(nv)
            nv.create_gi(uuid, profile.id, profile.placements[0])
            nv.backend.simulator.fail(CI_TABLE, nth, "NVML_ERROR_INVALID_ARGUMENT")
            observed = nv.observe_gpu(uuid).profile_by_id(profile.id)
            assert observed is not None
            assert observed.ci_profiles == profile.ci_profiles, f"call {nth}"
