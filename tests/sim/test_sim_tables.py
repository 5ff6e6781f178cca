"""The model tables: the simulator's own (every simulated model, with provenance) and the
subset migrestore bundles; their agreement with the reference research and the real H100
and H200 probes; the rules that fill what no source gives; and the generator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Dict

import pytest

from migrestore import tables
from migrestore.errors import MigrestoreError
from migrestore.model import Placement
from migrestore.simulator import models

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "data" / "reference"
PROBES = {
    "h100-80gb-hbm3": REFERENCE_DIR / "probes" / "h100-80gb-hbm3-driver580.json",
    "h200-141gb": REFERENCE_DIR / "probes" / "h200-driver580.json",
}
ROOT = Path(__file__).resolve().parents[2]


GI_FIELDS = (
    "index",
    "id",
    "slices",
    "memory_mib",
    "sms",
    "max",
    "copy_engines",
    "decoders",
    "encoders",
    "jpeg",
    "ofa",
)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_models", ROOT / "tools" / "gen_models.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def _sim_row(name: str) -> Dict[str, Any]:
    row: Dict[str, Any] = models.document()["models"][name]
    return row


def _probe(name: str) -> Dict[str, Any]:
    with PROBES[name].open(encoding="utf-8") as handle:
        data: Dict[str, Any] = json.load(handle)
    return data


def test_bundled_models_are_a_subset_of_the_simulated_ones() -> None:
    assert tuple(tables.load_models()) == tables.MODEL_NAMES
    assert len(tables.MODEL_NAMES) == 10
    sims = models.all_models()
    assert set(tables.MODEL_NAMES) < set(sims)
    assert [n for n, m in sims.items() if m.bundled] == [n for n in sims if n in tables.MODEL_NAMES]
    # A bundled table is the simulated model's table, value for value.
    for name in tables.MODEL_NAMES:
        assert tables.model(name) == sims[name].table
    only_sim = [n for n, m in sims.items() if not m.bundled]
    for wanted in (
        "a100-pcie-40gb",
        "a100-pcie-80gb",
        "h200-nvl-141gb",
        "h20-96gb",
        "h800-80gb",
        "h800-pcie-80gb",
        "h800-nvl-94gb",
        "a800-sxm4-80gb",
        "a800-pcie-80gb",
        "a800-pcie-40gb",
        "b200-180gb",
        "gb200-186gb",
        "b300-288gb",
        "gb300-288gb",
        "rtx-pro-6000-blackwell-ws",
        "rtx-pro-6000-blackwell-maxq",
        "rtx-pro-5000-blackwell",
        "rtx-pro-4500-blackwell",
    ):
        assert wanted in only_sim


@pytest.mark.parametrize("name", models.model_names())
def test_table_is_self_consistent(name: str) -> None:
    table = models.table(name)
    assert table.name == name
    assert table.arch_code == {"ampere": 7, "hopper": 9, "blackwell": 10}[table.architecture]
    indices = [p.index for p in table.profiles]
    ids = [p.id for p in table.profiles]
    assert len(set(indices)) == len(indices) and len(set(ids)) == len(ids)
    assert set(indices) | set(table.not_supported_indices) == set(range(table.invalid_from_index))
    assert not set(indices) & set(table.not_supported_indices)
    assert table.memory_mib >= max(p.memory_mib for p in table.profiles)
    for gi in table.profiles:
        assert gi.placements, gi.name
        assert all(p.end <= table.memory_slices for p in gi.placements)
        assert gi.slices <= table.compute_slices
        assert 1 <= gi.max <= len(gi.placements)
        assert gi.memory_mib > 0 and gi.sms > 0
        defaults = [ci for ci in gi.ci_profiles if ci.default]
        assert len(defaults) == 1, gi.name
        assert defaults[0].name == gi.name
        assert defaults[0].placements == (Placement(0, gi.slices),)
        assert len({ci.id for ci in gi.ci_profiles}) == len(gi.ci_profiles)
        for ci in gi.ci_profiles:
            assert all(p.end <= gi.slices for p in ci.placements), ci.name
            assert ci.max == len(ci.placements)
            assert ci.name == gi.name or ci.name == f"{ci.slices}c.{gi.name}"
    model = models.get(name)
    assert model.pci_device_ids and model.table.pci_device_id == model.pci_device_ids[0]
    assert model.min_branch in models.BRANCHES


@pytest.mark.parametrize("name", models.model_names())
def test_every_field_names_its_provenance(name: str) -> None:
    rules = models.document()["rules"]
    row = _sim_row(name)
    for key in ("nvml_name", "pci_device_ids", "pci_subsystem_id", "memory_mib", "min_branch"):
        assert key in row["provenance"]
    for gi in row["gi_profiles"]:
        assert set(gi["provenance"]) == {*GI_FIELDS, "name", "placements"}
        for ci in gi["ci_profiles"]:
            assert set(ci["provenance"]) == {
                "id",
                "name",
                "slices",
                "max",
                "sms",
                "placements",
                "default",
            }
    for prov in _all_provenance(row):
        if prov["kind"] == "inferred":
            assert prov["rule"] in rules
        else:
            assert prov["kind"] in ("hardware", "documented") and prov["source"]


def _all_provenance(row: Dict[str, Any]) -> Any:
    yield from row["provenance"].values()
    for gi in row["gi_profiles"]:
        yield from gi["provenance"].values()
        for ci in gi["ci_profiles"]:
            yield from ci["provenance"].values()


def test_unknown_model_names_the_valid_ones() -> None:
    with pytest.raises(MigrestoreError) as err:
        models.get("h100")
    text = str(err.value)
    assert "'h100'" in text and "b200-180gb" in text and "\n" not in text
    with pytest.raises(MigrestoreError) as err:
        tables.model("b200-180gb")  # simulated, not bundled
    assert "known models" in str(err.value)


def test_known_profile_names_cover_gi_and_ci_profiles_of_every_bundled_model() -> None:
    names = tables.known_profile_names()
    for expected in ("1g.10gb", "1g.10gb+me", "1c.3g.40gb", "7g.141gb", "1g.24gb+me.all"):
        assert expected in names
    assert "1g.23gb" not in names  # a B200 name: the simulator's, not migrestore's
    assert "1g.23gb" in {p.name for p in models.table("b200-180gb").profiles}


def test_ci_profile_ids_follow_the_nvml_index_rule() -> None:
    h100 = models.table("h100-80gb-hbm3")
    seven = h100.profile("7g.80gb")
    assert seven is not None
    assert [(ci.id, ci.slices) for ci in seven.ci_profiles] == [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
        (4, 7),
    ]
    rev2 = h100.profile("1g.20gb")
    assert rev2 is not None and [ci.id for ci in rev2.ci_profiles] == [7]
    four = models.table("a100-80gb").profile("4g.40gb")
    assert four is not None  # read on hardware: no 3c in a 4g GI, 1c = 14 SMs
    assert [(ci.name, ci.sms) for ci in four.ci_profiles] == [
        ("1c.4g.40gb", 14),
        ("2c.4g.40gb", 28),
        ("4g.40gb", 56),
    ]
    prov = {ci["name"]: ci["provenance"] for ci in _gi_row("a100-80gb", "4g.40gb")["ci_profiles"]}
    assert prov["1c.4g.40gb"]["sms"]["kind"] == "hardware"
    assert prov["1c.4g.40gb"]["placements"] == {"kind": "inferred", "rule": "ci-placements"}


def _gi_row(model: str, profile: str) -> Dict[str, Any]:
    for gi in _sim_row(model)["gi_profiles"]:
        if gi["name"] == profile:
            return dict(gi)
    raise AssertionError(profile)


@pytest.mark.parametrize("probe_model", sorted(PROBES))
def test_memory_rules_fit_both_probes(probe_model: str) -> None:
    gen = _generator()
    device = _probe(probe_model)["devices"][0]
    total = device["mem_total"] // (1024 * 1024)
    rows = {r["name"][4:]: r for r in device["gi_profiles"] if r["err"] is None}
    by_slices = {r["placements"][0][1]: r["memorySizeMB"] for r in rows.values()}
    full = by_slices[8]
    # gi-memory-full-from-total: exact; memory-total: within 2 MiB.
    assert gen._round256(total - gen.TOTAL_OVER_FULL_MIB) == full
    assert abs(full + gen.TOTAL_OVER_FULL_MIB - total) <= 2
    # gi-memory-fraction for half the memory slices: exact on both.
    assert gen._round256(full * gen.MEMORY_FRACTION[2]) == by_slices[4]
    # gi-memory-full-from-name: within 256 MiB, as the rule text says.
    name = next(n for n, r in rows.items() if r["placements"][0][1] == 8)
    assert abs(gen._round256(gen._name_gb(name) * gen.FULL_PER_NAME_GB) - full) <= 256


def test_inferred_values_follow_their_rules() -> None:
    b200 = models.table("b200-180gb")
    seven = b200.profile("7g.180gb")
    three = b200.profile("3g.90gb")
    assert seven is not None and three is not None
    assert seven.memory_mib == round((183359 - 409) / 256) * 256  # from the read total
    assert three.memory_mib == round(seven.memory_mib * 0.4983 / 256) * 256
    assert (three.sms, seven.sms) == (66, 148)  # H100 60/132 x 36/32, even
    prov = _gi_row("b200-180gb", "7g.180gb")["provenance"]
    assert prov["memory_mib"] == {"kind": "inferred", "rule": "gi-memory-full-from-total"}
    assert _gi_row("b200-180gb", "2g.45gb")["provenance"]["memory_mib"]["kind"] == "hardware"
    gh = models.table("gh200-144gb")
    three_gh, seven_gh = gh.profile("3g.72gb"), gh.profile("7g.144gb")
    assert three_gh is not None and seven_gh is not None
    assert seven_gh.memory_mib == round(144 * 1024 * 0.9917 / 256) * 256
    assert three_gh.memory_mib == round(seven_gh.memory_mib * 0.4983 / 256) * 256
    h20 = _sim_row("h20-96gb")
    assert all(
        gi["provenance"][key]["kind"] == "inferred"
        for gi in h20["gi_profiles"]
        for key in ("memory_mib", "sms")
    )
    assert h20["provenance"]["memory_mib"] == {"kind": "inferred", "rule": "memory-total"}
    rtx5000 = models.table("rtx-pro-5000-blackwell")
    assert (rtx5000.memory_slices, rtx5000.compute_slices) == (2, 2)
    assert [p.name for p in rtx5000.profiles][:2] == ["1g.24gb", "2g.48gb"]
    rtx = models.table("rtx-pro-6000-blackwell")
    assert (rtx.memory_slices, rtx.compute_slices) == (12, 4)
    assert rtx.not_supported_indices == (2, 4, 5, 6, 8, 9)
    h800 = _sim_row("h800-80gb")
    assert models.table("h800-80gb").profiles == models.table("h100-80gb-hbm3").profiles
    assert h800["gi_profiles"][0]["provenance"]["sms"] == {"kind": "inferred", "rule": "same-table"}


def test_every_value_a_source_read_is_kept() -> None:
    """A field whose provenance is not 'inferred' equals the research table it came from."""
    gen = _generator()
    reference = json.loads((REFERENCE_DIR / "mig-profiles.json").read_text(encoding="utf-8"))
    newest = json.loads((REFERENCE_DIR / "mig-profiles-newest.json").read_text(encoding="utf-8"))
    checked = 0
    for spec in gen.MODELS:
        if spec.table_of is not None:
            continue
        _, rows = gen._entry_for(spec, reference, newest)
        source = {r["name"]: r for r in rows}
        for gi in _sim_row(spec.key)["gi_profiles"]:
            src = source[gi["name"]]
            for key in (*GI_FIELDS, "placements"):
                if gi["provenance"][key]["kind"] != "inferred":
                    assert gi[key] == src[key], (spec.key, gi["name"], key)
                    checked += 1
    assert checked > 400


def test_committed_tables_are_what_the_generator_makes() -> None:
    gen = _generator()
    sim = gen.build(REFERENCE_DIR)
    committed = (ROOT / "migrestore" / "simulator" / "data" / "models.json").read_text("utf-8")
    assert committed == gen.render(sim), "stale: run python3 tools/gen_models.py"
    bundled = (ROOT / "migrestore" / "data" / "models.json").read_text("utf-8")
    assert bundled == gen.render(gen.bundled(sim)), "stale: run python3 tools/gen_models.py"


@pytest.mark.parametrize("name", sorted(PROBES))
def test_table_equals_the_real_probe_field_by_field(name: str) -> None:
    if not PROBES[name].exists():
        pytest.skip(f"probe not on this machine ({PROBES[name]})")
    device = _probe(name)["devices"][0]
    for table in (tables.model(name), models.table(name)):
        assert table.nvml_name == device["name"]
        assert table.arch_code == device["arch"]
        assert table.memory_mib * 1024 * 1024 <= device["mem_total"]
        assert device["mem_total"] // (1024 * 1024) == table.memory_mib
        answered = {row["profile"]: row for row in device["gi_profiles"]}
        not_supported = tuple(
            i for i, r in answered.items() if r["err"] and "NotSupported" in r["err"]
        )
        invalid = [i for i, r in answered.items() if r["err"] and "InvalidArgument" in r["err"]]
        assert table.not_supported_indices == not_supported
        assert invalid == [table.invalid_from_index]
        ok = [r for r in answered.values() if r["err"] is None]
        assert sorted(p.index for p in table.profiles) == sorted(r["profile"] for r in ok)
        for row in ok:
            profile = table.profile_by_index(row["profile"])
            assert profile is not None
            assert f"MIG {profile.name}" == row["name"]
            assert (
                profile.id,
                profile.slices,
                profile.max,
                profile.sms,
                profile.copy_engines,
                profile.decoders,
                profile.encoders,
                profile.jpeg,
                profile.ofa,
                profile.memory_mib,
            ) == (
                row["id"],
                row["sliceCount"],
                row["instanceCount"],
                row["multiprocessorCount"],
                row["copyEngineCount"],
                row["decoderCount"],
                row["encoderCount"],
                row["jpegCount"],
                row["ofaCount"],
                row["memorySizeMB"],
            ), (name, row["name"])
            assert [[p.start, p.size] for p in profile.placements] == row["placements"]
    sim = _sim_row(name)
    assert sim["provenance"]["memory_mib"]["kind"] == "hardware"
    for gi in sim["gi_profiles"]:
        for key in (*GI_FIELDS, "placements"):
            assert gi["provenance"][key]["kind"] == "hardware", (name, gi["name"], key)


def test_a_model_read_alone_is_the_documents_entry_and_unknown_names_are_unknown() -> None:
    """models rule 6: the entry found by its key in the rendered text, parsed alone,
    is the whole document's entry, for every model; a name no model has is unknown
    (through the whole document) and names the known models."""
    whole = json.loads((ROOT / "migrestore" / "simulator" / "data" / "models.json").read_text())
    try:
        for name, entry in whole["models"].items():
            models.document.cache_clear()
            models._row.cache_clear()
            assert models._row(name) == entry, name
            assert models.document.cache_info().currsize == 0, f"{name}: parsed whole"
        for name in ("h100", "rules", "research", '"h100-80gb-hbm3"', ""):
            assert not models.known(name), name
        with pytest.raises(models.UnknownSimModel, match="h100-80gb-hbm3"):
            models.get("h100-80gb")
    finally:
        models.document.cache_clear()
        models._row.cache_clear()
        models._build.cache_clear()
