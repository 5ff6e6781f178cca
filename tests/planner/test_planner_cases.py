"""Planner cases as data, in the product's own formats (one directory per case under
``tests/planner/cases/``), run by one parametrised test:

- ``observed.json``: the GPUs as ``migrestore status --json`` prints them. The profile
  table of each GPU is the bundled one of its model (found by PCI device ID and name);
- ``config.yaml``: the desired geometry, a config file as ``apply`` reads it;
- ``plan.txt``: what ``migrestore plan`` prints for them, or ``error.txt``: the exit
  code and the one-line error it prints instead (``78 <message>``);
- ``force`` (optional, empty): plan as ``migrestore plan --force`` does.

Every plan is also applied to a pure model of each GPU that checks each action the way
the driver would (``tests/planner/_support.Simulated``), and the result must plan to
nothing: the case's plan converges. To add a case from a bug report, copy the node's
``status --json`` and its config into a new directory and write the expected plan;
``MIGRESTORE_WRITE_CASES=1`` writes ``plan.txt``/``error.txt`` from the current planner
for review instead of comparing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from migrestore import config, engine, render, tables
from migrestore.errors import MigrestoreError
from migrestore.model import (
    ComputeInstance,
    GpuIdentity,
    GpuInstance,
    GpuState,
    Placement,
)
from tests.planner._support import apply_plan

CASES = Path(__file__).parent / "cases"
WRITE = os.environ.get("MIGRESTORE_WRITE_CASES") == "1"


def _placement(pair: List[int]) -> Placement:
    start, size = pair
    return Placement(int(start), int(size))


def _table(gpu: Dict[str, Any]) -> tables.ModelTable:
    device_id = int(gpu["pci_device_id"], 16)
    for table in tables.load_models().values():
        if table.pci_device_id == device_id and table.nvml_name == gpu["name"]:
            return table
    raise AssertionError(f"no bundled model {gpu['name']} ({gpu['pci_device_id']})")


def observed_from_status(data: Dict[str, Any]) -> Tuple[GpuState, ...]:
    """``migrestore status --json`` back into observed GPUs."""
    gpus = []
    for gpu in data["gpus"]:
        mig = gpu["mig"]
        instances = tuple(
            GpuInstance(
                gi["gi_id"],
                gi["profile_id"],
                gi["profile"],
                _placement(gi["placement"]),
                tuple(
                    ComputeInstance(
                        ci["ci_id"],
                        ci["profile_id"],
                        ci["profile"],
                        _placement(ci["placement"]),
                        ci["uuid"],
                        tuple(ci["pids"]),
                        ci.get("pids_error") or "",
                    )
                    for ci in gi["compute"]
                ),
            )
            for gi in gpu["instances"]
        )
        identity = GpuIdentity(
            index=gpu["index"],
            uuid=gpu["uuid"],
            pci_bus_id=gpu["pci_bus_id"],
            pci_device_id=int(gpu["pci_device_id"], 16),
            name=gpu["name"],
            architecture=gpu["architecture"],
            mig_capable=mig["capable"],
            vgpu_host=gpu.get("vgpu_host", False),
        )
        profiles = _table(gpu).profiles if mig["capable"] else ()
        gpus.append(
            GpuState(
                identity,
                mig["current"],
                mig["pending"],
                profiles,
                tuple(sorted(instances, key=lambda g: g.placement.start)),
            )
        )
    return tuple(gpus)


def _cases() -> List[Any]:
    return [pytest.param(path, id=path.name) for path in sorted(CASES.iterdir()) if path.is_dir()]


def test_there_are_cases() -> None:
    assert len(_cases()) >= 20


@pytest.mark.parametrize("case", _cases())
def test_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(case)  # the config's file:line reads "config.yaml:N"
    observed = observed_from_status(json.loads((case / "observed.json").read_text()))
    force = (case / "force").exists()
    try:
        cfg = config.parse((case / "config.yaml").read_text(), "config.yaml")
        decision = engine.decide(cfg, observed, force=force)
    except MigrestoreError as exc:
        got, name = f"{exc.exit_code} {exc}\n", "error.txt"
    else:
        got, name = render.plan_text(decision.plan), "plan.txt"
    expected = case / name
    if WRITE:
        for stale in ("plan.txt", "error.txt"):
            (case / stale).unlink(missing_ok=True)
        expected.write_text(got)
    assert expected.exists(), f"{case.name}: planned {name}, but the case expects the other"
    assert got == expected.read_text()
    if name == "error.txt":
        return
    # The plan is valid action by action, and what it leaves plans to nothing.
    by_uuid = {g.gpu: g for g in decision.plan.gpus}
    after = tuple(
        apply_plan(gpu, by_uuid[gpu.uuid].actions, force=force) if gpu.uuid in by_uuid else gpu
        for gpu in observed
    )
    assert engine.decide(cfg, after, force=True).converged
