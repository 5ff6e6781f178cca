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
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import IO, Dict, List, Mapping, Optional, Sequence, Tuple

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
) -> Completed:
    """Run ``argv`` (no shell) for at most ``timeout`` seconds and collect its output.

    ``env`` None inherits ours. Raises OSError when the program cannot be started
    (not found, not executable); the callers turn that into their own error.
    """
    proc = subprocess.Popen(
        list(argv),
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
