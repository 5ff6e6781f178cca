"""The GPU lock: one migrestore at a time changes GPUs on this machine.

Rules:

1. The lock is an exclusive ``flock`` on ``/run/migrestore.lock`` (``$MIGRESTORE_LOCK``
   overrides the path). The kernel drops it when its holder dies, even by SIGKILL, so
   a crashed run never leaves a stale lock to clean up by hand. The file itself is
   never deleted: unlinking a lock file lets two processes lock two different files.
2. A waiter polls (small sleeps) for up to ``timeout`` seconds, then gives up with a
   LockError that names the holder: its pid and command, which every holder writes
   into the file once it has the lock.
3. The file is opened with O_NOFOLLOW (a symlink is refused, never followed), must be
   a regular file owned by root or by us, and is made mode 0600. Its directory must
   belong to root (or to us) and be writable by nobody else: otherwise another user
   could plant the file and hold the lock forever. Every refusal names the fix.
4. The descriptor is close-on-exec, so programs we start (hooks, systemctl) never
   inherit the lock and cannot keep it after we exit.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time
from types import TracebackType
from typing import Optional, Type

from migrestore.errors import LockError

__all__ = ["DEFAULT_LOCK", "GpuLock", "default_path"]

DEFAULT_LOCK = "/run/migrestore.lock"
DEFAULT_TIMEOUT = 30.0
POLL = 0.1
COMMAND_MAX = 200


def default_path() -> str:
    return os.environ.get("MIGRESTORE_LOCK") or DEFAULT_LOCK


def _our_command() -> str:
    args = list(sys.argv) or ["migrestore"]
    args[0] = os.path.basename(args[0]) or "migrestore"
    if args[0] == "__main__.py":
        args[0] = "migrestore"
    return " ".join(args)


def _seconds(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


class GpuLock:
    """``with GpuLock(): ...`` holds the lock for the block.

    ``path`` None: ``$MIGRESTORE_LOCK`` or ``/run/migrestore.lock``. ``command`` is
    what other waiters are told we are doing (default: our command line).
    """

    def __init__(
        self,
        path: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        command: Optional[str] = None,
        poll: float = POLL,
    ) -> None:
        self.path = path or default_path()
        self.timeout = timeout
        self.command = " ".join((command or _our_command()).split())[:COMMAND_MAX]
        self.poll = poll
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    # ----------------------------------------------------------------- checks

    def _check_directory(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            raise LockError(
                f"lock {self.path}: directory {directory} does not exist "
                "(create it, or set MIGRESTORE_LOCK to a path in a root-owned directory)"
            ) from None
        euid = os.geteuid()
        if st.st_uid not in (0, euid) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise LockError(
                f"lock {self.path}: directory {directory} is writable by users other than "
                f"root (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); "
                "another user could hold the lock (use a root-owned directory that only "
                "root can write, such as /run, or set MIGRESTORE_LOCK)"
            )

    def _open(self) -> int:
        self._check_directory()
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise LockError(
                    f"lock {self.path} is a symlink; migrestore does not follow it "
                    "(remove the symlink)"
                ) from None
            raise LockError(
                f"lock {self.path}: cannot open: {err.strerror} "
                "(run as root, or set MIGRESTORE_LOCK to a writable path)"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LockError(f"lock {self.path} is not a regular file (remove it)")
            if st.st_uid not in (0, os.geteuid()):
                raise LockError(
                    f"lock {self.path} belongs to uid {st.st_uid}, not root; another user "
                    "could hold it (remove the file)"
                )
            os.fchmod(fd, 0o600)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ----------------------------------------------------------------- holder

    def _holder(self, fd: int) -> str:
        try:
            raw = os.pread(fd, 512, 0)
        except OSError:
            raw = b""
        text = raw.decode("utf-8", "replace").strip().splitlines()
        if not text:
            return "pid unknown"
        pid, _, command = text[0].partition(" ")
        if not pid.isdigit():
            return "pid unknown"
        return f"pid {pid}: {command}" if command else f"pid {pid}"

    def _write_holder(self, fd: int) -> None:
        line = f"{os.getpid()} {self.command}\n".encode("utf-8", "replace")
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)

    # ----------------------------------------------------------------- lock

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; LockError after that."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        fd = self._open()
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise LockError(
                            f"another migrestore ({self._holder(fd)}) is changing GPUs; "
                            f"waited {_seconds(self.timeout)} s (it holds {self.path}; "
                            "wait for it to finish, or stop it)"
                        ) from None
                    time.sleep(min(self.poll, remaining))
            self._write_holder(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (the file stays, empty)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> GpuLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()
