"""plan() and gpu_converged() as tables: observed GPUs + desired specs -> exact actions."""

# Python 3.9 spelling (typing.Dict/Tuple/Optional), as docs/ARCHITECTURE.md asks.

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import pytest

from migrestore.errors import EXIT_CONFIG, EXIT_FAILED, BusyError, InfeasibleError
from migrestore.model import (
    ARCH_AMPERE,
    ARCH_BLACKWELL,
    ARCH_HOPPER,
    Action,
    CreateCi,
    CreateGi,
    DestroyCi,
    DestroyGi,
    GpuInstance,
    GpuSpec,
    GpuState,
    InstanceSpec,
    Placement,
    Plan,
    Reset,
)
from migrestore.planner import gpu_converged, plan
from tests.planner._support import (
    apply_plan,
    geometry_is,
    h100_profiles,
    make_gi,
    make_gpu,
    spec_of,
)

H100 = h100_profiles()


def balanced(index: int) -> GpuState:
    """3g at 4, 2g at 0, two 1g at 2 and 3: mig-parted's all-balanced, placed right."""
    gis = [
        make_gi(H100, 2, "3g.40gb", 4),
        make_gi(H100, 5, "2g.20gb", 0),
        make_gi(H100, 9, "1g.10gb", 2),
        make_gi(H100, 10, "1g.10gb", 3),
    ]
    return make_gpu(index, H100, gis)


