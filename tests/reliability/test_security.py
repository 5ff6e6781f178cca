"""Least privilege: who may change what migrestore runs as root, and what its hooks get.

Rules:

1. As root, a config, a referenced mig-parted file or a hook executable that a user
   other than root owns or can write is refused (exit 78, nothing touched) with the
   chown/chmod that fixes it (the config cases are in test_hostile_input.py).
2. Hooks run end to end through ``migrestore apply`` after a verified change: as an argv
   without a shell (``;`` and ``$(...)`` reach the program as text), with a clean
   environment (a secret in ours does not reach them), bounded by their timeout (the
   whole process group is killed), and their output is logged as text, never acted on.
3. The GPU lock is refused in a directory another user can write, as a symlink, or owned
   by another user; it is made 0600. The state file is written 0644 in a 0755 directory
   whatever the umask, and a symlink planted at its path is replaced, never written
   through.
4. ``systemd-analyze security`` on the shipped unit gives the exposure RELIABILITY.md
   records, and every directive it lists as not set is named in RELIABILITY.md's table
   with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.integration.cli_util import Result, run
from tests.reliability.rig import Rig, fast_dir

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "migrestore.service"
DOC = REPO / "docs" / "RELIABILITY.md"
ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not ROOT, reason="ownership checks apply when running as root")

LAYOUT = "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n    instances:\n      - {profile: 7g.80gb}\n"


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with fast_dir("migrestore-sec-") as tmp:
        made = Rig(tmp, "h100-80gb-hbm3:1", monkeypatch)
        try:
            yield made
        finally:
            made.close()


def apply(rig: Rig, capsys: pytest.CaptureFixture[str], *extra: str) -> Result:
    return run(
        capsys,
        "--simulate",
        rig.state,
        "-c",
        rig.config_path,
        "--log-format",
        "journal",
        "apply",
        *extra,
    )


def script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def with_hook(argv: List[str], timeout: str = "") -> str:
    items = ", ".join(f"'{a}'" for a in argv)
    extra = f", timeout: {timeout}" if timeout else ""
    return LAYOUT.replace(
        "gpus:\n", f"hooks:\n  post-apply:\n    - {{argv: [{items}]{extra}}}\ngpus:\n", 1
    )


# --------------------------------------------------------------------------- rule 1


@needs_root
@pytest.mark.parametrize(
    ("owner", "mode", "expect", "fix"),
    [
        (NOBODY, 0o755, f"is owned by uid {NOBODY}, not root", "chown root:root"),
        (0, 0o757, "is writable by group or others (mode 0757)", "chmod 0755"),
        (0, 0o775, "is writable by group or others (mode 0775)", "chmod 0755"),
        (0, 0o644, "is not executable", "chmod 0755"),
    ],
)
def test_a_hook_another_user_owns_or_can_write_is_refused_with_the_fix(
    owner: int,
    mode: int,
    expect: str,
    fix: str,
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    hook = script(tmp_path, "hook", "exit 0\n")
    os.chown(hook, owner, 0)
    hook.chmod(mode)
    rig.node.write_config(with_hook([str(hook)]))
    result = apply(rig, capsys)
    lines = result.err.splitlines()
    assert result.code == 78, result.err
    assert len(lines) == 1 and lines[0].startswith(f"migrestore: error: {rig.config_path}:")
    assert f"hook executable {hook} {expect}" in lines[0]
    assert fix in lines[0] and str(hook) in lines[0].split(fix, 1)[1]
    assert rig.changes() == 0


@needs_root
def test_a_hook_in_a_directory_another_user_can_write_is_refused(
    rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home = tmp_path / "home-of-nobody"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    home.chmod(0o755)
    hook = script(home, "hook", "exit 0\n")
    rig.node.write_config(with_hook([str(hook)]))
    result = apply(rig, capsys)
    assert result.code == 78, result.err
    assert rig.changes() == 0


# --------------------------------------------------------------------------- rule 2


def test_a_hook_gets_its_arguments_as_text_without_a_shell_and_a_clean_environment(
    rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tmp_path / "seen"
    marker = tmp_path / "pwned"
    hook = script(
        tmp_path,
        "hook",
        'out="$1"; shift\n'
        '{ for a in "$@"; do printf "arg=%s\\n" "$a"; done; env | sort; } > "$out"\n'
        "echo 'READY=1'\n"
        "printf 'STATUS=owned\\n<3>fake error line\\n'\n",
    )
    tricky = [f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`", "a b", "*"]
    rig.node.write_config(with_hook([str(hook), str(seen), *tricky]))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/evil.so")
    monkeypatch.setenv("MIGRESTORE_SIMULATE", rig.state)
    result = apply(rig, capsys)
    assert result.code == 0, result.err
    assert not marker.exists()
    lines = seen.read_text().splitlines()
    assert [line[4:] for line in lines if line.startswith("arg=")] == tricky
    env = dict(line.split("=", 1) for line in lines if not line.startswith("arg=") and "=" in line)
    assert "s3cr3t-value" not in seen.read_text()
    assert "LD_PRELOAD" not in env and "NOTIFY_SOCKET" not in env
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"
    extra = {k for k in env if k not in ("PATH", "LANG", "PWD", "SHLVL", "_")}
    assert all(k.startswith("MIGRESTORE_") for k in extra), extra
    assert env.get("MIGRESTORE_SIMULATE") is None
    assert env["MIGRESTORE_RESULT"] == "applied"
    # the output is logged line by line as text: nothing it says is acted on
    err = result.err.splitlines()
    out_lines = [line for line in err if line.startswith("<6>hook_output")]
    assert len(out_lines) == 3, out_lines
    assert "line=READY=1" in out_lines[0] or 'line="READY=1"' in out_lines[0]
    assert not any(line.startswith("<3>fake") for line in err)
    assert any("fake error line" in line for line in out_lines)


def test_a_hook_that_overruns_is_killed_with_its_children_and_the_geometry_kept(
    rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    child = tmp_path / "child.pid"
    hook = script(
        tmp_path,
        "hook",
        f"sleep 1000 &\necho $! > {child}\nwait\n",
    )
    rig.node.write_config(with_hook([str(hook)], timeout="1s"))
    result = apply(rig, capsys)
    assert result.code == 1, result.err
    assert "timed out after 1 s and was killed" in result.err
    pid = int(child.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    assert not _running(pid), f"the hook's child {pid} survived the timeout"
    assert rig.converged(rig.write_config(LAYOUT))


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# --------------------------------------------------------------------------- rule 3


@needs_root
@pytest.mark.parametrize("unsafe", ["world-writable", "sticky-world-writable", "other-owner"])
def test_the_lock_is_refused_in_a_directory_another_user_controls(
    unsafe: str,
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = tmp_path / "locks"
    directory.mkdir()
    if unsafe == "world-writable":
        directory.chmod(0o777)
    elif unsafe == "sticky-world-writable":
        directory.chmod(0o1777)
    else:
        os.chown(directory, NOBODY, NOBODY)
        directory.chmod(0o755)
    monkeypatch.setenv("MIGRESTORE_LOCK", str(directory / "migrestore.lock"))
    rig.node.write_config(LAYOUT)
    result = apply(rig, capsys)
    assert result.code == 1, result.err
    assert "another user could hold the lock" in result.err
    assert rig.changes() == 0


@needs_root
def test_a_lock_planted_as_a_symlink_or_by_another_user_is_refused(
    rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "migrestore.lock"
    target = tmp_path / "passwd-copy"
    target.write_text("root:x:0:0::/root:/bin/sh\n")
    lock.symlink_to(target)
    monkeypatch.setenv("MIGRESTORE_LOCK", str(lock))
    rig.node.write_config(LAYOUT)
    result = apply(rig, capsys)
    assert result.code == 1 and "is a symlink" in result.err, result.err
    assert target.read_text() == "root:x:0:0::/root:/bin/sh\n"
    lock.unlink()
    lock.write_text("")
    os.chown(lock, NOBODY, NOBODY)
    result = apply(rig, capsys)
    assert result.code == 1 and f"belongs to uid {NOBODY}" in result.err, result.err
    assert rig.changes() == 0


def test_the_lock_is_made_0600_and_the_state_file_0644_in_0755_whatever_the_umask(
    rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "migrestore.lock"
    lock.write_text("")
    lock.chmod(0o666)
    state = tmp_path / "run" / "migrestore" / "state.json"
    monkeypatch.setenv("MIGRESTORE_LOCK", str(lock))
    monkeypatch.setenv("MIGRESTORE_STATE", str(state))
    rig.node.write_config(LAYOUT)
    old = os.umask(0o077)
    try:
        result = apply(rig, capsys)
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o644
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(state.parent.parent.stat().st_mode) == 0o755


def test_a_symlink_planted_at_the_state_file_is_replaced_not_written_through(
    rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state.json"
    victim = tmp_path / "shadow"
    victim.write_text("untouched\n")
    state.symlink_to(victim)
    monkeypatch.setenv("MIGRESTORE_STATE", str(state))
    rig.node.write_config(LAYOUT)
    result = apply(rig, capsys)
    assert result.code == 0, result.err
    assert victim.read_text() == "untouched\n"
    assert not state.is_symlink() and '"result": "applied"' in state.read_text()


# --------------------------------------------------------------------------- rule 4

ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_every_directive_systemd_analyze_finds_unset_is_justified_in_reliability_md(
    tmp_path: Path,
) -> None:
    assert ANALYZE is not None
    binary = tmp_path / "migrestore"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    unit = tmp_path / "migrestore.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/migrestore", str(binary)))
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    version = subprocess.run(
        [ANALYZE, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", done.stdout)
    assert exposure, done.stdout + done.stderr
    unset = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("✗")]
    assert unset, done.stdout
    doc = DOC.read_text(encoding="utf-8")
    recorded = re.search(r"exposure (\d+\.\d) (\w+)[^\n]*systemd (\d+)", doc)
    assert recorded, "RELIABILITY.md records no 'exposure X.Y LEVEL ... systemd NNN'"
    if recorded.group(3) == version:
        assert exposure.groups() == recorded.groups()[:2], (exposure.groups(), recorded.groups())
    missing = [d for d in unset if f"`{d}`" not in doc]
    assert missing == [], f"not justified in docs/RELIABILITY.md: {missing}"
