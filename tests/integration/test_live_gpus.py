"""The command line on simulated GPUs migrestore bundles no table of (issue 11), with its
bundled tables unloadable: a cold boot restores native configs and mig-parted files on a
B200, an H20, an A100 PCIe and a GB200; on a R535 driver (profiles hidden while MIG is
off) a cold boot enables MIG first, then creates the GIs; a native config may use a
profile name only the live GPU offers (``1g.23gb`` on a B200) while ``validate --model``
still works offline; ``profiles --json`` of a simulated H200 is the real H200 probe."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from migrestore import tables
from migrestore.errors import EXIT_CONFIG, EXIT_OK
from tests.integration.cli_util import run, sim, write

PROBE = (
    Path(__file__).resolve().parents[1] / "data" / "reference" / "probes" / "h200-driver580.json"
)

# model -> (half-GPU GI profile split into two 1c CIs, small GI profile made twice)
LAYOUTS = {
    "b200-180gb": ("4g.90gb", "1g.23gb"),
    "h20-96gb": ("3g.48gb", "1g.12gb"),
    "a100-pcie-40gb": ("3g.20gb", "1g.5gb"),
    "gb200-186gb": ("3g.93gb", "1g.23gb"),
    "h100-80gb-hbm3": ("3g.40gb", "1g.10gb"),
}

NATIVE = """\
version: 1
clients: []
gpus:
  - match: all
    mig: true
    instances:
      - profile: {big}
        placement: 0
        compute: [1c.{big}, 1c.{big}]
      - {{profile: {small}, count: 2}}
"""

MIG_PARTED = """\
version: v1
mig-configs:
  mixed:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1c.{big}": 2
        "{small}": 2
"""


@pytest.fixture
def no_bundled_tables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every way into migrestore's bundled tables raises (what a GPU answers must do)."""

    def unloadable(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the bundled model tables were consulted")

    tables._load.cache_clear()
    tables.known_profile_names.cache_clear()
    for name in ("raw_document", "load_models", "model", "known_profile_names"):
        monkeypatch.setattr(tables, name, unloadable)
    yield
    tables._load.cache_clear()


def _config(tmp_path: Path, model: str, kind: str) -> List[str]:
    big, small = LAYOUTS[model]
    if kind == "native":
        return ["-c", write(tmp_path / "native.yaml", NATIVE.format(big=big, small=small))]
    text = MIG_PARTED.format(big=big, small=small)
    return ["-c", write(tmp_path / "mig-parted.yaml", text), "--select", "mixed"]


def _geometry(gpu: Dict[str, Any]) -> Counter[Tuple[str, Tuple[str, ...]]]:
    return Counter(
        (gi["profile"], tuple(sorted(ci["profile"] for ci in gi["compute"])))
        for gi in gpu["instances"]
    )


def _wanted(model: str) -> Counter[Tuple[str, Tuple[str, ...]]]:
    big, small = LAYOUTS[model]
    return Counter({(big, (f"1c.{big}",) * 2): 1, (small, (small,)): 2})


def _status(capsys: pytest.CaptureFixture[str], state: str) -> List[Dict[str, Any]]:
    gpus: List[Dict[str, Any]] = run(capsys, "--simulate", state, "status", "--json").json()["gpus"]
    return gpus


@pytest.mark.parametrize("kind", ["native", "mig-parted"])
@pytest.mark.parametrize("model", ["b200-180gb", "h20-96gb", "a100-pcie-40gb", "gb200-186gb"])
def test_a_cold_boot_restores_a_model_without_a_bundled_table(
    model: str,
    kind: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_bundled_tables: None,
) -> None:
    assert model not in tables.MODEL_NAMES
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, f"{model}:2").code == 0
    cfg = _config(tmp_path, model, kind)
    for boot in ("first", "cold"):
        result = run(capsys, "--simulate", state, *cfg, "apply", "--no-clients")
        assert result.code == EXIT_OK, (boot, result.err)
        for gpu in _status(capsys, state):
            assert gpu["mig"]["current"], boot
            assert _geometry(gpu) == _wanted(model), (boot, gpu["instances"])
        assert sim(capsys, "reboot", state).code == 0  # every GI is gone after it
        assert all(not gpu["instances"] for gpu in _status(capsys, state))
    again = run(capsys, "--simulate", state, *cfg, "apply", "--no-clients")
    assert again.code == EXIT_OK, again.err
    plan = run(capsys, "--simulate", state, *cfg, "plan", "--json").json()
    assert plan["converged"] is True and plan["deferred"] == []


