"""mig-parted files exactly as mig-parted reads them (issue 16), one test per class, on
simulated GPUs (two H100 SXM5 boards: PCI device 0x233010DE, subsystem 0x16C110DE as an
lspci capture read it, the simulator's data field), with the files from
tests/data/mig-parted (NVIDIA's, or written from mig-parted's rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from migrestore import backend, config, planner
from migrestore.config.fields import device_filter_matches
from migrestore.errors import ConfigError
from migrestore.model import GpuSpec, GpuState, InstanceSpec
from migrestore.nvml import Nvml
from migrestore.simulator import models as simmodels

DATA = Path(__file__).resolve().parents[1] / "data" / "mig-parted"


@pytest.fixture(scope="module")
def h100s() -> Tuple[GpuState, ...]:
    with Nvml(backend.choose("h100-80gb-hbm3:2")) as nv:
        return nv.observe()


def desired(
    name: str, gpus: Tuple[GpuState, ...], select: Optional[str] = None
) -> Dict[int, GpuSpec]:
    path = DATA / name
    cfg = config.parse(path.read_text(), str(path), select)
    specs = config.resolve(cfg, gpus)
    return {g.index: specs[g.uuid] for g in gpus if g.uuid in specs}


def refused(name: str, gpus: Tuple[GpuState, ...] = ()) -> ConfigError:
    path = DATA / name
    with pytest.raises(ConfigError) as caught:
        config.resolve(config.parse(path.read_text(), str(path)), gpus)
    return caught.value


def test_the_simulated_h100_reports_its_subsystem_id(h100s: Tuple[GpuState, ...]) -> None:
    # One source: the simulator's model data (hardware provenance), which NVML reports.
    h100 = simmodels.get("h100-80gb-hbm3")
    assert h100.provenance["pci_subsystem_id"]["kind"] == "hardware"
    assert h100s[0].identity.pci_device_id == 0x233010DE
    assert h100s[0].identity.pci_subsystem_id == h100.pci_subsystem_id == 0x16C110DE


def test_a_model_without_a_known_subsystem_id_matches_no_subsystem_filter() -> None:
    with Nvml(backend.choose("b200-180gb")) as nv:
        (b200,) = nv.observe()
    assert b200.identity.pci_subsystem_id == simmodels.get("b200-180gb").pci_subsystem_id
    assert not device_filter_matches(
        f"0x{b200.identity.pci_device_id:08X}:0x16C110DE",
        b200.identity.pci_device_id,
        b200.identity.pci_subsystem_id,
    )


@pytest.mark.parametrize(
    ("name", "matched"),
    [
        ("device-filter-primary.yaml", True),
        ("device-filter-lower-case.yaml", True),
        ("device-filter-empty-string.yaml", True),  # "": no filter
        ("device-filter-subsystem-match.yaml", True),
        ("device-filter-subsystem-list.yaml", True),
        ("device-filter-subsystem-sibling.yaml", False),
        ("device-filter-extra-separator.yaml", False),  # malformed: matches nothing
        ("device-filter-invalid-subsystem.yaml", False),
        ("device-filter-not-a-device-id.yaml", False),
        ("device-filter-a16-no-mig.yaml", False),
    ],
)
def test_device_filters_match_as_mig_parted_matches_them(
    name: str, matched: bool, h100s: Tuple[GpuState, ...]
) -> None:
    specs = desired(name, h100s)
    if matched:
        assert specs == {
            i: GpuSpec(True, (InstanceSpec("1g.10gb"),) * 2, specs[i].source) for i in (0, 1)
        }
    else:
        assert specs == {}


def test_an_unquoted_hex_device_filter_is_refused_as_mig_parted_refuses_it() -> None:
    err = refused("derived-device-filter-unquoted-hex.yaml")
    assert (err.line, err.key) == (4, "mig-configs.test[0].device-filter")
    assert "quote it" in err.fix


def test_an_empty_devices_list_matches_nothing(h100s: Tuple[GpuState, ...]) -> None:
    assert desired("derived-devices-empty-list.yaml", h100s) == {}


def test_null_mig_devices_under_mig_disabled_is_mig_off(h100s: Tuple[GpuState, ...]) -> None:
    assert {
        i: s.mig for i, s in desired("derived-mig-devices-null-disabled.yaml", h100s).items()
    } == {0: False, 1: False}
    assert {
        i: s.mig
        for i, s in desired("spec-entry-06-missing-mig-devices-enabled-false.yaml", h100s).items()
    } == {0: False, 1: False}
    for name in ("known-valid-nil-config.yaml", "known-valid-single-equal-0.yaml"):
        refused(name)  # null under mig-enabled: true, and only zero counts: mig-parted refuses both


def test_mig_devices_empty_mapping_is_mig_on_with_nothing(h100s: Tuple[GpuState, ...]) -> None:
    assert desired("known-valid-empty-config.yaml", h100s) == {
        0: GpuSpec(True, (), desired("known-valid-empty-config.yaml", h100s)[0].source),
        1: GpuSpec(True, (), desired("known-valid-empty-config.yaml", h100s)[1].source),
    }


def test_overlapping_entries_last_wins_when_both_fit(h100s: Tuple[GpuState, ...]) -> None:
    specs = desired("derived-overlap-both-fit-last-wins.yaml", h100s)
    assert [i.profile for i in specs[0].instances] == ["1g.10gb"] * 7
    assert [i.profile for i in specs[1].instances] == ["3g.40gb"] * 2
    planner.plan({h100s[i].uuid: s for i, s in specs.items()}, h100s)


def test_overlapping_entries_that_disagree_on_mig_enabled_are_refused(
    h100s: Tuple[GpuState, ...],
) -> None:
    err = refused("derived-overlap-mode-conflict.yaml", h100s)
    assert "disagree on mig-enabled" in err.problem and f"GPU 0 ({h100s[0].uuid})" in err.problem


def test_an_earlier_overlapping_entry_the_gpu_cannot_hold_is_refused(
    h100s: Tuple[GpuState, ...],
) -> None:
    err = refused("derived-overlap-earlier-entry-infeasible.yaml", h100s)
    assert "offers no GPU instance profile '1g.5gb'" in err.problem
    assert err.line == 7  # the earlier entry's 1g.5gb


def test_a_profile_no_bundled_table_knows_is_a_valid_file() -> None:
    path = DATA / "gpu-operator-default-mig-parted-config.yaml"
    for label in ("all-1g.23gb", "all-balanced", "all-1g.35gb"):
        assert config.parse(path.read_text(), str(path), label).selected == label


def test_json_with_tab_indentation_is_read_as_mig_parted_reads_it(
    h100s: Tuple[GpuState, ...],
) -> None:
    # mig-parted's parser test "Well formed" is JSON indented with tabs.
    assert "\t" in (DATA / "spec-test-1-well-formed-as-written.yaml").read_text()
    specs = desired("spec-test-1-well-formed-as-written.yaml", h100s)
    assert {i: s.mig for i, s in specs.items()} == {0: False, 1: False}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\ngpus:\n\t- match: all\n    mig: false\n", 3),
        ("version: v1\nmig-configs:\n  a:\n\t- devices: all\n", 4),
    ],
)
def test_tabs_in_block_indentation_are_still_refused(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse(text, "tabs.yaml")
    assert (caught.value.line, caught.value.problem) == (line, "a tab in the indentation")


def test_tabs_between_flow_tokens_are_whitespace_and_quoted_tabs_are_kept() -> None:
    cfg = config.parse(
        'version: 1\nclients: [\n\t"a.service",\t"b.service"\n]\nhooks: {post-apply: [{argv: ["/bin/echo", "x\ty"]}]}\ngpus: []\n'
    )
    assert cfg.clients == ("a.service", "b.service")
    assert cfg.hooks[0].argv == ("/bin/echo", "x\ty")


def test_validate_model_checks_the_bundled_table_and_no_gpu_only_warns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.integration.cli_util import run

    path = str(DATA / "gpu-operator-default-mig-parted-config.yaml")
    model = run(
        capsys, "-c", path, "--select", "all-1g.23gb", "validate", "--model", "h100-80gb-hbm3"
    )
    assert model.code == 78
    assert (
        "model h100-80gb-hbm3 (bundled table) offers no GPU instance profile '1g.23gb'" in model.err
    )
    bare = run(capsys, "-c", path, "--select", "all-1g.23gb", "validate")
    if "no GPU driver" not in bare.err:
        pytest.skip("a GPU driver is present: validate checks against its GPUs")
    assert bare.code == 0, bare.err
    assert "warning" in bare.err and "1g.23gb" in bare.err
    assert "not checked against any GPU" in bare.out
