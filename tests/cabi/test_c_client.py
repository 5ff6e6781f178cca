"""A C program on the simulated libnvidia-ml.so.1: it loads the library with dlopen and
drives MIG through nvml.h's functions on the same state file migrestore and
migrestore-sim use, with the same rules, faults, holders, latency and reboots."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Sequence

import pytest

from migrestore.simulator import cli, clib, codes, fakelib
from tests.cabi.conftest import Node

MakeNode = Callable[[Sequence[str]], Node]


def _geometry_of_status(status: Dict[str, Any]) -> List[Dict[str, Any]]:
    """What the C client reads, projected from ``migrestore status --json``."""
    return [
        {
            "index": gpu["index"],
            "uuid": gpu["uuid"],
            "name": gpu["name"],
            "pci_bus_id": gpu["pci_bus_id"],
            "mig": {"current": gpu["mig"]["current"], "pending": gpu["mig"]["pending"]},
            "instances": sorted(
                (
                    {
                        "gi_id": gi["gi_id"],
                        "profile_id": gi["profile_id"],
                        "placement": gi["placement"],
                        "compute": [
                            {
                                "ci_id": ci["ci_id"],
                                "profile_id": ci["profile_id"],
                                "placement": ci["placement"],
                                "uuid": ci["uuid"],
                            }
                            for ci in gi["compute"]
                        ],
                    }
                    for gi in gpu["instances"]
                ),
                key=lambda gi: (gi["profile_id"], gi["placement"][0]),
            ),
        }
        for gpu in status["gpus"]
    ]


def _c_geometry(node: Node) -> List[Dict[str, Any]]:
    (line,) = node.c("init", "read")[1:]
    gpus: List[Dict[str, Any]] = json.loads(line)["gpus"]
    for gpu in gpus:
        gpu["instances"].sort(key=lambda gi: (gi["profile_id"], gi["placement"][0]))
    return gpus


def _status(node: Node) -> Dict[str, Any]:
    done = node.migrestore("status", "--json")
    assert done.returncode == 0, done.stderr
    data: Dict[str, Any] = json.loads(done.stdout)
    return data


def test_the_library_exports_exactly_what_the_simulator_answers(simlib: Any) -> None:
    """Checked in a process of its own: a library loaded into the test process would
    stay there and answer every later test's CDLL("libnvidia-ml.so.1")."""
    clib.check_symbols()
    script = (
        "import ctypes, sys\n"
        "lib = ctypes.CDLL(sys.argv[1])\n"
        "for name in sys.argv[2:]:\n"
        "    print(name, hasattr(lib, name))\n"
    )
    absent = ("nvmlDeviceGetTemperature", "nvmlInit", "nvmlDeviceGetPciInfo", "PyGILState_Ensure")
    done = subprocess.run(
        [sys.executable, "-c", script, str(simlib), *fakelib.SYMBOL_NAMES, *absent],
        capture_output=True,
        text=True,
        check=True,
    )
    found = dict(line.split() for line in done.stdout.splitlines())
    # every function the simulator answers, and nothing else (as with an older driver)
    assert found == {**{n: "True" for n in fakelib.SYMBOL_NAMES}, **{n: "False" for n in absent}}


def test_a_full_mig_cycle_from_c_reads_what_migrestore_status_shows(make_node: MakeNode) -> None:
    node = make_node(["h100-80gb-hbm3:2"])
    out = node.c(
        "init",
        "mode", "0", "1",
        "create-gi", "0", "19", "3", "1",  # 1g.10gb at 3
        "create-gi", "0", "9", "4", "4",  # 3g.40gb at 4
        "create-ci", "0", "10", "0",  # full CI of the 1g
        "create-ci", "0", "2", "0",  # 1c of the 3g (GI ID 2)
        "create-ci", "0", "2", "0",
        "read",
    )  # fmt: skip
    assert out[:7] == [
        "init 0",
        "mode 0 0",
        "gi 0 10 3 1",  # GI ID = swizzId of 1 slice at 3
        "gi 0 2 4 4",
        "ci 0 0 0 1",
        "ci 0 0 0 1",
        "ci 0 1 1 1",
    ]
    seen = json.loads(out[7])["gpus"]
    for gpu in seen:
        gpu["instances"].sort(key=lambda gi: (gi["profile_id"], gi["placement"][0]))
    assert seen == _geometry_of_status(_status(node))
    assert len(seen[0]["instances"]) == 2
    assert all(ci["uuid"].startswith("MIG-") for gi in seen[0]["instances"] for ci in gi["compute"])

    # destroy: CI then GI; the destroyed GI's handle is refused afterwards
    out = node.c(
        "init",
        "destroy-ci", "0", "2", "1",
        "destroy-ci", "0", "2", "0",
        "destroy-gi", "0", "2",
    )  # fmt: skip
    assert out[1:] == ["destroy 0", "destroy 0", f"destroy 0 {codes.INVALID_ARGUMENT}"]
    assert _c_geometry(node) == _geometry_of_status(_status(node))
    assert [gi["gi_id"] for gi in _c_geometry(node)[0]["instances"]] == [10]


MIXED = """\
version: 1
clients: []
gpus:
  - match: {{uuid: {uuid}}}
    mig: true
    instances:
      - profile: 3g.40gb
        placement: 4
        compute: [1c.3g.40gb, 1c.3g.40gb, 1c.3g.40gb]
      - {{profile: 2g.20gb, placement: 0}}
      - {{profile: 1g.10gb, placement: {one}}}
"""


