"""Logging for migrestore: structlog, rendered for the journal, a terminal or a shipper.

Rules:

1. One event is one line. Values that contain spaces, quotes, ``=`` or control
   characters are quoted, and newlines inside them are escaped as ``\\n``, so a
   traceback or a multi-line message can never split an event into several journal
   entries.
2. The journal format is ``<N>event key=value key="quoted value"``: ``<N>`` is the
   syslog priority (error 3, warning 4, info 6, debug 7) that journald turns into
   PRIORITY= (``SyslogLevelPrefix=`` is on by default). No timestamp: the journal adds
   its own. The order of the keys is fixed (``event`` first, then ``gpu``,
   ``profile``, ``placement``, ``outcome``, ``unit``, then the others sorted), so the
   same event always reads the same way and tests can compare whole lines.
3. ``auto`` picks the journal format when ``$JOURNAL_STREAM`` names the stream we
   write to (device and inode compared, since a child of a service inherits the
   variable even when its stderr is a pipe), the console format on a terminal, and the
   journal format otherwise: the ``<N>`` prefix is the standard way to carry a level
   on a line and costs a reader nothing.
4. Secrets never reach a log line: keys that carry environments or credentials
   (``env``, ``environ``, ``environment``, ``password``, ``secret``, ``token``) are
   replaced by ``<redacted>`` whatever the caller passes.
5. Only structlog APIs present since structlog 21.5 (Ubuntu 22.04's) are used, and the
   renderers are our own, so the lines do not change with the structlog version.

Use: ``configure(...)`` once in the composition root (cli, daemon); everything else
calls ``get_logger(**bind)`` and logs snake_case events with keyword values.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import traceback
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Protocol, TextIO, Tuple

import structlog

__all__ = [
    "FORMATS",
    "LEVELS",
    "BoundLogger",
    "configure",
    "detect_format",
    "get_logger",
    "render_console",
    "render_journal",
    "render_json",
]

FORMATS: Tuple[str, ...] = ("auto", "journal", "journald", "console", "json")
LEVELS: Tuple[str, ...] = ("debug", "info", "warning", "error")

# The syslog priorities journald reads from a "<N>" line prefix (sd-daemon(3)).
PRIORITIES: Dict[str, int] = {
    "critical": 2,
    "error": 3,
    "warning": 4,
    "info": 6,
    "debug": 7,
}

# Keys that come right after the event, in this order; the rest follow sorted.
KEY_ORDER: Tuple[str, ...] = ("gpu", "profile", "placement", "outcome", "unit")

REDACTED_KEYS = frozenset({"env", "environ", "environment", "password", "secret", "token"})
REDACTED = "<redacted>"

_LEVEL_NUMBERS: Dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

EventDict = MutableMapping[str, Any]


class BoundLogger(Protocol):
    """What modules may call on a logger: structlog's filtering bound logger fits."""

    def bind(self, **new_values: Any) -> BoundLogger: ...

    def debug(self, event: str, **kw: Any) -> Any: ...

    def info(self, event: str, **kw: Any) -> Any: ...

    def warning(self, event: str, **kw: Any) -> Any: ...

    def error(self, event: str, **kw: Any) -> Any: ...

    def exception(self, event: str, **kw: Any) -> Any: ...


# --------------------------------------------------------------------------- values


