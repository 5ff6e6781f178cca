"""Post-apply hooks, run by ``proc.run_bounded`` (the CDI refresh: ``migrestore.cdi``).

Rules:

1. Nothing runs through a shell. A hook is an argv list from the config, executed as
   it is; its output is logged, never parsed or interpreted.
2. Every program is bounded (``migrestore.proc`` rules 2 and 3): its whole process
   group is killed when its time is up, and its output is capped.
3. Hooks get a clean environment: ``PATH=/usr/sbin:/usr/bin:/sbin:/bin``,
   ``LANG=C.UTF-8`` and the ``MIGRESTORE_*`` variables that describe the result, and
   nothing of ours (no ``NOTIFY_SOCKET``, no credentials). The environment is never
   logged. stdin is /dev/null, the working directory ``/``.
4. A failed hook is logged at error and reported back; it never undoes the geometry,
   which is verified by then. The other hooks still run.
5. A hook runs as root only after ``proc.open_trusted`` checked every directory and
   symlink on the way to it; the descriptor checked is the one executed, so swapping
   the file or a symlink afterwards changes nothing.

Hook environment (``result_environment`` builds it):

``MIGRESTORE_RESULT``   ``converged`` | ``applied`` | ``failed`` | ``drift``
``MIGRESTORE_MESSAGE``  the one-line summary also sent as ``STATUS=``
``MIGRESTORE_STATE``    the path of the state file (geometry and MIG device UUIDs)
``MIGRESTORE_CONFIG``   the config file applied
``MIGRESTORE_CHANGED``  the UUIDs of the GPUs changed by this run, comma-separated
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence, Tuple

from migrestore.logs import BoundLogger
from migrestore.model import Hook
from migrestore.proc import (
    OUTPUT_LIMIT,
    Completed,
    Untrusted,
    describe_argv,
    open_trusted,
    run_bounded,
)

__all__ = [
    "CLEAN_PATH",
    "OUTPUT_LIMIT",
    "Completed",
    "describe_argv",
    "hook_environment",
    "result_environment",
    "run_bounded",
    "run_hooks",
]

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
LINES_MAX = 200  # lines logged per stream of one hook
LINE_MAX = 1000  # characters logged per line


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
            program = open_trusted(hook.argv[0])
        except Untrusted as err:
            outcome = f"refused: {err}"
            log.error("hook_failed", hook=name, outcome=outcome)
            failed.append(f"hook {name} {outcome}")
            continue
        except OSError as err:
            outcome = f"could not start: {err.strerror or err}"
            log.error("hook_failed", hook=name, outcome=outcome)
            failed.append(f"hook {name} {outcome} (fix the hooks list in the config)")
            continue
        try:
            result = run_bounded(hook.argv, hook.timeout, env=env, cwd="/", program_fd=program)
        except OSError as err:
            outcome = f"could not start: {err.strerror or err}"
            log.error("hook_failed", hook=name, outcome=outcome)
            failed.append(f"hook {name} {outcome} (fix the hooks list in the config)")
            continue
        finally:
            os.close(program)
        # A process killed on timeout may still have written something useful.
        _log_output(log, name, "stdout", result.stdout, result.dropped)
        _log_output(log, name, "stderr", result.stderr, 0)
        outcome = result.outcome(hook.timeout)
        if result.ok:
            log.info("hook_finished", hook=name, outcome=outcome)
            continue
        log.error("hook_failed", hook=name, outcome=outcome)
        failed.append(f"hook {name} {outcome}; the MIG geometry is kept")
    return tuple(failed)