def test_the_c_program_reads_what_migrestore_applied(make_node: MakeNode, tmp_path: Any) -> None:
    node = make_node(["h100-80gb-hbm3:2"])
    uuid = _status(node)["gpus"][1]["uuid"]
    config = tmp_path / "mig.yaml"
    config.write_text(MIXED.format(uuid=uuid, one=2))
    done = node.migrestore("-c", str(config), "apply", "--no-clients")
    assert done.returncode == 0, done.stderr
    seen = _c_geometry(node)
    assert seen == _geometry_of_status(_status(node))
    assert seen[0]["instances"] == []
    assert sorted((gi["placement"], len(gi["compute"])) for gi in seen[1]["instances"]) == [
        ([0, 2], 1),
        ([2, 1], 1),
        ([4, 4], 3),
    ]


def _change_count(node: Node) -> int:
    with open(node.path, encoding="utf-8") as f:
        value: int = json.load(f)["change_count"]
    return value


def _apply_layouts(node: Node, configs: List[str], times: int) -> None:
    for i in range(times):
        done = node.migrestore("-c", configs[i % 2], "apply", "--no-clients")
        assert done.returncode == 0, done.stderr


def test_the_c_program_and_migrestore_change_one_state_file_at_once(
    make_node: MakeNode, tmp_path: Any
) -> None:
    """The C client churns GPU 0 (4 changes a cycle) from before migrestore starts until
    after it ends, while migrestore applies two layouts on GPU 1 in turn: every change
    of both lands, none is lost or torn."""
    applies = 3
    node = make_node(["h100-80gb-hbm3:2"])
    uuid = _status(node)["gpus"][1]["uuid"]
    configs = []
    for one in (2, 3):
        path = tmp_path / f"mig-{one}.yaml"
        path.write_text(MIXED.format(uuid=uuid, one=one))
        configs.append(str(path))

    # the changes the applies make alone, on a node of their own
    reference = make_node(["h100-80gb-hbm3:2"], "reference.json")
    _apply_layouts(reference, configs, applies)
    with open(reference.path, encoding="utf-8") as f:
        alone = json.load(f)

    assert node.c("init", "mode", "0", "1") == ["init 0", "mode 0 0"]
    start = _change_count(node)
    stop = tmp_path / "stop"
    churn = node.c_popen("init", "churn-until", "0", "9", "0", "4", "2", str(stop))
    deadline = time.monotonic() + 60
    while _change_count(node) < start + 8:  # the churn is under way
        assert churn.poll() is None and time.monotonic() < deadline
    _apply_layouts(node, configs, applies)
    stop.touch()
    out, err = churn.communicate(timeout=300)
    assert churn.returncode == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "init 0" and lines[1].startswith("churn OK ")
    cycles = int(lines[1].split()[2])

    # the state file is whole and both writers' changes are in it
    with open(node.path, encoding="utf-8") as f:
        final = json.load(f)
    assert final["gpus"][0]["gis"] == []
    assert final["change_count"] - start == 4 * cycles + alone["change_count"]
    shape = [(gi["profile_id"], gi["start"], len(gi["cis"])) for gi in final["gpus"][1]["gis"]]
    assert shape == [
        (gi["profile_id"], gi["start"], len(gi["cis"])) for gi in alone["gpus"][1]["gis"]
    ]
    assert _c_geometry(node) == _geometry_of_status(_status(node))


@pytest.mark.parametrize("variable", ["LD_LIBRARY_PATH", "LD_PRELOAD"])
def test_migrestore_sim_lib_says_how_to_point_a_program_at_the_library(
    make_node: MakeNode, variable: str, capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(["a30-24gb:1"])
    capsys.readouterr()
    assert cli.main(["lib", node.path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"simulated NVML library: {node.simlib}"
    (command,) = [line.split() for line in lines if f" {variable}=" in line]
    assert command[0] == f"MIGRESTORE_SIMULATE={node.path}"
    name, value = command[1].split("=", 1)
    # the C client opens the library by name, as a program built against NVML does
    node.env[name] = value
    node.simlib = type(node.simlib)("libnvidia-ml.so.1")
    assert node.c("init", "read")[0] == "init 0"
    assert cli.main(["lib", "--path"]) == 0
    assert capsys.readouterr().out == f"{lines[0].split(': ')[1]}\n"


def test_profile_info_v3_structs_carry_what_v2_carries(make_node: MakeNode) -> None:
    """nvml.h's v3 profile structs (GI: no isP2pSupported, capabilities at the end; CI:
    v2 plus capabilities) through the ...ProfileInfoV calls, next to v2."""
    node = make_node(["h100-80gb-hbm3:1"])
    out = node.c(
        "init", "mode", "0", "1", "create-gi", "0", "9", "4", "4", "profile-v3", "0", "2", "2", "0"
    )
    v2, v3, c2, c3 = (line.split(" ", 2)[2] for line in out[3:])
    assert v2 == "0 9 3 2 60 40448 MIG 3g.40gb"
    assert v3 == v2 + " caps=0"
    assert c2.startswith("0 0 1 3 ") and c2.endswith(" MIG 1c.3g.40gb")
    assert c3 == c2 + " caps=0"
