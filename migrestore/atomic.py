"""Atomic file writes: the one writer of every file migrestore and its simulator replace.

Stdlib only (and ``migrestore.errors``), so both migrestore and the simulator may
import it.

Rules:

1. A reader sees the old file or the new one, never half of one: the data goes to a
   temporary file in the same directory, is fsynced, renamed over the target with
   ``os.replace``, and the directory is fsynced so the rename survives a crash.
2. The temporary file never outlives the call: whatever fails (a full disk, a
   read-only directory, an interruption), it is removed before the error leaves.
3. Every ``OSError`` leaves as one ``StateFileError`` (exit 1) naming what was written,
   the path, the system's reason and the fix; never a traceback.
4. The mode is set explicitly (whatever the umask): ``mode``, or with ``mode=None``
   the mode of the file being replaced (0644 when there is none).
5. Nothing that is not ours is replaced: what is at the path must be nothing, a symlink
   (the link is replaced, never written through), or a regular file that ``ours``
   accepts (its first bytes, read without blocking); a device (``/dev/null``), a FIFO,
   a directory, a socket or a foreign file is refused with ``StateFileError``, untouched.
   ``ours`` None accepts every regular file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from typing import Callable, Optional

from migrestore.errors import StateFileError

__all__ = ["PROBE_BYTES", "read_regular", "write_bytes"]

PROBE_BYTES = 1 << 20  # what ``ours`` sees of a file at most


def read_regular(path: str, limit: int = PROBE_BYTES) -> bytes:
    """The first ``limit`` bytes of the regular file at ``path``: opened without following
    a symlink and without blocking (a FIFO never blocks the caller), checked to be a
    regular file on the descriptor that is read.

    Raises:
        FileNotFoundError: nothing is there.
        OSError: anything else is there (``errno`` EINVAL names "not a regular file"), or
            it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_replaceable(target: str, what: str, ours: Optional[Callable[[bytes], bool]]) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        raise StateFileError(
            f"{what} {target}: something that is not a regular file is there (a device, "
            "FIFO, directory or socket); migrestore does not replace it (point it "
            "elsewhere, or remove it if it is a leftover)"
        )
    if ours is None:
        return
    try:
        head = read_regular(target)
    except FileNotFoundError:
        return
    except OSError as err:
        raise StateFileError(f"{what} {target}: cannot read: {err.strerror or err}") from None
    if not ours(head):
        raise StateFileError(
            f"{what} {target}: the file there is not one migrestore wrote; it is left as "
            "it is (remove it, or point migrestore elsewhere)"
        )


def write_bytes(
    path: str,
    data: bytes,
    *,
    what: str,
    fix: str,
    mode: Optional[int] = 0o644,
    prefix: str = ".tmp-",
    ours: Optional[Callable[[bytes], bool]] = None,
) -> None:
    """Replace ``path`` with ``data`` atomically (rules 1 and 2), if what is there is
    ours (rule 5).

    ``what`` names the file for the error (``state file``), ``fix`` says what to do.

    Raises:
        StateFileError: it could not be written (rule 3), or what is there is not ours.
    """
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    try:
        _check_replaceable(target, what, ours)
        if mode is None:
            try:
                mode = os.stat(target).st_mode & 0o7777
            except FileNotFoundError:
                mode = 0o644
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
        try:
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise StateFileError(
            f"{what} {target}: cannot write: {err.strerror or err} ({fix})"
        ) from None
