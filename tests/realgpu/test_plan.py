"""``plan``, ``validate``, ``export`` and ``apply --dry-run`` on the real GPUs: a config
that matches them has nothing to do; one that differs lists actions and performs none;
the exported file validates again (docs/REALGPU.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from tests.realgpu.support import (
    Target,
    Timings,
    differing_config,
    geometry,
    matching_config,
)


@dataclass
class Configs:
    status: Dict[str, Any]
    export: str
    matching: Path
    notes: List[str]
    differing: Optional[Path]
    changes: Optional[int]
    geometry: Any


@pytest.fixture(scope="module")
def configs(target: Target) -> Iterator[Configs]:
    status = target.run("status", "--json").json()
    profiles = target.run("profiles", "--json").json()
    exported = target.run("export")
    assert exported.returncode == 0, exported.stderr
    matching_text, notes = matching_config(exported.stdout, status)
    matching = target.tmp / "matching.yaml"
    matching.write_text(matching_text)
    differing_text = differing_config(status, profiles)
    differing = None
    if differing_text is not None:
        differing = target.tmp / "differing.yaml"
        differing.write_text(differing_text)
    found = Configs(
        status=status,
        export=exported.stdout,
        matching=matching,
        notes=notes,
        differing=differing,
        changes=target.changes(),
        geometry=geometry(target.direct()),
    )
    yield found
    # whatever ran in this module: the GPUs are as they were, no unit was touched
    assert target.systemctl_calls() == []
    assert target.changes() == found.changes


def _unchanged(target: Target, configs: Configs) -> None:
    assert target.changes() == configs.changes
    assert target.systemctl_calls() == []
    now = geometry(target.direct())
    if now != configs.geometry:
        pytest.skip("the GPUs' MIG geometry changed during the test (another user)")


def test_export_is_stable_and_validates_again(target: Target, configs: Configs) -> None:
    again = target.run("export")
    assert again.returncode == 0, again.stderr
    assert again.stdout == configs.export
    exported = target.tmp / "exported.yaml"
    exported.write_text(configs.export)
    done = target.run("-c", str(exported), "validate")
    assert done.returncode == 0, done.stderr
    count = len(configs.status["gpus"])
    assert f"valid and feasible on {count} GPU(s)" in done.stdout
    if not configs.notes:
        assert done.stdout.rstrip().endswith("converged"), done.stdout
    _unchanged(target, configs)


def test_matching_config_has_nothing_to_do(
    target: Target, configs: Configs, timings: Timings
) -> None:
    cfg = str(configs.matching)
    plan = target.run("-c", cfg, "plan")
    timings.add("plan", plan.seconds)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.rstrip().endswith("nothing to do: the GPUs match the config"), plan.stdout
    data = target.run("-c", cfg, "plan", "--json").json()
    assert data["converged"] is True and data["actions"] == [], data
    done = target.run("-c", cfg, "validate")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("converged"), done.stdout
    dry = target.run("-c", cfg, "apply", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.rstrip().endswith("nothing to do: the GPUs match the config"), dry.stdout
    _unchanged(target, configs)


def test_differing_config_lists_actions_and_performs_none(target: Target, configs: Configs) -> None:
    if configs.differing is None:
        pytest.skip("no MIG-capable GPU here: no config can differ from the GPUs")
    cfg = str(configs.differing)
    data = target.run("-c", cfg, "plan", "--json", "--force").json()
    assert data["converged"] is False and data["actions"], data
    uuids = {g["uuid"] for g in configs.status["gpus"] if g["mig"]["capable"]}
    assert {a["uuid"] for a in data["actions"]} <= uuids
    count = len(data["actions"])
    text = target.run("-c", cfg, "plan", "--force")
    assert text.returncode == 0, text.stderr
    listed = [line for line in text.stdout.splitlines() if re.match(r"^[-+~] ", line)]
    assert listed == [_line(a) for a in data["actions"]]
    assert f"{count} change(s) planned" in text.stdout
    done = target.run("-c", cfg, "validate")
    assert done.returncode == 0, done.stderr
    assert f"{count} change(s) to apply" in done.stdout, done.stdout
    dry = target.run("-c", cfg, "apply", "--dry-run", "--force")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == text.stdout
    _unchanged(target, configs)


def _line(action: Dict[str, Any]) -> str:
    kind = action["action"]
    sign = "-" if kind.startswith("destroy") else "~" if kind in ("set_mode", "reset") else "+"
    return f"{sign} {action['description']}"


def test_the_plans_are_json(target: Target, configs: Configs) -> None:
    """``plan --json`` of both configs parses and names only GPUs of this machine."""
    for cfg in filter(None, (configs.matching, configs.differing)):
        run = target.run("-c", str(cfg), "plan", "--json", "--force")
        data = run.json()
        assert set(data) >= {"converged", "actions", "unmatched", "notes"}
        json.dumps(data)
