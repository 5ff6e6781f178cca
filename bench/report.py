"""The goals of issue 7, checked against the results, and the text report.

Rules:

1. Every goal is listed with its target, the measured value and met/missed; a goal
   whose benchmark did not run is listed as not run, never as met.
2. The text is Markdown, so a full run's output can go into docs/BENCHMARKS.md as is.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from bench.stats import Summary, fmt_ratio, fmt_seconds

RESTART_GOAL = 1.5  # x the floor
SPEEDUP_GOAL = 6.0  # x the baseline, on 8 GPUs
SOLVER_GOAL_S = 0.005
IDLE_CPU_GOAL = 2.0  # CPU seconds per hour
IDLE_RSS_GOAL = 40.0  # MB (MiB as VmRSS reports kB)


def _summary(data: Dict[str, Any]) -> Summary:
    return Summary(
        int(data["n"]),
        float(data["median"]),
        float(data["min"]),
        float(data["max"]),
        float(data["q1"]),
        float(data["q3"]),
    )


def _goal(
    gid: str, what: str, target: str, measured: Optional[str], met: Optional[bool]
) -> Dict[str, Any]:
    return {
        "id": gid,
        "what": what,
        "target": target,
        "measured": measured if measured is not None else "not run",
        "met": met,
    }


def goals(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    restart = results.get("restart")
    if restart is not None:
        for name, data in restart["ratio_to_floor"].items():
            median = float(data["median"])
            out.append(
                _goal(
                    f"restart:{name}",
                    f"converged restart, {name}, vs interpreter + dependency imports",
                    f"<= {RESTART_GOAL}x",
                    f"{median:.2f}x",
                    median <= RESTART_GOAL,
                )
            )
    else:
        out.append(
            _goal("restart", "converged restart vs floor", f"<= {RESTART_GOAL}x", None, None)
        )
    for scenario in results.get("cold_restore", []):
        gpus = scenario["gpus"]
        speedup = float(scenario["speedup"]["median"])
        out.append(
            _goal(
                f"cold:{scenario['layout']}:speed",
                f"cold restore, {scenario['layout']}, {gpus} GPUs: baseline time / migrestore time",
                f">= {SPEEDUP_GOAL}x",
                f"{speedup:.2f}x",
                speedup >= SPEEDUP_GOAL,
            )
        )
        ours = int(scenario["changes"]["migrestore"])
        theirs = int(scenario["changes"]["baseline"])
        out.append(
            _goal(
                f"cold:{scenario['layout']}:changes",
                f"cold restore, {scenario['layout']}: NVML changes, migrestore vs baseline",
                "never more",
                f"{ours} vs {theirs}",
                ours <= theirs and bool(scenario["reached"]["migrestore"]),
            )
        )
    if not results.get("cold_restore"):
        out.append(_goal("cold", "cold restore speed-up", f">= {SPEEDUP_GOAL}x", None, None))
    small = results.get("small_change")
    if small is not None:
        ours = int(small["changes"]["migrestore"])
        theirs = int(small["changes"]["baseline"])
        out.append(
            _goal(
                "small:only-changed",
                "small change: only the changed instance is touched",
                "changes on 1 GPU, 1 MIG device replaced",
                f"changes per GPU {small['changes_by_gpu']['migrestore']}, "
                f"{small['mig_uuids_changed']['migrestore']} MIG device(s) replaced",
                bool(small["only_changed_instance"]),
            )
        )
        out.append(
            _goal(
                "small:changes",
                "small change: NVML changes, migrestore vs baseline",
                "never more",
                f"{ours} vs {theirs}",
                ours <= theirs,
            )
        )
    else:
        out.append(_goal("small", "small change", "only the changed instance", None, None))
    solver = results.get("solver")
    if solver is not None:
        worst = float(solver["time"]["max"])
        out.append(
            _goal(
                "solver:max",
                "planner.plan, every feasible layout of every model: maximum per layout",
                f"< {SOLVER_GOAL_S * 1000:.0f} ms",
                f"{worst * 1000:.2f} ms",
                worst < SOLVER_GOAL_S and not solver["failures"],
            )
        )
    else:
        out.append(_goal("solver", "solver maximum", "< 5 ms", None, None))
    idle = results.get("idle")
    if idle is not None:
        cpu = float(idle["watch"]["cpu_s_per_hour"])
        rss = float(idle["watch"]["rss_mib"])
        out.append(
            _goal(
                "idle:cpu",
                f"idle watch, {idle['gpus']} GPUs: CPU seconds per hour (extrapolated)",
                f"< {IDLE_CPU_GOAL:.0f} s/h",
                f"{cpu:.2f} s/h",
                cpu < IDLE_CPU_GOAL,
            )
        )
        out.append(
            _goal(
                "idle:rss",
                f"idle watch, {idle['gpus']} GPUs: resident memory (VmRSS)",
                f"< {IDLE_RSS_GOAL:.0f} MB",
                f"{rss:.1f} MiB",
                rss < IDLE_RSS_GOAL,
            )
        )
    else:
        out.append(_goal("idle", "idle watch", "< 2 s/h, < 40 MB", None, None))
    return out


# --------------------------------------------------------------------------- text


def render(report: Dict[str, Any]) -> str:
    lines: List[str] = []
    add = lines.append
    m = report["machine"]
    add(f"# migrestore benchmarks ({report['mode']} run)")
    add("")
    if report["mode"] == "smoke":
        add("Smoke run: tiny sizes, one repeat. It checks the harness; its figures mean nothing.")
        add("")
    add(
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_mib']} MiB, Python "
        f"{m['python']} ({m['executable']}), {m['platform']}; load at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_at_start'])}; "
        + ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    )
    add(f"Duration: {report['duration_s']:.0f} s. Settings: {report['settings']}")
    add("")
    results = report["results"]
    if "restart" in results:
        _render_restart(add, results["restart"])
    if "imports" in results:
        _render_imports(add, results["imports"])
    if results.get("cold_restore"):
        _render_cold(add, results["cold_restore"], results.get("unreachable"))
    if "small_change" in results:
        _render_small(add, results["small_change"])
    if "solver" in results:
        _render_solver(add, results["solver"])
    if "idle" in results:
        _render_idle(add, results["idle"])
    add("## Goals")
    add("")
    add("| goal | target | measured | result |")
    add("| --- | --- | --- | --- |")
    for g in report["goals"]:
        verdict = "not run" if g["met"] is None else ("met" if g["met"] else "**missed**")
        add(f"| {g['what']} | {g['target']} | {g['measured']} | {verdict} |")
    return "\n".join(lines) + "\n"


def _render_restart(add: Any, data: Dict[str, Any]) -> None:
    add(f"## 1. Converged restart ({data['rounds']} rounds)")
    add("")
    add(
        "| run | time | / floor (paired) | CPU time | / floor, CPU (paired) "
        "| / python -c pass (paired) |"
    )
    add("| --- | --- | --- | --- | --- | --- |")
    for name, summary in data["times"].items():
        floor = data["ratio_to_floor"].get(name)
        bare = data["ratio_to_pass"].get(name)
        cpu = data.get("cpu", {}).get(name)
        cpu_floor = data.get("cpu_ratio_to_floor", {}).get(name)
        add(
            f"| {name} | {fmt_seconds(_summary(summary))} | "
            f"{fmt_ratio(_summary(floor)) if floor else '-'} | "
            f"{fmt_seconds(_summary(cpu)) if cpu else '-'} | "
            f"{fmt_ratio(_summary(cpu_floor)) if cpu_floor else '-'} | "
            f"{fmt_ratio(_summary(bare)) if bare else '-'} |"
        )
    add("")
    for count, r in data.get("nvml_reads", {}).items():
        add(
            f"On real GPUs ({count} GPU{'s' if count != '1' else ''}), the latency model prices the "
            f"converged pass at {r['converged_pass_calls']} NVML reads, "
            f"{r['converged_pass_ms']:.0f} ms (+ nvmlInit {r['init_ms']:.0f} ms); a geometry-only "
            f"read (the watch tick) at {r['geometry_read_calls']} reads, {r['geometry_read_ms']:.0f} ms."
        )
    add("")


def _render_imports(add: Any, data: Dict[str, Any]) -> None:
    add(f"## 1b. Import time (python -X importtime, median self time of {data['runs']} runs)")
    add("")
    add(
        f"Floor (`import pynvml, yaml, structlog, sdnotify`): {data['floor_total_ms']:.1f} ms in {data['floor_modules']} modules; largest:"
    )
    add("")
    for row in data["floor_top"]:
        add(
            f"- {row['module']}: {row['self_ms']:.1f} ms self, {row['cumulative_ms']:.1f} ms with its imports"
        )
    add("")
    for label in ("apply", "daemon"):
        d = data[label]
        add(
            f"`{label}`: {d['total_ms']:.1f} ms in {d['modules']} modules; beyond the floor "
            f"{d['extra_ms']:.1f} ms in {d['extra_modules']} modules: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in d["extra_by_group_ms"].items())
        )
        add("")
        add("| module beyond the floor | self ms | imported by | first migrestore importer |")
        add("| --- | --- | --- | --- |")
        for row in d["migrestore_modules"][:12] + d["other_extra"][:12]:
            add(
                f"| {row['module']} | {row['self_ms']:.1f} | {row['imported_by']} | "
                f"{row['migrestore_importer']} |"
            )
        add("")


def _render_cold(
    add: Any, scenarios: List[Dict[str, Any]], unreachable: Optional[Dict[str, Any]]
) -> None:
    add("## 2. Cold restore after a Hopper reboot (latency model)")
    add("")
    add(
        "| layout | GPUs | migrestore | baseline (mig-parted) | speed-up (paired) | speed-up, refused calls free | NVML time if the driver serialised everything: baseline / migrestore | NVML changes (ours / baseline) | baseline orderings, refused calls |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in scenarios:
        last = s["baseline"]["runs"][-1]
        add(
            f"| {s['layout']} | {s['gpus']} | {fmt_seconds(_summary(s['migrestore']['wall']), 's')} | "
            f"{fmt_seconds(_summary(s['baseline']['wall']), 's')} | {fmt_ratio(_summary(s['speedup']))} | "
            f"{_summary(s['speedup_without_refused']).median:.2f}x | "
            f"{_summary(s['serial_nvml_ratio']).median:.2f}x | "
            f"{s['changes']['migrestore']} / {s['changes']['baseline']} | "
            f"{last['orderings']}, {last['refused_calls']} |"
        )
    add("")
    if unreachable is not None:
        ours = unreachable["migrestore"]
        theirs = unreachable["baseline"]
        add(
            f"Feasible layout {unreachable['layout']} on {unreachable['gpus']} GPUs (one run): "
            f"migrestore {'reached it' if ours['reached'] else 'FAILED'} in {ours['wall_s']:.2f} s with "
            f"{ours['changes']} changes; baseline {'reached it' if theirs['reached'] else 'did not reach it'} "
            f"after {theirs['orderings']} orderings, {theirs['wall_s']:.2f} s, {theirs['changes']} changes"
            + (f" ({theirs['error']})" if theirs["error"] else "")
        )
        add("")


def _render_small(add: Any, s: Dict[str, Any]) -> None:
    add(f"## 3. Small change: GPU {s['changed_gpu']} of {s['gpus']}, {s['layout']}")
    add("")
    add("| | migrestore | baseline (mig-parted) |")
    add("| --- | --- | --- |")
    add(f"| NVML changes | {s['changes']['migrestore']} | {s['changes']['baseline']} |")
    add(
        f"| changes per GPU | {s['changes_by_gpu']['migrestore']} | {s['changes_by_gpu']['baseline']} |"
    )
    add(
        f"| MIG devices replaced (new UUID) | {s['mig_uuids_changed']['migrestore']} | {s['mig_uuids_changed']['baseline']} |"
    )
    units = s["units_stopped"]
    add(
        f"| client units stopped | {len(units['migrestore'])} ({', '.join(units['migrestore']) or 'none'}) | "
        f"Hopper hooks: {len(units['baseline_hopper_hooks'])}; default hooks: "
        f"{len(units['baseline_default_hooks'])} ({', '.join(units['baseline_default_hooks'])}) and the k8s pods |"
    )
    add(
        f"| time | {fmt_seconds(_summary(s['migrestore']['wall']), 's')} | "
        f"{fmt_seconds(_summary(s['baseline']['wall']), 's')} |"
    )
    add("")


def _render_solver(add: Any, s: Dict[str, Any]) -> None:
    add(f"## 4. Solver ({s['plans']} plans, {s['repeats']} repeats each)")
    add("")
    add(
        f"Per plan: {fmt_seconds(_summary(s['time']))}; slowest: {s['slowest']['what']} "
        f"({s['slowest']['seconds'] * 1000:.2f} ms); largest single sample "
        f"{s['largest_single_sample_s'] * 1000:.2f} ms."
    )
    add("")
    add("| model | layouts | plans | per plan |")
    add("| --- | --- | --- | --- |")
    for model, d in s["per_model"].items():
        add(f"| {model} | {d['layouts']} | {d['plans']} | {fmt_seconds(_summary(d['time']))} |")
    if s["failures"]:
        add("")
        add("Failures: " + "; ".join(s["failures"][:10]))
    add("")


def _render_idle(add: Any, s: Dict[str, Any]) -> None:
    w = s["watch"]
    t = s["tick"]
    add(f"## 5. Idle watch ({s['gpus']} GPUs, drift interval {w['interval_s']:.0f} s)")
    add("")
    add(
        f"Measured {w['period_s']:.0f} s after READY ({w['ticks_in_period']} ticks): "
        f"{w['cpu_s']:.2f} CPU s, extrapolated {w['cpu_s_per_hour']:.2f} CPU s/hour; "
        f"VmRSS {w['rss_mib']:.1f} MiB (peak {w['hwm_mib']:.1f} MiB); start-up to READY "
        f"{w['cpu_at_ready_s']:.2f} CPU s."
    )
    share = t["simulator_share"]
    add(
        f"One tick in-process: {t['cpu_ms_state_file']:.1f} ms CPU on the state file "
        f"({t['nvml_calls']} NVML calls; {share * 100 if share is not None else float('nan'):.0f}% of it "
        f"inside the simulator by cProfile), {t['cpu_ms_in_memory']:.1f} ms on an in-memory simulator."
    )
    add("")
