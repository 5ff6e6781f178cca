"""Hypothesis properties of the planner over every shipped model.

Random feasible desired layouts (some placements pinned, some CIs split) against random
observed GPUs (mode on, off or pending; any valid geometry; processes on some CIs):

- the plan, applied action by action to a pure GPU model that checks what the driver
  checks, ends exactly at the desired geometry, and planning again gives nothing to do;
- a destroy never hits an instance with processes unless forced, and a BusyError names
  an instance that really runs those processes;
- the plan keeps as many current GIs as any valid layout could (checked by brute force);
- the plan does not depend on the order of the wanted instances.
"""

# Python 3.9 spelling (typing.Dict/Tuple/Optional), as docs/ARCHITECTURE.md asks.

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from migrestore import tables
from migrestore.errors import BusyError
from migrestore.model import (
    Action,
    DestroyCi,
    DestroyGi,
    GiProfile,
    GpuInstance,
    GpuSpec,
    GpuState,
    InstanceSpec,
    Placement,
)
from migrestore.planner import gpu_converged, plan
from tests.planner._support import (
    Layout,
    apply_plan,
    ci_layouts,
    geometry_is,
    layouts,
    make_gi,
    make_gpu,
    multiset,
)

MODELS = tables.load_models()
NAMES = sorted(MODELS)
LAYOUTS: Dict[str, List[Layout]] = {n: layouts(MODELS[n].profiles) for n in NAMES}
CI_LAYOUTS: Dict[Tuple[str, str], List[Tuple[Tuple[str, Placement], ...]]] = {
    (n, p.name): ci_layouts(p) for n in NAMES for p in MODELS[n].profiles
}

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _ci_choice(data: st.DataObject, model: str, profile: str) -> Tuple[Tuple[str, Placement], ...]:
    options = CI_LAYOUTS[(model, profile)]
    return options[data.draw(st.integers(0, len(options) - 1))]


def draw_observed(data: st.DataObject, model: str, index: int, busy: bool) -> GpuState:
    table = MODELS[model]
    current = data.draw(st.booleans(), label="mig_current")
    pending = current
    if data.draw(st.integers(0, 3), label="pending differs") == 0:
        pending = not current
    instances: List[GpuInstance] = []
    if current:
        options = LAYOUTS[model]
        layout = options[data.draw(st.integers(0, len(options) - 1), label="observed layout")]
        if data.draw(st.integers(0, 3), label="observed empty") == 0:
            layout = ()
        for gi_id, (name, placement) in enumerate(layout, start=1):
            cis = _ci_choice(data, model, name)
            pids: Dict[int, Tuple[int, ...]] = {}
            if busy:
                for ci_id in range(len(cis)):
                    if data.draw(st.integers(0, 4), label="busy") == 0:
                        pids[ci_id] = (1000 + 10 * gi_id + ci_id,)
            instances.append(
                make_gi(
                    table.profiles,
                    gi_id,
                    name,
                    placement.start,
                    cis=[(n, pl.start) for n, pl in cis],
                    pids=pids,
                )
            )
    return make_gpu(
        index,
        table.profiles,
        instances,
        arch=table.architecture,
        current=current,
        pending=pending,
    )


def draw_spec(data: st.DataObject, model: str, observed: Optional[GpuState] = None) -> GpuSpec:
    """A feasible spec: a random layout or, mostly, the observed GPU's own GIs
    (so that plans that only change CIs, or nothing, are frequent)."""
    if data.draw(st.integers(0, 5), label="mig off") == 0:
        return GpuSpec(False)
    options = LAYOUTS[model]
    layout = options[data.draw(st.integers(0, len(options) - 1), label="desired layout")]
    same = data.draw(st.integers(0, 2), label="same") > 0
    if observed is not None and observed.instances and same:
        layout = tuple((gi.profile, gi.placement) for gi in observed.instances)
    specs = []
    for name, placement in layout:
        pin = placement.start if data.draw(st.booleans(), label="pin") else None
        compute: Tuple[str, ...] = ()
        if data.draw(st.booleans(), label="split"):
            compute = tuple(n for n, _ in _ci_choice(data, model, name))
        specs.append(InstanceSpec(name, pin, compute))
    order = data.draw(st.permutations(specs), label="order")
    return GpuSpec(True, tuple(order))


