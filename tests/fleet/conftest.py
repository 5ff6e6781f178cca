"""Fixtures of the fleet tier: the built .deb (shared with the system tier)."""

from __future__ import annotations

import pytest

from tests.fleet import fleet
from tests.packaging import pkgbuild
from tests.system.conftest import deb  # noqa: F401  (the .deb of this checkout)


@pytest.fixture(scope="session")
def prerequisites() -> None:
    reason = fleet.missing_prerequisite()
    if reason:
        pkgbuild.skip_unless_ci(reason)
