"""The packaged service under a real systemd: boot order, READY, restart, reload, a broken
config, and a reboot, on each Debian release the .deb supports (11 bullseye: Python 3.9,
systemd 247; 12 bookworm; 13 trixie).

One node per release (booted once, rebooted where a test needs a new boot), so the tests
run in file order per release and each starts from the state the previous one left:
layout A at boot, B after the restart, C after the reload, broken, then A again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from tests.packaging import pkgbuild
from tests.system import node as n
from tests.system import nspawn
from tests.system.nspawn import Container

pytestmark = pytest.mark.system

BROKEN = "version: 1\nclients: [nvidia-dcgm.service]\nno-such-key: 1\ngpus: []\n"
BROKEN_AT = f"{n.CONFIG}:3:"
NO_MIG = {0: (False, ()), 1: (False, ())}


@pytest.fixture(scope="module", params=nspawn.SUITES)
def node(
    request: pytest.FixtureRequest, deb: pkgbuild.Built, node_dir: Path
) -> Iterator[Container]:
    with n.new_node(node_dir, request.param) as container:
        n.provision(container, deb.deb, n.LAYOUT_A)
        container.boot()
        yield container


def assert_ready_before_runtimes(node: Container) -> None:
    info = node.wait_unit(n.UNIT, ("active", "failed"))
    assert info["ActiveState"] == "active", node.journal(n.UNIT)
    assert node.show(n.UNIT, "Type")["Type"] == "notify"
    ready = n.monotonic_usec(node, n.UNIT, "ActiveEnterTimestampMonotonic")
    for unit in (*n.RUNTIMES, n.DCGM):
        node.wait_unit(unit, ("active",))
        started = n.monotonic_usec(node, unit, "ExecMainStartTimestampMonotonic")
        assert ready <= started, f"{unit} started before migrestore was ready"


def test_boot_reaches_ready_with_the_declared_geometry_before_runtimes_start(
    node: Container,
) -> None:
    assert_ready_before_runtimes(node)
    assert n.geometry(node) == n.declared(n.GEOMETRY_A)
    assert n.lines(node, "/var/log/started-containerd") == 1
    assert n.lines(node, "/var/log/started-kubelet") == 1
    # Clients are ordered after migrestore, so at boot it has nothing to stop.
    assert "unit_stopped" not in node.journal(n.UNIT)


def test_this_systemd_knows_every_directive_of_the_unit(node: Container) -> None:
    # systemd ignores a directive it does not know, with a warning naming the unit file
    # and line: none may be ignored on any supported release (docs/SYSTEMD.md).
    verify = node.run(["systemd-analyze", "verify", "--man=no", n.UNIT], check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    log = node.run(["journalctl", "-b", "--no-pager", "-o", "cat", "_PID=1"]).stdout
    ignored = [ln for ln in log.splitlines() if "migrestore.service" in ln and "ignoring" in ln]
    assert ignored == []


def test_restart_applies_an_edited_config_stopping_dcgm_around_the_change(
    node: Container,
) -> None:
    dcgm_before = node.wait_unit(n.DCGM, ("active",))["InvocationID"]
    stops_before = n.lines(node, "/var/log/stopped-nvidia-dcgm")
    cursor = node.cursor()
    node.write(n.CONFIG, n.LAYOUT_B)

    node.run(["systemctl", "restart", n.UNIT])

    # Type=notify: restart returns once READY=1 came, which is sent after verifying.
    assert node.show(n.UNIT, "ActiveState")["ActiveState"] == "active"
    assert n.geometry(node) == n.declared(n.GEOMETRY_B)
    journal = node.journal(n.UNIT, cursor)
    # Stopped and waited for before the change; started again with --no-block after it.
    assert re.search(rf"^unit_stopped unit={n.DCGM}$", journal, re.MULTILINE), journal
    assert re.search(rf"^unit_start(ed|_queued) unit={n.DCGM}$", journal, re.MULTILINE), journal
    lines = journal.splitlines()
    stop = next(i for i, ln in enumerate(lines) if ln.startswith(f"unit_stopped unit={n.DCGM}"))
    start = next(i for i, ln in enumerate(lines) if ln.startswith("unit_start"))
    changes = [i for i, ln in enumerate(lines) if re.match(r"^\w+ gpu=\d+ .*outcome=ok", ln)]
    assert changes, journal
    assert stop < min(changes) and max(changes) < start, journal
    dcgm_after = node.wait_unit(n.DCGM, ("active",))["InvocationID"]
    assert dcgm_after != dcgm_before
    assert n.lines(node, "/var/log/stopped-nvidia-dcgm") == stops_before + 1


def test_reload_reapplies_the_config_in_the_running_service(node: Container) -> None:
    before = node.show(n.UNIT, "MainPID", "InvocationID")
    node.write(n.CONFIG, n.LAYOUT_C)

    node.run(["systemctl", "reload", n.UNIT])

    n.wait_geometry(node, n.declared(n.GEOMETRY_C))
    after = node.wait_unit(n.UNIT, ("active",))
    assert (after["MainPID"], after["InvocationID"]) == (before["MainPID"], before["InvocationID"])
    node.wait_unit(n.DCGM, ("active",))


def test_broken_config_fails_once_with_file_and_line_and_touches_nothing(
    node: Container,
) -> None:
    dcgm_before = node.wait_unit(n.DCGM, ("active",))["InvocationID"]
    cursor = node.cursor()
    node.write(n.CONFIG, BROKEN)

    restart = node.run(["systemctl", "restart", n.UNIT], check=False)

    assert restart.returncode != 0
    info = node.wait_unit(n.UNIT, ("failed",))
    status = node.show(n.UNIT, "ExecMainStatus", "Result", "NRestarts")
    assert status == {"ExecMainStatus": "78", "Result": "exit-code", "NRestarts": "0"}
    assert BROKEN_AT in node.journal(n.UNIT, cursor)
    assert n.geometry(node) == n.declared(n.GEOMETRY_C)
    assert node.show(n.DCGM, "InvocationID")["InvocationID"] == dcgm_before
    # No restart loop: a restart that is coming shows as activating/auto-restart; exit
    # status 78 is in RestartPreventExitStatus=, so the unit stays failed.
    assert (info["ActiveState"], info["SubState"], info["NRestarts"]) == ("failed", "failed", "0")


def test_boot_with_a_broken_config_still_starts_the_runtimes(node: Container) -> None:
    old_boot = node.boot_id()

    node.reboot()

    assert node.boot_id() != old_boot
    info = node.wait_unit(n.UNIT, ("failed", "active"))
    assert info["ActiveState"] == "failed", node.journal(n.UNIT)
    assert node.show(n.UNIT, "ExecMainStatus", "NRestarts") == {
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }
    assert BROKEN_AT in node.journal(n.UNIT)
    for unit in n.RUNTIMES:
        node.wait_unit(unit, ("active",))
    # The new boot lost MIG (Hopper), and migrestore touched nothing.
    assert n.geometry(node) == NO_MIG


def test_reboot_restores_the_geometry_before_runtimes_start(node: Container) -> None:
    node.write(n.CONFIG, n.LAYOUT_A)
    old_boot = node.boot_id()

    node.reboot()

    assert node.boot_id() != old_boot
    assert_ready_before_runtimes(node)
    assert n.geometry(node) == n.declared(n.GEOMETRY_A)
    assert n.lines(node, "/var/log/started-containerd") == 3
