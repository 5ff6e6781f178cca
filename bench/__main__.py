"""``python3 -m bench``: run the benchmarks of issue 7 and print the report.

Rules:

1. One command runs everything; ``--only`` picks benchmarks, ``--smoke`` makes every
   size tiny and every repeat one (for the test suite). The exit code is 0 when the
   harness ran, whatever the goals say (missed goals are in the report); 1 when a
   benchmark could not run, with a one-line error naming it.
2. The idle watch runs beside the cold restore: its figure is CPU time of its own
   process, and the cold restore mostly sleeps in the latency model.
3. ``--json PATH`` writes every figure, the settings and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from bench import idle, latency, machine, report, restart, restore, solver
from bench.baseline import BaselineError
from bench.node import HarnessError, Workspace
from migrestore import tables
from migrestore.errors import MigrestoreError

BENCHMARKS = ("restart", "imports", "cold", "small", "solver", "idle")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (for tests)")
    p.add_argument(
        "--only", action="append", choices=BENCHMARKS, help="run only these (repeatable)"
    )
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument(
        "--gpus", type=int, help="simulated GPUs for cold restore, small change, idle (default 8)"
    )
    p.add_argument("--rounds", type=int, help="converged-restart rounds (default 12)")
    p.add_argument("--import-runs", type=int, help="-X importtime runs per command (default 5)")
    p.add_argument("--repeats", type=int, help="cold restore and small change repeats (default 3)")
    p.add_argument("--solver-repeats", type=int, help="timings per plan (default 5)")
    p.add_argument("--idle-seconds", type=float, help="idle watch period after READY (default 185)")
    p.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="FUNCTION=US",
        help="override one entry of the latency model (repeatable)",
    )
    p.add_argument("--latency-scale", type=float, help="multiply the latency model (default 1)")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> Dict[str, Any]:
    smoke = bool(args.smoke)

    def pick(value: Any, full: Any, tiny: Any) -> Any:
        return value if value is not None else (tiny if smoke else full)

    return {
        "gpus": pick(args.gpus, 8, 2),
        "rounds": pick(args.rounds, 12, 1),
        "import_runs": pick(args.import_runs, 5, 1),
        "repeats": pick(args.repeats, 3, 1),
        "solver_repeats": pick(args.solver_repeats, 5, 1),
        "solver_models": ["h100-80gb-hbm3"] if smoke else list(tables.MODEL_NAMES),
        "solver_limit": 6 if smoke else None,
        "idle_seconds": pick(args.idle_seconds, 185.0, 1.0),
        "idle_ticks": 1 if smoke else 5,
        "latency_scale": pick(args.latency_scale, 1.0, 0.001),
        "latency_overrides": dict(latency.parse_override(t) for t in args.latency),
        "restart_gpus": [1] if smoke else [1, 8],
    }


def run(args: argparse.Namespace) -> Dict[str, Any]:
    # The bench is not a service: nothing in this process may notify a supervisor.
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "MIGRESTORE_SIMULATE"):
        os.environ.pop(key, None)
    cfg = settings(args)
    chosen = set(args.only or BENCHMARKS)
    latencies = latency.build(cfg["latency_overrides"], cfg["latency_scale"])
    results: Dict[str, Any] = {}
    started = time.perf_counter()
    say = _progress
    with tempfile.TemporaryDirectory(prefix="migrestore-bench-") as tmp:
        counts = sorted(set(cfg["restart_gpus"]) | {cfg["gpus"]})
        needs_node = chosen & {"restart", "imports", "idle"}
        ws = Workspace(Path(tmp), counts) if needs_node else None
        try:
            if "restart" in chosen and ws is not None:
                say("converged restart")
                results["restart"] = restart.measure(ws, cfg["restart_gpus"], cfg["rounds"])
                results["restart"]["nvml_reads"] = restart.nvml_reads(
                    ws, cfg["restart_gpus"], latency.build(cfg["latency_overrides"])
                )
            if "imports" in chosen and ws is not None:
                say("import-time breakdown")
                results["imports"] = restart.import_breakdown(
                    ws, max(cfg["restart_gpus"]), cfg["import_runs"]
                )
            watch = None
            if "idle" in chosen and ws is not None:
                say(f"idle watch started ({cfg['idle_seconds']:.0f} s)")
                watch = idle.start(ws, cfg["gpus"], cfg["idle_seconds"])
            if "cold" in chosen:
                results["cold_restore"] = []
                for layout in (restore.ALL_1G, restore.MIXED):
                    say(f"cold restore, {layout.name}")
                    results["cold_restore"].append(
                        restore.cold_restore(cfg["gpus"], layout, latencies, cfg["repeats"])
                    )
                say("cold restore, a layout default placements cannot reach")
                results["unreachable"] = restore.unreachable(cfg["gpus"], latencies)
            if "small" in chosen:
                say("small change")
                results["small_change"] = restore.small_change(
                    cfg["gpus"], latencies, cfg["repeats"]
                )
            if watch is not None and ws is not None:
                say("idle watch: waiting for the end of the period")
                measured = idle.finish(watch)
                with ws.boot():
                    tick = idle.tick_cost(
                        ws.states[cfg["gpus"]],
                        cfg["gpus"],
                        ws.load_config(),
                        Path(tmp),
                        cfg["idle_ticks"],
                    )
                results["idle"] = {"gpus": cfg["gpus"], "watch": measured, "tick": tick}
            if "solver" in chosen:
                say("solver")
                results["solver"] = solver.measure(
                    cfg["solver_models"], cfg["solver_repeats"], cfg["solver_limit"]
                )
        finally:
            if ws is not None:
                ws.close()
    return {
        "mode": "smoke" if args.smoke else "full",
        "machine": machine.describe(),
        "settings": {k: v for k, v in cfg.items() if k != "solver_models"},
        "latency_model_us": latencies,
        "results": results,
        "goals": report.goals(results),
        "duration_s": time.perf_counter() - started,
    }


def _progress(text: str) -> None:
    sys.stderr.write(f"bench: {text}\n")
    sys.stderr.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        data = run(args)
    except (HarnessError, BaselineError, MigrestoreError, ValueError, OSError) as exc:
        sys.stderr.write(f"bench: error: {exc}\n")
        return 1
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.write("\n")
    sys.stdout.write(report.render(data))
    missed: List[str] = [g["id"] for g in data["goals"] if g["met"] is False]
    if missed:
        sys.stderr.write(f"bench: goals missed: {', '.join(missed)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
