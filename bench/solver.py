"""Solver speed: ``planner.plan`` for every feasible layout of every shipped model.

Rules:

1. The layouts are the brute-force enumeration the integration tests use
   (``tests/integration/layouts.py``), not migrestore's solver: every multiset of GI
   profiles that fits, each GI with its default CI.
2. Each layout is planned from two starting points: a fresh GPU as after a Hopper reboot
   (MIG off, nothing on it, observed through the simulator) and the geometry of the
   previous layout in sorted order (a change from an arbitrary layout; that geometry is
   built from the previous plan's create actions).
3. Each plan is timed ``repeats`` times with ``time.perf_counter``; a layout's time is
   the median of its repeats (one preemption of this shared machine does not make a
   layout slow), and the report gives the median and the maximum over layouts, plus
   the largest single sample for honesty.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from bench.stats import summarize
from migrestore import planner, tables
from migrestore.backend import Simulated
from migrestore.errors import MigrestoreError
from migrestore.model import (
    ComputeInstance,
    CreateCi,
    CreateGi,
    GpuInstance,
    GpuSpec,
    GpuState,
    InstanceSpec,
    Plan,
)
from migrestore.nvml import Nvml
from tests.integration.layouts import Multiset, feasible_multisets


def fresh_gpu(model: str) -> GpuState:
    with Nvml(Simulated(f"{model}:1")) as nv:
        (gpu,) = nv.observe()
    return gpu


def spec_of(layout: Multiset) -> GpuSpec:
    return GpuSpec(mig=True, instances=tuple(InstanceSpec(profile=name) for name in layout))


def geometry_after(plan: Plan, gpu: GpuState) -> GpuState:
    """The GPU as ``plan`` (made from an empty GPU) leaves it: MIG on, its GIs and CIs."""
    gis: Dict[int, GpuInstance] = {}
    cis: Dict[int, List[ComputeInstance]] = {}
    for action in plan.actions:
        if isinstance(action, CreateGi):
            start = action.placement.start
            gis[start] = GpuInstance(
                len(gis) + 1, action.profile_id, action.profile, action.placement
            )
        elif isinstance(action, CreateCi):
            own = cis.setdefault(action.gi_start, [])
            own.append(
                ComputeInstance(
                    len(own),
                    action.profile_id,
                    action.profile,
                    action.placement,
                    f"MIG-bench-{action.gi_start}-{len(own)}",
                )
            )
    instances = tuple(
        GpuInstance(gi.gi_id, gi.profile_id, gi.profile, gi.placement, tuple(cis.get(start, ())))
        for start, gi in sorted(gis.items())
    )
    return GpuState(gpu.identity, True, True, gpu.profiles, instances)


def _time(
    desired: Dict[str, Optional[GpuSpec]], observed: Tuple[GpuState, ...], repeats: int
) -> Tuple[float, List[float], Plan]:
    samples = []
    plan: Optional[Plan] = None
    for _ in range(repeats):
        started = time.perf_counter()
        plan = planner.plan(desired, observed)
        samples.append(time.perf_counter() - started)
    assert plan is not None
    return statistics.median(samples), samples, plan


def measure(models: Sequence[str], repeats: int, limit: Optional[int] = None) -> Dict[str, Any]:
    per_layout: List[float] = []
    all_samples: List[float] = []
    slowest: Tuple[float, str] = (0.0, "")
    per_model: Dict[str, Any] = {}
    failures: List[str] = []
    for model in models:
        gpu = fresh_gpu(model)
        layouts = sorted(feasible_multisets(tables.model(model).profiles))
        if limit is not None:
            layouts = layouts[:limit]
        times: List[float] = []
        previous: Optional[GpuState] = None
        for layout in layouts:
            desired: Dict[str, Optional[GpuSpec]] = {gpu.uuid: spec_of(layout)}
            starts = [("fresh", gpu)] + ([("change", previous)] if previous is not None else [])
            for label, observed in starts:
                try:
                    median, samples, plan = _time(desired, (observed,), repeats)
                except MigrestoreError as exc:
                    failures.append(f"{model} {'+'.join(layout) or '(empty)'} from {label}: {exc}")
                    continue
                times.append(median)
                all_samples.extend(samples)
                if median > slowest[0]:
                    slowest = (median, f"{model}: {' + '.join(layout)} (from {label})")
                if label == "fresh":
                    previous = geometry_after(plan, gpu)
        per_layout.extend(times)
        per_model[model] = {
            "layouts": len(layouts),
            "plans": len(times),
            "time": summarize(times).to_json(),
        }
    return {
        "repeats": repeats,
        "plans": len(per_layout),
        "time": summarize(per_layout).to_json(),
        "largest_single_sample_s": max(all_samples) if all_samples else 0.0,
        "slowest": {"seconds": slowest[0], "what": slowest[1]},
        "per_model": per_model,
        "failures": failures,
    }
