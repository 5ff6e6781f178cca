"""Bounded external programs: the one runner every subprocess of migrestore goes through.

Stdlib only, so both migrestore and the simulator may import it.

Rules:

1. Nothing runs through a shell: an argv list is executed as it is, stdin is
   /dev/null, file descriptors other than the pipes are closed.
2. Every program is bounded: it runs in its own process group, and when its time is
   up the whole group gets SIGTERM, then SIGKILL after ``KILL_GRACE`` seconds, so a
   program that forks cannot leave anything behind. The same happens when the caller
   is interrupted (KeyboardInterrupt) while it waits.
3. Output is read while the program runs and kept up to ``OUTPUT_LIMIT`` bytes per
   stream; the rest is read and dropped, so a chatty program can neither block on a
   full pipe nor fill our memory. Once the program exited, children it left holding
   the pipes are waited for at most ``PIPE_GRACE`` seconds.
4. A program that cannot be started raises ``OSError``; every caller turns that into
   its own error. A timeout is ``Completed.returncode is None``, never an exception.
5. A program run as root from a path (hooks, ``nvidia-ctk``) is opened once with
   ``open_trusted`` and executed through that descriptor, so what was checked is what
   runs. The check walks the path as the kernel resolves it, symlink by symlink: every
   directory passed through, and the directory of every symlink followed, must belong
   to root (or us) and be writable by no one else (a root-owned sticky directory such
   as /tmp is accepted: others cannot replace what root put there); the program must be
   a regular executable file of root (or us) that no one else can write. A refusal is
   ``Untrusted`` with the reason and the fix.
6. A file whose content a root process acts on (NVIDIA's CDI env file) is read with
   ``read_trusted``: the same walk, a regular file of root (or us) that no one else
   can write, read through the descriptor checked and at most ``limit`` bytes.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import IO, Dict, List, Mapping, Optional, Sequence, Tuple

SYMLINK_HOPS = 40  # as the kernel's MAXSYMLINKS
OUTPUT_LIMIT = 64 * 1024  # bytes kept per stream
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
PIPE_GRACE = 0.5  # how long to read after the program exits while its children hold the pipes


@dataclass(frozen=True)
class Completed:
    """What a bounded run gave. ``returncode`` is None when the program was killed
    because its time was up; negative when a signal ended it (as in subprocess)."""

    argv: Tuple[str, ...]
    returncode: Optional[int]
    stdout: str
    stderr: str
    dropped: int = 0  # bytes read beyond OUTPUT_LIMIT and thrown away

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def outcome(self, timeout: float) -> str:
        """How the run ended, in words: ``ok``, ``exited with status N``, ``killed by
        SIGNAME``, or ``timed out after T s and was killed``."""
        if self.returncode is None:
            return f"timed out after {timeout:g} s and was killed"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"killed by {name}"
        if self.returncode > 0:
            return f"exited with status {self.returncode}"
        return "ok"


class Untrusted(Exception):
    """A program another user could change (rule 5); ``str()`` is one line with the fix."""


def _owner_only(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _check_dir(path: str, program: str) -> None:
    st = os.stat(path)
    if _owner_only(st):
        return
    if st.st_uid == 0 and st.st_mode & stat.S_ISVTX:
        return
    raise Untrusted(
        f"{program}: directory {path} on its path is owned by uid {st.st_uid} or writable by "
        f"others (mode {stat.S_IMODE(st.st_mode):04o}), so another user could swap what "
        "runs as root (keep it in a root-owned directory such as /usr/local/sbin)"
    )


def _resolve_checked(program: str) -> Tuple[str, os.stat_result]:
    """The path ``program`` resolves to and its lstat, checking as rule 5 says."""
    if not os.path.isabs(program):
        raise Untrusted(f"{program}: not an absolute path (no PATH lookup as root)")
    pending = [p for p in program.split("/") if p]
    current = "/"
    _check_dir(current, program)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current) or "/"
            continue
        candidate = os.path.join(current, part)
        st = os.lstat(candidate)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > SYMLINK_HOPS:
                raise Untrusted(f"{program}: too many symlinks")
            target = os.readlink(candidate)
            pending = [p for p in target.split("/") if p] + pending
            if target.startswith("/"):
                current = "/"
            continue
        if pending:
            if not stat.S_ISDIR(st.st_mode):
                raise Untrusted(f"{program}: {candidate} is not a directory")
            _check_dir(candidate, program)
            current = candidate
            continue
        return candidate, st
    raise Untrusted(f"{program}: names a directory, not a program")


def _open_checked(path: str, mode: str) -> Tuple[int, os.stat_result]:
    """A close-on-exec descriptor of the regular file ``path`` after the checks of rules
    5 and 6 (``mode``: the mode the fix names), with its stat.

    Raises:
        Untrusted: another user could change it, or it is not a regular file.
        OSError: it does not exist or cannot be opened.
    """
    resolved, seen = _resolve_checked(path)
    fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
            raise Untrusted(f"{path}: changed while it was checked")
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted(f"{path}: not a regular file")
        if not _owner_only(st):
            raise Untrusted(
                f"{path}: owned by uid {st.st_uid} or writable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}) (chown root:root {path} && chmod {mode} "
                f"{path})"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_trusted(program: str) -> int:
    """A close-on-exec descriptor of ``program`` after the checks of rule 5.

    Raises:
        Untrusted: another user could change it, or it is not an executable file.
        OSError: it does not exist or cannot be opened.
    """
    fd, st = _open_checked(program, "0755")
    if not st.st_mode & 0o111:
        os.close(fd)
        raise Untrusted(f"{program}: not executable (chmod 0755 {program})")
    return fd


def read_trusted(path: str, limit: int = OUTPUT_LIMIT) -> str:
    """The text of ``path`` after the checks of rule 6 (UTF-8, undecodable bytes replaced).

    Raises:
        Untrusted: another user could change it, it is not a regular file, or it is
            larger than ``limit`` bytes.
        OSError: it does not exist or cannot be read.
    """
    fd, _st = _open_checked(path, "0644")
    try:
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise Untrusted(f"{path}: larger than {limit} bytes")
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")


def fd_executable(fd: int) -> str:
    """What to exec for a descriptor from ``open_trusted`` (pass it with ``pass_fds``)."""
    return f"/proc/self/fd/{fd}"


def describe_argv(argv: Sequence[str]) -> str:
    """An argv as a shell would need it typed, for log lines and messages."""
    return " ".join(shlex.quote(a) for a in argv)


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    # Whatever is left of the group: the leader, or children that ignore SIGTERM.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_bounded(
    argv: Sequence[str],
    timeout: float,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    limit: int = OUTPUT_LIMIT,
    kill_grace: float = KILL_GRACE,
    program_fd: Optional[int] = None,
) -> Completed:
    """Run ``argv`` (no shell) for at most ``timeout`` seconds and collect its output.

    ``env`` None inherits ours. ``program_fd`` (from ``open_trusted``): run that file,
    with ``argv`` as its arguments (rule 5). Raises OSError when the program cannot be
    started (not found, not executable); the callers turn that into their own error.
    """
    proc = subprocess.Popen(
        list(argv),
        executable=fd_executable(program_fd) if program_fd is not None else None,
        pass_fds=(program_fd,) if program_fd is not None else (),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    kept: Dict[int, bytearray] = {out_fd: bytearray(), err_fd: bytearray()}
    dropped = 0
    exited_at: Optional[float] = None
    streams: List[IO[bytes]] = [proc.stdout, proc.stderr]
    try:
        with selectors.DefaultSelector() as sel:
            for stream in streams:
                sel.register(stream, selectors.EVENT_READ)
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    break
                wait = min(deadline - now, 0.1)
                if exited_at is not None:
                    # The program is gone but something it started holds the pipes.
                    if now >= exited_at + PIPE_GRACE:
                        break
                    wait = min(wait, exited_at + PIPE_GRACE - now)
                for key, _events in sel.select(wait):
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    buf = kept[key.fd]
                    room = max(limit - len(buf), 0)
                    buf += data[:room]
                    dropped += max(len(data) - room, 0)
                if exited_at is None and proc.poll() is not None:
                    exited_at = time.monotonic()
        returncode: Optional[int]
        try:
            returncode = proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            _kill_group(proc, kill_grace)
            returncode = None
    finally:
        if proc.poll() is None:  # an exception of ours (KeyboardInterrupt): leave nothing behind
            _kill_group(proc, 0)
        for stream in streams:
            stream.close()
    return Completed(
        argv=tuple(argv),
        returncode=returncode,
        stdout=kept[out_fd].decode("utf-8", "replace"),
        stderr=kept[err_fd].decode("utf-8", "replace"),
        dropped=dropped,
    )
