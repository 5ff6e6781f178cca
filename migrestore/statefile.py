"""The state file: what the last run did and what the GPUs look like, for people and probes.

Rules:

1. Written atomically by ``migrestore.atomic`` (temporary file, fsync, ``os.replace``,
   fsync of the directory). A reader sees the old file or the new one, never
   half of one. The directory is created 0755 when missing, the file is 0644: it holds
   no secret, and readiness probes and taint controllers run as other users.
2. Reading never shows a traceback: a missing file is None, anything unreadable or
   malformed is a StateFileError naming the file and the fix.
3. The default path is ``/run/migrestore/state.json`` (``$MIGRESTORE_STATE``
   overrides it): /run is emptied at boot, and so the file never describes an earlier
   boot's GPUs.
4. Only what migrestore wrote is replaced: a state document (``version`` and a
   ``result``), a symlink (replaced, not followed) or nothing (``atomic`` rule 5);
   ``MIGRESTORE_STATE=/dev/null`` or a FIFO is refused, untouched. Reading opens
   without following symlinks and without blocking, so a FIFO there never hangs
   ``status``.
5. The stopped-units note (``note_path``) names client units a run stopped and has not
   started again. It is trusted only from a regular file owned by root (or us) that no
   one else can write, in a directory of the same kind, and only for units in the
   config's clients list: a note planted by another user never makes root start a unit.
   Neither reading nor writing it ever stops a restore: a failure is returned as one
   line for the caller to log.

Schema (version 1), made by ``build_state`` from observed ``model.GpuState`` values::

    {
      "version": 1,
      "time": "2026-01-31T12:00:00Z",     # when the run ended, UTC, ISO 8601
      "result": "converged",              # converged | applied | failed | drift | partial
      "message": "one line",              # the same text as the unit's STATUS=
      "duration": 1.234,                  # seconds the run took
      "config": "/etc/migrestore.yaml",   # or null
      "selected": null,                   # the mig-parted config name used, if any
      "driver": "580.95.05",              # or null
      "config_sha256": "9f86d0...",       # SHA-256 of the config's bytes, or null
      "drift": false,                     # true: the watch found drift and restored it
      "nvml_error": null,                 # the NVML error name that failed the run
      "units": {"stopped": [...], "start_failed": [...]},   # start_failed: still stopped
      "hooks_failed": ["one line per failed hook or CDI refresh step"],
      "unmatched": ["GPU labels no rule matched (left untouched)"],
      "unrestored": ["one line per GPU not restored: sick, or declared and not listed"],
      "counters": {...},                  # added by publish.Publisher (metrics.count)
      "gpus": [
        {
          "index": 0, "uuid": "GPU-...", "pci_bus_id": "00000000:18:00.0",
          "name": "NVIDIA H100 80GB HBM3", "architecture": "hopper",
          "mig": {"current": true, "pending": true},
          "converged": true,              # as declared; false: not; null: no rule matches
          "problem": null,                # or one line: why this GPU is not as desired
          "error": null,                  # sick: {"nvml_error": "NVML_ERROR_GPU_IS_LOST",
                                          #  "failed": "get its handle"}; its uuid and
                                          #  pci_bus_id are "" when NVML cannot read them
          "instances": [
            {
              "gi_id": 1, "profile": "3g.40gb", "profile_id": 9,
              "placement": {"start": 0, "size": 4},
              "compute": [
                {"ci_id": 0, "profile": "3g.40gb", "profile_id": 2,
                 "placement": {"start": 0, "size": 3}, "uuid": "MIG-..."}
              ]
            }
          ]
        }
      ]
    }

``result``: ``converged`` nothing needed changing; ``applied`` the geometry was
changed and verified; ``failed`` the run failed (``message`` says why); ``drift`` the
watch found the geometry changed under it and only warned; ``partial`` some GPUs could
not be restored (``unrestored`` and each sick GPU's ``error`` say which and why), every
other GPU was restored and verified.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import stat
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from migrestore import atomic
from migrestore.errors import StateFileError
from migrestore.model import ComputeInstance, GpuInstance, GpuState, Placement, RunResult

__all__ = [
    "DEFAULT_STATE",
    "RESULTS",
    "STATE_VERSION",
    "build_state",
    "default_path",
    "read_state",
    "write_state",
]

STATE_VERSION = 1
DEFAULT_STATE = "/run/migrestore/state.json"
RESULTS = tuple(r.value for r in RunResult)  # the spellings of model.RunResult

_FIX = "delete it; migrestore writes it again on its next run"
_WRITE_FIX = "run as root, or set MIGRESTORE_STATE to a writable path"


def default_path() -> str:
    return os.environ.get("MIGRESTORE_STATE") or DEFAULT_STATE


# --------------------------------------------------------------------------- building


def _utc_text(now: datetime.datetime) -> str:
    if now.tzinfo is None:
        raise ValueError("build_state needs an aware datetime (UTC)")
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _placement(p: Placement) -> Dict[str, int]:
    return {"start": p.start, "size": p.size}


def _ci(ci: ComputeInstance) -> Dict[str, Any]:
    return {
        "ci_id": ci.ci_id,
        "profile": ci.profile,
        "profile_id": ci.profile_id,
        "placement": _placement(ci.placement),
        "uuid": ci.uuid,
    }


def _gi(gi: GpuInstance) -> Dict[str, Any]:
    return {
        "gi_id": gi.gi_id,
        "profile": gi.profile,
        "profile_id": gi.profile_id,
        "placement": _placement(gi.placement),
        "compute": [_ci(ci) for ci in gi.cis],
    }


def _gpu(gpu: GpuState, problems: Mapping[str, Optional[str]]) -> Dict[str, Any]:
    ident = gpu.identity
    problem = problems.get(ident.uuid)
    converged = (problem is None) if ident.uuid in problems else None
    if ident.sick:
        problem, converged = ident.describe_sick(), False
    return {
        "index": ident.index,
        "uuid": ident.uuid,
        "pci_bus_id": ident.pci_bus_id,
        "name": ident.name,
        "architecture": ident.architecture,
        "mig": {"current": gpu.mig_current, "pending": gpu.mig_pending},
        "converged": converged,
        "problem": problem,
        "error": {"nvml_error": ident.error, "failed": ident.failed} if ident.sick else None,
        "instances": [_gi(gi) for gi in gpu.instances],
    }


def build_state(
    result: RunResult,
    message: str,
    observed: Sequence[GpuState],
    duration: float,
    *,
    now: Optional[datetime.datetime] = None,
    config_path: Optional[str] = None,
    selected: Optional[str] = None,
    driver: Optional[str] = None,
    stopped_units: Sequence[str] = (),
    start_failed: Sequence[str] = (),
    hooks_failed: Sequence[str] = (),
    unmatched: Sequence[str] = (),
    unrestored: Sequence[str] = (),
    problems: Optional[Mapping[str, Optional[str]]] = None,
    config_sha256: Optional[str] = None,
    drift: bool = False,
    nvml_error: Optional[str] = None,
) -> Dict[str, Any]:
    """The state document (schema in the module docstring). ``problems`` maps the UUID
    of each GPU a rule matches to None (it is as desired) or the one line that says why
    it is not. ValueError for a ``result`` outside ``RESULTS``."""
    try:
        result = RunResult(result)
    except ValueError:
        raise ValueError(f"state result {result!r} is not one of {', '.join(RESULTS)}") from None
    when = now if now is not None else datetime.datetime.now(datetime.timezone.utc)
    issues = problems or {}
    return {
        "version": STATE_VERSION,
        "time": _utc_text(when),
        "result": result.value,
        "message": " ".join(message.split()),
        "duration": round(float(duration), 3),
        "config": config_path,
        "selected": selected,
        "driver": driver,
        "config_sha256": config_sha256,
        "drift": drift,
        "nvml_error": nvml_error,
        "units": {"stopped": list(stopped_units), "start_failed": list(start_failed)},
        "hooks_failed": list(hooks_failed),
        "unmatched": list(unmatched),
        "unrestored": list(unrestored),
        "gpus": [_gpu(g, issues) for g in observed],
    }


# --------------------------------------------------------------------------- files


def _make_dirs(directory: str) -> None:
    missing: List[str] = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)  # whatever the umask


def write_state(path: Optional[str], data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` (None: the default path), atomically.

    Raises StateFileError when the file cannot be written; TypeError when ``data``
    holds something JSON cannot encode (a bug of the caller).
    """
    target = path or default_path()
    directory = os.path.dirname(os.path.abspath(target))
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        _make_dirs(directory)
    except OSError as err:
        raise StateFileError(
            f"state file {target}: cannot write: {err.strerror or err} ({_WRITE_FIX})"
        ) from None
    atomic.write_bytes(
        target,
        text.encode("utf-8"),
        what="state file",
        fix=_WRITE_FIX,
        prefix=".state-",
        ours=is_state_document,
    )


