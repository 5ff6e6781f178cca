"""The bundled model tables: their shape, their agreement with the reference tables and
the real H100 probe, and the generator that makes them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict

import pytest

from migrestore import tables
from migrestore.errors import MigrestoreError
from migrestore.model import Placement

REFERENCE = Path("/work/shared/reference/mig-profiles.json")
PROBE = Path("/work/shared/reference/probes/h100-80gb-hbm3-driver580.json")
ROOT = Path(__file__).resolve().parents[2]

needs_reference = pytest.mark.skipif(
    not REFERENCE.exists(), reason=f"reference tables not on this machine ({REFERENCE})"
)
needs_probe = pytest.mark.skipif(
    not PROBE.exists(), reason=f"H100 probe not on this machine ({PROBE})"
)

# Which reference entry each shipped model comes from (the generator's prefixes).
REFERENCE_PREFIX = {
    "a100-sxm4-40gb": "A100-SXM4-40GB",
    "a100-80gb": "A100 80GB",
    "a30-24gb": "A30 24GB",
    "h100-80gb-hbm3": "H100 80GB HBM3",
    "h100-pcie-80gb": "H100 PCIe 80GB",
    "h100-nvl-94gb": "H100 NVL 94GB",
    "h100-96gb": "H100 96GB",
    "gh200-144gb": "GH200 144GB",
    "h200-141gb": "H200 141GB",
    "rtx-pro-6000-blackwell": "RTX PRO 6000 Blackwell",
}

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


def _reference() -> Dict[str, Any]:
    with REFERENCE.open(encoding="utf-8") as handle:
        data: Dict[str, Any] = json.load(handle)
    return data


def _reference_model(name: str) -> Dict[str, Any]:
    found = [m for m in _reference()["models"] if m["model"].startswith(REFERENCE_PREFIX[name])]
    assert len(found) == 1
    return dict(found[0])


def _shipped(name: str) -> Dict[str, Any]:
    row: Dict[str, Any] = tables.raw_document()["models"][name]
    return row


def test_the_ten_models_ship_in_order() -> None:
    assert tuple(tables.load_models()) == tables.MODEL_NAMES
    assert len(tables.MODEL_NAMES) == 10
    assert set(REFERENCE_PREFIX) == set(tables.MODEL_NAMES)


@pytest.mark.parametrize("name", tables.MODEL_NAMES)
def test_table_is_self_consistent(name: str) -> None:
    table = tables.model(name)
    assert table.name == name
    assert table.arch_code == {"ampere": 7, "hopper": 9, "blackwell": 10}[table.architecture]
    indices = [p.index for p in table.profiles]
    ids = [p.id for p in table.profiles]
    assert len(set(indices)) == len(indices) and len(set(ids)) == len(ids)
    assert set(indices) | set(table.not_supported_indices) == set(range(table.invalid_from_index))
    assert not set(indices) & set(table.not_supported_indices)
    for gi in table.profiles:
        assert gi.placements, gi.name
        assert all(p.end <= table.memory_slices for p in gi.placements)
        assert gi.slices <= table.compute_slices
        assert 1 <= gi.max <= len(gi.placements)
        defaults = [ci for ci in gi.ci_profiles if ci.default]
        assert len(defaults) == 1, gi.name
        assert defaults[0].name == gi.name
        assert defaults[0].placements == (Placement(0, gi.slices),)
        assert len({ci.id for ci in gi.ci_profiles}) == len(gi.ci_profiles)
        for ci in gi.ci_profiles:
            assert all(p.end <= gi.slices for p in ci.placements), ci.name
            assert ci.max == len(ci.placements)
            assert ci.name == gi.name or ci.name == f"{ci.slices}c.{gi.name}"


def test_unknown_model_names_the_valid_ones() -> None:
    with pytest.raises(MigrestoreError) as err:
        tables.model("h100")
    text = str(err.value)
    assert "'h100'" in text
    for name in tables.MODEL_NAMES:
        assert name in text
    assert "\n" not in text


def test_known_profile_names_cover_gi_and_ci_profiles_of_every_model() -> None:
    names = tables.known_profile_names()
    for expected in ("1g.10gb", "1g.10gb+me", "1c.3g.40gb", "7g.141gb", "1g.24gb+me.all"):
        assert expected in names
    assert not any(n.startswith("MIG ") for n in names)
    every = {
        n
        for t in tables.load_models().values()
        for gi in t.profiles
        for n in (gi.name, *(ci.name for ci in gi.ci_profiles))
    }
    assert names == every


def test_ci_profile_ids_follow_the_nvml_index_rule() -> None:
    # 1c..4c and 7 compute slices -> NVML_COMPUTE_INSTANCE_PROFILE_* index 0..4; the full
    # CI of a REV2 1-slice GI (1g.20gb) is 1_SLICE_REV1 = 7.
    h100 = tables.model("h100-80gb-hbm3")
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
    plain = h100.profile("1g.10gb")
    assert plain is not None and [ci.id for ci in plain.ci_profiles] == [0]
    three = h100.profile("3g.40gb")
    assert three is not None
    assert {ci.name: (ci.sms, ci.placements) for ci in three.ci_profiles}["1c.3g.40gb"] == (
        20,  # 60 SMs * 1 // 3: not read, the documented rule
        (Placement(0, 1), Placement(1, 1), Placement(2, 1)),
    )


def test_inferred_fields_follow_their_rules() -> None:
    a100 = tables.model("a100-80gb")
    rev2, two = a100.profile("1g.20gb"), a100.profile("2g.20gb")
    assert rev2 is not None and two is not None
    assert rev2.memory_mib == two.memory_mib  # same memory slices
    rows = {row["name"]: row for row in _shipped("a100-80gb")["gi_profiles"]}
    assert "memory_mib" in rows["1g.20gb"]["inferred"]
    gh = tables.model("gh200-144gb")
    three, four, seven = gh.profile("3g.72gb"), gh.profile("4g.72gb"), gh.profile("7g.144gb")
    assert three is not None and four is not None and seven is not None
    assert three.memory_mib == four.memory_mib == round(36096 * 40448 / 20096 / 128) * 128
    assert (three.sms, four.sms, seven.sms) == (60, 64, 132)  # the H100 probe's
    assert "memory_mib" in _shipped("gh200-144gb")["inferred"]
    rtx = tables.model("rtx-pro-6000-blackwell")
    assert (rtx.memory_slices, rtx.compute_slices) == (12, 4)
    assert rtx.not_supported_indices == (2, 4, 5, 6, 8, 9)


@needs_reference
@pytest.mark.parametrize("name", tables.MODEL_NAMES)
def test_every_value_the_reference_read_is_shipped_unchanged(name: str) -> None:
    ref = _reference_model(name)
    shipped = _shipped(name)
    table = tables.model(name)
    slices = ref["slices"]
    assert table.compute_slices == slices["compute"]
    assert table.memory_slices == slices.get("placement_units", slices["memory"])
    assert table.architecture == ref["architecture"].split()[0]
    if ref.get("memory_mib") is not None:
        assert table.memory_mib == ref["memory_mib"]
    else:
        assert "memory_mib" in shipped["inferred"]
    if ref["pci_device_ids"]:
        if "pci_device_id" not in shipped["inferred"]:
            assert f"0x{table.pci_device_id:08X}" == ref["pci_device_ids"][0]
    else:
        assert "pci_device_id" in shipped["inferred"]
    if table.nvml_name != ref.get("nvml_name"):
        assert "nvml_name" in shipped["inferred"]
    assert len(ref["gi_profiles"]) == len(table.profiles)
    rows = {row["name"]: row for row in shipped["gi_profiles"]}
    for gi in ref["gi_profiles"]:
        row = rows[gi["name"]]
        for key in GI_FIELDS:
            if gi.get(key) is None:
                assert key in row["inferred"], (gi["name"], key)
            else:
                assert row[key] == gi[key], (gi["name"], key)
        assert row["placements"] == gi["placements"]
        cis = {ci["id"]: ci for ci in row["ci_profiles"]}
        for ci in gi.get("ci_profiles") or []:
            mine = cis[ci["id"]]
            for key in ("name", "slices", "max", "sms", "placements"):
                if ci.get(key) is None:
                    assert key in mine["inferred"], (ci["name"], key)
                else:
                    assert mine[key] == ci[key], (ci["name"], key)
            assert mine["default"] == ci["default_for_gi"]


@needs_reference
def test_committed_models_json_is_what_the_generator_makes() -> None:
    spec = importlib.util.spec_from_file_location("gen_models", ROOT / "tools" / "gen_models.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.render(gen.build(_reference()))
    committed = (ROOT / "migrestore" / "data" / "models.json").read_text(encoding="utf-8")
    assert committed == text, "models.json is stale: run python3 tools/gen_models.py"


def _probe_device() -> Dict[str, Any]:
    with PROBE.open(encoding="utf-8") as handle:
        data: Dict[str, Any] = json.load(handle)
    device: Dict[str, Any] = data["devices"][0]
    return device


@needs_probe
def test_h100_table_equals_the_real_probe_field_by_field() -> None:
    device = _probe_device()
    table = tables.model("h100-80gb-hbm3")
    assert table.nvml_name == device["name"]
    assert table.arch_code == device["arch"]
    assert table.memory_mib * 1024 * 1024 == device["mem_total"]
    answered = {row["profile"]: row for row in device["gi_profiles"]}
    not_supported = tuple(i for i, r in answered.items() if r["err"] and "NotSupported" in r["err"])
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
        )
        assert [[p.start, p.size] for p in profile.placements] == row["placements"]
