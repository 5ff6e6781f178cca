"""The .deb's life on a running node: isolation of the installed program, an upgrade that
neither restarts the service nor touches the edited config, an operator's disable that
survives, removal, purge, and a fresh install that enables without starting.

One node for the whole module, so the tests run in file order: installed and booted,
upgraded, reinstalled while disabled, removed and purged, installed again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.packaging import pkgbuild
from tests.system import node as n
from tests.system.nspawn import Container

pytestmark = pytest.mark.system

IDENTITY = ("MainPID", "InvocationID", "ActiveState")


@pytest.fixture(scope="module")
def node(deb: pkgbuild.Built, node_dir: Path) -> Iterator[Container]:
    with n.new_node(node_dir) as container:
        n.provision(container, deb.deb, n.LAYOUT_A)
        container.boot()
        container.wait_unit(n.UNIT, ("active",))
        yield container


def installed_version(node: Container) -> str:
    out = node.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "migrestore"]).stdout
    status, _, version = out.rpartition(" ")
    assert status == "install ok installed", out
    return version


def is_enabled(node: Container) -> str:
    return node.run(["systemctl", "is-enabled", n.UNIT], check=False).stdout.strip()


def test_installed_program_uses_its_own_code_and_bundled_libraries(
    node: Container, deb: pkgbuild.Built
) -> None:
    # The node's python3 has PyYAML from Debian and none of the bundled libraries.
    bare = node.run(["python3", "-c", "import structlog"], check=False)
    assert bare.returncode != 0 and "No module named 'structlog'" in bare.stderr
    # A look-alike package on PYTHONPATH and in the working directory is ignored (-I).
    node.write("/opt/evil/migrestore/__init__.py", "raise SystemExit('wrong migrestore')\n")
    proc = node.run(
        ["sh", "-c", "cd /opt/evil && exec migrestore --version"],
        env={"PYTHONPATH": "/opt/evil"},
    )
    assert proc.stdout.strip() == f"migrestore {deb.version}"
    sim = node.run(["migrestore-sim", "--help"])
    assert "hold" in sim.stdout
    # postinst compiled the private code for this python3 (the launchers run with -B).
    assert node.run(["sh", "-c", "ls /usr/share/migrestore/migrestore/__pycache__"]).stdout


def test_installed_unit_passes_systemd_analyze_verify(node: Container) -> None:
    # --man=no: the node has no man-db to look up Documentation=man:migrestore(8) with
    # (tests/packaging checks that the page is shipped).
    verify = node.run(["systemd-analyze", "verify", "--man=no", n.UNIT], check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def test_upgrade_neither_restarts_the_service_nor_touches_the_edited_config(
    node: Container, newer_deb: pkgbuild.Built
) -> None:
    before = node.show(n.UNIT, *IDENTITY)
    assert before["ActiveState"] == "active"
    edited = node.read(n.CONFIG)
    assert edited == n.LAYOUT_A

    output = n.install_package(node, newer_deb.deb, booted=True)

    assert installed_version(node) == newer_deb.version
    assert node.show(n.UNIT, *IDENTITY) == before
    assert node.read(n.CONFIG) == edited
    assert "Configuration file" not in output  # no conffile question
    assert is_enabled(node) == "enabled"
    version = node.run(["migrestore", "--version"]).stdout.strip()
    assert version == f"migrestore {newer_deb.version}"
    assert n.geometry(node) == n.declared(n.GEOMETRY_A)


def test_an_operators_disable_survives_a_reinstall(
    node: Container, newer_deb: pkgbuild.Built
) -> None:
    node.run(["systemctl", "disable", n.UNIT])
    before = node.show(n.UNIT, *IDENTITY)

    n.install_package(node, newer_deb.deb, booted=True)

    assert is_enabled(node) == "disabled"
    assert node.show(n.UNIT, *IDENTITY) == before
    node.run(["systemctl", "enable", n.UNIT])
    assert is_enabled(node) == "enabled"


def test_remove_stops_the_service_and_purge_removes_what_it_left(node: Container) -> None:
    node.run(["mkdir", "-p", "/run/migrestore", "/var/lib/migrestore"])
    node.write("/var/lib/migrestore/left-by-the-service", "x\n")

    node.run(["dpkg", "--remove", "migrestore"])

    assert node.show(n.UNIT, "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert is_enabled(node) == "masked"  # the enable links stay inert until a reinstall
    assert not node.exists("/usr/bin/migrestore")
    assert not node.exists("/usr/share/migrestore")  # compiled files removed by prerm
    assert node.exists(n.CONFIG)  # remove keeps the configuration

    node.run(["dpkg", "--purge", "migrestore"])

    for gone in (n.CONFIG, "/run/migrestore", "/var/lib/migrestore"):
        assert not node.exists(gone), gone
    leftovers = node.run(
        ["find", "/etc/systemd/system", "/var/lib/systemd", "-name", "*migrestore*"]
    ).stdout.split()
    # Only what the tests themselves added (the drop-in) may stay.
    assert leftovers == [str(Path(n.DROP_IN).parent)]
    assert node.run(["dpkg-query", "-W", "migrestore"], check=False).returncode != 0
    # The GPU clients were never stopped by the removal.
    node.wait_unit(n.DCGM, ("active",))


def test_fresh_install_on_a_running_node_enables_but_does_not_start(
    node: Container, deb: pkgbuild.Built
) -> None:
    dcgm = node.show(n.DCGM, "InvocationID")

    n.install_package(node, deb.deb, booted=True)

    assert installed_version(node) == deb.version
    assert is_enabled(node) == "enabled"
    assert node.show(n.UNIT, "ActiveState")["ActiveState"] == "inactive"
    assert node.show(n.DCGM, "InvocationID") == dcgm
    assert node.read(n.CONFIG) == (pkgbuild.REPO / "etc" / "migrestore.yaml").read_text()
