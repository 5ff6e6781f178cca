"""plan() and gpu_converged() through their Python interface: action fields, error
attributes, the rule's file:line on infeasible layouts. The cases of observed GPUs,
config and expected plan are data files (``test_planner_cases.py``)."""

# Python 3.9 spelling (typing.Dict/Tuple/Optional), as docs/ARCHITECTURE.md asks.

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import pytest

from migrestore.errors import EXIT_FAILED, BusyError, InfeasibleError
from migrestore.model import (
    ARCH_BLACKWELL,
    ARCH_HOPPER,
    Action,
    CreateCi,
    CreateGi,
    DestroyCi,
    DestroyGi,
    GpuIdentity,
    GpuInstance,
    GpuSpec,
    GpuState,
    InstanceSpec,
    Placement,
    Plan,
)
from migrestore.planner import gpu_converged, plan
from tests.planner._support import (
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


def test_gpu_not_mig_capable() -> None:
    gpu = make_gpu(4, H100, current=False, capable=False)
    with pytest.raises(InfeasibleError) as info:
        plan(
            {gpu.uuid: GpuSpec(True, (InstanceSpec("1g.10gb"),), source="/etc/migrestore.yaml:12")},
            [gpu],
        )
    assert info.value.reason == (
        "NVIDIA H100 80GB HBM3 is not MIG-capable but its rule sets mig: true; "
        "match it with a rule that sets mig: false or exclude it"
    )
    assert info.value.where == "/etc/migrestore.yaml:12"
    p = plan({gpu.uuid: GpuSpec(False)}, [gpu])
    assert p.converged and p.notes == ("GPU 4: converged (MIG off)",)


# --------------------------------------------------------------------------- matching


def sick(index: int, error: str, failed: str, uuid: str = "", bus: str = "") -> GpuState:
    """A GPU NVML cannot read, as ``nvml.observe`` gives it."""
    ident = GpuIdentity(index, uuid, bus, 0, "", "unknown", False, 0, error, failed)
    return GpuState(ident, False, False, (), ())


MISSING_FIX = "(check `nvidia-smi -L` and the kernel log for the GPU)"
U0 = make_gpu(0, H100).uuid
U1 = make_gpu(1, H100).uuid


@pytest.mark.parametrize(
    "desired, observed, unrestored, planned",
    [
        pytest.param(
            {"GPU-gone": BALANCED},
            [balanced(0)],
            [f"GPU GPU-gone is declared but NVML does not list it readable {MISSING_FIX}"],
            [],
            id="declared-missing",
        ),
        pytest.param(
            {
                "GPU-gone": GpuSpec(True, BALANCED.instances, source="/etc/migrestore.yaml:9"),
                U0: ONE,
            },
            [make_gpu(0, H100, current=False)],
            [
                "/etc/migrestore.yaml:9: GPU GPU-gone is declared but NVML does not list it "
                f"readable {MISSING_FIX}"
            ],
            [0],
            id="declared-missing-with-its-rule-others-planned",
        ),
        pytest.param(
            {U0: ONE},
            [
                make_gpu(0, H100, current=False),
                sick(1, "NVML_ERROR_GPU_IS_LOST", "get its handle"),
            ],
            ["GPU 1 (bus id unknown): get its handle: NVML_ERROR_GPU_IS_LOST; left as it is"],
            [0],
            id="lost-without-handle",
        ),
        pytest.param(
            {U0: ONE, U1: ONE},
            [
                make_gpu(0, H100, current=False),
                sick(1, "NVML_ERROR_IRQ_ISSUE", "read the MIG mode", U1, "0000:2A:00.0"),
            ],
            [
                "GPU 1 (0000:2A:00.0): read the MIG mode: NVML_ERROR_IRQ_ISSUE; left as it is",
                f"GPU {U1} is declared but NVML does not list it readable {MISSING_FIX}",
            ],
            [0],
            id="declared-and-sick",
        ),
        pytest.param(
            {},
            [sick(0, "NVML_ERROR_UNKNOWN", "get its handle")],
            ["GPU 0 (bus id unknown): get its handle: NVML_ERROR_UNKNOWN; left as it is"],
            [],
            id="sick-and-no-rule",
        ),
        pytest.param({U0: ONE}, [make_gpu(0, H100, current=False)], [], [0], id="none"),
    ],
)
def test_sick_and_missing_gpus_are_reported_and_the_others_planned(
    desired: Dict[str, Optional[GpuSpec]],
    observed: List[GpuState],
    unrestored: List[str],
    planned: List[int],
) -> None:
    p = plan(desired, observed)
    assert list(p.unrestored) == unrestored
    assert sorted({a.gpu_index for a in p.actions}) == planned
    sick_gpus = {g.index for g in observed if g.sick}
    assert not [g for g in p.gpus if g.gpu_index in sick_gpus]  # a sick GPU gets no GpuPlan


def test_an_infeasible_gpu_rejects_the_whole_plan() -> None:
    gpus = [make_gpu(i, H100, current=False) for i in range(8)]
    desired = desired_for(gpus, ONE)
    desired[gpus[6].uuid] = GpuSpec(
        True, (InstanceSpec("3g.40gb", placement=2),), source="/etc/migrestore.yaml:14"
    )
    with pytest.raises(InfeasibleError) as info:
        plan(desired, gpus)
    # the planner names the rule that asked for the layout (its GpuSpec.source)
    assert str(info.value) == (
        f"/etc/migrestore.yaml:14: GPU {gpus[6].label()}: 3g.40gb cannot start at slice 2 "
        "(possible starts: 0, 4); nothing was changed"
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
