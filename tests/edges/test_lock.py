"""lock: one holder at a time, the holder named on timeout, released when the holder
dies, and unsafe paths refused."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from migrestore.errors import LockError
from migrestore.lock import DEFAULT_LOCK, GpuLock, default_path


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


def test_default_path(monkeypatch: pytest.MonkeyPatch, lock_dir: Path) -> None:
    monkeypatch.delenv("MIGRESTORE_LOCK", raising=False)
    assert default_path() == DEFAULT_LOCK == "/run/migrestore.lock"
    monkeypatch.setenv("MIGRESTORE_LOCK", str(lock_dir / "x.lock"))
    assert GpuLock().path == str(lock_dir / "x.lock")


def test_holder_writes_pid_and_command_into_a_0600_file(lock_dir: Path) -> None:
    path = lock_dir / "migrestore.lock"
    with GpuLock(str(path), command="migrestore daemon") as lock:
        assert lock.held
        assert path.read_text() == f"{os.getpid()} migrestore daemon\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not lock.held
    assert path.exists() and path.read_text() == ""


def test_a_second_taker_times_out_naming_the_holder(lock_dir: Path) -> None:
    path = str(lock_dir / "migrestore.lock")
    with GpuLock(path, command="migrestore daemon"), pytest.raises(LockError) as info:
        GpuLock(path, timeout=0).acquire()
    assert str(info.value) == (
        f"another migrestore (pid {os.getpid()}: migrestore daemon) is changing GPUs; "
        f"waited 0 s (it holds {path}; wait for it to finish, or stop it)"
    )
    assert info.value.exit_code == 1


def test_a_waiter_gets_the_lock_once_it_is_released(lock_dir: Path) -> None:
    path = str(lock_dir / "migrestore.lock")
    holder = GpuLock(path, command="migrestore apply")
    holder.acquire()
    taken = threading.Event()

    def wait_for_it() -> None:
        with GpuLock(path, timeout=60, command="migrestore daemon"):
            taken.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    try:
        assert not taken.wait(0.3)  # still held: the waiter keeps waiting
        holder.release()
        assert taken.wait(30)
    finally:
        holder.release()
        waiter.join(30)


def test_the_kernel_releases_the_lock_of_a_killed_holder(lock_dir: Path) -> None:
    path = str(lock_dir / "migrestore.lock")
    code = (
        "import sys, time\n"
        "from migrestore.lock import GpuLock\n"
        f"lock = GpuLock({path!r}, command='migrestore apply')\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(300)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "held\n"
        with pytest.raises(LockError, match=rf"pid {child.pid}: migrestore apply"):
            GpuLock(path, timeout=0).acquire()
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        with GpuLock(path, timeout=0, command="migrestore daemon"):
            assert Path(path).read_text() == f"{os.getpid()} migrestore daemon\n"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_an_empty_holder_record_reads_as_pid_unknown(lock_dir: Path) -> None:
    path = str(lock_dir / "migrestore.lock")
    holder = GpuLock(path)
    holder.acquire()
    try:
        os.truncate(path, 0)
        with pytest.raises(LockError, match=r"another migrestore \(pid unknown\)"):
            GpuLock(path, timeout=0).acquire()
    finally:
        holder.release()


def test_a_symlink_is_refused(lock_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = lock_dir / "migrestore.lock"
    link.symlink_to(target)
    with pytest.raises(LockError) as info:
        GpuLock(str(link), timeout=0).acquire()
    assert str(info.value) == (
        f"lock {link} is a symlink; migrestore does not follow it (remove the symlink)"
    )


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(LockError) as info:
        GpuLock(str(shared / "migrestore.lock"), timeout=0).acquire()
    assert str(info.value) == (
        f"lock {shared / 'migrestore.lock'}: directory {shared} is writable by users other "
        f"than root (owner uid {os.geteuid()}, mode 1777); another user could hold the lock "
        "(use a root-owned directory that only root can write, such as /run, or set "
        "MIGRESTORE_LOCK)"
    )
    assert not (shared / "migrestore.lock").exists()


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "migrestore.lock"
    with pytest.raises(LockError, match=r"directory .*/nope does not exist"):
        GpuLock(str(path), timeout=0).acquire()


def test_a_lock_path_that_is_not_a_regular_file_is_refused(lock_dir: Path) -> None:
    fifo = lock_dir / "migrestore.lock"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(LockError, match="is not a regular file"):
        GpuLock(str(fifo), timeout=0).acquire()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_lock_file_owned_by_another_user_is_refused(lock_dir: Path) -> None:
    path = lock_dir / "migrestore.lock"
    path.write_text("")
    os.chown(path, 65534, 65534)
    with pytest.raises(LockError, match="belongs to uid 65534, not root"):
        GpuLock(str(path), timeout=0).acquire()


def test_taking_the_same_lock_object_twice_is_a_bug(lock_dir: Path) -> None:
    lock = GpuLock(str(lock_dir / "migrestore.lock"))
    with lock, pytest.raises(RuntimeError):
        lock.acquire()


def test_the_lock_descriptor_is_not_inherited(lock_dir: Path) -> None:
    path = str(lock_dir / "migrestore.lock")
    with GpuLock(path):
        out = subprocess.run(
            ["sh", "-c", "ls -l /proc/self/fd"], capture_output=True, text=True, check=True
        ).stdout
    assert path not in out
