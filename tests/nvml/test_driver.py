"""No driver, a driver that fails to initialise, and (read-only) a real GPU when present."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pynvml
import pytest

from migrestore import tables
from migrestore.backend import Hardware, Simulated
from migrestore.errors import EXIT_UNAVAILABLE, DriverUnavailable
from migrestore.nvml import Nvml
from migrestore.simulator import Simulator
from migrestore.simulator.engine import fresh_state
from migrestore.simulator.state import write_new


def _real_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_real_library_present(), reason="libnvidia-ml.so.1 is installed here")
def test_no_driver_is_driver_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    pynvml._nvmlGetFunctionPointer_cache.clear()
    nv = Nvml(Hardware())
    with pytest.raises(DriverUnavailable) as info:
        nv.open()
    err = info.value
    assert err.exit_code == EXIT_UNAVAILABLE == 69
    assert str(err).startswith(
        "no NVIDIA driver found (NVML_ERROR_LIBRARY_NOT_FOUND): is the nvidia kernel module loaded?"
    )
    assert "\n" not in str(err)
    # the context manager form fails the same way
    with pytest.raises(DriverUnavailable), Nvml(Hardware()):
        pass


def test_init_failure_names_the_nvml_error_and_detaches(tmp_path: Path) -> None:
    path = str(tmp_path / "sim.json")
    write_new(path, fresh_state(["h100-80gb-hbm3"]))
    sim = Simulator(path)
    sim.fail("nvmlInitWithFlags", 1, "NVML_ERROR_DRIVER_NOT_LOADED")
    sim.close()
    nv = Nvml(Simulated(path))
    with pytest.raises(DriverUnavailable) as info:
        nv.open()
    assert info.value.exit_code == 69
    assert str(info.value).startswith(
        "NVIDIA driver not loaded (NVML_ERROR_DRIVER_NOT_LOADED): load it with `modprobe nvidia`"
    )
    assert not nv.backend.attached
    assert pynvml.nvmlLib is None
    # the fault was one-shot: the driver "came up", the next session works on the same file
    with Nvml(Simulated(path)) as again:
        (gpu,) = again.observe()
        assert gpu.identity.name == tables.model("h100-80gb-hbm3").nvml_name


@pytest.mark.skipif(not _real_library_present(), reason="no NVIDIA driver on this machine")
def test_observe_a_real_gpu_read_only() -> None:
    # Read-only: never change MIG on a real GPU.
    with Nvml(Hardware()) as nv:
        observed = nv.observe()
        assert nv.driver_version()
    for gpu in observed:
        assert gpu.uuid.startswith("GPU-")
        if not gpu.identity.mig_capable:
            assert gpu.profiles == () and gpu.instances == ()
        starts = [gi.placement.start for gi in gpu.instances]
        assert starts == sorted(starts)