@pytest.mark.parametrize("model", ["h100-80gb-hbm3", "h20-96gb"])
def test_r535_cold_boot_enables_mig_first_then_creates_the_gis(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_bundled_tables: None
) -> None:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, f"{model}:2@535").code == 0
    cfg = _config(tmp_path, model, "native")
    # R535 lists no GI profile while MIG is off: the plan is MIG mode, the rest deferred
    profiles = run(capsys, "--simulate", state, "profiles", "--json").json()["gpus"]
    assert all(gpu["profiles"] == [] for gpu in profiles)
    plan = run(capsys, "--simulate", state, *cfg, "plan", "--json").json()
    assert [a["action"] for a in plan["actions"]] == ["set_mode", "set_mode"]
    assert len(plan["deferred"]) == 2
    for boot in ("first", "cold"):
        result = run(capsys, "--simulate", state, *cfg, "apply", "--no-clients")
        assert result.code == EXIT_OK, (boot, result.err)
        events = [line.split()[0].split(">")[-1] for line in result.err.splitlines()]
        assert events.index("set_mode") < events.index("create_gi") < events.index("create_ci")
        for gpu in _status(capsys, state):
            assert gpu["mig"]["current"]
            assert _geometry(gpu) == _wanted(model), (boot, gpu["instances"])
        assert sim(capsys, "reboot", state).code == 0  # Hopper: MIG off again


def test_a_name_only_the_live_gpu_offers_is_valid_and_validate_model_works_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1g.23gb is a B200 profile: no bundled table lists it
    assert "1g.23gb" not in tables.known_profile_names()
    cfg = _config(tmp_path, "b200-180gb", "native")
    live = run(capsys, "--simulate", "b200-180gb:1", *cfg, "validate")
    assert live.code == EXIT_OK, live.err
    assert "valid and feasible on 1 GPU(s)" in live.out
    # Offline: the bundled table where migrestore ships one, else the simulator's
    offline = run(capsys, *cfg, "validate", "--model", "b200-180gb")
    assert offline.code == EXIT_OK, offline.err
    assert "valid for b200-180gb" in offline.out
    assert "feasible: 4g.90gb@0:4, 1g.23gb@4:1, 1g.23gb@5:1" in offline.out
    (tmp_path / "h100").mkdir()
    h100 = _config(tmp_path / "h100", "h100-80gb-hbm3", "native")
    assert run(capsys, *h100, "validate", "--model", "h100-80gb-hbm3").code == EXIT_OK
    # the same B200 file on a model that does not offer its names: exit 78, what it offers
    wrong = run(capsys, *cfg, "validate", "--model", "h100-80gb-hbm3")
    assert wrong.code == EXIT_CONFIG
    assert "model h100-80gb-hbm3 (bundled table) offers no GPU instance profile" in wrong.err
    on_h100 = run(capsys, "--simulate", "h100-80gb-hbm3:1", *cfg, "validate")
    assert on_h100.code == EXIT_CONFIG
    assert "GPU 0" in on_h100.err and "3g.40gb" in on_h100.err


def test_profiles_of_a_simulated_h200_are_the_real_probe(
    capsys: pytest.CaptureFixture[str], no_bundled_tables: None
) -> None:
    with PROBE.open(encoding="utf-8") as handle:
        real = json.load(handle)["devices"][0]
    (gpu,) = run(capsys, "--simulate", "h200-141gb:1", "profiles", "--json").json()["gpus"]
    assert gpu["name"] == real["name"]
    read = {p["name"]: p for p in gpu["profiles"]}
    rows = [row for row in real["gi_profiles"] if row["err"] is None]
    assert sorted(read) == sorted(row["name"].split(" ", 1)[1] for row in rows)
    for row in rows:
        mine = read[row["name"].split(" ", 1)[1]]
        assert (mine["id"], mine["slices"], mine["memory_mib"], mine["max"]) == (
            row["id"],
            row["sliceCount"],
            row["memorySizeMB"],
            row["instanceCount"],
        ), row["name"]
        assert (mine["sms"], mine["copy_engines"], mine["decoders"], mine["ofa"]) == (
            row["multiprocessorCount"],
            row["copyEngineCount"],
            row["decoderCount"],
            row["ofaCount"],
        ), row["name"]
        assert mine["placements"] == row["placements"], row["name"]
        # MIG off, no GI: the CI profiles are not read, and not made up from a table
        assert mine["compute"] == [] and mine["compute_read"] is False
    # the corrected H200 values (issue 11): 33280, 71424, 143360 MiB
    assert read["2g.35gb"]["memory_mib"] == read["1g.35gb"]["memory_mib"] == 33280
    assert read["3g.71gb"]["memory_mib"] == read["4g.71gb"]["memory_mib"] == 71424
    assert read["7g.141gb"]["memory_mib"] == 143360