BALANCED = GpuSpec(
    True, tuple(InstanceSpec(n) for n in ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"))
)


def lines(p: Plan) -> List[str]:
    return [a.describe() for a in p.actions]


def only(p: Plan, index: int) -> Sequence[Action]:
    assert {a.gpu_index for a in p.actions} <= {index}
    return next(g.actions for g in p.gpus if g.gpu_index == index)


def desired_for(gpus: Sequence[GpuState], spec: Optional[GpuSpec]) -> Dict[str, Optional[GpuSpec]]:
    return {g.uuid: spec for g in gpus}


# --------------------------------------------------------------------------- minimality


def test_converged_node_gives_an_empty_plan_with_notes() -> None:
    gpus = [balanced(i) for i in range(8)]
    p = plan(desired_for(gpus, BALANCED), gpus)
    assert p.converged and p.actions == ()
    assert p.notes == tuple(f"GPU {i}: converged (4 instances)" for i in range(8))
    assert p.unmatched == ()
    assert [g.spec for g in p.gpus] == [BALANCED] * 8
    # The exact description of each GPU (every placement pinned) is converged too.
    exact = {g.uuid: spec_of(g) for g in gpus}
    assert plan(exact, gpus).converged
    assert all(gpu_converged(BALANCED, g) for g in gpus)


def test_one_gi_change_on_one_of_eight_gpus_touches_only_that_gi() -> None:
    gpus = [balanced(i) for i in range(8)]
    spec = GpuSpec(True, tuple(InstanceSpec(n) for n in ("3g.40gb", "2g.20gb", "1g.20gb")))
    desired = desired_for(gpus, BALANCED)
    desired[gpus[5].uuid] = spec
    p = plan(desired, gpus)
    assert lines(p) == [
        "GPU 5: destroy CI 0 (1g.10gb at 0:1) in GI 9",
        "GPU 5: destroy CI 0 (1g.10gb at 0:1) in GI 10",
        "GPU 5: destroy GI 9 (1g.10gb at 2:1)",
        "GPU 5: destroy GI 10 (1g.10gb at 3:1)",
        "GPU 5: create GI 1g.20gb at 2:2",
        "GPU 5: create CI 1g.20gb at 0:1 in the GI at slice 2",
    ]
    assert len(p.notes) == 7 and "GPU 5" not in " ".join(p.notes)
    assert not gpu_converged(spec, gpus[5])


def test_ci_layout_change_keeps_the_gi() -> None:
    gpu = balanced(0)
    spec = GpuSpec(
        True,
        (
            InstanceSpec("3g.40gb", compute=("1c.3g.40gb",) * 3),
            InstanceSpec("2g.20gb"),
            InstanceSpec("1g.10gb"),
            InstanceSpec("1g.10gb"),
        ),
    )
    p = plan({gpu.uuid: spec}, [gpu])
    assert lines(p) == [
        "GPU 0: destroy CI 0 (3g.40gb at 0:3) in GI 2",
        "GPU 0: create CI 1c.3g.40gb at 0:1 in the GI at slice 4",
        "GPU 0: create CI 1c.3g.40gb at 1:1 in the GI at slice 4",
        "GPU 0: create CI 1c.3g.40gb at 2:1 in the GI at slice 4",
    ]
    assert not any(isinstance(a, (CreateGi, DestroyGi)) for a in p.actions)


def test_ci_change_keeps_the_matching_cis() -> None:
    gi = make_gi(H100, 1, "3g.40gb", 0, cis=(("1c.3g.40gb", 0), ("1c.3g.40gb", 1)))
    gpu = make_gpu(0, H100, [gi])
    spec = GpuSpec(True, (InstanceSpec("3g.40gb", compute=("1c.3g.40gb",) * 3),))
    assert lines(plan({gpu.uuid: spec}, [gpu])) == [
        "GPU 0: create CI 1c.3g.40gb at 2:1 in the GI at slice 0"
    ]


def test_action_fields() -> None:
    gpu = make_gpu(3, H100, [make_gi(H100, 7, "2g.20gb", 2, cis=(("1c.2g.20gb", 1),))])
    spec = GpuSpec(True, (InstanceSpec("3g.40gb", compute=("2c.3g.40gb",)),))
    (d_ci, d_gi, c_gi, c_ci) = only(plan({gpu.uuid: spec}, [gpu]), 3)
    uuid = gpu.uuid
    assert d_ci == DestroyCi(
        uuid, 3, profile="1c.2g.20gb", profile_id=0, placement=Placement(1, 1),
        gi_start=2, gi_id=7, ci_id=0,
    )  # fmt: skip
    assert d_gi == DestroyGi(
        uuid, 3, profile="2g.20gb", profile_id=14, placement=Placement(2, 2), gi_id=7
    )
    assert c_gi == CreateGi(uuid, 3, profile="3g.40gb", profile_id=9, placement=Placement(0, 4))
    assert c_ci == CreateCi(
        uuid, 3, profile="2c.3g.40gb", profile_id=1, placement=Placement(0, 2), gi_start=0
    )


def test_actions_are_ordered_destroy_ci_destroy_gi_create_gi_create_ci() -> None:
    """GI IDs run against placement order here, so the order shown is by start."""
    gpu = make_gpu(
        1,
        H100,
        [
            make_gi(H100, 6, "1g.10gb", 0),
            make_gi(H100, 3, "1g.10gb", 1),
            make_gi(H100, 4, "2g.20gb", 2, cis=(("1c.2g.20gb", 1), ("1c.2g.20gb", 0))),
            make_gi(H100, 5, "3g.40gb", 4),
        ],
    )
    spec = GpuSpec(
        True,
        (
            InstanceSpec("3g.40gb", compute=("1c.3g.40gb",) * 3),
            InstanceSpec("4g.40gb", compute=("2c.4g.40gb",) * 2),
        ),
    )
    assert lines(plan({gpu.uuid: spec}, [gpu])) == [
        "GPU 1: destroy CI 0 (1g.10gb at 0:1) in GI 6",
        "GPU 1: destroy CI 0 (1g.10gb at 0:1) in GI 3",
        "GPU 1: destroy CI 1 (1c.2g.20gb at 0:1) in GI 4",
        "GPU 1: destroy CI 0 (1c.2g.20gb at 1:1) in GI 4",
        "GPU 1: destroy CI 0 (3g.40gb at 0:3) in GI 5",
        "GPU 1: destroy GI 6 (1g.10gb at 0:1)",
        "GPU 1: destroy GI 3 (1g.10gb at 1:1)",
        "GPU 1: destroy GI 4 (2g.20gb at 2:2)",
        "GPU 1: create GI 4g.40gb at 0:4",
        "GPU 1: create CI 2c.4g.40gb at 0:2 in the GI at slice 0",
        "GPU 1: create CI 2c.4g.40gb at 2:2 in the GI at slice 0",
        "GPU 1: create CI 1c.3g.40gb at 0:1 in the GI at slice 4",
        "GPU 1: create CI 1c.3g.40gb at 1:1 in the GI at slice 4",
        "GPU 1: create CI 1c.3g.40gb at 2:1 in the GI at slice 4",
    ]


# --------------------------------------------------------------------------- processes


def test_processes_block_a_gi_destroy_unless_forced() -> None:
    gpus = [balanced(i) for i in range(3)]
    busy = make_gi(H100, 5, "2g.20gb", 0, pids={0: (5120, 311)})
    gpus[2] = make_gpu(2, H100, [*gpus[2].instances[:1], busy, *gpus[2].instances[2:]])
    spec = GpuSpec(True, tuple(InstanceSpec(n) for n in ("3g.40gb", "1g.20gb", "1g.20gb")))
    desired = desired_for(gpus, spec)
    with pytest.raises(BusyError) as info:
        plan(desired, gpus)
    err = info.value
    assert err.exit_code == EXIT_FAILED
    assert err.gpu == gpus[2].label() and err.pids == (311, 5120)
    assert str(err) == (
        f"GPU {gpus[2].label()}: refusing to destroy GI 5 (2g.20gb at 0:2): processes "
        "311, 5120 are running on it (stop them, or pass --force to destroy it anyway)"
    )
    forced = plan(desired, gpus, force=True)
    assert "GPU 2: destroy GI 5 (2g.20gb at 0:2)" in lines(forced)


def test_processes_block_a_ci_destroy_in_a_kept_gi() -> None:
    gi = make_gi(H100, 2, "3g.40gb", 4, pids={0: (77,)})
    gpu = make_gpu(0, H100, [gi])
    spec = GpuSpec(True, (InstanceSpec("3g.40gb", compute=("1c.3g.40gb",)),))
    with pytest.raises(BusyError) as info:
        plan({gpu.uuid: spec}, [gpu])
    assert info.value.instance == "CI 0 (3g.40gb at 0:3) in GI 2 (3g.40gb at 4:4)"
    assert info.value.pids == (77,)
    assert lines(plan({gpu.uuid: spec}, [gpu], force=True)) == [
        "GPU 0: destroy CI 0 (3g.40gb at 0:3) in GI 2",
        "GPU 0: create CI 1c.3g.40gb at 0:1 in the GI at slice 4",
    ]


def test_processes_on_kept_instances_do_not_matter() -> None:
    gpu = make_gpu(0, H100, [make_gi(H100, 2, "3g.40gb", 4, pids={0: (77,)})])
    spec = GpuSpec(True, (InstanceSpec("3g.40gb"), InstanceSpec("1g.10gb")))
    assert lines(plan({gpu.uuid: spec}, [gpu])) == [
        "GPU 0: create GI 1g.10gb at 0:1",
        "GPU 0: create CI 1g.10gb at 0:1 in the GI at slice 0",
    ]


def test_a_busy_gi_is_kept_when_a_layout_allows_it() -> None:
    """The 1g at 0 runs work: the 3g goes to 4 and the idle 1g at 4 and 5 are replaced."""
    gpu = make_gpu(
        0,
        H100,
        [
            make_gi(H100, 1, "1g.10gb", 0, pids={0: (900,)}),
            make_gi(H100, 2, "1g.10gb", 4),
            make_gi(H100, 3, "1g.10gb", 5),
        ],
    )
    spec = GpuSpec(
        True, (InstanceSpec("3g.40gb"), InstanceSpec("1g.10gb"), InstanceSpec("1g.10gb"))
    )
    p = plan({gpu.uuid: spec}, [gpu])
    assert "GPU 0: create GI 3g.40gb at 4:4" in lines(p)
    assert geometry_is(spec, apply_plan(gpu, p.actions))


def test_infeasible_is_reported_before_busy() -> None:
    gpus = [
        make_gpu(0, H100, [make_gi(H100, 1, "7g.80gb", 0, pids={0: (1,)})]),
        make_gpu(1, H100),
    ]
    desired = {
        gpus[0].uuid: GpuSpec(True, (InstanceSpec("1g.10gb"),)),
        gpus[1].uuid: GpuSpec(True, (InstanceSpec("4g.40gb"), InstanceSpec("4g.40gb"))),
    }
    with pytest.raises(InfeasibleError) as info:
        plan(desired, gpus)
    assert info.value.gpu == gpus[1].label()
    assert info.value.exit_code == EXIT_CONFIG
    assert info.value.reason == "4g.40gb: 2 wanted, at most 1 per GPU"


# --------------------------------------------------------------------------- MIG mode


def _fresh(
    arch: str, current: bool, pending: bool, instances: Sequence[GpuInstance] = ()
) -> GpuState:
    return make_gpu(0, H100, instances, arch=arch, current=current, pending=pending)


ONE = GpuSpec(True, (InstanceSpec("3g.40gb"),))
CREATES = [
    "GPU 0: create GI 3g.40gb at 0:4",
    "GPU 0: create CI 3g.40gb at 0:3 in the GI at slice 0",
]


@pytest.mark.parametrize("arch", [ARCH_HOPPER, ARCH_BLACKWELL])
def test_hopper_and_later_enable_without_reset(arch: str) -> None:
    gpu = _fresh(arch, current=False, pending=False)
    assert lines(plan({gpu.uuid: ONE}, [gpu], allow_reset=False)) == [
        "GPU 0: enable MIG mode",
        *CREATES,
    ]
    # A Hopper activation that stayed pending (IN_USE) is simply asked for again.
    gpu = _fresh(arch, current=False, pending=True)
    assert lines(plan({gpu.uuid: ONE}, [gpu])) == ["GPU 0: enable MIG mode", *CREATES]


def test_ampere_enable_resets_only_if_pending() -> None:
    gpu = _fresh(ARCH_AMPERE, current=False, pending=False)
    p = plan({gpu.uuid: ONE}, [gpu])
    assert lines(p) == [
        "GPU 0: enable MIG mode",
        "GPU 0: reset the GPU if the mode change stays pending",
        *CREATES,
    ]
    assert p.actions[1] == Reset(gpu.uuid, 0, if_pending=True)


def test_ampere_pending_enable_is_reset_unconditionally() -> None:
    gpu = _fresh(ARCH_AMPERE, current=False, pending=True)
    p = plan({gpu.uuid: ONE}, [gpu])
    assert lines(p) == ["GPU 0: reset the GPU", *CREATES]
    assert p.actions[0] == Reset(gpu.uuid, 0, if_pending=False)


def test_ampere_reset_forbidden_by_policy() -> None:
    cases = [
        (
            _fresh(ARCH_AMPERE, current=False, pending=False),
            ONE,
            "enabling MIG mode on this Ampere GPU needs a GPU reset, which `ampere-reset: "
            "never` forbids; run `nvidia-smi -i 0 -mig 1` and reboot: the reboot applies it",
        ),
        (
            _fresh(ARCH_AMPERE, current=False, pending=True),
            ONE,
            "the pending MIG enable on this Ampere GPU needs a GPU reset, which `ampere-reset: "
            "never` forbids; a reboot will apply it",
        ),
        (
            _fresh(
                ARCH_AMPERE, current=True, pending=True, instances=[make_gi(H100, 1, "7g.80gb", 0)]
            ),
            GpuSpec(False),
            "disabling MIG mode on this Ampere GPU needs a GPU reset, which `ampere-reset: "
            "never` forbids; run `nvidia-smi -i 0 -mig 0` and reboot: the reboot applies it",
        ),
        (
            _fresh(ARCH_AMPERE, current=True, pending=False),
            GpuSpec(False),
            "the pending MIG disable on this Ampere GPU needs a GPU reset, which `ampere-reset: "
            "never` forbids; a reboot will apply it",
        ),
    ]
    for gpu, spec, text in cases:
        with pytest.raises(InfeasibleError) as info:
            plan({gpu.uuid: spec}, [gpu], allow_reset=False)
        assert info.value.reason == text
        assert plan({gpu.uuid: spec}, [gpu], allow_reset=True).actions


def test_disable_destroys_everything_first() -> None:
    gis = [make_gi(H100, 1, "3g.40gb", 0, cis=(("1c.3g.40gb", 0),)), make_gi(H100, 2, "3g.40gb", 4)]
    hopper = _fresh(ARCH_HOPPER, True, True, gis)
    destroys = [
        "GPU 0: destroy CI 0 (1c.3g.40gb at 0:1) in GI 1",
        "GPU 0: destroy CI 0 (3g.40gb at 0:3) in GI 2",
        "GPU 0: destroy GI 1 (3g.40gb at 0:4)",
        "GPU 0: destroy GI 2 (3g.40gb at 4:4)",
    ]
    off = GpuSpec(False)
    assert lines(plan({hopper.uuid: off}, [hopper])) == [*destroys, "GPU 0: disable MIG mode"]
    ampere = _fresh(ARCH_AMPERE, True, True, gis)
    assert lines(plan({ampere.uuid: off}, [ampere])) == [
        *destroys,
        "GPU 0: disable MIG mode",
        "GPU 0: reset the GPU if the mode change stays pending",
    ]
    # Ampere with the disable already pending: destroy, then reset.
    pending = _fresh(ARCH_AMPERE, True, False, gis)
    assert lines(plan({pending.uuid: off}, [pending])) == [*destroys, "GPU 0: reset the GPU"]


def test_mig_off_stays_off_and_pending_changes_are_cancelled() -> None:
    off = GpuSpec(False)
    gpu = _fresh(ARCH_AMPERE, current=False, pending=False)
    p = plan({gpu.uuid: off}, [gpu], allow_reset=False)
    assert p.converged and p.notes == ("GPU 0: converged (MIG off)",)
    gpu = _fresh(ARCH_AMPERE, current=False, pending=True)
    assert lines(plan({gpu.uuid: off}, [gpu], allow_reset=False)) == ["GPU 0: disable MIG mode"]
    # MIG on with a disable pending, and MIG wanted: cancel the disable, keep the GIs.
    gpu = _fresh(ARCH_AMPERE, True, False, [make_gi(H100, 1, "3g.40gb", 0)])
    assert lines(plan({gpu.uuid: ONE}, [gpu], allow_reset=False)) == ["GPU 0: enable MIG mode"]


def test_gpu_not_mig_capable() -> None:
    gpu = make_gpu(4, H100, current=False, capable=False)
    with pytest.raises(InfeasibleError) as info:
        plan(
            {gpu.uuid: GpuSpec(True, (InstanceSpec("1g.10gb"),), source="/etc/migrestore.yaml:12")},
            [gpu],
        )
    assert info.value.where == "/etc/migrestore.yaml:12"
    assert info.value.reason == (
        "NVIDIA H100 80GB HBM3 is not MIG-capable but its rule "
        "sets mig: true; match it with a rule that sets mig: false or exclude it"
    )
    p = plan({gpu.uuid: GpuSpec(False)}, [gpu])
    assert p.converged and p.notes == ("GPU 4: converged (MIG off)",)


# --------------------------------------------------------------------------- matching


def test_unmatched_gpus_are_left_alone_and_listed() -> None:
    gpus = [balanced(0), make_gpu(1, H100, current=False), balanced(2)]
    desired: Dict[str, Optional[GpuSpec]] = {gpus[0].uuid: GpuSpec(False), gpus[1].uuid: None}
    p = plan(desired, gpus)
    assert p.unmatched == (gpus[1].label(), gpus[2].label())
    assert [(g.gpu_index, g.spec, len(g.actions)) for g in p.gpus] == [
        (0, GpuSpec(False), 4 + 4 + 1),
        (1, None, 0),
        (2, None, 0),
    ]


def test_a_declared_gpu_that_is_not_observed() -> None:
    with pytest.raises(InfeasibleError) as info:
        plan({"GPU-gone": BALANCED}, [balanced(0)])
    assert str(info.value) == (
        "GPU GPU-gone: is declared but the driver does not show it (check `nvidia-smi -L` "
        "and the kernel log for the GPU); nothing was changed"
    )


def test_gpus_are_planned_in_index_order() -> None:
    gpus = [make_gpu(i, H100, current=False) for i in (3, 0, 2, 1)]
    p = plan(desired_for(gpus, ONE), gpus)
    assert [g.gpu_index for g in p.gpus] == [0, 1, 2, 3]
    assert [a.gpu_index for a in p.actions] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_an_infeasible_gpu_rejects_the_whole_plan() -> None:
    gpus = [make_gpu(i, H100, current=False) for i in range(8)]
    desired = desired_for(gpus, ONE)
    desired[gpus[6].uuid] = GpuSpec(True, (InstanceSpec("3g.40gb", placement=2),))
    with pytest.raises(InfeasibleError) as info:
        plan(desired, gpus)
    assert str(info.value) == (
        f"GPU {gpus[6].label()}: 3g.40gb cannot start at slice 2 (possible starts: 0, 4); "
        "nothing was changed"
    )


def test_gpu_converged() -> None:
    gpu = balanced(0)
    assert gpu_converged(BALANCED, gpu)
    assert gpu_converged(spec_of(gpu), gpu)
    assert not gpu_converged(GpuSpec(True, BALANCED.instances[:3]), gpu)
    assert not gpu_converged(GpuSpec(False), gpu)
    assert not gpu_converged(GpuSpec(True, (InstanceSpec("9g.90gb"),)), gpu)
    split = GpuSpec(True, (InstanceSpec("3g.40gb", compute=("1c.3g.40gb",)),))
    assert not gpu_converged(split, make_gpu(0, H100, [make_gi(H100, 1, "3g.40gb", 0)]))
    busy = make_gpu(0, H100, [make_gi(H100, 1, "7g.80gb", 0, pids={0: (5,)})])
    assert not gpu_converged(ONE, busy)
    assert gpu_converged(GpuSpec(True, (InstanceSpec("7g.80gb"),)), busy)
    assert not gpu_converged(ONE, _fresh(ARCH_HOPPER, current=True, pending=False))
