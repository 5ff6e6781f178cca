"""Cold restore after a Hopper reboot, and a small change, migrestore vs the baseline.

Rules:

1. Both sides run in this process over a fresh in-memory simulator with the same latency
   model (``bench.latency``); the clock starts after the NVML session is open (the
   baseline's own per-operation sessions are inside its time) and stops when the run
   returns. migrestore runs ``engine.converge`` (observe, plan, apply in parallel per
   GPU, verify); the baseline runs ``bench.baseline.MigParted.apply``.
2. NVML changes are the simulator's change counter; the geometry reached is read back
   from the simulator and compared with the wanted one, so a run that "succeeds" on the
   wrong geometry is reported as not reached.
3. The small change starts from a converged node (made without latency) and changes one
   instance of one GPU; it counts changes per GPU, the MIG devices whose UUID changed
   (a client that pinned one must be reconfigured) and the client units stopped
   (migrestore through the systemctl stand-in; the baseline from mig-parted's shipped
   hook files, since its hooks are shell scripts).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pynvml

from bench import latency
from bench.baseline import BaselineError, MigParted, Wanted
from bench.stats import summarize
from migrestore import config as configmod
from migrestore import engine, logs, simulator, tables
from migrestore.backend import Simulated
from migrestore.errors import MigrestoreError
from migrestore.model import Config
from migrestore.nvml import Nvml
from migrestore.services import Systemctl
from tests.edges.systemctl_fake import FakeSystemctl

MODEL = "h100-80gb-hbm3"


@dataclass(frozen=True)
class Layout:
    name: str
    devices: Tuple[str, ...]  # GI profiles, each with one CI covering it


ALL_1G = Layout("all-1g", ("1g.10gb",) * 7)
MIXED = Layout("mixed", ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"))
# Feasible (1g.20gb at 6:2, 1g.10gb at 0..5), but the simulator's default placements put
# the first 1g.10gb at slice 6 or the 1g.20gb at 4:2, whatever the creation order.
UNREACHABLE = Layout("1g.20gb+6x1g.10gb", ("1g.20gb",) + ("1g.10gb",) * 6)
# The small change: GPU SMALL_GPU of a MIXED node gets a 1g.20gb instead of its 2g.20gb.
CHANGED = Layout("mixed, 2g.20gb -> 1g.20gb", ("3g.40gb", "1g.20gb", "1g.10gb", "1g.10gb"))
SMALL_GPU = 3
CLIENTS: Tuple[str, ...] = ("nvidia-dcgm.service", "dcgm-exporter.service")
# mig-parted's shipped hooks (deployments/systemd/hooks-*.yaml, hooks.sh): Hopper gets
# hooks-minimal.yaml, which stops nothing; hooks-default.yaml's pre-apply-config stops
# the k8s services and kills the k8s pods.
BASELINE_UNITS_HOPPER: Tuple[str, ...] = ()
BASELINE_UNITS_DEFAULT_HOOKS: Tuple[str, ...] = ("kubelet.service", "dcgm-exporter.service")


def _instances_yaml(devices: Sequence[str]) -> str:
    counts = Counter(devices)
    return "".join(
        f"      - {{profile: {name}, count: {counts[name]}}}\n" for name in sorted(counts)
    )


def config_text(
    layout: Layout,
    clients: Sequence[str] = (),
    override: Optional[Tuple[int, Layout]] = None,
) -> str:
    text = f"version: 1\nclients: [{', '.join(clients)}]\ngpus:\n"
    if override is not None:
        index, other = override
        text += f"  - match: {{index: {index}}}\n    mig: true\n    instances:\n"
        text += _instances_yaml(other.devices)
    text += "  - match: all\n    mig: true\n    instances:\n" + _instances_yaml(layout.devices)
    return text


def config_for(
    layout: Layout, clients: Sequence[str] = (), override: Optional[Tuple[int, Layout]] = None
) -> Config:
    return configmod.parse(config_text(layout, clients, override), "<bench>")


def _names() -> Dict[int, str]:
    return {p.id: p.name for p in tables.model(MODEL).profiles}


def geometry(sim: simulator.Simulator) -> List[Tuple[str, ...]]:
    """Per GPU: the sorted GI profile names of GIs holding exactly one CI (anything
    else shows as ``<name>/<n CIs>``)."""
    names = _names()
    out = []
    for gpu in sim.state().gpus:
        shown = []
        for gi in gpu.gis:
            name = names.get(gi.profile_id, str(gi.profile_id))
            shown.append(name if len(gi.cis) == 1 else f"{name}/{len(gi.cis)} CIs")
        out.append(tuple(sorted(shown)))
    return out


def mig_uuids(sim: simulator.Simulator) -> List[List[str]]:
    return [[ci.uuid for gi in gpu.gis for ci in gi.cis] for gpu in sim.state().gpus]


@dataclass(frozen=True)
class Run:
    wall: float  # seconds
    nvml_time: float  # modelled NVML seconds, added up over every call
    changes: int
    reached: bool
    error: str = ""
    orderings: int = 0
    refused: int = 0
    refused_time: float = 0.0  # modelled seconds of the refused calls
    stopped: Tuple[str, ...] = ()
    changes_by_gpu: Tuple[int, ...] = ()
    uuids_changed: int = 0


def _quiet_log() -> Any:
    logs.configure("json", "error")
    return logs.get_logger()


@contextlib.contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _per_gpu(sim: simulator.Simulator, after_seq: int, count: int) -> Tuple[int, ...]:
    """Changes per GPU since ``after_seq``; () when the simulator's bounded list of
    recent changes no longer holds all of them."""
    recent = sim.changes()
    if not recent or int(recent[0]["seq"]) > after_seq + 1:
        return ()
    per = [0] * count
    for change in recent:
        if int(change["seq"]) > after_seq:
            per[int(change["gpu"])] += 1
    return tuple(per)


def _last_seq(sim: simulator.Simulator) -> int:
    changes = sim.changes()
    return int(changes[-1]["seq"]) if changes else 0


def _uuids_changed(before: List[List[str]], after: List[List[str]]) -> int:
    return sum(len(set(b) - set(a)) for b, a in zip(before, after))


# --------------------------------------------------------------------------- migrestore


def run_migrestore(
    count: int,
    cfg: Config,
    want: Sequence[Tuple[str, ...]],
    latencies: Mapping[str, int],
    setup: Optional[Config] = None,
    ctl: Optional[Systemctl] = None,
) -> Run:
    """``converge`` to ``cfg`` on ``count`` fresh simulated GPUs (after converging to
    ``setup`` without latency, when given)."""
    log = _quiet_log()
    nv = Nvml(Simulated(f"{MODEL}:{count}"))
    nv.open()
    try:
        sim = nv.backend.simulator
        assert sim is not None
        if setup is not None:
            engine.converge(nv, setup, log=log)
        before_uuids = mig_uuids(sim)
        seq = _last_seq(sim)
        recorder = latency.Recorder()
        latency.install(sim, latencies, recorder)
        before = sim.change_count
        error = ""
        stopped: Tuple[str, ...] = ()
        started = time.perf_counter()
        try:
            outcome = engine.converge(nv, cfg, log=log, ctl=ctl)
            stopped = outcome.stopped
        except MigrestoreError as exc:
            error = str(exc)
        wall = time.perf_counter() - started
        latency.remove(sim, latencies)
        changes = sim.change_count - before
        reached = not error and geometry(sim) == [tuple(sorted(w)) for w in want]
        return Run(
            wall=wall,
            nvml_time=recorder.total,
            changes=changes,
            reached=reached,
            error=error,
            stopped=stopped,
            changes_by_gpu=_per_gpu(sim, seq, count),
            uuids_changed=_uuids_changed(before_uuids, mig_uuids(sim)),
        )
    finally:
        nv.close()


# --------------------------------------------------------------------------- baseline


def run_baseline(
    count: int,
    wanted: Mapping[int, Wanted],
    latencies: Mapping[str, int],
    setup: Optional[Mapping[int, Wanted]] = None,
) -> Run:
    sim = simulator.attach(pynvml, f"{MODEL}:{count}")
    pynvml.nvmlInit()
    try:
        if setup is not None:
            MigParted(pynvml).apply(setup)
        before_uuids = mig_uuids(sim)
        seq = _last_seq(sim)
        recorder = latency.Recorder()
        latency.install(sim, latencies, recorder)
        before = sim.change_count
        runner = MigParted(pynvml)
        error = ""
        started = time.perf_counter()
        try:
            runner.apply(wanted)
        except BaselineError as exc:
            error = str(exc)
        wall = time.perf_counter() - started
        latency.remove(sim, latencies)
        refused = sum(runner.stats.refused.values())
        refused_time = sum(
            n * latencies.get(function, 0) / 1e6 for function, n in runner.stats.refused.items()
        )
        want = [tuple(sorted(wanted[i].devices)) for i in range(count)]
        return Run(
            wall=wall,
            nvml_time=recorder.total,
            changes=sim.change_count - before,
            reached=not error and geometry(sim) == want,
            error=error,
            orderings=runner.stats.orderings,
            refused=refused,
            refused_time=refused_time,
            changes_by_gpu=_per_gpu(sim, seq, count),
            uuids_changed=_uuids_changed(before_uuids, mig_uuids(sim)),
        )
    finally:
        pynvml.nvmlShutdown()
        simulator.detach(pynvml)


# --------------------------------------------------------------------------- scenarios


def _run_json(run: Run) -> Dict[str, Any]:
    return {
        "wall_s": run.wall,
        "nvml_time_s": run.nvml_time,
        "changes": run.changes,
        "reached": run.reached,
        "error": run.error,
        "orderings": run.orderings,
        "refused_calls": run.refused,
        "refused_time_s": run.refused_time,
        "stopped": list(run.stopped),
        "changes_by_gpu": list(run.changes_by_gpu),
        "mig_uuids_changed": run.uuids_changed,
    }


def cold_restore(
    count: int, layout: Layout, latencies: Mapping[str, int], repeats: int
) -> Dict[str, Any]:
    """Fresh GPUs (a Hopper after reboot: MIG off, no instance) to ``layout`` on all."""
    cfg = config_for(layout)
    want = [layout.devices] * count
    wanted = {i: Wanted(True, layout.devices) for i in range(count)}
    ours: List[Run] = []
    theirs: List[Run] = []
    for r in range(repeats):
        if r % 2 == 0:
            ours.append(run_migrestore(count, cfg, want, latencies))
            theirs.append(run_baseline(count, wanted, latencies))
        else:
            theirs.append(run_baseline(count, wanted, latencies))
            ours.append(run_migrestore(count, cfg, want, latencies))
    return _compare(layout, count, ours, theirs)


def _compare(layout: Layout, count: int, ours: List[Run], theirs: List[Run]) -> Dict[str, Any]:
    speedups = [t.wall / o.wall for o, t in zip(ours, theirs) if o.wall > 0]
    return {
        "layout": layout.name,
        "devices": list(layout.devices),
        "gpus": count,
        "migrestore": {
            "wall": summarize([r.wall for r in ours]).to_json(),
            "nvml_time": summarize([r.nvml_time for r in ours]).to_json(),
            "runs": [_run_json(r) for r in ours],
        },
        "baseline": {
            "wall": summarize([r.wall for r in theirs]).to_json(),
            "nvml_time": summarize([r.nvml_time for r in theirs]).to_json(),
            "wall_without_refused": summarize([r.wall - r.refused_time for r in theirs]).to_json(),
            "runs": [_run_json(r) for r in theirs],
        },
        "speedup": summarize(speedups).to_json(),
        "speedup_without_refused": summarize(
            [(t.wall - t.refused_time) / o.wall for o, t in zip(ours, theirs) if o.wall > 0]
        ).to_json(),
        "serial_nvml_ratio": summarize(
            [t.nvml_time / o.nvml_time for o, t in zip(ours, theirs) if o.nvml_time > 0]
        ).to_json(),
        "changes": {"migrestore": ours[-1].changes, "baseline": theirs[-1].changes},
        "reached": {
            "migrestore": all(r.reached for r in ours),
            "baseline": all(r.reached for r in theirs),
        },
    }


def small_change(count: int, latencies: Mapping[str, int], repeats: int) -> Dict[str, Any]:
    """A converged MIXED node; GPU ``SMALL_GPU`` changes one instance (CHANGED)."""
    gpu = min(SMALL_GPU, count - 1)
    setup = config_for(MIXED, CLIENTS)
    cfg = config_for(MIXED, CLIENTS, override=(gpu, CHANGED))
    want = [CHANGED.devices if i == gpu else MIXED.devices for i in range(count)]
    base_wanted = {i: Wanted(True, MIXED.devices) for i in range(count)}
    wanted = {i: Wanted(True, want[i]) for i in range(count)}
    ours: List[Run] = []
    theirs: List[Run] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="migrestore-bench-") as tmp:
            units = FakeSystemctl(Path(tmp) / "systemctl")
            for unit in CLIENTS:
                units.add(unit)
            with _environ(units.env()):
                ours.append(
                    run_migrestore(
                        count, cfg, want, latencies, setup=setup, ctl=Systemctl(units.path)
                    )
                )
        theirs.append(run_baseline(count, wanted, latencies, setup=base_wanted))
    result = _compare(CHANGED, count, ours, theirs)
    result["changed_gpu"] = gpu
    result["units_stopped"] = {
        "migrestore": list(ours[-1].stopped),
        "baseline_hopper_hooks": list(BASELINE_UNITS_HOPPER),
        "baseline_default_hooks": list(BASELINE_UNITS_DEFAULT_HOOKS),
    }
    result["changes_by_gpu"] = {
        "migrestore": list(ours[-1].changes_by_gpu),
        "baseline": list(theirs[-1].changes_by_gpu),
    }
    result["mig_uuids_changed"] = {
        "migrestore": ours[-1].uuids_changed,
        "baseline": theirs[-1].uuids_changed,
    }
    others = [n for i, n in enumerate(ours[-1].changes_by_gpu) if i != gpu]
    result["only_changed_instance"] = (
        not any(others) and ours[-1].uuids_changed == 1 and ours[-1].reached
    )
    return result


def unreachable(count: int, latencies: Mapping[str, int]) -> Dict[str, Any]:
    """One run of a feasible layout the driver's default placements cannot reach."""
    cfg = config_for(UNREACHABLE)
    want = [UNREACHABLE.devices] * count
    ours = run_migrestore(count, cfg, want, latencies)
    theirs = run_baseline(
        count, {i: Wanted(True, UNREACHABLE.devices) for i in range(count)}, latencies
    )
    return {
        "layout": UNREACHABLE.name,
        "gpus": count,
        "migrestore": _run_json(ours),
        "baseline": _run_json(theirs),
    }
