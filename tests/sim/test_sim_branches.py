"""Driver branches: a simulated node runs one driver branch (``MODEL[:COUNT][@BRANCH]``)
and answers what that branch answers, checked through pynvml with the exact NVML errors."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Callable

import pynvml
import pytest

from migrestore import simulator
from migrestore.errors import MigrestoreError
from migrestore.simulator import cli, fakelib, models
from migrestore.simulator.state import parse_text
from tests.sim.conftest import BootId
from tests.sim.support import create_gi, device, gi_handles, gi_placements

Attach = Callable[[str], simulator.Simulator]


def _not_supported(call: Callable[[], object]) -> None:
    with pytest.raises(pynvml.NVMLError_NotSupported):
        call()


def test_spec_suffix_sets_the_branch_and_the_version_strings(attach: Attach) -> None:
    sim = attach("h100-80gb-hbm3:2@535")
    assert [g.branch for g in sim.state().gpus] == [535, 535]
    assert pynvml.nvmlSystemGetDriverVersion() == "535.261.03"
    assert pynvml.nvmlSystemGetNVMLVersion() == "12.535.261.03"
    assert pynvml.nvmlSystemGetCudaDriverVersion() == 12020


def test_default_branch_is_580_or_the_models_first(attach: Attach) -> None:
    sim = attach("h100-80gb-hbm3,a100-80gb")
    assert {g.branch for g in sim.state().gpus} == {580}
    assert pynvml.nvmlSystemGetDriverVersion() == "580.159.04"
    assert models.get("gb300-288gb").default_branch() == 595  # R595 minimum (MIG guide)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("h100-80gb-hbm3@999", "driver branch 999 is not simulated"),
        ("h100-80gb-hbm3@abc", "bad driver branch 'abc'"),
        ("b200-180gb@535", "b200-180gb needs driver branch 570 or later"),
        ("h100-80gb-hbm3@470", "h100-80gb-hbm3 needs driver branch 525 or later"),
        ("a100-80gb@535,h100-80gb-hbm3@580", "mixes driver branches 535, 580"),
    ],
)
def test_bad_branches_are_refused_with_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(MigrestoreError) as err:
        simulator.Simulator(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("branch", [525, 535])
def test_before_r550_profile_queries_need_mig_on(attach: Attach, branch: int) -> None:
    attach(f"h100-80gb-hbm3@{branch}")
    dev = device()
    _not_supported(lambda: pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0))
    _not_supported(lambda: pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0, version=1))
    _not_supported(lambda: pynvml.nvmlDeviceGetGpuInstanceProfileInfoById(dev, 19))
    _not_supported(lambda: pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19))
    _not_supported(lambda: gi_handles(dev, 19))
    # Placements are readable "regardless of whether MIG is enabled or not" (nvml.h).
    assert gi_placements(dev, 9) == [(0, 4), (4, 4)]
    pynvml.nvmlDeviceSetMigMode(dev, 1)  # Hopper: at once
    info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0)
    assert (info.id, info.memorySizeMB) == (19, 9984)
    assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19) == 7


@pytest.mark.parametrize("branch", [550, 570, 580])
def test_from_r550_profile_queries_answer_with_mig_off(attach: Attach, branch: int) -> None:
    attach(f"h100-80gb-hbm3@{branch}")
    dev = device()
    assert pynvml.nvmlDeviceGetMigMode(dev) == [0, 0]
    assert pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0).id == 19
    assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19) == 7


def test_ampere_at_535_reads_profiles_only_once_the_pending_mode_took_effect(
    attach: Attach,
) -> None:
    sim = attach("a100-80gb@535")
    dev = device()
    sim.hold(0, pid=1)  # pid 1 always runs: a client that keeps the GPU open
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    assert pynvml.nvmlDeviceGetMigMode(dev) == [0, 1]  # pending: the holder blocks the reset
    _not_supported(lambda: pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0))
    sim.release(0, pid=1)
    sim.reset_gpu(0)
    assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0).memorySizeMB == 9728


def test_a_hopper_reboot_at_535_makes_the_profiles_unreadable_again(attach: Attach) -> None:
    sim = attach("h100-80gb-hbm3@535")
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    create_gi(dev, 9, 0)
    sim.reboot()
    dev = device()
    assert pynvml.nvmlDeviceGetMigMode(dev) == [0, 0]
    _not_supported(lambda: pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 2))


@pytest.mark.parametrize("branch", [535, 550, 570, 580])
def test_gi_profile_index_17_is_past_the_end_up_to_r580(attach: Attach, branch: int) -> None:
    attach(f"h100-80gb-hbm3@{branch}")
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    _not_supported(lambda: pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 16))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 17)


def test_gi_profile_index_17_is_a_valid_index_on_newer_headers(attach: Attach) -> None:
    attach("h100-80gb-hbm3@595")  # NVML_GPU_INSTANCE_PROFILE_3_SLICE_GFX known
    dev = device()
    _not_supported(lambda: pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 17))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 18)


def test_r470_lacks_the_v_profile_calls_and_ci_placement(attach: Attach) -> None:
    attach("a100-80gb@470")
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0)  # ...V: NVML 11.7 (R515)
    info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0, version=1)
    assert info.id == 19
    gi, _, _, _ = create_gi(dev, 19, 0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 0, 0)  # V: NVML 11.6
    placement = pynvml.c_nvmlComputeInstancePlacement_t(0, 1)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(
            gi, 0, ctypes.byref(placement)
        )  # NVML 12.0 (R525)
    pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 0)  # the call without a placement


@pytest.mark.parametrize(("branch", "present"), [(515, False), (525, True)])
def test_ci_creation_with_a_placement_starts_with_r525(
    attach: Attach, branch: int, present: bool
) -> None:
    sim = attach(f"a100-80gb@{branch}")
    assert "nvmlGpuInstanceCreateComputeInstanceWithPlacement" in fakelib.SYMBOL_NAMES
    assert hasattr(sim.library, "nvmlGpuInstanceCreateComputeInstanceWithPlacement") is present
    assert hasattr(sim.library, "nvmlDeviceGetGpuInstanceProfileInfoV")


def test_the_branch_persists_in_the_state_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, boot_id: BootId
) -> None:
    path = tmp_path / "node.json"
    assert cli.main(["init", str(path), "h100-80gb-hbm3:2@535"]) == 0
    assert "driver branch 535" in capsys.readouterr().out
    document = json.loads(path.read_text())
    assert document["driver_version"] == "535.261.03"
    assert [g["branch"] for g in document["gpus"]] == [535, 535]
    sim = simulator.Simulator(str(path))
    try:
        assert [g.branch for g in sim.state().gpus] == [535, 535]
    finally:
        sim.close()
    assert cli.main(["show", str(path)]) == 0
    assert "@535" in capsys.readouterr().out


@pytest.mark.parametrize(("version", "branch"), [("580.159.04", 580), ("535.261.03", 535)])
def test_state_files_without_a_branch_still_load(tmp_path: Path, version: str, branch: int) -> None:
    path = tmp_path / "old.json"
    assert cli.main(["init", str(path), "h100-80gb-hbm3"]) == 0
    document = json.loads(path.read_text())
    document["driver_version"] = version
    for gpu in document["gpus"]:
        del gpu["branch"]  # the shape written before branches existed
    state = parse_text(json.dumps(document), str(path))
    assert [g.branch for g in state.gpus] == [branch]


def test_pci_identity_comes_from_the_simulators_own_table(attach: Attach) -> None:
    attach("h100-80gb-hbm3,b200-180gb,a100-pcie-40gb")
    h100, b200, a100 = (pynvml.nvmlDeviceGetPciInfo(device(i)) for i in range(3))
    assert (h100.pciDeviceId, h100.pciSubSystemId) == (0x233010DE, 0x16C110DE)  # lspci 16c1
    assert (b200.pciDeviceId, b200.pciSubSystemId) == (0x290110DE, 0x000010DE)  # not read
    assert a100.pciDeviceId == 0x20F110DE  # the first of the model's variants
    assert pynvml.nvmlDeviceGetName(device(1)) == "NVIDIA B200"
