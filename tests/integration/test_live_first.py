"""The live GPU is the authority (issue 11): a cold boot restores a mixed layout with a
compute-instance subdivision on every simulated model while migrestore's bundled tables
cannot be loaded, including models only the simulator knows; drivers that list profiles
only with MIG mode on (R535) get MIG enabled first; a CI layout a GI does not offer fails
that GPU alone, naming what the GI offers."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import pytest

from migrestore import planner, render, tables
from migrestore.backend import Simulated
from migrestore.errors import InfeasibleError
from migrestore.executor import execute
from migrestore.model import GpuSpec, GpuState, InstanceSpec
from migrestore.nvml import Nvml
from migrestore.simulator import models as simmodels


class _Log:
    """The executor's log: keeps the events, for asserting what was done."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, str, Dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def emit(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return emit


@pytest.fixture
def no_bundled_tables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every way into migrestore's bundled tables raises."""

    def unloadable(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the bundled model tables were consulted")

    tables._load.cache_clear()
    tables.known_profile_names.cache_clear()
    for name in ("raw_document", "load_models", "model", "known_profile_names"):
        monkeypatch.setattr(tables, name, unloadable)
    yield
    tables._load.cache_clear()


def _plain(name: str) -> bool:
    return "+" not in name and "-" not in name


def _layout(model: str) -> Tuple[InstanceSpec, ...]:
    """A mixed layout with a CI subdivision, from the simulator's table of ``model``
    (the test knows the simulator; migrestore does not)."""
    table = simmodels.table(model)
    span = table.memory_slices
    plain = [p for p in table.profiles if _plain(p.name)]
    half = [p for p in plain if p.placements[0].size * 2 == span and p.slices >= 2]
    if half:
        big = half[0]
        small = min((p for p in plain if p.placements[0].size < span // 2), key=lambda p: p.slices)
        return (
            InstanceSpec(big.name, big.placements[0].start, (f"1c.{big.name}",) * 2),
            InstanceSpec(small.name, span // 2),
        )
    full = max(plain, key=lambda p: p.slices)
    return (InstanceSpec(full.name, 0, (f"1c.{full.name}",) * full.slices),)


def _restore(nv: Nvml, desired: Dict[str, GpuSpec]) -> Tuple[GpuState, ...]:
    observed = nv.observe()
    plan = planner.plan(desired, observed, force=False, allow_reset=True)
    return execute(nv, plan, desired, observed, log=_Log(), parallel=False).observed


def _shape(gpu: GpuState) -> List[Tuple[str, int, Tuple[str, ...]]]:
    return sorted(
        (gi.profile, gi.placement.start, tuple(sorted(ci.profile for ci in gi.cis)))
        for gi in gpu.instances
    )


@pytest.mark.parametrize("model", simmodels.model_names())
def test_cold_boot_restores_every_model_without_bundled_tables(
    model: str, no_bundled_tables: None
) -> None:
    layout = _layout(model)
    backend = Simulated(f"{model}:2")
    with Nvml(backend) as nv:
        observed = nv.observe()
        assert all(not p.cis_read and not p.ci_profiles for g in observed for p in g.profiles)
        desired = {g.uuid: GpuSpec(True, layout) for g in observed}
        _restore(nv, desired)
        wanted = sorted(
            (i.profile, int(i.placement or 0), tuple(sorted(i.compute or (i.profile,))))
            for i in layout
        )
        for gpu in nv.observe():
            assert gpu.mig_current
            assert _shape(gpu) == wanted, model
        assert backend.simulator is not None
        backend.simulator.reboot()  # a cold boot: Hopper+ lose MIG, every GI is gone
        observed = nv.observe()
        _restore(nv, desired)
        for gpu in nv.observe():
            assert _shape(gpu) == wanted, model


def test_a_model_only_the_simulator_knows_is_among_them() -> None:
    only = [n for n, m in simmodels.all_models().items() if not m.bundled]
    assert "b200-180gb" in only and "h20-96gb" in only


@pytest.mark.parametrize(("model", "reset"), [("h100-80gb-hbm3", False), ("a100-80gb", True)])
def test_r535_cold_boot_enables_mig_reads_the_profiles_and_restores(
    model: str, reset: bool, no_bundled_tables: None
) -> None:
    backend = Simulated(f"{model}:1@535")
    layout = _layout(model)
    with Nvml(backend) as nv:
        sim = backend.simulator
        assert sim is not None
        if reset:
            sim.hold(0, pid=1)  # a client holds the GPU: the enable stays pending
        (gpu,) = nv.observe()
        assert gpu.profiles == ()  # R535 lists no profile while MIG is off
        desired = {gpu.uuid: GpuSpec(True, layout)}
        plan = planner.plan(desired, (gpu,))
        kinds = [a.kind for a in plan.actions]
        assert kinds == (["set_mode", "reset"] if reset else ["set_mode"])
        assert plan.deferred == (gpu.uuid,)
        if reset:
            sim.release(0, pid=1)
        log = _Log()
        execute(nv, plan, desired, (gpu,), log=log, parallel=False)
        (after,) = nv.observe()
        assert after.mig_current and len(after.instances) == len(layout)
        done = [e for _, e, _ in log.events]
        assert done.index("set_mode") < done.index("create_gi") < done.index("create_ci")
        if reset:
            assert "reset" in done
        changes = [c["function"] for c in sim.changes()]
        assert changes.index("nvmlDeviceSetMigMode") < changes.index(
            "nvmlDeviceCreateGpuInstanceWithPlacement"
        )


def test_a_ci_layout_the_gi_does_not_offer_fails_that_gpu_alone(no_bundled_tables: None) -> None:
    backend = Simulated("h100-80gb-hbm3:2")
    with Nvml(backend) as nv:
        first, second = nv.observe()
        desired = {
            first.uuid: GpuSpec(True, (InstanceSpec("4g.40gb", 0, ("3c.4g.40gb",)),), "x.yaml:3"),
            second.uuid: GpuSpec(True, (InstanceSpec("3g.40gb", 4, ("1c.3g.40gb",) * 3),)),
        }
        plan = planner.plan(desired, (first, second))
        with pytest.raises(InfeasibleError) as err:
            execute(nv, plan, desired, (first, second), log=_Log(), parallel=False)
        text = str(err.value)
        assert err.value.exit_code == 78
        assert text.startswith("x.yaml:3: GPU 0")
        assert "3c.4g.40gb" in text and "1c.4g.40gb" in text and "2c.4g.40gb" in text
        assert "the GPU instances made so far are kept" in text
        one, two = nv.observe()
        assert [(gi.profile, gi.cis) for gi in one.instances] == [("4g.40gb", ())]
        assert _shape(two) == [("3g.40gb", 4, ("1c.3g.40gb",) * 3)]


def test_profiles_mark_ci_rows_read_from_the_gpu(no_bundled_tables: None) -> None:
    backend = Simulated("b200-180gb")
    with Nvml(backend) as nv:
        (gpu,) = nv.observe()
        doc = render.profiles_json((gpu,))["gpus"][0]
        assert {p["compute_read"] for p in doc["profiles"]} == {False}
        assert all(p["compute"] == [] for p in doc["profiles"])
        text = render.profiles_text((gpu,))
        assert "CI profiles not readable yet" in text and "1g.23gb" in text
        nv.set_mig_mode(gpu.uuid, True)
        profile = next(p for p in gpu.profiles if p.name == "3g.90gb")
        nv.create_gi(gpu.uuid, profile.id, profile.placements[0])
        (gpu,) = nv.observe()
        doc = render.profiles_json((gpu,))["gpus"][0]
        read = {p["name"]: p["compute_read"] for p in doc["profiles"]}
        assert read["3g.90gb"] is True and read["1g.23gb"] is False
        text = render.profiles_text((gpu,))
        assert "CI profiles read from the GPU's GIs" in text and "1c.3g.90gb" in text


def test_r535_profiles_say_why_the_table_is_empty(no_bundled_tables: None) -> None:
    with Nvml(Simulated("h100-80gb-hbm3@535")) as nv:
        text = render.profiles_text(nv.observe())
        assert "drivers before R550 list them only with MIG mode on" in text
