"""The pure metrics renderer and counters, by tables: state document in, .prom text out."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

import pytest

from migrestore import metrics

UUID0 = "GPU-a2df41b2-0ba1-1d44-e4c4-79338246060e"
UUID1 = "GPU-11111111-2222-3333-4444-555555555555"


def gpu(
    index: int,
    uuid: str,
    converged: Optional[bool],
    profiles: List[str],
    current: bool = True,
    pending: bool = True,
) -> Dict[str, Any]:
    return {
        "index": index,
        "uuid": uuid,
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "name": "NVIDIA H100 80GB HBM3",
        "architecture": "hopper",
        "mig": {"current": current, "pending": pending},
        "problem": None if converged is not False else "GPU 1: create CI 1g.10gb",
        "converged": converged,
        "instances": [
            {
                "gi_id": i + 1,
                "profile": p,
                "profile_id": 19,
                "placement": {"start": i, "size": 1},
                "compute": [],
            }
            for i, p in enumerate(profiles)
        ],
    }


def state(result: str = "applied", **extra: Any) -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "version": 1,
        "time": "2026-01-31T12:00:00Z",
        "result": result,
        "message": "restored 2 GPUs",
        "duration": 1.25,
        "config": "/etc/migrestore.yaml",
        "config_sha256": "ab" * 32,
        "selected": None,
        "driver": "580.95.05",
        "units": {"stopped": ["nvidia-dcgm.service"], "start_failed": []},
        "hooks_failed": [],
        "unmatched": [],
        "gpus": [
            gpu(0, UUID0, True, ["1g.10gb", "1g.10gb", "3g.40gb"]),
            gpu(1, UUID1, True, ["1g.10gb", "1g.10gb", "3g.40gb"]),
        ],
        "counters": {
            "since": "2026-01-31T11:00:00Z",
            "passes": {"applied": 1, "converged": 2},
            "drift_events": 1,
            "nvml_errors": {"NVML_ERROR_IN_USE": 2},
        },
    }
    doc.update(extra)
    return doc


def samples(text: str) -> Dict[str, float]:
    """``name{labels}`` -> value, labels as rendered."""
    out: Dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


G0 = f'gpu="0",uuid="{UUID0}"'
G1 = f'gpu="1",uuid="{UUID1}"'


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            state(),
            {
                "migrestore_converged": 1,
                'migrestore_last_pass_result{result="applied"}': 1,
                'migrestore_last_pass_result{result="failed"}': 0,
                'migrestore_last_pass_result{result="converged"}': 0,
                'migrestore_last_pass_result{result="drift"}': 0,
                "migrestore_last_pass_timestamp_seconds": 1769860800,
                "migrestore_last_check_timestamp_seconds": 1769860800,
                "migrestore_last_pass_duration_seconds": 1.25,
                "migrestore_units_stopped": 1,
                "migrestore_units_left_stopped": 0,
                "migrestore_hooks_failed": 0,
                f"migrestore_gpu_converged{{{G0}}}": 1,
                f"migrestore_gpu_converged{{{G1}}}": 1,
                f"migrestore_gpu_mig_mode_current{{{G0}}}": 1,
                f"migrestore_gpu_mig_mode_pending{{{G0}}}": 1,
                f'migrestore_gpu_instances{{{G0},profile="1g.10gb"}}': 2,
                f'migrestore_gpu_instances{{{G0},profile="3g.40gb"}}': 1,
                'migrestore_passes_total{result="applied"}': 1,
                'migrestore_passes_total{result="converged"}': 2,
                'migrestore_passes_total{result="failed"}': 0,
                "migrestore_drift_events_total": 1,
                'migrestore_nvml_errors_total{error="NVML_ERROR_IN_USE"}': 2,
                "migrestore_counters_reset_timestamp_seconds": 1769857200,
            },
        ),
        (
            # a failed pass: the GPU it failed on is not converged, the node is not either
            state(
                "failed",
                message="GPU 1: create GI failed: NVML_ERROR_INSUFFICIENT_RESOURCES",
                duration=0.5,
                gpus=[gpu(0, UUID0, True, ["1g.10gb"]), gpu(1, UUID1, False, [])],
                units={"stopped": [], "start_failed": ["dcgm.service", "nvsm.service"]},
            ),
            {
                "migrestore_converged": 0,
                'migrestore_last_pass_result{result="failed"}': 1,
                'migrestore_last_pass_result{result="applied"}': 0,
                f"migrestore_gpu_converged{{{G0}}}": 1,
                f"migrestore_gpu_converged{{{G1}}}": 0,
                "migrestore_units_left_stopped": 2,
                'migrestore_unit_left_stopped{unit="dcgm.service"}': 1,
                'migrestore_unit_left_stopped{unit="nvsm.service"}': 1,
                "migrestore_units_stopped": 0,
            },
        ),
        (
            # drift reported only: converged 0 even though no GPU says so
            state("drift", gpus=[gpu(0, UUID0, False, ["1g.10gb"], pending=False)]),
            {
                "migrestore_converged": 0,
                'migrestore_last_pass_result{result="drift"}': 1,
                f"migrestore_gpu_mig_mode_current{{{G0}}}": 1,
                f"migrestore_gpu_mig_mode_pending{{{G0}}}": 0,
            },
        ),
        (
            # a GPU no rule matches: described, but neither converged nor not
            state("converged", gpus=[gpu(0, UUID0, None, [], current=False, pending=False)]),
            {
                "migrestore_converged": 1,
                f'migrestore_gpu_info{{{G0},name="NVIDIA H100 80GB HBM3",pci_bus_id="00000000:18:00.0",managed="false"}}': 1,
                f"migrestore_gpu_mig_mode_current{{{G0}}}": 0,
            },
        ),
        (
            # no counters yet, no time: the families are there, at zero
            {"version": 1, "result": "converged"},
            {
                "migrestore_drift_events_total": 0,
                'migrestore_passes_total{result="failed"}': 0,
                "migrestore_last_pass_duration_seconds": 0,
                'migrestore_config_info{path="",sha256="",selected=""}': 1,
            },
        ),
    ],
)
def test_rendered_values(doc: Dict[str, Any], expected: Dict[str, float]) -> None:
    got = samples(metrics.render(doc))
    for key, value in expected.items():
        assert got.get(key) == pytest.approx(value), (key, got.get(key))


def test_unmanaged_gpu_has_no_converged_series() -> None:
    text = metrics.render(state("converged", gpus=[gpu(0, UUID0, None, [])]))
    assert "migrestore_gpu_converged{" not in text


def test_every_family_has_help_and_type_and_the_conventions() -> None:
    text = metrics.render(state(), version="0.1.0")
    names = metrics.families(text)
    assert len(names) == len(set(names))
    for name in names:
        assert name.startswith("migrestore_")
        assert f"# HELP {name} " in text
        kind = re.search(rf"^# TYPE {name} (\w+)$", text, re.M)
        assert kind is not None
        assert name.endswith("_total") == (kind.group(1) == "counter"), name
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert 'migrestore_build_info{version="0.1.0"} 1' in text


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
    ],
)
def test_label_values_are_escaped(value: str, rendered: str) -> None:
    text = metrics.render(state(config=value))
    assert f'migrestore_config_info{{path="{rendered}",' in text


COUNTED = {
    "since": "2026-01-31T11:00:00Z",
    "passes": {"applied": 1},
    "drift_events": 0,
    "nvml_errors": {},
}


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        # first document of the boot: since is its time
        (
            None,
            {"time": "T1", "result": "converged"},
            {"since": "T1", "passes": {"converged": 1}, "drift_events": 0, "nvml_errors": {}},
        ),
        # an apply after a daemon pass adds to its counters
        (
            {"result": "converged", "counters": COUNTED},
            {"time": "T2", "result": "applied"},
            {
                "since": "2026-01-31T11:00:00Z",
                "passes": {"applied": 2},
                "drift_events": 0,
                "nvml_errors": {},
            },
        ),
        # a restored drift: one pass, one drift event
        (
            {"result": "applied", "counters": COUNTED},
            {"time": "T2", "result": "applied", "drift": True},
            {
                "since": "2026-01-31T11:00:00Z",
                "passes": {"applied": 2},
                "drift_events": 1,
                "nvml_errors": {},
            },
        ),
        # a failed pass counts its NVML error by name
        (
            {"result": "applied", "counters": COUNTED},
            {"time": "T2", "result": "failed", "nvml_error": "NVML_ERROR_IN_USE"},
            {
                "since": "2026-01-31T11:00:00Z",
                "passes": {"applied": 1, "failed": 1},
                "drift_events": 0,
                "nvml_errors": {"NVML_ERROR_IN_USE": 1},
            },
        ),
        # a reported drift is one event, not one per tick that sees it again
        (
            {"result": "applied", "counters": COUNTED},
            {"time": "T2", "result": "drift", "message": "GPU 1: create CI"},
            {
                "since": "2026-01-31T11:00:00Z",
                "passes": {"applied": 1},
                "drift_events": 1,
                "nvml_errors": {},
            },
        ),
        (
            {
                "result": "drift",
                "message": "GPU 1: create CI",
                "counters": {**COUNTED, "drift_events": 1},
            },
            {"time": "T3", "result": "drift", "message": "GPU 1: create CI"},
            {
                "since": "2026-01-31T11:00:00Z",
                "passes": {"applied": 1},
                "drift_events": 1,
                "nvml_errors": {},
            },
        ),
        (
            {
                "result": "drift",
                "message": "GPU 1: create CI",
                "counters": {**COUNTED, "drift_events": 1},
            },
            {"time": "T3", "result": "drift", "message": "GPU 0: destroy GI"},
            {
                "since": "2026-01-31T11:00:00Z",
                "passes": {"applied": 1},
                "drift_events": 2,
                "nvml_errors": {},
            },
        ),
        # garbage in an old file is not trusted: negative, boolean and non-numbers are 0
        (
            {
                "counters": {
                    "since": 5,
                    "passes": {"applied": -3, "failed": True, 7: 1},
                    "drift_events": "x",
                    "nvml_errors": [],
                }
            },
            {"time": "T2", "result": "applied"},
            {
                "since": "T2",
                "passes": {"applied": 1, "failed": 0},
                "drift_events": 0,
                "nvml_errors": {},
            },
        ),
    ],
)
def test_counters(previous: Any, current: Dict[str, Any], expected: Dict[str, Any]) -> None:
    assert metrics.count(previous, current) == expected


def test_counters_only_grow_over_a_sequence_of_documents() -> None:
    previous: Optional[Dict[str, Any]] = None
    seen: List[Dict[str, float]] = []
    sequence = [
        {"result": "applied"},
        {"result": "drift", "message": "d"},
        {"result": "drift", "message": "d"},
        {"result": "failed", "nvml_error": "NVML_ERROR_UNKNOWN"},
        {"result": "applied", "drift": True},
        {"result": "converged"},
    ]
    for i, doc in enumerate(sequence):
        doc = {**doc, "time": f"2026-01-31T12:00:0{i}Z"}
        doc["counters"] = metrics.count(previous, doc)
        got = samples(metrics.render(doc))
        seen.append({k: v for k, v in got.items() if k.split("{")[0].endswith("_total")})
        previous = doc
    for before, after in zip(seen, seen[1:]):
        for key, value in before.items():
            assert after[key] >= value, key
    assert seen[-1]["migrestore_drift_events_total"] == 2
    assert seen[-1]['migrestore_nvml_errors_total{error="NVML_ERROR_UNKNOWN"}'] == 1