def _escape(text: str) -> str:
    out: List[str] = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _needs_quotes(text: str) -> bool:
    if text == "":
        return True
    return any(ch in ' "=\\' or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_value(value: Any) -> str:
    """One value as it appears after ``key=``: sequences joined by commas, quoted and
    escaped when needed."""
    if isinstance(value, (tuple, list, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        text = ",".join(_scalar(v) for v in items)
    else:
        text = _scalar(value)
    if _needs_quotes(text):
        return f'"{_escape(text)}"'
    return text


def _ordered_items(event_dict: Mapping[str, Any]) -> List[Tuple[str, Any]]:
    skip = {"event", "level", "timestamp"}
    first = [(k, event_dict[k]) for k in KEY_ORDER if k in event_dict]
    rest = sorted((k, v) for k, v in event_dict.items() if k not in skip and k not in KEY_ORDER)
    return first + rest


def _pairs(event_dict: Mapping[str, Any]) -> str:
    return "".join(f" {k}={format_value(v)}" for k, v in _ordered_items(event_dict))


def _event_text(event_dict: Mapping[str, Any]) -> str:
    return _escape(str(event_dict.get("event", "")))


# --------------------------------------------------------------------------- processors


def _add_level(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    level = {"warn": "warning", "exception": "error", "fatal": "critical"}.get(
        method_name, method_name
    )
    event_dict["level"] = level
    return event_dict


def _redact(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        if key.lower() in REDACTED_KEYS:
            event_dict[key] = REDACTED
    return event_dict


def _render_exc_info(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if isinstance(exc_info, BaseException):
        parts = traceback.format_exception(type(exc_info), exc_info, exc_info.__traceback__)
    else:
        if not isinstance(exc_info, tuple):
            exc_info = sys.exc_info()
        if exc_info[0] is None:
            return event_dict
        parts = traceback.format_exception(*exc_info)
    event_dict["exception"] = "".join(parts).rstrip("\n")
    return event_dict


def _add_timestamp(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    now = datetime.datetime.now(datetime.timezone.utc)
    event_dict["timestamp"] = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return event_dict


# --------------------------------------------------------------------------- renderers


def render_journal(logger: Any, method_name: str, event_dict: EventDict) -> str:
    """``<6>unit_stopped unit=nvidia-dcgm.service``"""
    priority = PRIORITIES.get(str(event_dict.get("level", "info")), 6)
    return f"<{priority}>{_event_text(event_dict)}{_pairs(event_dict)}"


def render_console(logger: Any, method_name: str, event_dict: EventDict) -> str:
    """``info    unit_stopped unit=nvidia-dcgm.service``"""
    level = str(event_dict.get("level", "info"))
    return f"{level:<7} {_event_text(event_dict)}{_pairs(event_dict)}"


def render_json(logger: Any, method_name: str, event_dict: EventDict) -> str:
    """One JSON object: event, level, timestamp, then the keys in the journal order."""
    obj: Dict[str, Any] = {"event": str(event_dict.get("event", ""))}
    obj["level"] = event_dict.get("level", "info")
    if "timestamp" in event_dict:
        obj["timestamp"] = event_dict["timestamp"]
    for key, value in _ordered_items(event_dict):
        obj[key] = value
    return json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))


# --------------------------------------------------------------------------- setup


def detect_format(stream: TextIO, environ: Optional[Mapping[str, str]] = None) -> str:
    """The format ``auto`` resolves to for ``stream``: ``journal`` when
    ``$JOURNAL_STREAM`` ("device:inode") is this stream, ``console`` on a terminal,
    else ``journal``."""
    env = os.environ if environ is None else environ
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return "journal"
    journal = env.get("JOURNAL_STREAM", "")
    if journal:
        try:
            dev_text, ino_text = journal.split(":", 1)
            st = os.fstat(fd)
            if st.st_dev == int(dev_text) and st.st_ino == int(ino_text):
                return "journal"
        except (ValueError, OSError):
            pass
    try:
        if os.isatty(fd):
            return "console"
    except OSError:
        pass
    return "journal"


def configure(fmt: str = "auto", level: str = "info", stream: Optional[TextIO] = None) -> None:
    """Set up structlog for the whole process.

    ``fmt`` is one of ``FORMATS`` (``journald`` is another name for ``journal``),
    ``level`` one of ``LEVELS``; ``stream`` defaults to ``sys.stderr``. Raises
    ValueError for an unknown format or level (the command line offers the choices).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if level not in _LEVEL_NUMBERS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    out = sys.stderr if stream is None else stream
    resolved = detect_format(out) if fmt == "auto" else fmt
    processors: List[Any] = [_add_level, _redact, _render_exc_info]
    if resolved == "json":
        processors += [_add_timestamp, render_json]
    elif resolved == "console":
        processors.append(render_console)
    else:
        processors.append(render_journal)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVEL_NUMBERS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(**bind: Any) -> BoundLogger:
    """A logger with ``bind`` values on every line; follows later ``configure`` calls."""
    logger: BoundLogger = structlog.get_logger(**bind)
    return logger
