"""``python3 -m bench.cabi``: the per-call cost of the simulated libnvidia-ml.so.1.

Rules:

1. A C program (``bench/cabi_calls.c``, built with the system compiler) loads the
   library with dlopen and times each call with CLOCK_MONOTONIC: a read
   (``nvmlDeviceGetMigMode``) and a change (``nvmlDeviceCreateGpuInstanceWithPlacement``
   and ``nvmlGpuInstanceDestroy`` of a 1g GI at a placement) on GPU 0 of an H100 80GB HBM3,
   after one untimed read and cycle (both sides: the tables load on first use).
2. The same calls made in-process on the fake library ``attach`` installs (ctypes
   arguments, no C library) give the simulator's own cost; the difference is the shim:
   the C-to-Python crossing, argument wrapping and handle mapping.
3. Both run on a state file (what clients share: lock, stat, atomic write with fsync on
   a change) and in memory (``MODEL`` spec: the rules alone; the difference there is the
   shim alone), with no latency; then the C
   library once more with the latency model of ``bench.latency`` for these functions, to
   show which part dominates a modelled call.
4. Every figure is per call, in microseconds: median and maximum. ``--json`` writes them
   with the machine; the report is Markdown on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from bench import latency, machine
from bench.stats import Summary, summarize
from migrestore.simulator import Simulator, cabi, cli

ROOT = Path(__file__).resolve().parents[1]
MODEL = "h100-80gb-hbm3"
PROFILE_1G, START, SIZE = 19, 3, 1  # 1g.10gb at slice 3
READ = "nvmlDeviceGetMigMode"
CREATE = "nvmlDeviceCreateGpuInstanceWithPlacement"
DESTROY = "nvmlGpuInstanceDestroy"

Samples = Dict[str, List[float]]  # "read" / "create" / "destroy" -> microseconds


class BenchError(Exception):
    """The benchmark could not run (no compiler, the library does not build)."""


def build(work: Path) -> Path:
    """``make sim-lib`` and the C timing program; returns the program."""
    make = shutil.which("make")
    cc = shutil.which("gcc") or shutil.which("cc")
    if not make or not cc:
        raise BenchError("bench.cabi needs make and a C compiler (gcc)")
    subprocess.run(
        [make, "-s", "-C", str(ROOT), "sim-lib", f"PYTHON={sys.executable}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    program = work / "cabi_calls"
    subprocess.run(
        [cc, "-std=c11", "-O2", "-Wall", f"-I{ROOT / 'csrc'}", "-o", str(program),
         str(ROOT / "bench" / "cabi_calls.c"), "-ldl"],
        check=True,
    )  # fmt: skip
    return program


def library() -> Path:
    return ROOT / "build" / "sim" / "libnvidia-ml.so.1"


def make_state(work: Path, name: str, latencies: Optional[Dict[str, int]] = None) -> str:
    """A state file with GPU 0's MIG mode on (and the given latencies)."""
    path = work / name
    with contextlib.redirect_stdout(io.StringIO()):
        made = cli.main(["init", str(path), MODEL, "--force"])
    if made != 0:
        raise BenchError(f"migrestore-sim init {path} failed")
    sim = Simulator(str(path))
    try:
        sim.set_mode(0, True)
        for function, us in (latencies or {}).items():
            sim.latency(us, function)
    finally:
        sim.close()
    return str(path)


def run_c(program: Path, spec: str, reads: int, changes: int) -> Samples:
    env = dict(os.environ, MIGRESTORE_SIMULATE=spec)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [str(program), str(library()), str(reads), str(changes), str(PROFILE_1G), str(START),
         str(SIZE)],
        env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"cabi_calls failed: {done.stderr.strip()}")
    samples: Samples = {"read": [], "create": [], "destroy": []}
    for line in done.stdout.splitlines():
        kind, ns = line.split()
        samples[kind].append(int(ns) / 1000)
    return samples


