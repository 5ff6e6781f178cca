"""Converged restart: process start to READY (daemon) and to exit (``apply`` with nothing
to do), against the interpreter alone and the interpreter importing the dependencies;
and where the import time goes.

Rules:

1. Every variant runs once per round, in an order rotated each round, after one warm-up
   round that fills the bytecode cache and is not counted. Ratios are per round.
2. The floor is ``python -c "import pynvml, yaml, structlog, sdnotify"``: the interpreter
   plus the imports a converged run cannot avoid. ``python -c pass`` is shown as well.
   The goal is on wall time; for the commands run to their exit (the floor and
   ``apply``) the paired ratio of CPU times is given beside it (node rule 4), the
   steadier figure on a shared machine.
3. The daemon is timed from ``Popen`` to the arrival of ``READY=1`` on a real notify
   socket; ``apply`` from ``Popen`` to its exit (code 0 required). Both run on state
   files of GPUs that already have the configured geometry, with client units
   configured (and left alone, since nothing changes).
4. The import breakdown comes from ``python -X importtime``: per module, the median of
   its own ("self") time over a few runs; modules the floor does not import are the
   cost migrestore adds, attributed to the migrestore module that imported them.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from bench import latency
from bench.node import DEPENDENCIES, HarnessError, Workspace
from bench.stats import paired_ratios, summarize
from migrestore import engine, logs
from migrestore.backend import Simulated
from migrestore.nvml import Nvml

PASS = "python -c pass"
DEPS = "python -c 'import deps'"


def _variants(ws: Workspace, counts: Sequence[int]) -> List[Tuple[str, Callable[[], float]]]:
    out: List[Tuple[str, Callable[[], float]]] = [
        (PASS, lambda: ws.run_to_exit([sys.executable, "-c", "pass"])[0]),
        (DEPS, lambda: ws.run_to_exit([sys.executable, "-c", DEPENDENCIES])[0]),
    ]
    for count in counts:
        out.append(
            (
                f"apply, {count} GPU{'s' if count > 1 else ''}",
                _apply(ws, count),
            )
        )
        out.append(
            (
                f"daemon to READY, {count} GPU{'s' if count > 1 else ''}",
                _daemon(ws, count),
            )
        )
    return out


def _apply(ws: Workspace, count: int) -> Callable[[], float]:
    def run() -> float:
        elapsed, err = ws.run_to_exit(ws.migrestore_argv(count, "apply"))
        if "converged" not in err:
            raise HarnessError(f"apply on {count} GPUs was not a no-op: {err.strip()[-300:]}")
        return elapsed

    return run


def _daemon(ws: Workspace, count: int) -> Callable[[], float]:
    return lambda: ws.time_to_ready(count)


def measure(ws: Workspace, counts: Sequence[int], rounds: int) -> Dict[str, Any]:
    variants = _variants(ws, counts)
    for _name, run in variants:  # warm-up: bytecode cache, page cache
        run()
    samples: Dict[str, List[float]] = {name: [] for name, _ in variants}
    cpu: Dict[str, List[float]] = {
        name: [] for name, _ in variants if not name.startswith("daemon")
    }
    for r in range(rounds):
        shift = r % len(variants)
        for name, run in variants[shift:] + variants[:shift]:
            samples[name].append(run())
            if name in cpu:
                cpu[name].append(ws.last_cpu)
    result: Dict[str, Any] = {
        "rounds": rounds,
        "times": {name: summarize(values).to_json() for name, values in samples.items()},
        "ratio_to_floor": {},
        "ratio_to_pass": {},
        "cpu": {name: summarize(values).to_json() for name, values in cpu.items()},
        "cpu_ratio_to_floor": {},
    }
    for name, values in samples.items():
        if name in (PASS, DEPS):
            continue
        result["ratio_to_floor"][name] = paired_ratios(values, samples[DEPS]).to_json()
        result["ratio_to_pass"][name] = paired_ratios(values, samples[PASS]).to_json()
        if name in cpu:
            result["cpu_ratio_to_floor"][name] = paired_ratios(cpu[name], cpu[DEPS]).to_json()
    result["ratio_to_pass"][DEPS] = paired_ratios(samples[DEPS], samples[PASS]).to_json()
    return result


def nvml_reads(ws: Workspace, counts: Sequence[int], latencies: Dict[str, int]) -> Dict[str, Any]:
    """What real NVML would add to a converged start: the reads of one converged pass
    (a fresh session, so the profile tables are read too) and of one watch-style
    geometry read, counted and priced with the latency model (nothing slept)."""
    out: Dict[str, Any] = {}
    logs.configure("json", "error")
    for count in counts:
        copy = str(ws.dir / f"reads-{count}.json")
        shutil.copyfile(ws.states[count], copy)
        with ws.boot(), Nvml(Simulated(copy)) as nv:
            sim = nv.backend.simulator
            assert sim is not None
            start = latency.Recorder(sleep=False)
            latency.install(sim, latencies, start)
            outcome = engine.converge(nv, ws.load_config(), log=logs.get_logger())
            if not outcome.converged_before:
                raise HarnessError(f"the {count}-GPU state is not converged")
            tick = latency.Recorder(sleep=False)
            sim.sleep = tick
            nv.observe(devices=False)
            latency.remove(sim, latencies)
        out[str(count)] = {
            "converged_pass_calls": start.calls,
            "converged_pass_ms": start.total * 1000,
            "init_ms": latencies.get("nvmlInit_v2", 0) / 1000,
            "geometry_read_calls": tick.calls,
            "geometry_read_ms": tick.total * 1000,
        }
    return out


# --------------------------------------------------------------------------- imports


@dataclass(frozen=True)
class Imported:
    name: str
    self_us: int
    cumulative_us: int
    depth: int
    parent: Optional[str]


def parse_importtime(stderr: str) -> Dict[str, Imported]:
    """``-X importtime`` lines -> module -> timing and the module that imported it."""
    rows: List[Tuple[str, int, int, int]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:") :].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header
        raw = fields[2].rstrip()
        name = raw.strip()
        depth = (len(raw) - len(raw.lstrip()) - 1) // 2
        rows.append((name, int(fields[0]), int(fields[1]), depth))
    found: Dict[str, Imported] = {}
    last_at: Dict[int, str] = {}
    for name, own, cumulative, depth in reversed(rows):  # parents come after children
        last_at[depth] = name
        parent = last_at.get(depth - 1) if depth > 0 else None
        found[name] = Imported(name, own, cumulative, depth, parent)
    return found


def _median_runs(runs: Sequence[Dict[str, Imported]]) -> Dict[str, Imported]:
    names = set(runs[0])
    for run in runs[1:]:
        names &= set(run)
    out: Dict[str, Imported] = {}
    for name in names:
        first = runs[0][name]
        out[name] = Imported(
            name,
            int(statistics.median(r[name].self_us for r in runs)),
            int(statistics.median(r[name].cumulative_us for r in runs)),
            first.depth,
            first.parent,
        )
    return out


def _group(name: str) -> str:
    if name.startswith("migrestore.simulator"):
        return "migrestore.simulator (only with --simulate)"
    if name == "migrestore" or name.startswith("migrestore."):
        return "migrestore"
    return "other modules migrestore imports"


def _importer(name: str, table: Dict[str, Imported]) -> str:
    """The nearest migrestore module above ``name`` in the import tree."""
    seen = 0
    current = table.get(name)
    while current is not None and current.parent is not None and seen < 64:
        if current.parent.startswith("migrestore"):
            return current.parent
        current = table.get(current.parent)
        seen += 1
    return "(top level)"


def import_breakdown(ws: Workspace, count: int, runs: int) -> Dict[str, Any]:
    ws.warm(count)
    floor_runs = []
    apply_runs = []
    daemon_runs = []
    for _ in range(runs):
        floor_runs.append(
            parse_importtime(
                ws.run_to_exit([sys.executable, "-X", "importtime", "-c", DEPENDENCIES])[1]
            )
        )
        apply_runs.append(
            parse_importtime(
                ws.run_to_exit(ws.migrestore_argv(count, "apply", python=("-X", "importtime")))[1]
            )
        )
        daemon_runs.append(
            parse_importtime(
                ws.run_to_exit(
                    ws.migrestore_argv(count, "daemon", "--once", python=("-X", "importtime"))
                )[1]
            )
        )
    floor = _median_runs(floor_runs)
    out: Dict[str, Any] = {
        "runs": runs,
        "floor_total_ms": sum(m.self_us for m in floor.values()) / 1000,
        "floor_modules": len(floor),
        "floor_top": _top(floor, floor, 8),
    }
    for label, table in (
        ("apply", _median_runs(apply_runs)),
        ("daemon", _median_runs(daemon_runs)),
    ):
        extra = {n: m for n, m in table.items() if n not in floor}
        groups: Dict[str, float] = {}
        for name, module in extra.items():
            groups[_group(name)] = groups.get(_group(name), 0.0) + module.self_us / 1000
        out[label] = {
            "total_ms": sum(m.self_us for m in table.values()) / 1000,
            "modules": len(table),
            "extra_ms": sum(m.self_us for m in extra.values()) / 1000,
            "extra_modules": len(extra),
            "extra_by_group_ms": {k: round(v, 1) for k, v in sorted(groups.items())},
            "migrestore_modules": _top(
                {n: m for n, m in extra.items() if _group(n) == "migrestore"}, table, 30
            ),
            "other_extra": _top(
                {n: m for n, m in extra.items() if _group(n).startswith("other")}, table, 15
            ),
        }
    return out


def _top(modules: Dict[str, Imported], table: Dict[str, Imported], n: int) -> List[Dict[str, Any]]:
    ranked = sorted(modules.values(), key=lambda m: (-m.self_us, m.name))[:n]
    return [
        {
            "module": m.name,
            "self_ms": m.self_us / 1000,
            "cumulative_ms": m.cumulative_us / 1000,
            "imported_by": m.parent or "(top level)",
            "migrestore_importer": _importer(m.name, table),
        }
        for m in ranked
    ]
