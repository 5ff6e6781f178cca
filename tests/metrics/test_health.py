"""The pure verdict of `migrestore status --check`, by table: exit code and line."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from migrestore import health

APPLIED = {"result": "applied", "time": "2026-01-31T12:00:00Z", "message": "restored 2 GPUs"}
FAILED = {
    "result": "failed",
    "time": "2026-01-31T12:00:00Z",
    "message": "GPU 0 (GPU-a2df41b2-0ba1-1d44-e4c4-79338246060e): create GI 1g.10gb at 3:1 "
    "failed: NVML_ERROR_INSUFFICIENT_RESOURCES",
}


@pytest.mark.parametrize(
    ("facts", "code", "line"),
    [
        (
            {"state": APPLIED, "summary": "2 MIG GPUs, 6 MIG devices"},
            0,
            "OK: converged: 2 MIG GPUs, 6 MIG devices; applied 2026-01-31T12:00:00Z",
        ),
        ({"state": {"result": "converged", "time": "T"}}, 0, "OK: converged; converged T"),
        (
            {"state": FAILED},
            1,
            "PROBLEM: last pass failed at 2026-01-31T12:00:00Z: GPU 0 (GPU-a2df41b2-0ba1-1...",
        ),
        (
            {"state": APPLIED, "left_stopped": ["nvidia-dcgm.service", "dcgm-exporter.service"]},
            1,
            "PROBLEM: units left stopped: nvidia-dcgm.service, dcgm-exporter.service",
        ),
        (
            {"state": APPLIED, "drift": ["GPU 1: + create CI 1g.10gb at 0:1 in GI at 1"]},
            1,
            "PROBLEM: not converged: GPU 1: + create CI 1g.10gb at 0:1 in GI at 1",
        ),
        (
            {
                "state": APPLIED,
                "drift": ["GPU 0: ~ set MIG mode enabled", "GPU 1: ~ set MIG mode enabled"],
            },
            1,
            "PROBLEM: not converged (2 GPUs): GPU 0: ~ set MIG mode enabled",
        ),
        (
            {"state": APPLIED, "config_error": "/etc/migrestore.yaml:3: gpus: expected a list"},
            1,
            "PROBLEM: config: /etc/migrestore.yaml:3: gpus: expected a list",
        ),
        # a failed pass wins over units left stopped and drift
        ({"state": FAILED, "left_stopped": ["a.service"], "drift": ["x"]}, 1, None),
        ({"state": None}, 2, "UNKNOWN: no state file: migrestore has not run since boot"),
        (
            {"state_error": "state file /run/migrestore/state.json: not valid JSON"},
            2,
            "UNKNOWN: state file /run/migrestore/state.json: not valid JSON",
        ),
        # no driver wins over everything: nothing about the GPUs is known
        (
            {
                "driver_error": "NVIDIA driver unavailable (NVML_ERROR_LIBRARY_NOT_FOUND)",
                "state": FAILED,
            },
            2,
            "UNKNOWN: no NVIDIA driver: NVIDIA driver unavailable (NVML_ERROR_LIBRARY_NOT_...",
        ),
    ],
)
def test_verdicts(facts: Dict[str, Any], code: int, line: Any) -> None:
    verdict = health.decide(**facts)
    assert verdict.code == code
    if line is not None:
        assert verdict.line == line
    assert len(verdict.line) <= health.MAX_LINE
    assert "\n" not in verdict.line


@pytest.mark.parametrize("length", [0, 1, 70, 72, 73, 200, 5000])
def test_one_line_is_never_longer_than_80(length: int) -> None:
    reason = ("x" * length) + "\nsecond line"
    line = health.one_line(health.PROBLEM, reason)
    assert len(line) <= 80 and "\n" not in line
    assert line.startswith("PROBLEM: ")
    if len("PROBLEM: " + "x" * length + " second line") > 80:
        assert line.endswith("...")
