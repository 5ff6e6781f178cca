"""The benchmark harness runs end to end (``python3 -m bench --smoke``) and produces its
report, so it cannot rot between full runs.

Only the harness is checked: that every benchmark ran, that each figure comes with its
spread, that the report names every goal. Timings are never asserted (the smoke sizes
are tiny and the machine is shared); the NVML change counts are, because they are exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"n", "median", "min", "max", "q1", "q3"}


def _run_smoke(tmp_path: Path) -> Dict[str, Any]:
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    data: Dict[str, Any] = json.loads(out.read_text())
    data["_stdout"] = done.stdout
    return data


def _is_summary(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == SUMMARY_KEYS and value["n"] >= 1


def test_smoke_run_reports_every_benchmark(tmp_path: Path) -> None:
    data = _run_smoke(tmp_path)
    assert data["mode"] == "smoke"
    machine = data["machine"]
    for key in ("nproc", "cpu_model", "memory_mib", "python", "libraries"):
        assert key in machine
    results = data["results"]

    restart = results["restart"]
    assert _is_summary(restart["times"]["python -c pass"])
    assert _is_summary(restart["times"]["python -c 'import deps'"])
    assert _is_summary(restart["ratio_to_floor"]["apply, 1 GPU"])
    assert _is_summary(restart["ratio_to_floor"]["daemon to READY, 1 GPU"])
    # the CPU time of the commands run to their exit, and its ratio for apply (not the
    # daemon's: it is stopped after READY)
    assert _is_summary(restart["cpu"]["python -c 'import deps'"])
    assert _is_summary(restart["cpu_ratio_to_floor"]["apply, 1 GPU"])
    assert "daemon to READY, 1 GPU" not in restart["cpu_ratio_to_floor"]

    imports = results["imports"]
    for label in ("apply", "daemon"):
        names = [row["module"] for row in imports[label]["migrestore_modules"]]
        assert "migrestore.cli" in names and "migrestore.engine" in names

    cold = {s["layout"]: s for s in results["cold_restore"]}
    assert set(cold) == {"all-1g", "mixed"}
    gpus = data["settings"]["gpus"]
    # Hopper after reboot: MIG mode, then one GI and one CI per instance, on every GPU;
    # both tools make exactly these changes.
    assert cold["all-1g"]["changes"] == {"migrestore": gpus * 15, "baseline": gpus * 15}
    assert cold["mixed"]["changes"] == {"migrestore": gpus * 9, "baseline": gpus * 9}
    for scenario in cold.values():
        assert scenario["reached"] == {"migrestore": True, "baseline": True}
        assert _is_summary(scenario["speedup"])
        assert _is_summary(scenario["migrestore"]["wall"])
        assert _is_summary(scenario["baseline"]["wall"])

    unreachable = results["unreachable"]
    assert unreachable["migrestore"]["reached"] is True
    assert unreachable["baseline"]["reached"] is False

    small = results["small_change"]
    changed = small["changed_gpu"]
    # migrestore: destroy the CI and GI of the changed instance, create its GI and CI
    assert small["changes"]["migrestore"] == 4
    assert small["changes_by_gpu"]["migrestore"][changed] == 4
    assert sum(small["changes_by_gpu"]["migrestore"]) == 4
    # the baseline clears and rebuilds the GPU: 4 instances out, 4 in
    assert small["changes"]["baseline"] == 16
    assert small["mig_uuids_changed"] == {"migrestore": 1, "baseline": 4}
    assert small["only_changed_instance"] is True
    assert small["units_stopped"]["migrestore"] == [
        "nvidia-dcgm.service",
        "dcgm-exporter.service",
    ]

    solver = results["solver"]
    assert solver["plans"] > 0 and not solver["failures"]
    assert _is_summary(solver["time"])

    idle = results["idle"]
    assert idle["watch"]["exit_code"] == 0
    assert idle["watch"]["extrapolated"] is True
    assert idle["watch"]["rss_mib"] > 0
    assert idle["tick"]["nvml_calls"] > 0

    goal_ids = {g["id"] for g in data["goals"]}
    assert "solver:max" in goal_ids and "idle:cpu" in goal_ids and "idle:rss" in goal_ids
    assert "small:only-changed" in goal_ids
    assert all(g["met"] in (True, False) for g in data["goals"])

    text = data["_stdout"]
    for heading in (
        "## 1. Converged restart",
        "## 1b. Import time",
        "## 2. Cold restore",
        "## 3. Small change",
        "## 4. Solver",
        "## 5. Idle watch",
        "## Goals",
    ):
        assert heading in text
