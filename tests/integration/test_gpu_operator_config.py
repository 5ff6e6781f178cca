"""NVIDIA's GPU Operator default mig-parted config, every label on every simulated model
whose PCI device id the file names: each applies to the per-GPU geometry mig-parted
would build (its last matching entry's mig-devices, as a multiset of profile names), or
is refused before any change for a reason docs/CONFIG.md lists (the GPU does not offer
a profile; the layout does not fit on it)."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml

from migrestore import backend, config, planner
from migrestore.errors import EXIT_CONFIG, EXIT_OK, ConfigError, InfeasibleError
from migrestore.model import GpuState
from migrestore.nvml import Nvml
from tests.integration.cli_util import run, sim

DATA = Path(__file__).resolve().parents[1] / "data" / "mig-parted"
FILE = DATA / "gpu-operator-default-mig-parted-config.yaml"
TEXT = FILE.read_text()
LABELS: Dict[str, List[Dict[str, Any]]] = yaml.safe_load(TEXT)["mig-configs"]
NAMED_IDS = {int(x, 16) for x in re.findall(r'"(0x[0-9A-Fa-f]{8})"', TEXT)}


def _models() -> List[Tuple[str, int]]:
    import io
    from contextlib import redirect_stdout

    from migrestore.simulator import cli as simcli

    out = io.StringIO()
    with redirect_stdout(out):
        assert simcli.main(["models", "--json"]) == 0
    rows = json.loads(out.getvalue())["models"]
    # a simulated GPU of a model reports the first of the model's device ids
    return [(r["name"], int(r["pci_device_ids"][0], 16)) for r in rows]


MODELS = [(name, device) for name, device in _models() if device in NAMED_IDS]


def _winner(entries: List[Dict[str, Any]], device_id: int) -> Optional[Dict[str, Any]]:
    """mig-parted's last matching entry for a single GPU 0 of this device id."""
    found = None
    for entry in entries:
        filt = entry.get("device-filter")
        ids = [filt] if isinstance(filt, str) else list(filt or [])
        ids = [i for i in ids if i != ""]
        if ids and not any(int(i, 16) == device_id for i in ids):
            continue
        devices = entry["devices"]
        if devices != "all" and 0 not in devices:
            continue
        found = entry
    return found


def _multiset(gpu: Dict[str, Any]) -> Counter[str]:
    """A GPU's geometry as mig-parted counts it: a GI with its one full CI by the GI
    profile's name, otherwise each CI by its own name."""
    out: Counter[str] = Counter()
    for gi in gpu["instances"]:
        cis = [ci["profile"] for ci in gi["compute"]]
        if cis == [gi["profile"]]:
            out[gi["profile"]] += 1
        else:
            out.update(cis)
    return out


@functools.cache
def _parsed(label: str) -> config.Config:
    """The file as ``--select label`` reads it (parsing is pure: once per label)."""
    return config.parse(TEXT, str(FILE), label)


@pytest.fixture(scope="module")
def observed() -> Dict[str, GpuState]:
    states = {}
    for model, _ in MODELS:
        with Nvml(backend.choose(f"{model}:1")) as nv:
            states[model] = nv.observe()[0]
    return states


def test_the_file_names_simulated_models() -> None:
    assert len(LABELS) == 81
    assert len(MODELS) >= 8, MODELS


@pytest.mark.parametrize(("model", "device_id"), MODELS, ids=[m for m, _ in MODELS])
def test_every_label_applies_as_mig_parted_would_or_is_refused_for_a_listed_reason(
    model: str,
    device_id: int,
    observed: Dict[str, GpuState],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gpu = observed[model]
    applied = refused = 0
    seen: List[Any] = []  # geometries applied already on this model (one apply each)
    for label, entries in LABELS.items():
        winner = _winner(entries, device_id)
        cfg = _parsed(label)
        try:
            desired = config.resolve(cfg, (gpu,))
            planner.plan(desired, (gpu,))
        except ConfigError as exc:
            # refused before any change: the GPU does not offer a profile, or holds fewer
            assert winner is not None and winner["mig-enabled"], (label, str(exc))
            assert "offers no" in exc.problem or "holds at most" in exc.problem, str(exc)
            assert f"GPU 0 ({gpu.uuid})" in exc.problem
            refused += 1
            continue
        except InfeasibleError as exc:
            assert winner is not None and winner["mig-enabled"], (label, str(exc))
            refused += 1
            continue
        if winner is None:
            assert desired == {}, label
            continue
        key = (winner["mig-enabled"], sorted((winner.get("mig-devices") or {}).items()))
        if key in seen:
            continue
        seen.append(key)
        state = str(tmp_path / f"{label}.json")
        assert sim(capsys, "init", state, f"{model}:1").code == 0
        result = run(capsys, "--simulate", state, "-c", str(FILE), "--select", label, "apply")
        assert result.code == EXIT_OK, (label, result.err)
        status = run(capsys, "--simulate", state, "status", "--json").json()["gpus"][0]
        assert status["mig"]["current"] is bool(winner["mig-enabled"]), label
        wanted = Counter({k: v for k, v in (winner.get("mig-devices") or {}).items() if v})
        assert _multiset(status) == wanted, label
        applied += 1
    assert applied > 0


def test_a_refused_label_exits_78_before_any_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "h100-80gb-hbm3:1").code == 0
    before = run(capsys, "--simulate", state, "status", "--json").json()
    result = run(capsys, "--simulate", state, "-c", str(FILE), "--select", "all-1g.23gb", "apply")
    assert result.code == EXIT_CONFIG
    assert "offers no GPU instance profile '1g.23gb' (it offers: 1g.10gb," in result.err
    after = run(capsys, "--simulate", state, "status", "--json").json()
    assert after["gpus"] == before["gpus"]
