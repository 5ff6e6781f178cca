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


def test_what_is_not_a_regular_file_is_refused_untouched(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "inside").write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (target, fifo):
        with pytest.raises(StateFileError) as info:
            _write(path)
        assert str(info.value).startswith(f"test file {path}: something that is not a regular")
        assert info.value.exit_code == 1
    assert sorted(os.listdir(tmp_path)) == ["busy", "fifo"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_foreign_file_is_refused_and_a_symlink_replaced_not_followed(tmp_path: Path) -> None:
    foreign = tmp_path / "passwd"
    foreign.write_text("root:x:0:0::/root:/bin/sh\n")
    with pytest.raises(StateFileError, match="not one migrestore wrote"):
        _write(foreign, ours=lambda head: head.startswith(b"{"))
    assert foreign.read_text() == "root:x:0:0::/root:/bin/sh\n"
    link = tmp_path / "link"
    link.symlink_to(foreign)
    _write(link, ours=lambda head: head.startswith(b"{"))
    assert not link.is_symlink() and link.read_bytes() == b"new\n"
    assert foreign.read_text() == "root:x:0:0::/root:/bin/sh\n"
