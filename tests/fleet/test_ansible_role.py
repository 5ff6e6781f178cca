"""The Ansible role (contrib/ansible/roles/migrestore) run by real ansible-core over SSH
against three nodes, each a booted Debian container with the .deb, its own simulated
GPUs and Debian's sshd, in a network namespace of its own (tests/fleet/fleet.py).

The role runs with its defaults, as on a real node: /etc/migrestore.yaml, /usr/bin/
migrestore, and `systemctl reload-or-restart migrestore.service` in the handler, so a
change is applied by the packaged daemon under systemd (SIGHUP), not by the role. The
only node-specific variable is the simulator's state file for the CLI (validate, plan).

One fleet for the module, so the tests run in file order: first run (layout A), second
run, check mode (B), B with a bad config on node2, then C rolled out with site.yml
(serial: 1).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import pytest

from tests.fleet import fleet as f
from tests.packaging import pkgbuild
from tests.system import node as n

pytestmark = pytest.mark.fleet

H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
# Each node its own GPUs: two H100s; one H200; one of each.
GPUS = {
    "node1": "h100-80gb-hbm3:2",
    "node2": "h200-141gb:1",
    "node3": "h100-80gb-hbm3:1,h200-141gb:1",
}
MODELS = {"node1": (H100, H100), "node2": (H200,), "node3": (H100, H200)}

GI = Tuple[str, int, int]
# Per model: the instances of a layout, and the GIs `migrestore status` reports for it.
LAYOUTS: Dict[str, Dict[str, Tuple[List[Dict[str, Any]], Tuple[GI, ...]]]] = {
    "A": {
        H100: (
            [
                {"profile": "3g.40gb", "placement": 4},
                {"profile": "1g.10gb", "placement": 0},
                {"profile": "1g.10gb", "placement": 1},
            ],
            (("1g.10gb", 0, 1), ("1g.10gb", 1, 1), ("3g.40gb", 4, 4)),
        ),
        H200: ([{"profile": "7g.141gb"}], (("7g.141gb", 0, 8),)),
    },
    "B": {
        H100: ([{"profile": "7g.80gb"}], (("7g.80gb", 0, 8),)),
        H200: (
            [{"profile": "3g.71gb", "placement": 0}, {"profile": "3g.71gb", "placement": 4}],
            (("3g.71gb", 0, 4), ("3g.71gb", 4, 4)),
        ),
    },
    "C": {
        H100: (
            [{"profile": "4g.40gb", "placement": 0}, {"profile": "2g.20gb", "placement": 4}],
            (("2g.20gb", 4, 2), ("4g.40gb", 0, 4)),
        ),
        H200: (
            [{"profile": "4g.71gb", "placement": 0}, {"profile": "3g.71gb", "placement": 4}],
            (("3g.71gb", 4, 4), ("4g.71gb", 0, 4)),
        ),
    },
}
# The bad config: the template writes a one-line header, then the keys in this order,
# so the unknown key is on line 4 of the rendered file.
BAD_LINE = 4


def config(layout: str) -> Dict[str, Any]:
    """One config for the whole fleet: a rule per model."""
    return {
        "version": 1,
        "clients": ["nvidia-dcgm.service"],
        "gpus": [
            {"match": {"model": model}, "mig": True, "instances": LAYOUTS[layout][model][0]}
            for model in (H100, H200)
        ],
    }


def bad_config() -> Dict[str, Any]:
    return {"version": 1, "clients": [], "no-such-key": 1, "gpus": []}


def everywhere(layout: str) -> Dict[str, Any]:
    return {name: config(layout) for name in GPUS}


def expected(name: str, layout: str) -> n.Geometry:
    return {
        index: (True, tuple(sorted(LAYOUTS[layout][model][1])))
        for index, model in enumerate(MODELS[name])
    }


@pytest.fixture(scope="module")
def fleet(
    prerequisites: None, deb: pkgbuild.Built, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[f.Fleet]:
    with f.Fleet(tmp_path_factory.mktemp("fleet"), deb.deb, GPUS) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def playbook(fleet: f.Fleet) -> Path:
    """All nodes at once (the linear strategy: a failed node drops out, the rest go on)."""
    path = fleet.workdir / "all-at-once.yml"
    path.write_text("- name: MIG geometry\n  hosts: gpu_nodes\n  roles:\n    - migrestore\n")
    return path


def geometries(fleet: f.Fleet) -> Dict[str, n.Geometry]:
    return {node.name: n.geometry(node.container) for node in fleet.nodes}


def daemons(fleet: f.Fleet) -> Dict[str, Dict[str, str]]:
    return {
        node.name: node.container.show(n.UNIT, "MainPID", "InvocationID", "ActiveState")
        for node in fleet.nodes
    }


def assert_recap(run: f.Run, changed: Mapping[str, bool], failed: Mapping[str, bool]) -> None:
    for name in GPUS:
        recap = run.recap.get(name)
        assert recap is not None, f"no PLAY RECAP line for {name}:\n{run.output}"
        assert recap["unreachable"] == 0, run.output
        assert (recap["failed"] > 0) == failed[name], f"{name}: {recap}\n{run.output}"
        assert (recap["changed"] > 0) == changed[name], f"{name}: {recap}\n{run.output}"


def test_first_run_changes_every_node_through_a_reload(fleet: f.Fleet, playbook: Path) -> None:
    before = daemons(fleet)
    assert all(d["ActiveState"] == "active" for d in before.values()), before

    run = fleet.playbook(everywhere("A"), playbook)

    assert run.returncode == 0, run.output
    assert_recap(run, dict.fromkeys(GPUS, True), dict.fromkeys(GPUS, False))
    assert geometries(fleet) == {name: expected(name, "A") for name in GPUS}
    # Applied by the running daemon (reload: same process, same invocation).
    assert daemons(fleet) == before
    for node in fleet.nodes:
        assert node.container.read(n.CONFIG).startswith("# Ansible managed\n")
        journal = node.container.journal(n.UNIT)
        assert f"config_reloaded path={n.CONFIG}" in journal, journal
        assert re.search(r"^restored .*reason=reload$", journal, re.MULTILINE), journal


def test_second_run_changes_nothing(fleet: f.Fleet, playbook: Path) -> None:
    cursors = {node.name: node.container.cursor() for node in fleet.nodes}

    run = fleet.playbook(everywhere("A"), playbook)

    assert run.returncode == 0, run.output
    assert_recap(run, dict.fromkeys(GPUS, False), dict.fromkeys(GPUS, False))
    assert "RUNNING HANDLER" not in run.output
    for node in fleet.nodes:
        assert "config_reloaded" not in node.container.journal(n.UNIT, cursors[node.name])


def test_check_mode_shows_the_plan_and_changes_nothing(fleet: f.Fleet, playbook: Path) -> None:
    configs = {node.name: node.container.read(n.CONFIG) for node in fleet.nodes}
    cursors = {node.name: node.container.cursor() for node in fleet.nodes}

    run = fleet.playbook(everywhere("B"), playbook, "--check", "--diff")

    assert run.returncode == 0, run.output
    assert_recap(run, dict.fromkeys(GPUS, True), dict.fromkeys(GPUS, False))
    # The plan, per node: node3's GPU 1 (an H200) is split in two 3g.71gb.
    assert "GPU 0: create GI 7g.80gb at 0:8" in run.output
    assert "GPU 1: create GI 3g.71gb at 4:4" in run.output
    # --diff shows the config text too.
    assert re.search(r"^\+ +- profile: 7g\.80gb$", run.output, re.MULTILINE), run.output
    # The handler is skipped on every node.
    after = run.output.split("RUNNING HANDLER [migrestore : Reload migrestore]", 1)[1]
    handler = after.split("\n\n", 1)[0].splitlines()[1:]
    assert sorted(handler) == [f"skipping: [{name}]" for name in GPUS], run.output
    assert geometries(fleet) == {name: expected(name, "A") for name in GPUS}
    for node in fleet.nodes:
        assert node.container.read(n.CONFIG) == configs[node.name]
        assert "config_reloaded" not in node.container.journal(n.UNIT, cursors[node.name])


def test_a_bad_config_fails_that_node_only_and_the_others_converge(
    fleet: f.Fleet, playbook: Path
) -> None:
    configs = everywhere("B")
    configs["node2"] = bad_config()
    installed = fleet.nodes[1].container.read(n.CONFIG)

    run = fleet.playbook(configs, playbook)

    assert run.returncode != 0, run.output
    assert_recap(
        run,
        {"node1": True, "node2": False, "node3": True},
        {"node1": False, "node2": True, "node3": False},
    )
    failure = "\n".join(ln for ln in run.host_lines("node2") if ln.startswith("fatal:"))
    assert re.search(rf":{BAD_LINE}: no-such-key: unknown key", failure), run.output
    assert "failed to validate" in failure, failure
    assert fleet.nodes[1].container.read(n.CONFIG) == installed
    assert geometries(fleet) == {
        "node1": expected("node1", "B"),
        "node2": expected("node2", "A"),
        "node3": expected("node3", "B"),
    }


def reload_times(fleet: f.Fleet, cursors: Mapping[str, str]) -> Dict[str, Tuple[float, float]]:
    """Per node: when its daemon read the new config, and when it had restored it."""
    times = {}
    for node in fleet.nodes:
        out = node.container.run(
            [
                "journalctl",
                "--no-pager",
                "-o",
                "short-unix",
                "-u",
                n.UNIT,
                "--after-cursor",
                cursors[node.name],
            ]
        ).stdout
        read = [float(ln.split()[0]) for ln in out.splitlines() if " config_reloaded " in ln]
        done = [
            float(ln.split()[0])
            for ln in out.splitlines()
            if " restored " in ln and ln.endswith(" reason=reload")
        ]
        assert len(read) == 1 and len(done) == 1, out
        times[node.name] = (read[0], done[0])
    return times


def test_serial_one_rolls_the_change_out_node_by_node(fleet: f.Fleet) -> None:
    cursors = {node.name: node.container.cursor() for node in fleet.nodes}

    run = fleet.playbook(everywhere("C"), f.SITE)

    assert run.returncode == 0, run.output
    assert_recap(run, dict.fromkeys(GPUS, True), dict.fromkeys(GPUS, False))
    assert geometries(fleet) == {name: expected(name, "C") for name in GPUS}
    # The output: one batch per node, in inventory order, each finished (handler run,
    # convergence awaited) before the next one starts.
    lines = run.output.splitlines()
    batches = [i for i, ln in enumerate(lines) if ln.startswith("PLAY [")]
    assert len(batches) == 3, run.output
    for number, name in enumerate(GPUS):
        end = batches[number + 1] if number + 1 < len(batches) else len(lines)
        batch = lines[batches[number] : end]
        named = {m for ln in batch for m in re.findall(r"\[(node\d)\]", ln)}
        assert named == {name}, "\n".join(batch)
        text = "\n".join(batch)
        assert "RUNNING HANDLER [migrestore : Reload migrestore]" in text, text
        assert "Wait until migrestore reports the node converged" in text, text
    # The daemons: each node had restored C before the next one read it.
    times = reload_times(fleet, cursors)
    order = [times[name] for name in GPUS]
    for (_, done), (read_next, _) in zip(order, order[1:]):
        assert done < read_next, times
