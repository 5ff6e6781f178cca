"""atomic: the one writer of replaced files (state file, stopped-units note, simulator
state): all or nothing, no temporary left behind, one clear error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from migrestore import atomic
from migrestore.errors import StateFileError


def _write(path: Path, data: bytes = b"new\n", **kw: object) -> None:
    atomic.write_bytes(str(path), data, what="test file", fix="fix it", **kw)  # type: ignore[arg-type]


def test_replaces_the_file_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old\n")
    old = os.umask(0o077)
    try:
        _write(target)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["f.json"]


def test_mode_none_keeps_the_mode_of_the_file_replaced(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old\n")
    target.chmod(0o600)
    _write(target, mode=None)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_failed_replace_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "inside").write_text("x")
    with pytest.raises(StateFileError) as info:
        _write(target)
    message = str(info.value)
    assert message.startswith(f"test file {target}: cannot write: ")
    assert message.endswith("(fix it)")
    assert sorted(os.listdir(tmp_path)) == ["busy"]
    assert info.value.exit_code == 1


def test_a_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "f.json"
    with pytest.raises(StateFileError, match="cannot write: No such file or directory"):
        _write(target)
