"""Fixtures of the simulator tests: a simulator attached beneath pynvml (and detached
after, even when the test fails), state files, and a boot id the test controls."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List

import pynvml
import pytest

from migrestore import simulator
from migrestore.simulator import cli
from migrestore.simulator.state import BOOT_ID_ENV


@pytest.fixture
def attach() -> Iterator[Callable[[str], simulator.Simulator]]:
    """``attach(spec)``: a simulator beneath pynvml, NVML initialised."""
    before = pynvml.nvmlLib
    made: List[simulator.Simulator] = []

    def make(spec: str) -> simulator.Simulator:
        sim = simulator.attach(pynvml, spec)
        made.append(sim)
        pynvml.nvmlInit()
        return sim

    yield make
    for sim in made:
        sim.close()
    pynvml.nvmlLib = before
    pynvml._nvmlGetFunctionPointer_cache.clear()


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
