"""Prometheus metrics in node_exporter's textfile-collector format.

Rules:

1. ``render`` is pure: a state document (``statefile``'s schema, with the ``counters``
   that ``count`` keeps) in, the text of a ``.prom`` file out. Every family has its
   ``# HELP`` and ``# TYPE`` lines; names start with ``migrestore_``; values are in base
   units (seconds, Unix time); counters end in ``_total``. Label values are escaped as
   the exposition format wants (backslash, double quote, newline).
2. Counters live in the state file (``counters``), so every process that writes it
   (``apply``, the daemon) adds to the same numbers. The state file is in /run: the
   counters start again from zero at each boot, which Prometheus's ``rate()`` and
   ``increase()`` read as a counter reset. ``migrestore_counters_reset_timestamp_seconds``
   says when they last started from zero. ``count`` is pure: the previous document and
   the new one in, the new counters out.
3. ``write_textfile`` is the only I/O: atomic (``migrestore.atomic``: a temporary file
   in the same directory, fsync, ``os.replace``), mode 0644, never follows a symlink at the target, never
   creates the directory (node_exporter's package does), and as root refuses a
   directory that a user other than root can write. Its failure is a ``MetricsError``;
   callers log one line and carry on: metrics never fail a restore.
4. The path comes from the config (``metrics.textfile``); without the key it is
   ``DEFAULT_TEXTFILE`` when that directory exists, and nothing when the GPUs are
   simulated or ``$MIGRESTORE_STATE`` names a state file of its own: the node's
   metrics describe the node's state file, never a simulation's or a private run's.
"""

from __future__ import annotations

import calendar
import os
import stat
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from migrestore import atomic
from migrestore.errors import MigrestoreError, StateFileError

__all__ = [
    "DEFAULT_TEXTFILE",
    "MetricsError",
    "count",
    "left_stopped",
    "render",
    "textfile_path",
    "write_textfile",
]

DEFAULT_TEXTFILE = "/var/lib/prometheus/node-exporter/migrestore.prom"
# The results a state document can carry (statefile.RESULTS); all are exported so that
# an alert on one of them never sees the series vanish.
RESULTS = ("converged", "applied", "failed", "drift", "partial")
PASS_RESULTS = ("converged", "applied", "failed", "partial")


class MetricsError(MigrestoreError):
    """The metrics file could not be written."""


# --------------------------------------------------------------------------- counters


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _counts(value: Any) -> Dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): _int(v) for k, v in value.items() if isinstance(k, str)}


def count(previous: Optional[Mapping[str, Any]], current: Mapping[str, Any]) -> Dict[str, Any]:
    """The counters after ``current`` (a state document about to be written), given the
    document written before it (None: none this boot). Pure.

    * ``passes``: per result of a pass (``converged``, ``applied``, ``failed``); a
      ``drift`` document is a watch tick that only warned, not a pass.
    * ``drift_events``: a document with ``drift: true`` (the watch found the geometry
      changed and restored it) counts one; a ``drift`` result counts one unless the
      previous document reported the same drift (a drift left in place under
      ``drift.policy: warn`` is one event, not one per tick).
    * ``nvml_errors``: per NVML error name (``nvml_error`` of a failed pass).
    """
    before = previous.get("counters") if isinstance(previous, Mapping) else None
    if not isinstance(before, Mapping):
        before = {}
    since = before.get("since")
    if not isinstance(since, str) or not since:
        since = str(current.get("time") or "")
    passes = _counts(before.get("passes"))
    errors = _counts(before.get("nvml_errors"))
    drift_events = _int(before.get("drift_events"))
    result = current.get("result")
    if result in PASS_RESULTS:
        passes[str(result)] = passes.get(str(result), 0) + 1
    if current.get("drift") is True:
        drift_events += 1
    elif result == "drift":
        same = (
            isinstance(previous, Mapping)
            and previous.get("result") == "drift"
            and previous.get("message") == current.get("message")
        )
        if not same:
            drift_events += 1
    name = current.get("nvml_error")
    if isinstance(name, str) and name:
        errors[name] = errors.get(name, 0) + 1
    return {
        "since": since,
        "passes": dict(sorted(passes.items())),
        "drift_events": drift_events,
        "nvml_errors": dict(sorted(errors.items())),
    }


# --------------------------------------------------------------------------- rendering