def run_python(spec: str, reads: int, changes: int) -> Samples:
    """The same calls on the fake library, in this process (rule 2)."""
    sim = Simulator(spec)
    try:
        lib = sim.library
        if sim.path is None:  # in memory: fresh GPUs
            sim.set_mode(0, True)
        assert lib.nvmlInit_v2() == 0
        dev = ctypes.c_void_p()
        assert lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(dev)) == 0
        cur, pend = ctypes.c_uint(), ctypes.c_uint()
        placement = cabi.Placement(START, SIZE)
        samples: Samples = {"read": [], "create": [], "destroy": []}
        clock = time.perf_counter_ns
        warm = ctypes.c_void_p()  # one untimed read and cycle, as the C program does
        assert lib.nvmlDeviceGetMigMode(dev, ctypes.byref(cur), ctypes.byref(pend)) == 0
        assert (
            lib.nvmlDeviceCreateGpuInstanceWithPlacement(
                dev, PROFILE_1G, ctypes.byref(placement), ctypes.byref(warm)
            )
            == 0
        )
        assert lib.nvmlGpuInstanceDestroy(warm) == 0
        for _ in range(reads):
            t0 = clock()
            code = lib.nvmlDeviceGetMigMode(dev, ctypes.byref(cur), ctypes.byref(pend))
            samples["read"].append((clock() - t0) / 1000)
            assert code == 0
        for _ in range(changes):
            gi = ctypes.c_void_p()
            t0 = clock()
            code = lib.nvmlDeviceCreateGpuInstanceWithPlacement(
                dev, PROFILE_1G, ctypes.byref(placement), ctypes.byref(gi)
            )
            t1 = clock()
            assert code == 0
            code = lib.nvmlGpuInstanceDestroy(gi)
            t2 = clock()
            assert code == 0
            samples["create"].append((t1 - t0) / 1000)
            samples["destroy"].append((t2 - t1) / 1000)
        return samples
    finally:
        sim.close()


def summaries(samples: Samples) -> Dict[str, Summary]:
    return {kind: summarize(values) for kind, values in samples.items() if values}


def run(reads: int, changes: int, model_changes: int, work: Path) -> Dict[str, Any]:
    program = build(work)
    model = latency.build()
    modelled = {f: model[f] for f in (READ, CREATE, DESTROY)}
    scenarios: Dict[str, Callable[[], Samples]] = {
        "C library, state file": lambda: run_c(program, make_state(work, "c.json"), reads, changes),
        "fake library in-process, state file": lambda: run_python(
            make_state(work, "py.json"), reads, changes
        ),
        "C library, in memory": lambda: run_c(program, MODEL, reads, changes),
        "fake library in-process, in memory": lambda: run_python(MODEL, reads, changes),
        "C library, state file, latency model": lambda: run_c(
            program, make_state(work, "model.json", modelled), max(reads // 10, 1), model_changes
        ),
    }
    results: Dict[str, Any] = {}
    for name, scenario in scenarios.items():
        results[name] = {k: s.to_json() for k, s in summaries(scenario()).items()}
    return {"latency_model_us": modelled, "scenarios": results}


def report(data: Dict[str, Any]) -> str:
    rows = [
        "| scenario | read median | read max | create GI median | create GI max "
        "| destroy GI median | destroy GI max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, kinds in data["scenarios"].items():
        cells = []
        for kind in ("read", "create", "destroy"):
            s = kinds.get(kind)
            cells += [f"{s['median']:.0f}", f"{s['max']:.0f}"] if s else ["-", "-"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    shim = {}
    for where in ("in memory", "state file"):
        c = data["scenarios"][f"C library, {where}"]
        py = data["scenarios"][f"fake library in-process, {where}"]
        shim[where] = ", ".join(
            f"{k} {c[k]['median'] - py[k]['median']:.0f} µs" for k in ("read", "create", "destroy")
        )
    model = data["latency_model_us"]
    lines = [
        "Per call, microseconds (CLOCK_MONOTONIC in the C program, perf_counter_ns in Python).",
        "",
        *rows,
        "",
        "Shim (C library minus fake library, medians): in memory "
        + shim["in memory"]
        + "; state file "
        + shim["state file"],
        "Latency model for these calls: "
        + ", ".join(f"{name} {us} µs" for name, us in model.items()),
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.cabi", description=__doc__.splitlines()[0])
    p.add_argument("--reads", type=int, default=2000, help="read calls per scenario")
    p.add_argument("--changes", type=int, default=200, help="create/destroy cycles per scenario")
    p.add_argument(
        "--model-changes", type=int, default=10, help="cycles with the latency model (slow)"
    )
    p.add_argument("--smoke", action="store_true", help="a few calls of each (for the tests)")
    p.add_argument("--json", metavar="PATH", help="write every figure and the machine as JSON")
    args = p.parse_args(argv)
    if args.smoke:
        args.reads, args.changes, args.model_changes = 10, 2, 1
    with tempfile.TemporaryDirectory(prefix="bench-cabi-") as tmp:
        boot_id = Path(tmp) / "boot_id"  # a boot id of our own: no reboot mid-run
        boot_id.write_text("bench\n")
        os.environ["MIGRESTORE_SIM_BOOT_ID_FILE"] = str(boot_id)
        try:
            data = run(args.reads, args.changes, args.model_changes, Path(tmp))
        except (BenchError, subprocess.CalledProcessError) as err:
            print(f"bench.cabi: {err}", file=sys.stderr)
            return 1
    data["machine"] = machine.describe()
    data["settings"] = {"reads": args.reads, "changes": args.changes,
                        "model_changes": args.model_changes}  # fmt: skip
    print(report(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
