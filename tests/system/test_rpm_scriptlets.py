"""The .rpm under a real systemd: its files, scriptlets and unit, installed with
``rpm -i --nodeps`` into a booted Debian 12 container that has Debian's rpm (no RPM
distribution's repositories are reachable here; docs/INSTALL.md says what this does and
does not prove).

One node for the module, so the tests run in file order: booted without the package,
installed while running (enabled by the preset, not started), rebooted (started before
the runtimes, geometry restored), upgraded (not restarted), erased (stopped, disabled,
run-time files removed, the edited config kept as .rpmsave).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.packaging import pkgbuild
from tests.system import node as n
from tests.system.nspawn import Container

pytestmark = pytest.mark.system

# Debian's rpm refuses to install without --force-debian and keeps its database under
# ~/.rpmdb unless told otherwise; --nodeps because Debian's dpkg-installed python3,
# PyYAML and systemd are not in the rpm database.
QUERY = ("rpm", "--dbpath", "/var/lib/rpm")
RPM = (*QUERY, "--force-debian", "--nodeps")
UNIT_PATH = "/usr/lib/systemd/system/migrestore.service"
IDENTITY = ("MainPID", "InvocationID", "ActiveState")


@pytest.fixture(scope="module")
def node(rpm_pkg: pkgbuild.Built, node_dir: Path) -> Iterator[Container]:
    with n.new_node(node_dir) as container:
        # What provision() does, minus the package: the simulated-GPU drop-in (inert
        # until the unit exists) and the runtime stand-ins.
        container.write(n.DROP_IN, n.SIM_DROP_IN)
        for name in ("containerd", "kubelet"):
            container.write(f"/etc/systemd/system/{name}.service", n.RUNTIME_UNIT.format(name=name))
        container.setup(["systemctl", "enable", *n.RUNTIMES])
        container.boot()
        yield container


def rpm(node: Container, *args: str) -> str:
    proc = node.run([*RPM, *args])
    return proc.stdout + proc.stderr


def copy_in(node: Container, package: Path) -> str:
    target = node.root / n.PKG_DIR.lstrip("/") / package.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(package.read_bytes())
    return f"{n.PKG_DIR}/{package.name}"


def is_enabled(node: Container) -> str:
    return node.run(["systemctl", "is-enabled", n.UNIT], check=False).stdout.strip()


def test_install_on_a_running_node_enables_by_preset_but_does_not_start(
    node: Container, rpm_pkg: pkgbuild.Built
) -> None:
    assert rpm_pkg.rpm is not None
    rpm(node, "-i", copy_in(node, rpm_pkg.rpm))

    assert node.run([*QUERY, "-q", "migrestore"]).stdout.strip() == (
        f"migrestore-{rpm_pkg.version}-1.noarch"
    )
    # Every file as packaged (digest, mode, owner); the config untouched so far.
    assert rpm(node, "-V", "migrestore") == ""
    assert node.exists(UNIT_PATH)
    assert node.exists("/usr/lib/systemd/system-preset/50-migrestore.preset")
    # %post: enabled through the preset, and the running systemd knows the unit
    # (daemon-reload), but it was not started.
    assert is_enabled(node) == "enabled"
    # (FragmentPath shows /lib/...: Debian 12 is merged-/usr, /lib -> usr/lib.)
    info = node.show(n.UNIT, "ActiveState", "LoadState", "UnitFileState")
    assert info == {"ActiveState": "inactive", "LoadState": "loaded", "UnitFileState": "enabled"}
    # %posttrans compiled the private code for this python3.
    assert node.run(["sh", "-c", "ls /usr/share/migrestore/migrestore/__pycache__"]).stdout
    proc = node.run(["migrestore", "--version"])
    assert proc.stdout.strip() == f"migrestore {rpm_pkg.version}"
    verify = node.run(["systemd-analyze", "verify", "--man=no", n.UNIT], check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def test_the_next_boot_restores_the_geometry_before_the_runtimes(node: Container) -> None:
    node.run(["mkdir", "-p", n.SIM_DIR])
    node.run(["migrestore-sim", "init", n.SIM_STATE, n.SIM_GPUS])
    node.write(n.CONFIG, n.LAYOUT_A)

    node.reboot()

    info = node.wait_unit(n.UNIT, ("active", "failed"))
    assert info["ActiveState"] == "active", node.journal(n.UNIT)
    assert n.geometry(node) == n.declared(n.GEOMETRY_A)
    ready = n.monotonic_usec(node, n.UNIT, "ActiveEnterTimestampMonotonic")
    for unit in n.RUNTIMES:
        node.wait_unit(unit, ("active",))
        assert ready <= n.monotonic_usec(node, unit, "ExecMainStartTimestampMonotonic"), unit


def test_reload_applies_an_edited_config(node: Container) -> None:
    before = node.show(n.UNIT, *IDENTITY)
    node.write(n.CONFIG, n.LAYOUT_C)

    node.run(["systemctl", "reload", n.UNIT])

    n.wait_geometry(node, n.declared(n.GEOMETRY_C))
    # the geometry is made before the reload ends (CDI refresh, hooks, READY=1): the unit
    # reads "reloading" until then
    node.wait_unit(n.UNIT, ("active",))
    assert node.show(n.UNIT, *IDENTITY) == before


def test_upgrade_neither_restarts_the_service_nor_replaces_the_edited_config(
    node: Container, newer_rpm: pkgbuild.Built
) -> None:
    assert newer_rpm.rpm is not None
    before = node.show(n.UNIT, *IDENTITY)

    output = rpm(node, "-U", copy_in(node, newer_rpm.rpm))

    assert node.run([*QUERY, "-q", "migrestore"]).stdout.strip() == (
        f"migrestore-{newer_rpm.version}-1.noarch"
    )
    assert node.show(n.UNIT, *IDENTITY) == before
    assert node.read(n.CONFIG) == n.LAYOUT_C  # %config(noreplace)
    assert ".rpmnew" not in output and not node.exists(f"{n.CONFIG}.rpmnew")
    assert is_enabled(node) == "enabled"
    assert node.run(["migrestore", "--version"]).stdout.strip() == (
        f"migrestore {newer_rpm.version}"
    )
    assert n.geometry(node) == n.declared(n.GEOMETRY_C)


def test_erase_stops_and_disables_and_keeps_the_edited_config(node: Container) -> None:
    node.run(["mkdir", "-p", "/run/migrestore", "/var/lib/migrestore"])

    rpm(node, "-e", "migrestore")

    assert node.run([*QUERY, "-q", "migrestore"], check=False).returncode != 0
    assert node.show(n.UNIT, "ActiveState")["ActiveState"] in ("inactive", "failed")
    for gone in (UNIT_PATH, "/usr/bin/migrestore", "/usr/share/migrestore", n.CONFIG):
        assert not node.exists(gone), gone
    assert not node.exists("/run/migrestore") and not node.exists("/var/lib/migrestore")
    assert node.read(f"{n.CONFIG}.rpmsave") == n.LAYOUT_C
    links = node.run(["find", "/etc/systemd/system", "-name", "migrestore.service"]).stdout
    assert links == ""  # %preun disabled it