def is_state_document(head: bytes) -> bool:
    """Whether bytes read from a path are a state file migrestore wrote (rule 4)."""
    try:
        data = json.loads(head.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("version"), int)
        and data.get("result") in RESULTS
    )


def read_state(path: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The state document at ``path`` (None: the default path), or None when there
    is none yet. StateFileError when it cannot be read or is not a state file."""
    target = path or default_path()
    try:
        raw = atomic.read_regular(target)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StateFileError(
                f"state file {target}: is a symlink; migrestore does not read through it ({_FIX})"
            ) from None
        if err.errno == errno.EINVAL:
            raise StateFileError(
                f"state file {target}: not a regular file (a FIFO, device or directory is "
                "there; remove it or set MIGRESTORE_STATE)"
            ) from None
        raise StateFileError(
            f"state file {target}: cannot read: {err.strerror or err} (run as root)"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StateFileError(
            f"state file {target}: not UTF-8 text (byte {err.start}) ({_FIX})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StateFileError(
            f"state file {target}:{err.lineno}:{err.colno}: not valid JSON: {err.msg} ({_FIX})"
        ) from None
    except (ValueError, RecursionError) as err:
        # an integer too long to convert, or nesting deeper than the recursion limit
        reason = err if isinstance(err, ValueError) else "nested too deeply"
        raise StateFileError(f"state file {target}: not valid JSON: {reason} ({_FIX})") from None
    if not isinstance(data, dict):
        raise StateFileError(f"state file {target}: not a JSON object ({_FIX})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StateFileError(f"state file {target}: no integer 'version' ({_FIX})")
    if version > STATE_VERSION:
        raise StateFileError(
            f"state file {target}: version {version} was written by a newer migrestore "
            f"(this one reads version {STATE_VERSION}; upgrade it)"
        )
    return data


# --------------------------------------------------------------------------- the note

NOTE_MAX = 64 * 1024


def note_path(state_path: str) -> str:
    """Where the units stopped and not yet started again are recorded: beside the state
    file, so a run killed between the stop and the start leaves a note that the next
    run reads."""
    return state_path + ".stopped-units" if state_path else ""


def _unsafe(st: os.stat_result) -> bool:
    return st.st_uid not in (0, os.geteuid()) or bool(st.st_mode & 0o022)


def read_stopped_units(
    path: str, clients: Optional[Sequence[str]]
) -> Tuple[Tuple[str, ...], List[str]]:
    """The units of the note at ``path`` that may be started again, and one line per
    reason something in it was not trusted (rule 5).

    Trusted: a regular file (opened without following a symlink or blocking on a FIFO)
    owned by root (or us) that no one else can write, in a directory of the same kind;
    and of its units only those in ``clients``, the config's list (None: every unit
    name, for reports that start nothing). Never raises."""
    if not path:
        return (), []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return (), []
    except OSError as err:
        return (), [f"stopped-units note {path}: cannot open: {err.strerror or err}"]
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return (), [f"stopped-units note {path}: not a regular file; ignored"]
        directory = os.path.dirname(os.path.abspath(path))
        if _unsafe(st) or _unsafe(os.stat(directory)):
            return (), [
                f"stopped-units note {path}: it or its directory is owned or writable by a "
                "user other than root; ignored (only root may name units for root to start)"
            ]
        raw = os.read(fd, NOTE_MAX + 1)
    except OSError as err:
        return (), [f"stopped-units note {path}: cannot read: {err.strerror or err}"]
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8")) if len(raw) <= NOTE_MAX else None
    except (ValueError, RecursionError):
        data = None
    units = data.get("units") if isinstance(data, dict) else None
    if not isinstance(units, list):
        return (), [f"stopped-units note {path}: not a note migrestore wrote; ignored"]
    allowed = [u for u in units if isinstance(u, str) and (clients is None or u in clients)]
    problems = []
    if len(allowed) != len(units):
        problems.append(
            f"stopped-units note {path}: {len(units) - len(allowed)} unit(s) not in the "
            "config's clients list ignored"
        )
    return tuple(dict.fromkeys(allowed)), problems


def _is_note(head: bytes) -> bool:
    try:
        data = json.loads(head.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get("units"), list)


def write_stopped_units(path: str, units: Sequence[str]) -> Optional[str]:
    """Record ``units`` in the note (none: remove it); returns None, or one line saying
    what could not be recorded. Never raises: the restore does not depend on it."""
    if not path:
        return None
    fix = "free space there, or set MIGRESTORE_STATE to a writable path"
    try:
        if not units:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return None
            if not stat.S_ISREG(st.st_mode):
                return f"stopped-units note {path}: not a regular file; left as it is"
            os.unlink(path)
            return None
        _make_dirs(os.path.dirname(os.path.abspath(path)))
        data = json.dumps({"units": list(units)}).encode("utf-8")
        atomic.write_bytes(
            path, data, what="stopped-units note", fix=fix, prefix=".stopped-", ours=_is_note
        )
    except OSError as err:
        return f"stopped-units note {path}: cannot write: {err.strerror or err} ({fix})"
    except StateFileError as err:
        return str(err)
    return None
