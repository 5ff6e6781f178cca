"""Where the GPU lock and the last-result state file live.

Rules: the environment (``MIGRESTORE_LOCK``, ``MIGRESTORE_STATE``) wins; on real GPUs the
node-wide defaults (``/run/migrestore.lock``, ``/run/migrestore/state.json``); with
simulated GPUs kept in a state file, beside that file, so every ``migrestore`` process
working on the same simulated node shares one lock, and a simulation never touches the
real node's files; with fresh in-memory GPUs (``MODEL:COUNT``), which no other process
can see, beside nothing: a private temporary directory per process.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional

from migrestore import lock, statefile

_private_dir: Optional[str] = None


def _is_state_file(simulate: str) -> bool:
    return os.sep in simulate or simulate.endswith(".json") or os.path.exists(simulate)


def _private() -> str:
    global _private_dir
    if _private_dir is None:
        _private_dir = tempfile.mkdtemp(prefix="migrestore-sim-")
    return _private_dir


def lock_path(simulate: Optional[str]) -> str:
    if os.environ.get("MIGRESTORE_LOCK") or not simulate:
        return lock.default_path()
    if _is_state_file(simulate):
        return os.path.abspath(simulate) + ".migrestore.lock"
    return os.path.join(_private(), "migrestore.lock")


def state_path(simulate: Optional[str]) -> str:
    if os.environ.get("MIGRESTORE_STATE") or not simulate:
        return statefile.default_path()
    if _is_state_file(simulate):
        return os.path.abspath(simulate) + ".migrestore-state.json"
    return os.path.join(_private(), "state.json")
