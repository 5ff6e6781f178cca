"""External programs: post-apply hooks, the CDI refresh, and the bounded runner under both.

Rules:

1. Nothing runs through a shell. A hook is an argv list from the config, executed as
   it is; its output is logged, never parsed or interpreted.
2. Every program is bounded: it runs in its own process group, and when its time is
   up the whole group gets SIGTERM, then SIGKILL after ``KILL_GRACE`` seconds, so a
   hook that forks cannot leave anything behind. Output is read while the program
   runs and kept up to ``OUTPUT_LIMIT`` bytes per stream; the rest is read and
   dropped, so a chatty program can neither block on a full pipe nor fill our memory.
3. Hooks get a clean environment: ``PATH=/usr/sbin:/usr/bin:/sbin:/bin``,
   ``LANG=C.UTF-8`` and the ``MIGRESTORE_*`` variables that describe the result, and
   nothing of ours (no ``NOTIFY_SOCKET``, no credentials). The environment is never
   logged. stdin is /dev/null, the working directory ``/``.
4. A failed hook is logged at error and reported back; it never undoes the geometry,
   which is verified by then. The other hooks still run.

Hook environment (``result_environment`` builds it):

``MIGRESTORE_RESULT``   ``converged`` | ``applied`` | ``failed`` | ``drift``
``MIGRESTORE_MESSAGE``  the one-line summary also sent as ``STATUS=``
``MIGRESTORE_STATE``    the path of the state file (geometry and MIG device UUIDs)
``MIGRESTORE_CONFIG``   the config file applied
``MIGRESTORE_CHANGED``  the UUIDs of the GPUs changed by this run, comma-separated
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import IO, Dict, List, Mapping, Optional, Sequence, Tuple

from migrestore.logs import BoundLogger
from migrestore.model import Hook

__all__ = [
    "CDI_OUTPUT",
    "CDI_TIMEOUT",
    "CLEAN_PATH",
    "Completed",
    "describe_argv",
    "hook_environment",
    "refresh_cdi",
    "result_environment",
    "run_bounded",
    "run_hooks",
]

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CDI_OUTPUT = "/var/run/cdi/nvidia.yaml"
CDI_TIMEOUT = 60.0
OUTPUT_LIMIT = 64 * 1024  # bytes kept per stream
LINES_MAX = 200  # lines logged per stream of one hook
LINE_MAX = 1000  # characters logged per line
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
PIPE_GRACE = 0.5  # how long to read after the program exits while its children hold the pipes


# --------------------------------------------------------------------------- runner


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


# --------------------------------------------------------------------------- hooks


def hook_environment(env_extra: Mapping[str, str]) -> Dict[str, str]:
    """The clean environment of a hook: PATH, LANG and ``env_extra``, whose names must
    start with ``MIGRESTORE_`` (anything else is a bug of the caller: ValueError)."""
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8"}
    for key, value in env_extra.items():
        if not key.startswith("MIGRESTORE_"):
            raise ValueError(f"hook environment variable {key!r} does not start with MIGRESTORE_")
        env[key] = value
    return env


def result_environment(
    result: str,
    message: str,
    state_path: str = "",
    config_path: str = "",
    changed: Sequence[str] = (),
) -> Dict[str, str]:
    """The ``MIGRESTORE_*`` variables a hook receives (see the module docstring)."""
    return {
        "MIGRESTORE_RESULT": result,
        "MIGRESTORE_MESSAGE": " ".join(message.split()),
        "MIGRESTORE_STATE": state_path,
        "MIGRESTORE_CONFIG": config_path,
        "MIGRESTORE_CHANGED": ",".join(changed),
    }


def _hook_name(hook: Hook) -> str:
    text = describe_argv(hook.argv)
    return f"{text} (line {hook.line})" if hook.line is not None else text


def _outcome(result: Completed, timeout: float) -> str:
    if result.returncode is None:
        return f"timed out after {timeout:g} s and was killed"
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        return f"killed by {name}"
    if result.returncode > 0:
        return f"exited with status {result.returncode}"
    return "ok"


def _log_output(log: BoundLogger, name: str, stream: str, text: str, dropped: int) -> None:
    lines = text.splitlines()
    for line in lines[:LINES_MAX]:
        if len(line) > LINE_MAX:
            line = line[:LINE_MAX] + "..."
        log.info("hook_output", hook=name, stream=stream, line=line)
    if len(lines) > LINES_MAX or dropped:
        log.info(
            "hook_output_truncated",
            hook=name,
            stream=stream,
            lines_dropped=max(len(lines) - LINES_MAX, 0),
        )


def run_hooks(
    hooks: Sequence[Hook], log: BoundLogger, env_extra: Mapping[str, str]
) -> Tuple[str, ...]:
    """Run each hook in order; return one line per failed hook (empty: all ran fine).

    Raises ValueError when ``env_extra`` holds a name that is not ``MIGRESTORE_*``.
    """
    env = hook_environment(env_extra)
    failed: List[str] = []
    for hook in hooks:
        name = _hook_name(hook)
        log.info("hook_started", hook=name, timeout=hook.timeout)
        try:
            result = run_bounded(hook.argv, hook.timeout, env=env, cwd="/")
        except OSError as err:
            outcome = f"could not start: {err.strerror or err}"
            log.error("hook_failed", hook=name, outcome=outcome)
            failed.append(f"hook {name} {outcome} (fix the hooks list in the config)")
            continue
        # A process killed on timeout may still have written something useful.
        _log_output(log, name, "stdout", result.stdout, result.dropped)
        _log_output(log, name, "stderr", result.stderr, 0)
        outcome = _outcome(result, hook.timeout)
        if result.ok:
            log.info("hook_finished", hook=name, outcome=outcome)
            continue
        log.error("hook_failed", hook=name, outcome=outcome)
        failed.append(f"hook {name} {outcome}; the MIG geometry is kept")
    return tuple(failed)


# --------------------------------------------------------------------------- CDI


def refresh_cdi(
    log: BoundLogger,
    nvidia_ctk: Optional[str] = None,
    output: str = CDI_OUTPUT,
    timeout: float = CDI_TIMEOUT,
) -> Optional[str]:
    """Regenerate the CDI spec, since MIG device UUIDs change with every re-creation.

    Uses ``nvidia_ctk`` when given, else ``nvidia-ctk`` from ``$PATH`` (or the clean
    PATH); without one, does nothing and returns None. Returns None on success, else
    the one-line error.
    """
    ctk = nvidia_ctk or shutil.which("nvidia-ctk", path=os.environ.get("PATH") or CLEAN_PATH)
    if ctk is None:
        log.debug("cdi_refresh_skipped", outcome="nvidia-ctk not found")
        return None
    argv = (ctk, "cdi", "generate", f"--output={output}")
    command = describe_argv(argv)
    try:
        result = run_bounded(argv, timeout, env=hook_environment({}), cwd="/")
    except OSError as err:
        error = f"could not run {command}: {err.strerror or err}"
        log.error("cdi_refresh_failed", outcome=error)
        return error
    for line in (result.stdout + result.stderr).splitlines()[:LINES_MAX]:
        log.debug("cdi_refresh_output", line=line[:LINE_MAX])
    if result.ok:
        log.info("cdi_refreshed", outcome="ok", path=output)
        return None
    last = (result.stderr.strip() or result.stdout.strip()).splitlines()
    detail = f": {last[-1][:LINE_MAX]}" if last else ""
    error = (
        f"{command} {_outcome(result, timeout)}{detail} "
        "(run it by hand to see why; containers see stale MIG devices until it succeeds)"
    )
    log.error("cdi_refresh_failed", outcome=error)
    return error
