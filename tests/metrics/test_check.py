"""`migrestore status --check` end to end on simulated GPUs: the exit code and the one
line (at most 80 characters) for each state a monitor must tell apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from tests.integration.daemon_util import Node

LAYOUT = """\
version: 1
clients: [nvidia-dcgm.service]
drift: {{policy: {policy}, interval: 1}}
gpus:
  - match: all
    mig: true
    instances:
      - {{profile: 3g.40gb, placement: {at}}}
      - {{profile: 1g.10gb, count: 2}}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path, "h100-80gb-hbm3:2")
    n.write_config(LAYOUT.format(policy="restore", at=4))
    yield n
    n.cleanup()


def check(node: Node) -> Tuple[int, str]:
    done = node.migrestore("status", "--check")
    lines = done.stdout.splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    assert len(lines[0]) <= 80, lines[0]
    return done.returncode, lines[0]


def test_no_state_file_is_unknown(node: Node) -> None:
    assert check(node) == (2, "UNKNOWN: no state file: migrestore has not run since boot")


def test_no_driver_is_unknown(node: Node) -> None:
    # no --simulate: this machine has no NVIDIA driver (as in the daemon's no-driver test)
    argv = [sys.executable, "-m", "migrestore", "-c", str(node.config), "status", "--check"]
    done = subprocess.run(argv, env=node.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith("UNKNOWN: no NVIDIA driver")
    assert len(done.stdout.splitlines()) == 1 and len(done.stdout.rstrip("\n")) <= 80


def test_converged_after_apply_is_ok(node: Node) -> None:
    assert node.migrestore("apply", "--no-clients").returncode == 0
    code, line = check(node)
    assert code == 0
    assert line.startswith("OK: converged: 2 MIG GPUs, 6 MIG devices; applied 20")


def test_a_failed_pass_is_a_problem_until_a_pass_succeeds(node: Node) -> None:
    node.sim(
        "fail",
        node.state,
        "--call",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "--nth",
        "2",
        "--error",
        "NVML_ERROR_INSUFFICIENT_RESOURCES",
    )
    assert node.migrestore("apply", "--no-clients").returncode == 1
    code, line = check(node)
    assert code == 1
    assert line.startswith("PROBLEM: last pass failed at 20")
    assert node.migrestore("apply", "--no-clients").returncode == 0
    assert check(node)[0] == 0


def test_units_left_stopped_are_a_problem(node: Node) -> None:
    node.units.add("nvidia-dcgm.service")
    node.units.fail_start("nvidia-dcgm.service", "Job failed")
    node.migrestore("apply")
    assert node.units.state("nvidia-dcgm.service") != "active"
    assert check(node) == (1, "PROBLEM: units left stopped: nvidia-dcgm.service")
    # the next run starts it again, and the check is fine again
    (node.units.dir / "start-fail" / "nvidia-dcgm.service").unlink()
    assert node.migrestore("apply").returncode == 0
    assert node.units.state("nvidia-dcgm.service") == "active"
    assert check(node)[0] == 0


def test_drift_left_in_place_is_a_problem(node: Node) -> None:
    node.write_config(LAYOUT.format(policy="warn", at=4))
    assert node.migrestore("apply", "--no-clients").returncode == 0
    gi = node.show()["gpus"][1]["gis"][0]
    node.sim(
        "destroy-ci",
        node.state,
        "--gpu",
        "1",
        "--gi",
        str(gi["id"]),
        "--ci",
        str(gi["cis"][0]["id"]),
    )
    code, line = check(node)
    assert code == 1
    assert line.startswith("PROBLEM: not converged: GPU 1: create CI")


def test_a_config_that_no_longer_loads_is_a_problem(node: Node) -> None:
    assert node.migrestore("apply", "--no-clients").returncode == 0
    node.write_config("version: 1\ngpus: {}\n")
    code, line = check(node)
    assert code == 1
    # the file:line message, cut at 80 characters (a test's directory path is long)
    assert line.startswith("PROBLEM: config: " + str(node.config)[:20])
