"""Fixtures of the C library tests: the simulated libnvidia-ml.so.1 (built by
``make sim-lib`` when missing or stale), the C client program built with the system
compiler against ``csrc/nvml_abi.h``, and state files with a boot id of the test's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import pytest

from migrestore.simulator import cli
from migrestore.simulator.state import BOOT_ID_ENV

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "build" / "sim" / "libnvidia-ml.so.1"
CLIENT_SOURCE = Path(__file__).with_name("nvml_client.c")


def build_library() -> Path:
    """``make sim-lib`` with this Python (make rebuilds only what changed)."""
    make = shutil.which("make")
    assert make, "make is needed to build the simulated libnvidia-ml.so.1"
    subprocess.run(
        [make, "-s", "-C", str(ROOT), "sim-lib", f"PYTHON={sys.executable}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    assert LIBRARY.is_file()
    return LIBRARY


@pytest.fixture(scope="session")
def simlib() -> Path:
    return build_library()


@pytest.fixture(scope="session")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C client (tests/cabi/nvml_client.c), built with the system gcc."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed for the C client"
    out = tmp_path_factory.mktemp("client") / "nvml_client"
    subprocess.run(
        [
            cc,
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{ROOT / 'csrc'}",
            "-o",
            str(out),
            str(CLIENT_SOURCE),
            "-ldl",
            "-pthread",
        ],
        check=True,
    )
    return out


class Node:
    """A state file, the environment that selects it, and ways to run the C client,
    migrestore and migrestore-sim on it."""

    def __init__(self, path: Path, boot_file: Path, simlib: Path, client: Path) -> None:
        self.path = str(path)
        self.boot_file = boot_file
        self.simlib = simlib
        self.client = client
        self.env: Dict[str, str] = dict(os.environ)
        self.env["MIGRESTORE_SIMULATE"] = self.path
        self.env[BOOT_ID_ENV] = str(boot_file)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )

    def c(self, *commands: str, check: bool = True) -> List[str]:
        """Run the C client with ``commands``; its output lines."""
        done = subprocess.run(
            [str(self.client), str(self.simlib), *commands],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.splitlines()

    def c_popen(self, *commands: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(self.client), str(self.simlib), *commands],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def migrestore(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "migrestore", "--simulate", self.path, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def sim(self, *args: str) -> None:
        assert cli.main([args[0], self.path, *args[1:]]) == 0


@pytest.fixture
def make_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, simlib: Path, client: Path
) -> Callable[..., Node]:
    boot_file = tmp_path / "boot_id"
    boot_file.write_text("boot-1\n")
    monkeypatch.setenv(BOOT_ID_ENV, str(boot_file))

    def make(spec: Sequence[str], name: str = "gpus.json") -> Node:
        path = tmp_path / name
        assert cli.main(["init", str(path), *spec, "--force"]) == 0
        return Node(path, boot_file, simlib, client)

    return make
