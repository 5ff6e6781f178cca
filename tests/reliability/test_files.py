"""Files, locks, disks and privilege: attacks on what migrestore reads and writes as root.

Rules:

1. The GPU restore never depends on bookkeeping: with /run full or read-only, or a
   directory where the stopped-units note should be, ``apply`` restores the GPUs, says
   what could not be recorded, exits 0 (docs/RELIABILITY.md) and leaves no temporary.
2. Nothing that is not migrestore's is replaced, truncated or re-moded: a device, a
   FIFO, a foreign file at the state, note or lock path stays as it was.
3. The GPU lock holds while its file is removed, replaced or renamed.
4. A FIFO at any path migrestore reads never blocks it.
5. ``--simulate`` on anything but a simulator state file creates nothing beside it.
6. ``--lock-timeout`` refuses NaN, infinities and negative values.
7. A stopped-units note is trusted only from root, with safe modes, and only for units
   of the config's clients list.
8. Programs run as root (hooks, nvidia-ctk) are checked along every directory and symlink
   of their path, and never looked up on PATH.

Every subprocess has a timeout: a hang is a failure, never a stuck suite.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from migrestore.lock import GpuLock
from tests.integration.cli_util import Result, run
from tests.reliability.rig import Rig, fast_dir

ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not ROOT, reason="ownership and mounts need root")
UNIT = "nvidia-dcgm.service"
LAYOUT = (
    "version: 1\nclients: [CLIENTS]\ngpus:\n  - match: all\n    mig: true\n"
    "    instances:\n      - {profile: 7g.80gb}\n"
)
HANG = 60  # seconds a subprocess gets before the test calls it a hang


def layout(*clients: str) -> str:
    return LAYOUT.replace("CLIENTS", ", ".join(clients))


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with fast_dir("migrestore-files-") as tmp:
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


def in_child(rig: Rig, *args: str, env: dict[str, str] | None = None) -> Result:
    """``migrestore --simulate STATE -c CONFIG ARGS`` as a process, bounded (rule 4)."""
    argv = ["python3", "-m", "migrestore", "--simulate", rig.state, "-c", rig.config_path]
    done = subprocess.run(
        [*argv, "--log-format", "journal", *args],
        env={**rig.node.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def leftovers(directory: Path) -> List[str]:
    return sorted(
        p.name for p in directory.iterdir() if p.name.startswith((".stopped-", ".state-"))
    )


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of our own (a /run that can be filled or made read-only)."""
    mount = tmp_path / "run"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> None:
    """Take every free block of the file system of ``directory``."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- rule 1


@needs_root
@pytest.mark.parametrize("how", ["full", "read-only", "note-is-a-directory"])
def test_bookkeeping_that_cannot_be_written_never_stops_the_restore(
    how: str,
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
    small_fs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = small_fs / "migrestore" / "state.json"
    monkeypatch.setenv("MIGRESTORE_STATE", str(state))
    monkeypatch.setenv("MIGRESTORE_LOCK", str(small_fs / "migrestore.lock"))
    rig.node.units.add(UNIT)
    cfg = rig.write_config(layout(UNIT))
    if how == "note-is-a-directory":
        (small_fs / "migrestore" / "state.json.stopped-units").mkdir(parents=True)
    elif how == "full":
        (small_fs / "migrestore").mkdir()
        fill(small_fs)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    result = apply(rig, capsys)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert rig.converged(cfg)
    assert "stopped_units_not_recorded" in result.err
    if how != "note-is-a-directory":
        assert "could not write the state file" in result.err
    assert rig.node.units.state(UNIT) == "active"
    if (small_fs / "migrestore").is_dir():
        assert leftovers(small_fs / "migrestore") == []


# --------------------------------------------------------------------------- rules 2, 4


@pytest.mark.parametrize("kind", ["device", "fifo", "foreign-file", "directory"])
def test_the_state_path_is_never_replaced_when_it_is_not_ours(
    kind: str, rig: Rig, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    if kind == "device":
        # a private null device, never the machine's /dev/null: a regression must not
        # replace the node every other program on the machine writes to
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "foreign-file":
        path.write_text("root:x:0:0::/root:/bin/sh\n")
        path.chmod(0o600)
    elif kind == "directory":
        path.mkdir()
    before = os.lstat(path)
    cfg = rig.write_config(layout())
    env = {"MIGRESTORE_STATE": str(path)}
    result = in_child(rig, "apply", env=env)
    assert result.code == 0, result.err
    assert rig.converged(cfg)
    assert "could not write the state file" in result.err
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_size) == (
        before.st_ino,
        before.st_mode,
        before.st_size,
    )
    if kind == "foreign-file":
        assert path.read_text() == "root:x:0:0::/root:/bin/sh\n"
    # reading it never blocks either
    shown = in_child(rig, "status", env=env)
    assert shown.code == 0, shown.err


def test_a_fifo_at_the_note_path_blocks_nothing_and_starts_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    os.mkfifo(str(state) + ".stopped-units")
    rig.node.units.add(UNIT)
    cfg = rig.write_config(layout(UNIT))
    result = in_child(rig, "apply", env={"MIGRESTORE_STATE": str(state)})
    assert result.code == 0, result.err
    assert rig.converged(cfg)
    assert stat.S_ISFIFO(os.lstat(str(state) + ".stopped-units").st_mode)
    assert rig.node.units.state(UNIT) == "active"


@needs_root
@pytest.mark.parametrize("content", ["root:x:0:0::/root:/bin/sh\n", "#!/bin/sh\nexit 0\n"])
def test_a_lock_path_at_a_foreign_file_is_refused_untouched(
    content: str,
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    victim = tmp_path / "passwd"
    victim.write_text(content)
    victim.chmod(0o644)
    monkeypatch.setenv("MIGRESTORE_LOCK", str(victim))
    rig.write_config(layout())
    result = apply(rig, capsys)
    assert result.code == 1, result.err
    assert "is not a migrestore lock" in result.err
    assert content.splitlines()[0] not in result.err  # no file content in an error
    assert victim.read_text() == content
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert rig.changes() == 0


# --------------------------------------------------------------------------- rule 3


@pytest.mark.parametrize("attack", ["unlink", "replace", "rename"])
def test_the_lock_holds_when_its_file_is_removed_or_replaced(
    attack: str,
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o755)
    path = locks / "migrestore.lock"
    monkeypatch.setenv("MIGRESTORE_LOCK", str(path))
    rig.write_config(layout())
    with GpuLock(str(path), command="the first migrestore"):
        if attack == "unlink":
            path.unlink()
        elif attack == "replace":
            path.unlink()
            path.write_text("")
        else:
            path.rename(locks / "elsewhere")
        result = apply(rig, capsys, "--lock-timeout", "0.3")
        assert result.code == 1, result.err
        assert "another migrestore" in result.err
        assert rig.changes() == 0
    assert apply(rig, capsys).code == 0


# --------------------------------------------------------------------------- rule 5


@pytest.mark.parametrize("kind", ["passwd", "empty", "json", "fifo", "directory"])
def test_simulate_on_what_is_not_a_state_file_creates_nothing(kind: str, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    target = etc / "passwd"
    if kind == "passwd":
        target.write_text("root:x:0:0::/root:/bin/sh\n")
    elif kind == "empty":
        target.write_text("")
    elif kind == "json":
        target.write_text('{"format": "something-else/1"}\n')
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    for command in (["status"], ["apply", "--no-clients"]):
        done = subprocess.run(
            ["python3", "-m", "migrestore", "--simulate", str(target), *command],
            env={**os.environ, "MIGRESTORE_STATE": str(tmp_path / "state.json")},
            capture_output=True,
            text=True,
            timeout=HANG,
        )
        assert done.returncode != 0, done.stderr
        assert "Traceback" not in done.stderr
        assert sorted(p.name for p in etc.iterdir()) == ["passwd"], command


# --------------------------------------------------------------------------- rule 6


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999", "-1", "NaN"])
def test_a_lock_timeout_that_never_ends_is_refused(value: str, rig: Rig) -> None:
    rig.write_config(layout())
    result = in_child(rig, "apply", f"--lock-timeout={value}")
    assert result.code == 2, result.err
    assert "finite number of seconds" in result.err
    assert rig.changes() == 0


# --------------------------------------------------------------------------- rule 7


def _plant_note(state: Path, units: List[str], owner: int = 0, mode: int = 0o644) -> Path:
    note = Path(str(state) + ".stopped-units")
    note.write_text(json.dumps({"units": units}))
    os.chown(note, owner, owner)
    note.chmod(mode)
    return note


def _started(rig: Rig, since: int) -> List[str]:
    return [c for c in rig.node.units.calls()[since:] if " start " in f" {c} "]


@needs_root
@pytest.mark.parametrize(
    "attack", ["unit-not-a-client", "owned-by-a-user", "world-writable", "directory-writable"]
)
def test_a_planted_note_makes_root_start_nothing(
    attack: str,
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    state = run_dir / "state.json"
    monkeypatch.setenv("MIGRESTORE_STATE", str(state))
    rig.node.units.add(UNIT, state="inactive")
    rig.node.units.add("debug-shell.service", state="inactive")
    rig.write_config(layout(UNIT))
    assert apply(rig, capsys).code == 0  # converged from here on: only the note may start
    calls = len(rig.node.units.calls())
    if attack == "unit-not-a-client":
        _plant_note(state, ["debug-shell.service", "reboot.target"])
    elif attack == "owned-by-a-user":
        _plant_note(state, [UNIT], owner=NOBODY)
    elif attack == "world-writable":
        _plant_note(state, [UNIT], mode=0o666)
    else:
        _plant_note(state, [UNIT])
        run_dir.chmod(0o777)
    result = apply(rig, capsys)
    assert result.code == 0, result.err
    assert _started(rig, calls) == [], rig.node.units.calls()[calls:]
    assert "stopped_units_untrusted" in result.err
    # the control: the same note from root, safe, naming a client, is honoured
    run_dir.chmod(0o755)
    _plant_note(state, [UNIT])
    assert apply(rig, capsys).code == 0
    assert any(UNIT in c for c in _started(rig, calls)), rig.node.units.calls()[calls:]


# --------------------------------------------------------------------------- rule 8


def _program(path: Path, marker: Path) -> Path:
    path.write_text(f"#!/bin/sh\necho ran > {marker}\n")
    path.chmod(0o755)
    return path


@needs_root
@pytest.mark.parametrize(
    "where", ["symlinked-file", "symlinked-directory", "link-in-a-users-directory"]
)
def test_a_hook_reached_through_a_users_directory_is_refused(
    where: str, rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    user_dir = tmp_path / "home-user-bin"
    user_dir.mkdir()
    marker = tmp_path / "marker"
    _program(user_dir / "hook", marker)
    os.chown(user_dir, NOBODY, NOBODY)  # the user can swap the program at will
    safe = tmp_path / "etc-migrestore"
    safe.mkdir(mode=0o755)
    if where == "symlinked-file":
        (safe / "hook").symlink_to(user_dir / "hook")
        hook = safe / "hook"
    elif where == "link-in-a-users-directory":
        # the link points at a safe program today; the user can point it elsewhere at will
        _program(safe / "hook", marker)
        (user_dir / "link").symlink_to(safe / "hook")
        hook = user_dir / "link"
    else:
        (safe / "bin").symlink_to(user_dir)
        hook = safe / "bin" / "hook"
    text = layout().replace(
        "gpus:\n", f"hooks:\n  post-apply:\n    - {{argv: ['{hook}']}}\ngpus:\n", 1
    )
    rig.node.write_config(text)
    result = apply(rig, capsys)
    assert result.code in (1, 78), result.err
    assert not marker.exists(), "the user's program ran as root"


def test_nvidia_ctk_is_never_taken_from_path(
    rig: Rig,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "marker"
    _program(bindir / "nvidia-ctk", marker)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    cfg = rig.write_config(layout())
    result = apply(rig, capsys)
    assert result.code == 0, result.err
    assert rig.converged(cfg)
    assert not marker.exists(), "nvidia-ctk from the caller's PATH ran as root"


# --------------------------------------------------------------------------- status


@pytest.mark.parametrize(
    ("function", "error"),
    [
        ("nvmlGpuInstanceGetInfo", "NVML_ERROR_INVALID_ARGUMENT"),
        ("nvmlDeviceGetGpuInstances", "NVML_ERROR_NOT_SUPPORTED"),
        ("nvmlComputeInstanceGetInfo_v2", "NVML_ERROR_NOT_FOUND"),
    ],
)
def test_status_answers_while_other_processes_keep_changing_the_gpus(
    function: str, error: str, rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    # every lock-free read meets an instance (or MIG mode) changed under it, as when
    # applies race the daemon: status reads once more under the GPU lock
    cfg = rig.write_config(layout())
    assert apply(rig, capsys).code == 0
    for nth in range(1, 4):
        rig.sim.fail(function, nth, error)
    shown = run(capsys, "--simulate", rig.state, "status", "--json")
    assert shown.code == 0, shown.err
    assert [gi["profile"] for gi in shown.json()["gpus"][0]["instances"]] == ["7g.80gb"]
    assert rig.converged(cfg)


@needs_root
def test_a_config_reached_through_a_link_in_a_users_directory_is_refused(
    rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    safe = tmp_path / "etc"
    safe.mkdir(mode=0o755)
    real = safe / "migrestore.yaml"
    real.write_text(layout())
    real.chmod(0o644)
    user_dir = tmp_path / "home-user"
    user_dir.mkdir()
    (user_dir / "migrestore.yaml").symlink_to(real)
    os.chown(user_dir, NOBODY, NOBODY)  # the user can re-point the link at another config
    result = run(capsys, "--simulate", rig.state, "-c", str(user_dir / "migrestore.yaml"), "apply")
    assert result.code == 78, result.err
    assert "it holds the symlink" in result.err
    assert rig.changes() == 0
