"""Every layout every shipped model allows is planned, applied on the simulator and
verified; every layout one instance too large is rejected with exit 78, GPU untouched.

The layouts come from a brute-force enumeration written for the test
(tests/integration/layouts.py), not from migrestore's solver. The layouts of a model are
applied one after another on the same simulated GPU, so every run is also a change from
an arbitrary previous geometry.
"""

from __future__ import annotations

from typing import Any, List

import pytest

from migrestore import engine, logs, tables
from migrestore.backend import Simulated
from migrestore.errors import EXIT_CONFIG, ConfigError, InfeasibleError
from migrestore.model import Config, GpuSpec, InstanceSpec, Rule
from migrestore.nvml import Nvml
from tests.integration.layouts import Multiset, feasible_multisets, infeasible_neighbours


def config_for(layout: Multiset) -> Config:
    spec = GpuSpec(mig=True, instances=tuple(InstanceSpec(profile=name) for name in layout))
    return Config(path="<test>", rules=(Rule(match=(), spec=spec),), clients=())


def geometry(nv: Nvml) -> List[Any]:
    (gpu,) = nv.observe()
    return sorted(gi.profile for gi in gpu.instances)


@pytest.mark.parametrize("model", tables.MODEL_NAMES)
def test_every_feasible_layout_applies_and_verifies(model: str) -> None:
    logs.configure("json", "warning")
    log = logs.get_logger()
    table = tables.model(model)
    layouts = sorted(feasible_multisets(table.profiles))
    assert len(layouts) > 10
    with Nvml(Simulated(f"{model}:1")) as nv:
        for layout in layouts:
            cfg = config_for(layout)
            engine.converge(nv, cfg, log=log)
            assert geometry(nv) == sorted(layout), layout
            (gpu,) = nv.observe()
            assert gpu.mig_current
            for gi in gpu.instances:
                # default CI layout: one CI covering the GI, with a MIG device UUID
                assert len(gi.cis) == 1
                assert gi.cis[0].uuid.startswith("MIG-")
            # converged: a second pass changes nothing
            assert nv.backend.attached
            before = nv.backend.simulator.change_count
            again = engine.converge(nv, cfg, log=log)
            assert again.converged_before
            assert nv.backend.simulator.change_count == before


@pytest.mark.parametrize("model", tables.MODEL_NAMES)
def test_every_layout_that_does_not_fit_is_rejected_untouched(model: str) -> None:
    logs.configure("json", "warning")
    log = logs.get_logger()
    table = tables.model(model)
    feasible = feasible_multisets(table.profiles)
    too_big = sorted(infeasible_neighbours(table.profiles, feasible))
    assert too_big
    with Nvml(Simulated(f"{model}:1")) as nv:
        # start from a real geometry so "untouched" means something
        start = max(feasible, key=len)
        engine.converge(nv, config_for(start), log=log)
        assert nv.backend.attached
        before = nv.backend.simulator.change_count
        shape = geometry(nv)
        for layout in too_big:
            # More instances of a profile than the GPU holds is a config error naming
            # the GPU (resolve); any other layout that does not fit, the planner's.
            with pytest.raises((InfeasibleError, ConfigError)) as info:
                engine.converge(nv, config_for(layout), log=log)
            assert info.value.exit_code == EXIT_CONFIG
            if isinstance(info.value, InfeasibleError):
                assert "nothing was changed" in str(info.value)
            else:
                assert "holds at most" in str(info.value)
        assert nv.backend.simulator.change_count == before
        assert geometry(nv) == shape
