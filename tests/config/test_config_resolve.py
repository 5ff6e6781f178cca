"""Selection (matches, resolve) and export: which rule a GPU gets, and the round trip
observed geometry -> YAML -> Config -> the same geometry."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import pytest
import yaml
from _config_support import gpu, identity, specs_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrestore import config, tables
from migrestore.model import (
    ComputeInstance,
    Config,
    GpuIdentity,
    GpuInstance,
    GpuSpec,
    GpuState,
    InstanceSpec,
    Placement,
    Rule,
    Selector,
)

H100 = identity(
    "h100-80gb-hbm3", 2, uuid="GPU-ABCDEF01-2345-6789-abcd-ef0123456789", bus="00000000:2A:00.0"
)
DISPLAY = GpuIdentity(
    index=5,
    uuid="GPU-dddddddd-0000-0000-0000-000000000005",
    pci_bus_id="00000000:C1:00.0",
    pci_device_id=0x1FB010DE,
    name="NVIDIA T1000",
    architecture="turing",
    mig_capable=False,
)


def rule_of(*selectors: Selector) -> Rule:
    return Rule(match=tuple(selectors), spec=GpuSpec(False))


@pytest.mark.parametrize(
    ("selectors", "gpu_identity", "expected"),
    [
        ((), H100, True),
        ((), DISPLAY, True),
        ((Selector("all"),), H100, True),
        ((Selector("all"),), DISPLAY, False),
        ((Selector("index", ("2",)),), H100, True),
        ((Selector("index", ("0", "1", "3")),), H100, False),
        ((Selector("index", ("5",)),), DISPLAY, True),
        ((Selector("uuid", ("GPU-abcdef01-2345-6789-ABCD-EF0123456789",)),), H100, True),
        ((Selector("uuid", ("GPU-abcdef01-2345-6789-abcd-ef0123456780",)),), H100, False),
        ((Selector("pci-bus-id", ("00000000:2A:00.0",)),), H100, True),
        ((Selector("pci-bus-id", ("2a:00.0",)),), H100, True),
        ((Selector("pci-bus-id", ("00000000:2B:00.0",)),), H100, False),
        ((Selector("model", ("NVIDIA H100*",)),), H100, True),
        ((Selector("model", ("NVIDIA H100 80GB HBM3",)),), H100, True),
        ((Selector("model", ("nvidia h100*",)),), H100, False),
        ((Selector("model", ("*H200*", "*A100*")),), H100, False),
        ((Selector("model", ("NVIDIA T1000",)),), DISPLAY, True),
        ((Selector("device-id", ("0x233010DE",)),), H100, True),
        ((Selector("device-id", ("0x233110DE",)),), H100, False),
        ((Selector("all"), Selector("device-id", ("0x233010DE",))), H100, True),
        ((Selector("index", ("2",)), Selector("model", ("*A100*",))), H100, False),
        ((Selector("serial", ("1",)),), H100, False),
    ],
)
def test_matches(
    selectors: Tuple[Selector, ...], gpu_identity: GpuIdentity, expected: bool
) -> None:
    assert config.matches(rule_of(*selectors), gpu_identity) is expected


def test_bus_ids_in_nvml_legacy_form_match() -> None:
    legacy = GpuIdentity(
        2, H100.uuid, "0000:2a:00.0", H100.pci_device_id, H100.name, H100.architecture, True
    )
    assert config.matches(rule_of(Selector("pci-bus-id", ("00000000:2A:00.0",))), legacy)


NODE = (
    gpu("h100-80gb-hbm3", 0),
    gpu("h100-80gb-hbm3", 1),
    gpu("a100-sxm4-40gb", 2),
    GpuState(DISPLAY, False, False, (), ()),
)


def test_first_matching_rule_wins_and_unmatched_gpus_are_reported() -> None:
    cfg = config.parse(
        "version: 1\ngpus:\n"
        "  - match: {index: 1}\n    mig: true\n    instances: [{profile: 7g.80gb}]\n"
        "  - match: {model: 'NVIDIA H100*'}\n    mig: true\n    instances: [{profile: 1g.10gb, count: 7}]\n"
        "  - match: {index: [1, 2]}\n    mig: false\n",
        "node.yaml",
    )
    desired = config.resolve(cfg, NODE)
    assert desired == {
        NODE[0].uuid: GpuSpec(True, (InstanceSpec("1g.10gb"),) * 7, "node.yaml:6"),
        NODE[1].uuid: GpuSpec(True, (InstanceSpec("7g.80gb"),), "node.yaml:3"),
        NODE[2].uuid: GpuSpec(False, (), "node.yaml:9"),
    }
    assert DISPLAY.uuid not in desired  # no rule matches it: left untouched


def test_no_rules_leaves_every_gpu_untouched() -> None:
    desired = config.resolve(config.parse("version: 1\ngpus: []\n"), NODE)
    assert desired == {}


def test_explicit_selectors_match_gpus_that_are_not_mig_capable() -> None:
    cfg = config.parse(f"version: 1\ngpus:\n  - match: {{uuid: {DISPLAY.uuid}}}\n    mig: false\n")
    desired = config.resolve(cfg, NODE)
    assert list(desired) == [DISPLAY.uuid]


# --------------------------------------------------------------------------- export

H100_SPLIT = [
    ("2g.20gb", 0, None),
    ("1g.10gb", 2, None),
    ("1g.10gb", 3, None),
    ("3g.40gb", 4, ["2c.3g.40gb", "1c.3g.40gb"]),
]

EXPORT_CASES = [
    ("h100-mixed-with-ci-split", (gpu("h100-80gb-hbm3", 0, H100_SPLIT),), 1),
    (
        "identical-gpus-merge",
        (
            gpu("h100-80gb-hbm3", 0, H100_SPLIT),
            gpu("h100-80gb-hbm3", 1, [("7g.80gb", 0, ["4c.7g.80gb", "2c.7g.80gb", "1c.7g.80gb"])]),
            gpu("h100-80gb-hbm3", 2, H100_SPLIT, uuid="GPU-22222222-0000-0000-0000-000000000002"),
        ),
        2,
    ),
    (
        "a100-balanced",
        (
            gpu(
                "a100-sxm4-40gb",
                0,
                [
                    ("1g.5gb", 0, None),
                    ("1g.5gb", 1, None),
                    ("2g.10gb", 2, None),
                    ("3g.20gb", 4, None),
                ],
            ),
        ),
        1,
    ),
    (
        "a30-halves",
        (
            gpu(
                "a30-24gb",
                3,
                [("2g.12gb+me", 0, ["1c.2g.12gb+me", "1c.2g.12gb+me"]), ("2g.12gb", 2, None)],
            ),
        ),
        1,
    ),
    (
        "rtx-pro-6000-media",
        (
            gpu(
                "rtx-pro-6000-blackwell",
                0,
                [("1g.24gb+me.all", 0, None), ("1g.24gb-me", 3, None), ("2g.48gb-me", 6, None)],
            ),
        ),
        1,
    ),
    (
        "h200-and-gh200",
        (
            gpu("h200-141gb", 0, [("7g.141gb", 0, None)]),
            gpu("gh200-144gb", 1, [("4g.72gb", 0, None), ("3g.72gb", 4, None)]),
        ),
        2,
    ),
    (
        "mig-off-and-mig-on-empty",
        (gpu("a100-80gb", 0, mig=False), gpu("a100-80gb", 1), gpu("h100-nvl-94gb", 2, mig=False)),
        2,
    ),
    (
        "pending-enable-exports-current-mode",
        (gpu("a100-sxm4-40gb", 0, mig=False, pending=True),),
        1,
    ),
]


def _roundtrip(observed: Sequence[GpuState]) -> Tuple[str, Config]:
    text = config.export(observed)
    return text, config.parse(text, "exported.yaml")


@pytest.mark.parametrize(
    ("observed", "rules"), [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES]
)
def test_export_round_trip(observed: Tuple[GpuState, ...], rules: int) -> None:
    text, cfg = _roundtrip(observed)
    assert len(cfg.rules) == rules, text
    desired = config.resolve(cfg, observed)
    assert set(desired) == {g.uuid for g in observed}
    for state in observed:
        spec = desired[state.uuid]
        assert spec.mig == state.mig_current
        assert spec.instances == specs_of(state)
        assert all(inst.placement is not None for inst in spec.instances)


def test_export_names_gpus_by_uuid_with_explicit_layouts() -> None:
    text = config.export(
        (gpu("h100-80gb-hbm3", 0, H100_SPLIT, uuid="GPU-11111111-0000-0000-0000-000000000001"),)
    )
    document = yaml.safe_load(text)
    assert document == {
        "version": 1,
        "gpus": [
            {
                "match": {"uuid": "GPU-11111111-0000-0000-0000-000000000001"},
                "mig": True,
                "instances": [
                    {"profile": "2g.20gb", "placement": 0},
                    {"profile": "1g.10gb", "placement": 2},
                    {"profile": "1g.10gb", "placement": 3},
                    {"profile": "3g.40gb", "placement": 4, "compute": ["2c.3g.40gb", "1c.3g.40gb"]},
                ],
            }
        ],
    }
    assert "# GPU 0: NVIDIA H100 80GB HBM3 (00000000:18:00.0)" in text


def test_export_leaves_out_gpus_that_are_not_mig_capable() -> None:
    observed = (gpu("h100-80gb-hbm3", 0), GpuState(DISPLAY, False, False, (), ()))
    text, cfg = _roundtrip(observed)
    assert DISPLAY.uuid in text.splitlines()[-1] and "not MIG-capable, left out" in text
    desired = config.resolve(cfg, observed)
    assert list(desired) == [observed[0].uuid]


def test_export_of_nothing_is_a_config_that_changes_nothing() -> None:
    text, cfg = _roundtrip(())
    assert cfg.rules == ()
    assert "gpus: []" in text


def test_export_notes_pending_mode_and_writes_gis_without_compute_instances_as_compute_empty() -> (
    None
):
    pending = gpu("a100-sxm4-40gb", 0, mig=False, pending=True)
    empty_gi = gpu("h100-80gb-hbm3", 1, [("3g.40gb", 0, None), ("3g.40gb", 4, None)], empty_gis=[4])
    text, cfg = _roundtrip((pending, empty_gi))
    assert "GPU 0: MIG mode change to on is pending" in text
    assert "{profile: 3g.40gb, placement: 4, compute: []}" in text
    desired = config.resolve(cfg, (pending, empty_gi))
    assert desired[empty_gi.uuid].instances == (
        InstanceSpec("3g.40gb", 0),
        InstanceSpec("3g.40gb", 4, no_compute=True),
    )


# --------------------------------------------------------------------------- property


@st.composite
def geometries(draw: st.DrawFn) -> GpuState:
    """A random valid geometry on a random bundled model: GIs at free placements within
    each profile's cap, each GI with CIs at free placements inside it."""
    name = draw(st.sampled_from(tables.MODEL_NAMES))
    table = tables.model(name)
    used = 0
    counts: dict = {}  # type: ignore[type-arg]
    instances: List[GpuInstance] = []
    for step in range(draw(st.integers(0, 8))):
        profile = draw(st.sampled_from(table.profiles))
        where = draw(st.sampled_from(profile.placements))
        if where.mask() & used or counts.get(profile.name, 0) >= profile.max:
            continue
        used |= where.mask()
        counts[profile.name] = counts.get(profile.name, 0) + 1
        ci_used = 0
        cis: List[ComputeInstance] = []
        for ci_step in range(draw(st.integers(1, 4))):
            ci = draw(st.sampled_from(profile.ci_profiles))
            ci_where = draw(st.sampled_from(ci.placements))
            if ci_where.mask() & ci_used:
                continue
            ci_used |= ci_where.mask()
            cis.append(ComputeInstance(ci_step, ci.id, ci.name, ci_where, ""))
        instances.append(
            GpuInstance(
                step + 1, profile.id, profile.name, Placement(where.start, where.size), tuple(cis)
            )
        )
    instances.sort(key=lambda g: g.placement.start)
    return GpuState(
        identity(name, draw(st.integers(0, 7))), True, True, table.profiles, tuple(instances)
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(geometries(), min_size=1, max_size=4, unique_by=lambda g: g.uuid))
def test_export_round_trip_of_random_geometries(observed: List[GpuState]) -> None:
    _, cfg = _roundtrip(observed)
    desired = config.resolve(cfg, observed)
    assert set(desired) == {g.uuid for g in observed}
    for state in observed:
        assert desired[state.uuid].instances == specs_of(state)


def test_a_sick_gpu_matches_no_rule_and_a_declared_uuid_stays_to_be_reported() -> None:
    lost = GpuState(
        GpuIdentity(
            3, "", "", 0, "", "unknown", False, 0, "NVML_ERROR_GPU_IS_LOST", "get its handle"
        ),
        False,
        False,
        (),
        (),
    )
    gone = "GPU-00000000-1111-2222-3333-444444444444"
    cfg = config.parse(
        "version: 1\ngpus:\n"
        f"  - match: {{uuid: {gone}}}\n    mig: false\n"
        "  - match: {index: 3}\n    mig: false\n"
        "  - match: all\n    mig: false\n",
        "node.yaml",
    )
    desired = config.resolve(cfg, [lost])
    assert desired == {gone: GpuSpec(False, (), "node.yaml:3")}
