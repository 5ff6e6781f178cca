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
3. To say what limits the figure, the daemon's own watch tick (``Daemon.check``) is also
   run in this process on a copy of the same state file: its CPU time, its NVML calls,
   and the share of it spent inside the simulator (cProfile); and on an in-memory
   simulator, which has no file to lock and stat on every call.
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
from migrestore.daemon import Daemon
from migrestore.model import Config
from migrestore.notify import Notifier

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
    ws.warm(count)
    proc, _started = ws.start_daemon(count)
    ready = ws.notify.wait_ready(proc, 120.0)
    ws.notify.drain()
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


def _daemon(cfg: Config, simulate: str) -> Daemon:
    """The daemon's own object, its NVML session open, as after READY."""
    logs.configure("json", "error")
    daemon = Daemon(
        cfg,
        config_path=cfg.path,
        select_name=None,
        simulate=simulate,
        log=logs.get_logger(),
        notifier=Notifier(logs.get_logger()),
    )
    daemon.nv = daemon.wait_for_driver()
    return daemon


def _ticks(daemon: Daemon, ticks: int) -> float:
    """CPU milliseconds per ``Daemon.check`` (one watch tick)."""
    started = time.process_time()
    for _ in range(ticks):
        daemon.check("interval")
    return (time.process_time() - started) / ticks * 1000


def tick_cost(state: str, count: int, cfg: Config, directory: Path, ticks: int) -> Dict[str, Any]:
    """The daemon's watch tick (``Daemon.check``) in this process: on a copy of
    ``state``, and on an in-memory simulator of ``count`` GPUs with the same geometry."""
    copy = str(directory / "tick-state.json")
    shutil.copyfile(state, copy)
    out: Dict[str, Any] = {"ticks": ticks}
    daemon = _daemon(cfg, copy)
    try:
        assert daemon.nv is not None and daemon.nv.backend.attached
        sim = daemon.nv.backend.simulator
        if not engine.decide(cfg, daemon.nv.observe(), force=False).converged:
            raise HarnessError("the idle tick would find drift: the state file is not converged")
        _ticks(daemon, 1)  # the session's one-time reads, as before READY
        out["cpu_ms_state_file"] = _ticks(daemon, ticks)
        counter = latency.Recorder(sleep=False)
        sim.latency(1)
        sim.sleep = counter
        _ticks(daemon, ticks)
        sim.latency(0)
        out["nvml_calls"] = counter.calls // ticks
        profile = cProfile.Profile()
        profile.enable()
        _ticks(daemon, ticks)
        profile.disable()
        out["simulator_share"] = _share(profile, os.path.join("simulator", "core.py"), "_call")
    finally:
        daemon.close()
    daemon = _daemon(cfg, f"{MODEL}:{count}")
    try:
        assert daemon.nv is not None
        engine.converge(daemon.nv, cfg, log=logs.get_logger())
        _ticks(daemon, 1)
        out["cpu_ms_in_memory"] = _ticks(daemon, ticks)
    finally:
        daemon.close()
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
