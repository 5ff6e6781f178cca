"""The GPU lock: one migrestore at a time changes GPUs on this machine.

Rules:

1. The lock is an exclusive ``flock`` on the directory of ``/run/migrestore.lock``
   (``$MIGRESTORE_LOCK`` overrides the path), checked after locking to still be the
   directory at that path. A directory cannot be unlinked while it holds files (and
   /run never is), so removing or replacing the lock file while it is held does not let
   a second migrestore in; the file only names the holder. The kernel drops the lock
   when its holder dies, even by SIGKILL, so a crashed run never leaves a stale lock.
2. A waiter polls (small sleeps) for up to ``timeout`` seconds, then gives up with a
   LockError that names the holder: its pid and command, which every holder writes
   into the file once it has the lock. A ``cancel`` callable that turns true (the
   daemon's SIGTERM) ends the wait at the next poll with ``Cancelled``.
3. The file is opened with O_NOFOLLOW (a symlink is refused, never followed), must be
   a regular file owned by root or by us, and is made mode 0600. An existing file is
   used only when it is empty or holds one holder line: anything else (``/etc/passwd``
   named by mistake) is refused, never emptied or chmod'ed. Its directory must belong
   to root (or to us) and be writable by nobody else: otherwise another user could
   hold the lock forever. Every refusal names the fix.
4. The descriptor is close-on-exec, so programs we start (hooks, systemctl) never
   inherit the lock and cannot keep it after we exit.
5. Bookkeeping never stops a restore: when the file cannot be created (a full or
   read-only /run) the directory lock still serialises runs; waiters then read the
   holder as "pid unknown".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import time
from types import TracebackType
from typing import Callable, Optional, Type

from migrestore.errors import LockError

__all__ = ["DEFAULT_LOCK", "Cancelled", "GpuLock", "default_path"]

DEFAULT_LOCK = "/run/migrestore.lock"
DEFAULT_TIMEOUT = 30.0
POLL = 0.1
COMMAND_MAX = 200
HOLDER_MAX = 512  # a holder line is at most this long


def default_path() -> str:
    return os.environ.get("MIGRESTORE_LOCK") or DEFAULT_LOCK


def _our_command() -> str:
    args = list(sys.argv) or ["migrestore"]
    args[0] = os.path.basename(args[0]) or "migrestore"
    if args[0] == "__main__.py":
        args[0] = "migrestore"
    return " ".join(args)


def _holder_record(raw: bytes) -> bool:
    """Whether a file's bytes are empty or one holder line (``PID COMMAND``)."""
    if not raw.strip():
        return True
    if len(raw) > HOLDER_MAX or raw.count(b"\n") > 1:
        return False
    pid, _, _command = raw.decode("utf-8", "replace").strip().partition(" ")
    return pid.isdigit()


def _same_inode(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _close(fd: Optional[int]) -> None:
    if fd is not None:
        os.close(fd)


def _seconds(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


class Cancelled(Exception):
    """The wait for the lock was cut short by ``cancel`` (the daemon's SIGTERM): nothing
    was done. Not a MigrestoreError: it is no failure to report."""


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
        cancel: Optional[Callable[[], bool]] = None,
    ) -> None:
        self.path = path or default_path()
        self.timeout = timeout
        self.cancel = cancel
        self.command = " ".join((command or _our_command()).split())[:COMMAND_MAX]
        self.poll = poll
        self._fd: Optional[int] = None  # the locked directory
        self._file_fd: Optional[int] = None  # the holder file

    @property
    def held(self) -> bool:
        return self._fd is not None

    # ----------------------------------------------------------------- checks

    def _directory(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def _check_directory(self, st: os.stat_result) -> None:
        directory = self._directory()
        euid = os.geteuid()
        if st.st_uid not in (0, euid) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise LockError(
                f"lock {self.path}: directory {directory} is writable by users other than "
                f"root (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); "
                "another user could hold the lock (use a root-owned directory that only "
                "root can write, such as /run, or set MIGRESTORE_LOCK)"
            )

    def _open_directory(self) -> int:
        directory = self._directory()
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LockError(
                f"lock {self.path}: directory {directory} does not exist "
                "(create it, or set MIGRESTORE_LOCK to a path in a root-owned directory)"
            ) from None
        except OSError as err:
            raise LockError(
                f"lock {self.path}: cannot open directory {directory}: {err.strerror} "
                "(set MIGRESTORE_LOCK to a path in a root-owned directory)"
            ) from None
        try:
            self._check_directory(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_file(self) -> Optional[int]:
        """The holder file (rule 3), or None when it cannot be created (rule 5)."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(self.path, flags)
                created = False
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise LockError(
                    f"lock {self.path} is a symlink; migrestore does not follow it "
                    "(remove the symlink)"
                ) from None
            if err.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOENT):
                return None  # rule 5: the directory lock is enough
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
            if not created and not _holder_record(os.pread(fd, HOLDER_MAX + 1, 0)):
                raise LockError(
                    f"lock {self.path}: the file there is not a migrestore lock (it is not "
                    "empty and holds no holder line); migrestore leaves it as it is (remove "
                    "it, or set MIGRESTORE_LOCK to another path)"
                )
            os.fchmod(fd, 0o600)
            os.set_blocking(fd, True)
        except OSError as err:
            os.close(fd)
            raise LockError(f"lock {self.path}: cannot use it: {err.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ----------------------------------------------------------------- holder

    def _holder(self, fd: Optional[int]) -> str:
        raw = b""
        if fd is not None:
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

    def _write_holder(self, fd: Optional[int]) -> None:
        if fd is None:
            return
        line = f"{os.getpid()} {self.command}\n".encode("utf-8", "replace")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, line, 0)
        except OSError:
            pass  # rule 5: a full /run leaves the holder unnamed, not the GPUs unrestored

    # ----------------------------------------------------------------- lock

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; LockError after that."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        deadline = time.monotonic() + self.timeout
        while True:
            dir_fd = self._open_directory()
            try:
                file_fd = self._open_file()
            except BaseException:
                os.close(dir_fd)
                raise
            try:
                while True:
                    try:
                        fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if self.cancel is not None and self.cancel():
                            raise Cancelled(f"the wait for {self.path} was cut short") from None
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise LockError(
                                f"another migrestore ({self._holder(file_fd)}) is changing "
                                f"GPUs; waited {_seconds(self.timeout)} s (it holds "
                                f"{self.path}; wait for it to finish, or stop it)"
                            ) from None
                        time.sleep(min(self.poll, remaining))
                if _same_inode(dir_fd, self._directory()):
                    self._write_holder(file_fd)
                    self._fd, self._file_fd = dir_fd, file_fd
                    return
            except BaseException:
                _close(file_fd)
                os.close(dir_fd)
                raise
            # The directory was replaced while we waited: lock the one now at the path.
            _close(file_fd)
            os.close(dir_fd)

    def release(self) -> None:
        """Let go of the lock (the file stays, empty)."""
        fd, self._fd = self._fd, None
        file_fd, self._file_fd = self._file_fd, None
        if fd is None:
            return
        try:
            if file_fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(file_fd, 0)
        finally:
            _close(file_fd)
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
