"""load(): every bad file is one ConfigError (exit 78), and as root only root-owned,
non-writable files and hook executables are used."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import pytest

from migrestore import config
from migrestore.errors import ConfigError

GOOD = "version: 1\ngpus:\n  - match: all\n    mig: false\n"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="ownership checks need root (CI runs as root)")
NOBODY = 65534


def refused(
    path: str, *, select: Optional[str] = None, secure: Optional[bool] = False
) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config.load(path, select, require_secure=secure)
    err = caught.value
    assert err.exit_code == 78
    assert "\n" not in str(err)
    return err


def write(path: Path, data: object, mode: int = 0o644) -> str:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(str(data))
    path.chmod(mode)
    return str(path)


# --------------------------------------------------------------------------- the file


def test_a_good_file_loads(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path / "c.yaml", GOOD), require_secure=False)
    assert cfg.path == str(tmp_path / "c.yaml")
    assert len(cfg.rules) == 1
    assert cfg.rules[0].spec.source == f"{tmp_path / 'c.yaml'}:3"


def test_missing_file(tmp_path: Path) -> None:
    err = refused(str(tmp_path / "nope.yaml"))
    assert (
        str(err)
        == f"{tmp_path / 'nope.yaml'}: does not exist (create it (see /usr/share/doc/migrestore/examples) or pass -c PATH)"
    )


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in refused(str(tmp_path)).problem


def test_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "c.yaml"
    link.symlink_to(tmp_path / "gone.yaml")
    assert refused(str(link)).problem == f"is a dangling symlink (to {tmp_path / 'gone.yaml'})"


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert "cannot be followed" in refused(str(tmp_path / "a")).problem


def test_symlink_to_a_good_file_is_followed(tmp_path: Path) -> None:
    target = write(tmp_path / "real.yaml", GOOD)
    (tmp_path / "c.yaml").symlink_to(target)
    assert len(config.load(str(tmp_path / "c.yaml"), require_secure=False).rules) == 1


def test_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    assert refused(str(fifo)).problem == "is not a regular file"


def test_character_device() -> None:
    assert refused("/dev/null").problem == "is not a regular file"


@contextlib.contextmanager
def as_user(uid: int) -> Iterator[None]:
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


def test_unreadable_file() -> None:
    base = tempfile.mkdtemp(prefix="migrestore-test-")
    try:
        os.chmod(base, 0o755)
        path = write(Path(base) / "c.yaml", GOOD, 0o600 if ROOT else 0o000)
        if ROOT:
            with as_user(NOBODY):
                err = refused(path, secure=None)
        else:
            err = refused(path)
        assert err.problem == "cannot be read: permission denied"
        assert err.fix == f"chmod 0644 {path}, or run as root"
    finally:
        os.chmod(base, 0o755)
        shutil.rmtree(base)


@needs_root
def test_unreachable_file() -> None:
    base = tempfile.mkdtemp(prefix="migrestore-test-")
    try:
        path = write(Path(base) / "c.yaml", GOOD)
        os.chmod(base, 0o700)
        with as_user(NOBODY):
            err = refused(path, secure=None)
        assert err.problem == "cannot be reached: permission denied"
    finally:
        shutil.rmtree(base)


def test_empty_file(tmp_path: Path) -> None:
    assert refused(write(tmp_path / "c.yaml", "")).problem == "the file is empty"


def test_larger_than_one_mib(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", GOOD + "#" * config.MAX_BYTES + "\n")
    assert refused(path).problem.startswith(f"is {len(GOOD) + config.MAX_BYTES + 1} bytes")


def test_exactly_one_mib_is_read(tmp_path: Path) -> None:
    padding = config.MAX_BYTES - len(GOOD) - 1
    path = write(tmp_path / "c.yaml", GOOD + "#" * padding + "\n")
    assert os.path.getsize(path) == config.MAX_BYTES
    assert len(config.load(path, require_secure=False).rules) == 1


def test_binary_file(tmp_path: Path) -> None:
    err = refused(write(tmp_path / "c.yaml", b"version: 1\n\x7fELF\x02\x01\x01\x00\x00"))
    assert (err.line, err.problem) == (2, "contains a NUL byte: binary data, or UTF-16 text")


def test_utf16_file(tmp_path: Path) -> None:
    err = refused(write(tmp_path / "c.yaml", GOOD.encode("utf-16")))
    assert "NUL byte" in err.problem
    assert err.fix == "save the config as UTF-8 text"


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    err = refused(write(tmp_path / "c.yaml", b"version: 1\ngpus: []\n# caf\xe9\n"))
    assert (
        str(err)
        == f"{tmp_path / 'c.yaml'}:3: is not valid UTF-8 (byte 0xe9) (save the config as UTF-8 text)"
    )


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", b"\xef\xbb\xbf" + GOOD.encode())
    assert len(config.load(path, require_secure=False).rules) == 1


def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        name = chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    err = refused(write(tmp_path / "c.yaml", "\n".join(lines) + "\n"))
    assert (err.line, err.problem) == (1, "a YAML anchor (&name) is not allowed")


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    err = refused(write(tmp_path / "c.yaml", "version: 1\ngpus: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert (err.line, err.problem) == (2, "nesting deeper than 32 levels")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    err = refused(write(tmp_path / "c.yaml", "version: 1\ngpus:\n  - match: all\n   mig: false\n"))
    assert err.line == 4
    assert err.problem.startswith("YAML syntax error: ")


# --------------------------------------------------------------------------- ownership


@needs_root
def test_file_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", GOOD)
    os.chown(path, NOBODY, NOBODY)
    err = refused(path, secure=True)
    assert str(err) == (
        f"{path}: is owned by uid {NOBODY}, not root: refusing to use it "
        f"(chown root:root {path} && chmod 0644 {path})"
    )


@needs_root
@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o620])
def test_file_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "c.yaml", GOOD, mode)
    err = refused(path, secure=True)
    assert err.problem == f"is writable by group or others (mode {mode:04o}): refusing to use it"
    assert err.fix == f"chown root:root {path} && chmod 0644 {path}"


@needs_root
def test_secure_is_the_default_for_root(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", GOOD, 0o666)
    refused(path, secure=None)
    assert len(config.load(path, require_secure=False).rules) == 1


@needs_root
def test_root_owned_read_only_file_is_used(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", GOOD, 0o600)
    assert len(config.load(path).rules) == 1


def hooked(tmp_path: Path, exe: str) -> str:
    text = f"version: 1\nhooks:\n  post-apply:\n    - argv: [/bin/true]\n    - argv: [{exe}, --quiet]\ngpus: []\n"
    return write(tmp_path / "c.yaml", text)


def script(tmp_path: Path, mode: int = 0o755) -> str:
    return write(tmp_path / "regen-gres", "#!/bin/sh\nexit 0\n", mode)


@needs_root
def test_root_owned_hook_is_accepted(tmp_path: Path) -> None:
    exe = script(tmp_path)
    cfg = config.load(hooked(tmp_path, exe))
    assert cfg.hooks[1].argv == (exe, "--quiet")


@needs_root
def test_hook_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    exe = script(tmp_path)
    os.chown(exe, NOBODY, NOBODY)
    err = refused(hooked(tmp_path, exe), secure=True)
    assert str(err) == (
        f"{tmp_path / 'c.yaml'}:5: hooks.post-apply[1].argv[0]: hook executable {exe} is owned by "
        f"uid {NOBODY}, not root (chown root:root {exe} && chmod 0755 {exe})"
    )


@needs_root
@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_hook_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    exe = script(tmp_path, mode)
    err = refused(hooked(tmp_path, exe), secure=True)
    assert err.problem == f"hook executable {exe} is writable by group or others (mode {mode:04o})"
    assert err.fix == f"chown root:root {exe} && chmod 0755 {exe}"


@needs_root
def test_hook_that_is_missing_or_not_executable_is_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    assert (
        refused(hooked(tmp_path, missing), secure=True).problem
        == f"hook executable {missing} does not exist"
    )
    exe = script(tmp_path, 0o644)
    assert (
        refused(hooked(tmp_path, exe), secure=True).problem
        == f"hook executable {exe} is not executable"
    )
    assert (
        refused(hooked(tmp_path, str(tmp_path)), secure=True).problem
        == f"hook executable {tmp_path} is not a regular file"
    )


def test_hooks_are_not_examined_when_not_secure(tmp_path: Path) -> None:
    cfg = config.load(hooked(tmp_path, str(tmp_path / "nope")), require_secure=False)
    assert len(cfg.hooks) == 2


# --------------------------------------------------------------------------- referenced mig-parted file

MIG_PARTED = (
    "version: v1\nmig-configs:\n"
    "  all-disabled:\n    - devices: all\n      mig-enabled: false\n"
    "  all-1g.10gb:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {1g.10gb: 7}\n"
)


def native(tmp_path: Path, ref: str, select: str = "all-1g.10gb") -> str:
    return write(
        tmp_path / "migrestore.yaml",
        f"version: 1\ndrift: {{policy: warn}}\nmig-parted:\n  file: {ref}\n  select: {select}\n",
    )


def test_referenced_mig_parted_file(tmp_path: Path) -> None:
    ref = write(tmp_path / "mp.yaml", MIG_PARTED)
    cfg = config.load(native(tmp_path, ref), require_secure=False)
    assert (cfg.selected, cfg.drift_policy, cfg.path) == (
        "all-1g.10gb",
        "warn",
        str(tmp_path / "migrestore.yaml"),
    )
    assert len(cfg.rules[0].spec.instances) == 7
    assert cfg.rules[0].spec.source == f"{ref}:7"


def test_select_argument_overrides_the_file(tmp_path: Path) -> None:
    ref = write(tmp_path / "mp.yaml", MIG_PARTED)
    cfg = config.load(native(tmp_path, ref), "all-disabled", require_secure=False)
    assert cfg.selected == "all-disabled"
    assert cfg.rules[0].spec.mig is False


def test_missing_referenced_file_names_both_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.yaml")
    err = refused(native(tmp_path, missing))
    assert str(err) == (
        f"{tmp_path / 'migrestore.yaml'}:4: mig-parted.file: {missing}: does not exist "
        "(install the mig-parted config, or fix mig-parted.file)"
    )


def test_errors_inside_the_referenced_file_name_it(tmp_path: Path) -> None:
    ref = write(tmp_path / "mp.yaml", MIG_PARTED.replace("1g.10gb: 7", "1g.10gb: -1"))
    err = refused(native(tmp_path, ref))
    assert err.path == ref
    assert (err.line, err.key) == (9, 'mig-configs."all-1g.10gb"[0].mig-devices."1g.10gb"')


def test_unknown_selection_in_the_referenced_file(tmp_path: Path) -> None:
    ref = write(tmp_path / "mp.yaml", MIG_PARTED)
    err = refused(native(tmp_path, ref, "all-balanced"))
    assert err.path == ref
    assert "configs in this file: all-disabled, all-1g.10gb" in str(err)


def test_referenced_file_must_be_a_mig_parted_file(tmp_path: Path) -> None:
    ref = write(tmp_path / "other.yaml", GOOD)
    err = refused(native(tmp_path, ref))
    assert (err.path, err.line, err.key) == (
        str(tmp_path / "migrestore.yaml"),
        4,
        "mig-parted.file",
    )
    assert "is not a mig-parted config" in err.problem


@needs_root
def test_insecure_referenced_file_is_refused(tmp_path: Path) -> None:
    ref = write(tmp_path / "mp.yaml", MIG_PARTED, 0o666)
    err = refused(native(tmp_path, ref), secure=True)
    assert err.key == "mig-parted.file"
    assert "is writable by group or others (mode 0666)" in err.problem


def test_a_bare_mig_parted_file_loads_with_select(tmp_path: Path) -> None:
    ref = write(tmp_path / "mp.yaml", MIG_PARTED)
    assert config.load(ref, "all-disabled", require_secure=False).selected == "all-disabled"
    err = refused(ref)
    assert "holds 2 configs and none is selected" in err.problem