_Labels = Tuple[Tuple[str, str], ...]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _epoch(text: Any) -> Optional[float]:
    """``2026-01-31T12:00:00Z`` as Unix time; None when it is not that."""
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: List[Tuple[_Labels, float]] = []

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((tuple(labels.items()), value))

    def lines(self) -> List[str]:
        out = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            out.append(
                f"{self.name}{{{text}}} {_number(value)}"
                if text
                else f"{self.name} {_number(value)}"
            )
        return out


def _gpus(state: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    gpus = state.get("gpus")
    if not isinstance(gpus, list):
        return []
    return [g for g in gpus if isinstance(g, Mapping)]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: Any) -> List[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def left_stopped(state: Mapping[str, Any]) -> List[str]:
    """The client units stopped for a change and not started again."""
    units = state.get("units")
    return _strings(units.get("start_failed")) if isinstance(units, Mapping) else []


def _stopped(state: Mapping[str, Any]) -> List[str]:
    units = state.get("units")
    return _strings(units.get("stopped")) if isinstance(units, Mapping) else []


def render(state: Mapping[str, Any], *, version: str = "") -> str:
    """The ``.prom`` text for a state document. Pure."""
    families: List[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        f = _Family("migrestore_" + name, kind, help_text)
        families.append(f)
        return f

    result = state.get("result")
    gpus = _gpus(state)
    managed = [g for g in gpus if g.get("converged") is not None]
    converged = result in ("converged", "applied") and all(
        g.get("converged") is True for g in managed
    )

    if version:
        family("build_info", "gauge", "The migrestore version that wrote this file.").add(
            1, version=version
        )
    config = family(
        "config_info",
        "gauge",
        "The config the last pass used: its path, the SHA-256 of its bytes, the mig-parted "
        "config selected.",
    )
    config.add(
        1,
        path=str(state.get("config") or ""),
        sha256=str(state.get("config_sha256") or ""),
        selected=str(state.get("selected") or ""),
    )
    family(
        "converged",
        "gauge",
        "1 when the last pass or watch tick found every GPU a rule matches as the config "
        "declares it, else 0.",
    ).add(1 if converged else 0)
    last = family(
        "last_pass_result",
        "gauge",
        "1 for the result of the last pass or watch tick (converged, applied, failed, "
        "drift: reported only, partial: a GPU was not restored), 0 for the others.",
    )
    for name in RESULTS:
        last.add(1 if result == name else 0, result=name)
    when = _epoch(state.get("time"))
    if when is not None:
        family(
            "last_pass_timestamp_seconds",
            "gauge",
            "When the last pass or watch tick that wrote the state file ended (Unix time).",
        ).add(when)
    checked = _epoch(state.get("checked")) or when
    if checked is not None:
        family(
            "last_check_timestamp_seconds",
            "gauge",
            "When migrestore last compared the GPUs with the config (Unix time).",
        ).add(checked)
    duration = state.get("duration")
    family(
        "last_pass_duration_seconds",
        "gauge",
        "How long the last pass took (0 when it changed nothing).",
    ).add(float(duration) if isinstance(duration, (int, float)) else 0.0)
    family(
        "units_stopped",
        "gauge",
        "Client units the last pass stopped to change the geometry.",
    ).add(len(_stopped(state)))
    units_left = left_stopped(state)
    family(
        "units_left_stopped",
        "gauge",
        "Client units stopped for a change and not started again (0 is healthy).",
    ).add(len(units_left))
    per_unit = family(
        "unit_left_stopped",
        "gauge",
        "1 for each client unit stopped for a change and not started again.",
    )
    for unit in units_left:
        per_unit.add(1, unit=unit)
    family(
        "hooks_failed",
        "gauge",
        "Post-apply hooks (and the CDI refresh) that failed in the last pass.",
    ).add(len(_strings(state.get("hooks_failed"))))

    info = family(
        "gpu_info",
        "gauge",
        "One series per GPU: its name and PCI address; managed is true when a config "
        "rule matches it.",
    )
    gpu_converged = family(
        "gpu_converged",
        "gauge",
        "1 when the GPU is as the config declares it, else 0 (GPUs a rule matches).",
    )
    mode_current = family(
        "gpu_mig_mode_current", "gauge", "1 when MIG mode is enabled on the GPU now."
    )
    mode_pending = family(
        "gpu_mig_mode_pending",
        "gauge",
        "1 when MIG mode is enabled after the next GPU reset or reboot.",
    )
    instances = family(
        "gpu_instances",
        "gauge",
        "GPU instances on the GPU, per GPU-instance profile.",
    )
    sick = family(
        "gpu_sick",
        "gauge",
        "1 for each GPU NVML could not read in the last pass (fell off the bus...), with "
        "the NVML error and what failed; such a GPU is not restored.",
    )
    family(
        "gpus_unrestored",
        "gauge",
        "GPUs the last pass could not restore: sick, or declared and not listed (0 is healthy).",
    ).add(len(_strings(state.get("unrestored"))))
    for gpu in gpus:
        ident = {"gpu": str(gpu.get("index", "")), "uuid": str(gpu.get("uuid", ""))}
        info.add(
            1,
            **ident,
            name=str(gpu.get("name", "")),
            pci_bus_id=str(gpu.get("pci_bus_id", "")),
            managed="true" if gpu.get("converged") is not None else "false",
        )
        if gpu.get("converged") is not None:
            gpu_converged.add(1 if gpu.get("converged") is True else 0, **ident)
        mig = _mapping(gpu.get("mig"))
        mode_current.add(1 if mig.get("current") is True else 0, **ident)
        mode_pending.add(1 if mig.get("pending") is True else 0, **ident)
        per_profile: Dict[str, int] = {}
        gis = gpu.get("instances")
        for gi in gis if isinstance(gis, list) else []:
            if isinstance(gi, Mapping) and isinstance(gi.get("profile"), str):
                per_profile[gi["profile"]] = per_profile.get(gi["profile"], 0) + 1
        for profile, n in sorted(per_profile.items()):
            instances.add(n, **ident, profile=profile)
        error = _mapping(gpu.get("error"))
        if error:
            sick.add(
                1,
                **ident,
                pci_bus_id=str(gpu.get("pci_bus_id", "")),
                error=str(error.get("nvml_error", "")),
                failed=str(error.get("failed", "")),
            )

    counters = _mapping(state.get("counters"))
    since = _epoch(counters.get("since"))
    if since is not None:
        family(
            "counters_reset_timestamp_seconds",
            "gauge",
            "When the counters below last started from zero (the first run of this boot).",
        ).add(since)
    passes = family(
        "passes_total",
        "counter",
        "Passes since the counters started, per result (converged, applied, failed, partial).",
    )
    done = _counts(counters.get("passes"))
    for name in PASS_RESULTS:
        passes.add(done.get(name, 0), result=name)
    family(
        "drift_events_total",
        "counter",
        "Times the watch found the geometry changed behind migrestore's back.",
    ).add(_int(counters.get("drift_events")))
    errors = family(
        "nvml_errors_total",
        "counter",
        "Passes failed by an NVML error, per NVML error name.",
    )
    for name, n in sorted(_counts(counters.get("nvml_errors")).items()):
        errors.add(n, error=name)

    lines: List[str] = []
    for f in families:
        lines.extend(f.lines())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the file


def textfile_path(configured: Optional[str], simulate: Optional[str]) -> Optional[str]:
    """Where to write: ``configured`` is the config's ``metrics.textfile`` (``""``: the
    key is absent; None: turned off)."""
    if configured is None:
        return None
    if configured:
        return configured
    if simulate or os.environ.get("MIGRESTORE_STATE"):
        return None
    return DEFAULT_TEXTFILE if os.path.isdir(os.path.dirname(DEFAULT_TEXTFILE)) else None


def _check_directory(directory: str) -> None:
    try:
        st = os.stat(directory)
    except OSError as err:
        raise MetricsError(
            f"metrics file directory {directory}: {err.strerror or err} "
            "(install prometheus-node-exporter, or fix metrics.textfile in the config)"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise MetricsError(f"metrics file directory {directory}: not a directory")
    if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise MetricsError(
            f"metrics file directory {directory}: writable by a user other than root "
            "(chown root: and chmod go-w it, or choose another metrics.textfile)"
        )


def write_textfile(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (rule 3). MetricsError on failure."""
    _check_directory(os.path.dirname(os.path.abspath(path)))
    try:
        atomic.write_bytes(
            path,
            text.encode("utf-8"),
            what="metrics file",
            fix="check the directory, or fix metrics.textfile in the config",
            prefix=".migrestore-",
        )
    except StateFileError as err:
        raise MetricsError(str(err)) from None


def families(text: str) -> Sequence[str]:
    """The metric family names a rendered text declares (for docs and tests)."""
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
