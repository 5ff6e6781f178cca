"""Fixtures of the packaging tier: the .deb and .rpm built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging import pkgbuild


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> pkgbuild.Built:
    return pkgbuild.build(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def deb(built: pkgbuild.Built) -> Path:
    return built.deb


@pytest.fixture(scope="session")
def rpm(built: pkgbuild.Built) -> Path:
    assert built.rpm is not None
    return built.rpm
