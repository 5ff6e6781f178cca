"""Fixtures for the tests that run the whole engine on simulated GPUs."""

from __future__ import annotations

import os
from typing import Iterator

import pytest


@pytest.fixture(autouse=True)
def _private_runtime_paths(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Lock and state file in the test's own directory, never /run."""
    monkeypatch.setenv("MIGRESTORE_LOCK", os.path.join(str(tmp_path), "migrestore.lock"))
    monkeypatch.setenv("MIGRESTORE_STATE", os.path.join(str(tmp_path), "run", "state.json"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("MIGRESTORE_SIMULATE", raising=False)
    yield
