"""bench/cabi.py (the per-call cost of the simulated library) runs and reports every
scenario."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cabi.conftest import ROOT


def test_the_per_call_benchmark_runs(tmp_path: Path, simlib: Path) -> None:
    out = tmp_path / "cabi.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.cabi", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert set(data["scenarios"]) == {
        "C library, state file",
        "fake library in-process, state file",
        "C library, in memory",
        "fake library in-process, in memory",
        "C library, state file, latency model",
    }
    for kinds in data["scenarios"].values():
        assert set(kinds) == {"read", "create", "destroy"}
        assert all(s["median"] > 0 and s["max"] >= s["median"] for s in kinds.values())
    # with the model, a modelled call costs at least its latency
    model = data["scenarios"]["C library, state file, latency model"]
    assert model["read"]["median"] >= data["latency_model_us"]["nvmlDeviceGetMigMode"]
    assert "| C library, in memory |" in done.stdout
