"""The platform around a reset (simulator engine rule 8): passthrough GPUs, a loaded
nvidia_drm, NVSwitch groups and Fabric Manager on a DGX A100-like node."""

from __future__ import annotations

from typing import Callable

import pynvml
import pytest

from migrestore import simulator
from migrestore.errors import NvmlError
from migrestore.simulator import cli
from tests.sim.support import device

# every test runs on the fake library and on the simulated libnvidia-ml.so.1
NVML_LIBRARIES = ("fake", "libnvidia-ml")

DGX = ("--nvswitch", "a100-sxm4-40gb:8")


def tool(path: str) -> simulator.Simulator:
    """What nvidia-smi --gpu-reset sees: a simulator without an NVML session."""
    return simulator.Simulator(path)


def test_a_passthrough_gpu_answers_the_status_it_was_given_and_refuses_its_reset(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str]
) -> None:
    path = state_file("a100-80gb:2")
    assert (
        cli.main(["passthrough", path, "--gpu", "1", "--status", "NVML_ERROR_NOT_SUPPORTED"]) == 0
    )
    sim = attach(path)
    # GPU 0 is not passthrough: the driver activates it itself
    assert pynvml.nvmlDeviceSetMigMode(device(0), 1) == pynvml.NVML_SUCCESS
    assert pynvml.nvmlDeviceSetMigMode(device(1), 1) == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert pynvml.nvmlDeviceGetMigMode(device(1)) == [0, 1]
    with pytest.raises(NvmlError) as err:
        tool(path).reset_tool(sim.state().gpus[1].pci_bus_id)
    assert err.value.nvml_error == "NVML_ERROR_NOT_SUPPORTED"
    assert cli.main(["passthrough", path, "--gpu", "1", "--off"]) == 0
    tool(path).reset_tool(sim.state().gpus[1].pci_bus_id)
    assert pynvml.nvmlDeviceGetMigMode(device(1)) == [1, 1]


def test_a_loaded_nvidia_drm_holds_every_gpu(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str]
) -> None:
    path = state_file("a100-80gb:1")
    assert cli.main(["module", path, "load", "nvidia_drm"]) == 0
    sim = attach(path)
    assert sim.module_loaded("nvidia_drm")
    assert pynvml.nvmlDeviceSetMigMode(device(0), 1) == pynvml.NVML_ERROR_IN_USE
    bus = sim.state().gpus[0].pci_bus_id
    with pytest.raises(NvmlError) as err:
        tool(path).reset_tool(bus)
    assert err.value.nvml_error == "NVML_ERROR_IN_USE"
    assert "nvidia_drm" not in str(err.value)  # the tool does not say why
    assert cli.main(["module", path, "unload", "nvidia_drm"]) == 0
    tool(path).reset_tool(bus)
    assert pynvml.nvmlDeviceGetMigMode(device(0)) == [1, 1]


def test_nvswitch_links_are_read_through_nvml(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str]
) -> None:
    attach(state_file(*DGX))
    dev = device(3)
    assert (
        pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(dev, 0) == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
    )
    assert (
        pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(dev, 11) == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
    )
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(dev, 12)


def test_a_pcie_gpu_has_no_nvlink(attach: Callable[[str], simulator.Simulator]) -> None:
    attach("a100-80gb")
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(device(0), 0)


def test_fabric_manager_down_needs_the_whole_group_in_one_reset(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str]
) -> None:
    path = state_file(*DGX)
    sim = attach(path)
    buses = [g.pci_bus_id for g in sim.state().gpus]
    # Fabric Manager running: the driver activates one GPU alone, a reset of one works
    assert pynvml.nvmlDeviceSetMigMode(device(0), 1) == pynvml.NVML_SUCCESS
    tool(path).reset_tool(buses[0])
    assert cli.main(["fabric-manager", path, "stop"]) == 0
    assert pynvml.nvmlDeviceSetMigMode(device(1), 1) == pynvml.NVML_ERROR_IN_USE
    before = sim.change_count
    with pytest.raises(NvmlError) as err:
        tool(path).reset_tool(buses[1])
    assert err.value.nvml_error == "NVML_ERROR_UNKNOWN"
    others = [b for i, b in enumerate(buses) if i != 1]
    assert ",".join(others) in str(err.value)
    assert sim.change_count == before  # nothing was reset
    tool(path).reset_tool(",".join(buses))
    assert pynvml.nvmlDeviceGetMigMode(device(1)) == [1, 1]
    assert sim.change_count == before + 8
    assert cli.main(["fabric-manager", path, "start"]) == 0
    assert sim.state().fabric_manager is True
