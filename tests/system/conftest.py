"""Fixtures of the system tier: the built .debs, and nodes booted under a real systemd."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.packaging import pkgbuild
from tests.system import node as nodes
from tests.system import nspawn


@pytest.fixture(scope="session")
def prerequisites() -> None:
    reason = nspawn.missing_prerequisite()
    if reason:
        pkgbuild.skip_unless_ci(reason)


@pytest.fixture(scope="session")
def deb(prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> pkgbuild.Built:
    """The .deb of this checkout."""
    return pkgbuild.build(tmp_path_factory.getbasetemp(), rpm=False)


@pytest.fixture(scope="session")
def newer_deb(deb: pkgbuild.Built, tmp_path_factory: pytest.TempPathFactory) -> pkgbuild.Built:
    """The same checkout rebuilt as the next patch version: what an upgrade installs."""
    return pkgbuild.build(tmp_path_factory.getbasetemp(), nodes.bump(deb.version), rpm=False)


@pytest.fixture(scope="session")
def rootfs(prerequisites: None) -> Path:
    """The cached pristine Debian 12 rootfs (debootstrapped on first use)."""
    return nspawn.pristine_rootfs()


@pytest.fixture(scope="module")
def node_dir(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A work dir per test module; its rootfs copy (~300 MB) is deleted afterwards."""
    workdir = tmp_path_factory.mktemp("node")
    yield workdir
    shutil.rmtree(workdir / "root", ignore_errors=True)


@pytest.fixture(scope="session")
def rpm_pkg(prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> pkgbuild.Built:
    """The .rpm (and .deb) of this checkout."""
    built = pkgbuild.build(tmp_path_factory.getbasetemp(), rpm=True)
    assert built.rpm is not None, "packaging/build.py wrote no .rpm"
    return built


@pytest.fixture(scope="session")
def newer_rpm(rpm_pkg: pkgbuild.Built, tmp_path_factory: pytest.TempPathFactory) -> pkgbuild.Built:
    """The .rpm rebuilt as the next patch version: what an upgrade installs."""
    built = pkgbuild.build(tmp_path_factory.getbasetemp(), nodes.bump(rpm_pkg.version), rpm=True)
    assert built.rpm is not None, "packaging/build.py wrote no .rpm"
    return built
