"""Idle watch: what the daemon costs while nothing happens.

Rules:

1. The daemon runs as systemd runs it (notify socket, client units configured) on a
   state file of GPUs that already match the config, with the default drift interval
   (the config has no ``drift`` key). The measured period starts at ``READY=1``; CPU is
   ``utime + stime`` from ``/proc/PID/stat`` and memory ``VmRSS``/``VmHWM`` from
   ``/proc/PID/status`` at the end. CPU per hour is extrapolated linearly from the
   period, and the report says so.
2. CPU time is per process, so the watch may run while another benchmark keeps the
   machine busy; ``__main__`` runs it beside the cold restore, which mostly sleeps.
3. To say what limits the figure, one watch tick (observe + plan, what the daemon does
   each interval) is also run in this process on a copy of the same state file: its CPU
   time, its NVML calls, and the share of it spent inside the simulator (cProfile).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from bench import latency
from bench.node import MODEL, HarnessError, Workspace, stop
from migrestore import engine, logs
from migrestore.model import Config
from migrestore.nvml import Nvml

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / _TICK


def memory_kib(pid: int) -> Dict[str, int]:
    found: Dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


@dataclass
class Watch:
    proc: subprocess.Popen[bytes]
    ready_at: float
    cpu_at_ready: float
    period: float
    interval: float


def start(ws: Workspace, count: int, period: float) -> Watch:
    proc, _started = ws.start_daemon(count)
    ready = ws.notify.wait_ready(proc, 120.0)
    return Watch(proc, ready, cpu_seconds(proc.pid), period, ws.load_config().drift_interval)


def finish(watch: Watch) -> Dict[str, Any]:
    left = watch.ready_at + watch.period - time.perf_counter()
    if left > 0:
        time.sleep(left)
    if watch.proc.poll() is not None:
        raise HarnessError(f"the watching daemon exited early with {watch.proc.returncode}")
    elapsed = time.perf_counter() - watch.ready_at
    cpu = cpu_seconds(watch.proc.pid) - watch.cpu_at_ready
    memory = memory_kib(watch.proc.pid)
    code = stop(watch.proc)
    return {
        "period_s": elapsed,
        "interval_s": watch.interval,
        "ticks_in_period": int(elapsed // watch.interval),
        "cpu_at_ready_s": watch.cpu_at_ready,
        "cpu_s": cpu,
        "cpu_s_per_hour": cpu * 3600 / elapsed,
        "extrapolated": True,
        "rss_mib": memory.get("VmRSS", 0) / 1024,
        "hwm_mib": memory.get("VmHWM", 0) / 1024,
        "exit_code": code,
    }


def tick_cost(state: str, count: int, cfg: Config, directory: Path, ticks: int) -> Dict[str, Any]:
    """One watch tick in this process: on a copy of ``state``, and on an in-memory
    simulator of ``count`` GPUs with the same geometry."""
    copy = str(directory / "tick-state.json")
    shutil.copyfile(state, copy)
    out: Dict[str, Any] = {"ticks": ticks}
    logs.configure("json", "error")
    with Nvml(simulate=copy) as nv:
        nv.observe()  # the profile tables are read once per session, as the daemon did
        sim = nv.simulator
        assert sim is not None
        counter = latency.Recorder(sleep=False)
        sim.latency(1)
        sim.sleep = counter
        started = time.process_time()
        for _ in range(ticks):
            plan, _desired = engine.make_plan(cfg, nv.observe(), force=False)
            if not plan.converged:
                raise HarnessError("the idle tick found drift: the state file is not converged")
        out["cpu_ms_state_file"] = (time.process_time() - started) / ticks * 1000
        sim.latency(0)
        out["nvml_calls"] = counter.calls // ticks
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(ticks):
            engine.make_plan(cfg, nv.observe(), force=False)
        profile.disable()
        out["simulator_share"] = _share(profile, os.path.join("simulator", "core.py"), "_call")
    with Nvml(simulate=f"{MODEL}:{count}") as nv:
        engine.converge(nv, cfg, log=logs.get_logger())
        nv.observe()
        started = time.process_time()
        for _ in range(ticks):
            engine.make_plan(cfg, nv.observe(), force=False)
        out["cpu_ms_in_memory"] = (time.process_time() - started) / ticks * 1000
    return out


def _share(profile: cProfile.Profile, path_suffix: str, function: str) -> Optional[float]:
    stats = pstats.Stats(profile)
    table: Dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = 0.0
    inside = 0.0
    for (filename, _line, name), (_cc, _nc, tt, ct, _callers) in table.items():
        total += tt
        if filename.endswith(path_suffix) and name == function:
            inside += ct
    return inside / total if total else None