def _destroys_busy(gpu: GpuState, actions: Sequence[Action]) -> bool:
    busy = {(gi.gi_id, ci.ci_id) for gi in gpu.instances for ci in gi.cis if ci.pids}
    return any(isinstance(a, DestroyCi) and (a.gi_id, a.ci_id) in busy for a in actions)


@SETTINGS
@given(data=st.data())
def test_plan_reaches_the_desired_geometry_and_then_is_empty(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 3), label="gpus")
    models = [data.draw(st.sampled_from(NAMES), label="model") for _ in range(count)]
    force = data.draw(st.booleans(), label="force")
    observed = [draw_observed(data, m, i, busy=True) for i, m in enumerate(models)]
    desired: Dict[str, Optional[GpuSpec]] = {
        g.uuid: draw_spec(data, m, g) for g, m in zip(observed, models)
    }
    try:
        p = plan(desired, observed, force=force)
    except BusyError as err:
        event("refused: processes")
        assert not force
        gpu = next(g for g in observed if g.label() == err.gpu)
        owners = [gi for gi in gpu.instances if set(err.pids) <= set(gi.pids)]
        assert owners, f"{err} names processes no instance runs"
        forced = plan(desired, observed, force=True)
        assert _destroys_busy(gpu, [a for a in forced.actions if a.gpu == gpu.uuid])
        return
    after = []
    for gpu, gpu_plan in zip(observed, p.gpus):
        assert gpu_plan.gpu == gpu.uuid
        if not force:
            assert not _destroys_busy(gpu, gpu_plan.actions)
        kinds = sorted({a.kind for a in gpu_plan.actions})
        event("actions: " + (", ".join(kinds) or "none"))
        state = apply_plan(gpu, gpu_plan.actions, force=force)
        spec = desired[gpu.uuid]
        assert spec is not None
        assert geometry_is(spec, state), (spec, state.instances)
        assert gpu_converged(spec, state)
        after.append(state)
    again = plan(desired, after)
    assert again.converged, [a.describe() for a in again.actions]
    assert len(again.notes) == count


def _best_keep(profiles: Sequence[GiProfile], model: str, gpu: GpuState, spec: GpuSpec) -> int:
    """The most current GIs any valid layout of ``spec`` keeps, by brute force."""
    have = {(gi.profile, gi.placement) for gi in gpu.instances}
    want = multiset([s.profile for s in spec.instances])
    pins = {(s.profile, s.placement) for s in spec.instances if s.placement is not None}
    best = 0
    for layout in LAYOUTS[model]:
        if multiset([n for n, _ in layout]) != want:
            continue
        starts = {(n, pl.start) for n, pl in layout}
        if not pins <= starts:
            continue
        best = max(best, sum((n, pl) in have for n, pl in layout))
    return best


@SETTINGS
@given(data=st.data())
def test_plan_keeps_as_many_gis_as_possible(data: st.DataObject) -> None:
    model = data.draw(st.sampled_from(NAMES), label="model")
    gpu = draw_observed(data, model, 0, busy=False)
    spec = draw_spec(data, model, gpu)
    if not (spec.mig and gpu.mig_current):
        return
    actions = plan({gpu.uuid: spec}, [gpu]).actions
    destroyed = {a.gi_id for a in actions if isinstance(a, DestroyGi)}
    kept = len(gpu.instances) - len(destroyed)
    assert kept == _best_keep(MODELS[model].profiles, model, gpu, spec)


@SETTINGS
@given(data=st.data())
def test_plan_is_deterministic_and_order_free(data: st.DataObject) -> None:
    model = data.draw(st.sampled_from(NAMES), label="model")
    gpu = draw_observed(data, model, 0, busy=False)
    spec = draw_spec(data, model, gpu)
    first = plan({gpu.uuid: spec}, [gpu])
    assert plan({gpu.uuid: spec}, [gpu]) == first
    shuffled = GpuSpec(spec.mig, tuple(data.draw(st.permutations(spec.instances))))
    assert plan({gpu.uuid: shuffled}, [gpu]).actions == first.actions
