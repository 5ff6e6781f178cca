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
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Optional

from migrestore.errors import StateFileError

__all__ = ["write_bytes"]


def write_bytes(
    path: str,
    data: bytes,
    *,
    what: str,
    fix: str,
    mode: Optional[int] = 0o644,
    prefix: str = ".tmp-",
) -> None:
    """Replace ``path`` with ``data`` atomically (rules 1 and 2).

    ``what`` names the file for the error (``state file``), ``fix`` says what to do.

    Raises:
        StateFileError: it could not be written (rule 3).
    """
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    try:
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
