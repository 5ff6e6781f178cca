"""Fixtures of the simulator tests: a simulator attached beneath pynvml (and detached
after, even when the test fails), state files, and a boot id the test controls.

A test module that sets ``NVML_LIBRARIES = ("fake", "libnvidia-ml")`` runs each of its
tests twice: on the fake library ``attach`` installs, and on the simulated C library
(``build/sim/libnvidia-ml.so.1``, built when missing) that pynvml's own loader opens,
over a state file made from the spec; the results must be the same."""

from __future__ import annotations

import _ctypes
import ctypes
import itertools
import os
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import pynvml
import pytest

from migrestore import simulator
from migrestore.simulator import cli
from migrestore.simulator.state import BOOT_ID_ENV

LIBRARIES = ("fake", "libnvidia-ml")
_LOADED: List[
    Any
] = []  # the C library, loaded once by path: pynvml's CDLL("libnvidia-ml.so.1") finds it by soname


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = getattr(metafunc.module, "NVML_LIBRARIES", None)
    if wanted and "nvml_lib" in metafunc.fixturenames:
        metafunc.parametrize("nvml_lib", wanted, indirect=True)


@pytest.fixture
def nvml_lib(request: pytest.FixtureRequest) -> str:
    """Which library pynvml runs on: ``fake`` (``attach``) or ``libnvidia-ml`` (the C one)."""
    return str(getattr(request, "param", "fake"))


def _shutdown_all() -> None:
    """Shut NVML down fully (the C library keeps its state until then); a count left by
    an ``attach`` whose library is gone is just reset."""
    while pynvml._nvmlLib_refcount > 0 and pynvml.nvmlLib is not None:
        pynvml.nvmlShutdown()
    pynvml._nvmlLib_refcount = 0


@pytest.fixture
def attach(
    nvml_lib: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], simulator.Simulator]]:
    """``attach(spec)``: a simulator beneath pynvml, NVML initialised."""
    before = pynvml.nvmlLib
    made: List[simulator.Simulator] = []
    loaded: List[Any] = []  # every dlopen of the C library in this test
    numbers = itertools.count(1)

    def make(spec: str) -> simulator.Simulator:
        if nvml_lib == "fake":
            sim = simulator.attach(pynvml, spec)
        else:
            sim, preload = _on_the_c_library(
                spec, tmp_path / f"lib-{next(numbers)}.json", monkeypatch
            )
            loaded.append(preload)
        made.append(sim)
        pynvml.nvmlInit()
        if nvml_lib != "fake":
            loaded.append(pynvml.nvmlLib)
        return sim

    yield make
    if nvml_lib != "fake":
        _shutdown_all()
    for sim in made:
        sim.close()
    pynvml.nvmlLib = before
    pynvml._nvmlGetFunctionPointer_cache.clear()
    # unload the C library again (every dlopen closed), so the next test's
    # CDLL("libnvidia-ml.so.1") finds no driver unless it loads the library itself
    for lib in loaded:
        if isinstance(lib, ctypes.CDLL):
            _ctypes.dlclose(lib._handle)


def _on_the_c_library(
    spec: str, path: Path, monkeypatch: pytest.MonkeyPatch
) -> Tuple[simulator.Simulator, ctypes.CDLL]:
    """Select ``spec`` (a state file, or made into one) for the C library and load the
    library by path, so pynvml's own ``CDLL("libnvidia-ml.so.1")`` at its next nvmlInit
    finds it by its soname. Returns a simulator on the same state file (for the test's
    own checks) and the library loaded here (for unloading)."""
    from tests.cabi.conftest import build_library

    preload = ctypes.CDLL(str(build_library()))
    if not (os.sep in spec or spec.endswith(".json") or os.path.exists(spec)):
        assert cli.main(["init", str(path), *spec.split(","), "--force"]) == 0
        spec = str(path)
    _shutdown_all()  # a new state is chosen at the first nvmlInit
    monkeypatch.setenv("MIGRESTORE_SIMULATE", spec)
    pynvml.nvmlLib = None
    pynvml._nvmlGetFunctionPointer_cache.clear()
    return simulator.Simulator(spec), preload


class BootId:
    """The boot id the simulator reads (through ``MIGRESTORE_SIM_BOOT_ID_FILE``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set("boot-1")

    def set(self, value: str) -> None:
        self.path.write_text(value + "\n", encoding="ascii")


@pytest.fixture
def boot_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BootId:
    path = tmp_path / "boot_id"
    boot = BootId(path)
    monkeypatch.setenv(BOOT_ID_ENV, str(path))
    return boot


@pytest.fixture
def state_file(tmp_path: Path, boot_id: BootId) -> Callable[..., str]:
    """``state_file("a30-24gb:2", "--passthrough")``: a fresh state file made by
    ``migrestore-sim init``; returns its path."""

    def make(*spec: str) -> str:
        path = tmp_path / "gpus.json"
        assert cli.main(["init", str(path), *spec, "--force"]) == 0
        return str(path)

    return make
