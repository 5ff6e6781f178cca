"""The machine a benchmark ran on: CPUs, memory, load, Python and library versions.

Rules: read-only; a value that cannot be read is reported as ``unknown``, never guessed.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any, Dict, Tuple

DISTRIBUTIONS: Tuple[str, ...] = ("nvidia-ml-py", "PyYAML", "structlog", "sdnotify")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_mib() -> Any:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def load() -> Tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    try:
        return os.getloadavg()
    except OSError:
        return (-1.0, -1.0, -1.0)


def describe() -> Dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mib": _memory_mib(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "load_at_start": list(load()),
        "libraries": {dist: _version(dist) for dist in DISTRIBUTIONS},
    }
