"""``status --json`` and ``profiles --json`` agree with pynvml read directly, and the
profile table migrestore reads equals the simulator's table for that model, field by
field (docs/REALGPU.md)."""

from __future__ import annotations

import itertools
from typing import Any, Dict, List

import pytest

from tests.realgpu.support import (
    CI_READ_FIELDS,
    Target,
    Timings,
    diff_fields,
    diff_profiles,
    geometry,
    simulated_model,
    simulator_profiles,
)

IDENTITY = ("index", "uuid", "pci_bus_id", "pci_device_id", "name", "mig")


def _stable_read(target: Target, *args: str) -> Any:
    """Direct read, migrestore read, direct read; a skip when another user changed the
    geometry meanwhile (the tier runs on shared GPUs)."""
    before = target.direct()
    run = target.run(*args)
    after = target.direct()
    if geometry(before) != geometry(after):
        pytest.skip("the GPUs' MIG geometry changed while the tier read it (another user)")
    return before, run


def _instances(gpu: Dict[str, Any]) -> List[Any]:
    return [
        {
            "gi_id": gi["gi_id"],
            "profile_id": gi["profile_id"],
            "placement": gi["placement"],
            "compute": [
                {k: ci[k] for k in ("ci_id", "profile_id", "placement", "uuid")}
                for ci in gi["compute"]
            ],
        }
        for gi in gpu["instances"]
    ]


def test_status_json_agrees_with_pynvml(target: Target, timings: Timings) -> None:
    direct, run = _stable_read(target, "status", "--json")
    timings.add("status", run.seconds)
    doc = run.json()
    lines = diff_fields("driver", doc, direct, ("driver_version",), ("migrestore", "pynvml"))
    for mine, theirs in itertools.zip_longest(doc["gpus"], direct["gpus"], fillvalue={}):
        label = f"GPU {mine.get('index', theirs.get('index'))}"
        lines += diff_fields(label, mine, theirs, IDENTITY, ("migrestore", "pynvml"))
        if mine and theirs:
            lines += diff_fields(
                label,
                {"instances": _instances(mine)},
                {"instances": theirs["instances"]},
                ("instances",),
                ("migrestore", "pynvml"),
            )
    assert not lines, "status --json and pynvml differ:\n" + "\n".join(lines)


def test_status_text_runs(target: Target) -> None:
    run = target.run("status")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def test_profiles_json_agrees_with_pynvml(target: Target) -> None:
    direct, run = _stable_read(target, "profiles", "--json")
    doc = run.json()
    assert target.run("profiles").returncode == 0
    lines: List[str] = []
    for mine, theirs in itertools.zip_longest(doc["gpus"], direct["gpus"], fillvalue={}):
        label = f"GPU {mine.get('index', theirs.get('index'))} {mine.get('name', '')}"
        lines += diff_fields(
            label,
            {"uuid": mine.get("uuid"), "mig_capable": mine.get("mig_capable")},
            {"uuid": theirs.get("uuid"), "mig_capable": theirs.get("mig", {}).get("capable")},
            ("uuid", "mig_capable"),
            ("migrestore", "pynvml"),
        )
        read = theirs.get("ci_profiles", {})
        table = [{**p, "compute": read.get(p["id"], [])} for p in theirs.get("profiles", [])]
        lines += diff_profiles(
            label,
            mine.get("profiles", []),
            table,
            ("migrestore", "pynvml"),
            ci_of=tuple(read),
            ci_fields=CI_READ_FIELDS,
        )
    assert not lines, "profiles --json and pynvml differ:\n" + "\n".join(lines)


def test_profile_table_equals_the_simulators(target: Target, timings: Timings) -> None:
    """Every GPU of a simulated model: GI profiles, and the CI profiles of the GI
    profiles that have a GI on the GPU (read from it), against the simulator's."""
    profiles = target.run("profiles", "--json").json()
    status = target.run("status", "--json").json()
    lines: List[str] = []
    compared, not_simulated = [], []
    references: Dict[Any, Any] = {}
    for gpu, state in zip(profiles["gpus"], status["gpus"]):
        if not gpu["mig_capable"]:
            continue
        model = simulated_model(gpu["name"])
        if model is None:
            not_simulated.append(f"GPU {gpu['index']} {gpu['name']}")
            continue
        with_gi = tuple(sorted({gi["profile_id"] for gi in state["instances"]}))
        key = (model, state["mig"]["current"], with_gi)
        if key not in references:
            references[key] = simulator_profiles(
                model, state["mig"]["current"], list(with_gi), target.tmp / "reference"
            )
        ref = references[key]
        label = f"GPU {gpu['index']} {gpu['name']} ({model})"
        lines += diff_fields(
            label, state, ref["status"], ("pci_device_id", "architecture"), ("GPU", "simulator")
        )
        lines += diff_profiles(
            label, gpu["profiles"], ref["profiles"]["profiles"], ("GPU", "simulator"), with_gi
        )
        compared.append(label)
    timings.facts["table_differences"] = lines
    timings.facts["tables_not_simulated"] = not_simulated
    if not compared:
        pytest.skip(f"no GPU of a simulated model here: {', '.join(not_simulated) or 'none'}")
    assert not lines, (
        f"the profile table read on {len(compared)} GPU(s) differs from the simulator's "
        f"({len(lines)} field(s)):\n" + "\n".join(lines)
    )
