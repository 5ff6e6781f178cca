"""mig-parted config files are accepted as they are and mean what they mean to mig-parted."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import pytest
from _config_support import gpu

from migrestore import config
from migrestore.errors import ConfigError
from migrestore.model import (
    DEFAULT_CLIENTS,
    Config,
    GpuIdentity,
    GpuSpec,
    GpuState,
    InstanceSpec,
    Selector,
)

ETC = Path(__file__).resolve().parents[2] / "etc"
EXAMPLE = ETC / "examples" / "mig-parted-config.yaml"
TEXT = EXAMPLE.read_text()

I = InstanceSpec  # noqa: E741

DISPLAY = GpuState(
    identity=GpuIdentity(
        index=4,
        uuid="GPU-dddddddd-0000-0000-0000-000000000004",
        pci_bus_id="00000000:C1:00.0",
        pci_device_id=0x1FB010DE,
        name="NVIDIA T1000",
        architecture="turing",
        mig_capable=False,
    ),
    mig_current=False,
    mig_pending=False,
    profiles=(),
    instances=(),
)
EIGHT_A100 = tuple(gpu("a100-sxm4-40gb", i) for i in range(8))
MIXED = (
    gpu("a100-sxm4-40gb", 0),
    gpu("a100-sxm4-40gb", 1),
    gpu("h100-80gb-hbm3", 2),
    gpu("h100-80gb-hbm3", 3),
    DISPLAY,
)


def shapes(
    cfg: Config, observed: Sequence[GpuState]
) -> Dict[int, Tuple[bool, Tuple[InstanceSpec, ...]]]:
    """GPU index -> (mig, instances) of its resolved spec; unmatched GPUs are absent."""
    desired = config.resolve(cfg, observed)
    by_uuid = {g.uuid: g.index for g in observed}
    return {by_uuid[uuid]: (spec.mig, spec.instances) for uuid, spec in desired.items()}


def off() -> Tuple[bool, Tuple[InstanceSpec, ...]]:
    return (False, ())


A100_BALANCED = (True, (I("1g.5gb"), I("1g.5gb"), I("2g.10gb"), I("3g.20gb")))
H100_BALANCED = (True, (I("1g.10gb"), I("1g.10gb"), I("2g.20gb"), I("3g.40gb")))


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("all-disabled", off()),
        ("all-enabled", (True, ())),
        ("all-1g.5gb", (True, (I("1g.5gb"),) * 7)),
        ("all-2g.10gb", (True, (I("2g.10gb"),) * 3)),
        ("all-3g.20gb", (True, (I("3g.20gb"),) * 2)),
        ("all-balanced", A100_BALANCED),
        (
            "all-3g.20gb-split",
            (True, (I("3g.20gb"), I("3g.20gb", None, ("1c.3g.20gb",) * 3))),
        ),
    ],
)
def test_published_all_labels_on_an_a100_node(
    label: str, expected: Tuple[bool, Tuple[InstanceSpec, ...]]
) -> None:
    cfg = config.parse(TEXT, str(EXAMPLE), label)
    assert cfg.selected == label
    assert shapes(cfg, EIGHT_A100) == {i: expected for i in range(8)}


def test_custom_config_per_index_entries() -> None:
    cfg = config.parse(TEXT, str(EXAMPLE), "custom-config")
    assert shapes(cfg, EIGHT_A100) == {
        0: off(),
        1: off(),
        2: off(),
        3: off(),
        4: (True, (I("1g.5gb"),) * 7),
        5: (True, (I("2g.10gb"),) * 3),
        6: (True, (I("3g.20gb"),) * 2),
        7: A100_BALANCED,
    }


def test_per_sku_balanced_on_a_mixed_node() -> None:
    cfg = config.parse(TEXT, str(EXAMPLE), "all-balanced")
    assert shapes(cfg, MIXED) == {
        0: A100_BALANCED,
        1: A100_BALANCED,
        2: H100_BALANCED,
        3: H100_BALANCED,
    }
    assert DISPLAY.uuid not in config.resolve(cfg, MIXED)


def test_devices_all_skips_gpus_that_are_not_mig_capable() -> None:
    cfg = config.parse(TEXT, str(EXAMPLE), "all-disabled")
    desired = config.resolve(cfg, MIXED)
    assert DISPLAY.uuid not in desired
    assert set(desired) == {g.uuid for g in MIXED if g.identity.mig_capable}


def test_rules_carry_the_entry_line_and_mig_parted_selectors() -> None:
    cfg = config.parse(TEXT, str(EXAMPLE), "all-balanced")
    # the last entry comes first: mig-parted's last matching entry wins
    assert [r.line for r in cfg.rules] == [55, 47]
    assert cfg.rules[0].match == (
        Selector("all"),
        Selector("device-id", ("0x233010DE", "0x233110DE")),
    )
    assert cfg.rules[1].spec.source == f"{EXAMPLE}:47"


def test_a_bare_mig_parted_file_takes_default_policies() -> None:
    cfg = config.parse(TEXT, "mp.yaml", "all-enabled")
    assert cfg == Config(
        path="mp.yaml",
        rules=cfg.rules,
        clients=DEFAULT_CLIENTS,
        selected="all-enabled",
    )


def mp_file(entries: str, label: str = "only") -> str:
    return f"version: v1\nmig-configs:\n  {label}:\n{entries}"


def test_a_single_config_selects_itself() -> None:
    cfg = config.parse(mp_file("    - devices: all\n      mig-enabled: false\n"))
    assert cfg.selected == "only"


def test_last_matching_entry_wins_like_mig_parted() -> None:
    both_on = mp_file(
        "    - devices: all\n      mig-enabled: true\n      mig-devices: {7g.40gb: 1}\n"
        "    - devices: [1]\n      mig-enabled: true\n      mig-devices: {1g.5gb: 7}\n"
    )
    assert shapes(config.parse(both_on), EIGHT_A100[:3]) == {
        0: (True, (I("7g.40gb"),)),
        1: (True, (I("1g.5gb"),) * 7),
        2: (True, (I("7g.40gb"),)),
    }


@pytest.mark.parametrize("later_specific", [True, False])
def test_entries_that_disagree_on_mig_enabled_for_one_gpu_are_refused(later_specific: bool) -> None:
    # mig-parted sets each matching entry's mode in turn, then fails its config step on
    # the entry whose mode the GPU no longer has: migrestore refuses before any change.
    entries = [
        "    - devices: all\n      mig-enabled: false\n",
        "    - devices: [1]\n      mig-enabled: true\n      mig-devices: {1g.5gb: 7}\n",
    ]
    cfg = config.parse(mp_file("".join(entries if later_specific else entries[::-1])))
    with pytest.raises(ConfigError) as caught:
        config.resolve(cfg, EIGHT_A100[:3])
    assert "disagree on mig-enabled" in str(caught.value)
    assert f"GPU 1 ({EIGHT_A100[1].uuid})" in str(caught.value)


def test_devices_and_device_filter_must_both_match() -> None:
    cfg = config.parse(
        mp_file(
            "    - devices: [0, 2]\n      device-filter: '0x233010DE'\n"
            "      mig-enabled: true\n      mig-devices: {7g.80gb: 1}\n"
        )
    )
    assert shapes(cfg, MIXED) == {2: (True, (I("7g.80gb"),))}


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        # three 1c CIs fill one 3g GI (3 compute slices)
        ("{1c.3g.40gb: 3}", (I("3g.40gb", None, ("1c.3g.40gb",) * 3),)),
        # four 1c.2g CIs need two 2g GIs of two CIs each
        ("{1c.2g.20gb: 4}", (I("2g.20gb", None, ("1c.2g.20gb",) * 2),) * 2),
        # largest first into the first GI with room: 4c + 2c + 1c = 7 slices, one GI
        (
            "{1c.7g.80gb: 1, 2c.7g.80gb: 1, 4c.7g.80gb: 1}",
            (I("7g.80gb", None, ("4c.7g.80gb", "2c.7g.80gb", "1c.7g.80gb")),),
        ),
        # two 2c.3g CIs cannot share a 3g GI
        ("{2c.3g.40gb: 2}", (I("3g.40gb", None, ("2c.3g.40gb",)),) * 2),
        # a CI as large as its GI is the GI's default CI
        ("{3c.3g.40gb: 1}", (I("3g.40gb"),)),
        # GI-level names keep their default CI and are not packed with CI-level names
        ("{3g.40gb: 1, 1c.3g.40gb: 1}", (I("3g.40gb"), I("3g.40gb", None, ("1c.3g.40gb",)))),
        # counts of 0 are ignored, as mig-parted allows them
        ("{1g.10gb: 0, 2g.20gb: 3}", (I("2g.20gb"),) * 3),
        ("{1g.10gb+me: 1, 1g.10gb: 6}", (I("1g.10gb+me"),) + (I("1g.10gb"),) * 6),
    ],
)
def test_mig_devices_become_gpu_instances(devices: str, expected: Tuple[InstanceSpec, ...]) -> None:
    cfg = config.parse(
        mp_file(f"    - devices: all\n      mig-enabled: true\n      mig-devices: {devices}\n")
    )
    assert cfg.rules[0].spec == GpuSpec(True, expected, "<config>:4")


def test_only_zero_counts_are_refused_like_mig_parted() -> None:
    for enabled in ("true", "false"):
        with pytest.raises(ConfigError) as caught:
            config.parse(
                mp_file(
                    f"    - devices: all\n      mig-enabled: {enabled}\n      mig-devices: {{1g.10gb: 0}}\n"
                )
            )
        assert "every count is 0" in caught.value.problem


def test_entries_for_models_the_tables_do_not_know_are_kept_as_written() -> None:
    # mig-parted's shipped all-balanced covers SKUs without a bundled table (B200):
    # such an entry cannot be checked here; the planner checks it against the GPU.
    text = (
        "version: v1\nmig-configs:\n  all-balanced:\n"
        "    - device-filter: '0x290110DE'\n      devices: all\n      mig-enabled: true\n"
        "      mig-devices: {1g.23gb: 2, 2g.45gb: 1, 3g.90gb: 1}\n"
        "    - device-filter: '0x233010DE'\n      devices: all\n      mig-enabled: true\n"
        "      mig-devices: {1g.10gb: 2, 2g.20gb: 1, 3g.40gb: 1}\n"
    )
    cfg = config.parse(text, "mp.yaml", "all-balanced")
    assert cfg.rules[1].spec.instances == (I("1g.23gb"), I("1g.23gb"), I("2g.45gb"), I("3g.90gb"))
    assert shapes(cfg, MIXED) == {2: H100_BALANCED, 3: H100_BALANCED}


def test_the_select_argument_picks_among_configs() -> None:
    labels = [
        "all-disabled",
        "all-enabled",
        "all-1g.5gb",
        "all-2g.10gb",
        "all-3g.20gb",
        "all-3g.20gb-split",
        "all-balanced",
        "custom-config",
    ]
    for label in labels:
        assert config.parse(TEXT, "mp.yaml", label).selected == label
