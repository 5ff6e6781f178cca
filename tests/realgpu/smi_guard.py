"""The ``nvidia-smi`` the realgpu tier puts first on PATH: read-only calls only.

Run as ``python -I smi_guard.py --real PATH --log PATH -- ARGS...`` by the launcher the
tier writes (tests/realgpu/guard.py, ``write_smi_wrapper``). Standalone on purpose: it
imports nothing from the project and runs isolated (``-I``), so neither PYTHONPATH nor
the guard's sitecustomize is involved.

Rules:

1. Every option that changes a GPU, the driver or its settings is refused by name
   (``-r``, ``-mig``, ``-cgi`` ... and their long forms), with exit status 4
   (``NVML_ERROR_NO_PERMISSION``; nvidia-smi's exit statuses are NVML return codes) and
   one line naming the option. The real binary is not started.
2. Fail closed: an option, or a subcommand, not known to be read-only is refused too.
   Read-only means listing and querying (``-L``, ``-q``, ``--query-gpu=...``,
   ``mig -lgip``, ``topo -m``...). ``-f`` is refused: it writes a file as the caller.
3. A read-only call runs the real binary by its absolute path (found when the wrapper
   was written), with the same arguments, and returns its exit status.
4. Every decision is appended to the guard log as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

REFUSED_EXIT = 4  # NVML_ERROR_NO_PERMISSION

# Options that change something, with what they change (nvidia-smi(1), "CHANGE OPTIONS",
# and the mig/nvlink/drain/vgpu/conf-compute subcommands).
MUTATING: Dict[str, str] = {}


def _deny(what: str, *names: str) -> None:
    for name in names:
        MUTATING[name] = what


_deny("resets a GPU", "-r", "--gpu-reset")
_deny("sets persistence mode", "-pm", "--persistence-mode")
_deny("sets ECC mode", "-e", "--ecc-config")
_deny("clears ECC error counts", "-p", "--reset-ecc-errors")
_deny("sets the compute mode", "-c", "--compute-mode")
_deny("sets the driver model", "-dm", "--driver-model", "-fdm", "--force-driver-model")
_deny("sets the GPU operation mode", "--gom")
_deny("sets the virtualization mode", "-vm", "--virt-mode")
_deny("sets application clocks", "-ac", "--applications-clocks")
_deny("resets application clocks", "-rac", "--reset-applications-clocks")
_deny("sets a clock permission", "-acp", "--applications-clocks-permission")
_deny("sets auto boost", "--auto-boost-default", "--auto-boost-permission")
_deny("sets the power limit", "-pl", "--power-limit")
_deny("sets the CUDA clocks", "-cc", "--cuda-clocks")
_deny("sets accounting mode", "-am", "--accounting-mode")
_deny("clears accounted apps", "-caa", "--clear-accounted-apps")
_deny("sets MIG mode", "-mig", "--multi-instance-gpu")
_deny("locks GPU clocks", "-lgc", "--lock-gpu-clocks")
_deny("resets GPU clocks", "-rgc", "--reset-gpu-clocks")
_deny(
    "locks memory clocks", "-lmc", "--lock-memory-clocks", "-lmcd", "--lock-memory-clocks-deferred"
)
_deny(
    "resets memory clocks",
    "-rmc",
    "--reset-memory-clocks",
    "-rmcd",
    "--reset-memory-clocks-deferred",
)
_deny("sets the GPU target temperature", "-gtt", "--gpu-target-temp")
_deny("sets the power mizer mode", "-pmm", "--power-mizer-mode")
_deny("sets the clock offsets", "-sco", "--set-clock-offsets")
_deny("creates a GPU instance", "-cgi", "--create-gpu-instance")
_deny("destroys a GPU instance", "-dgi", "--destroy-gpu-instance")
_deny("creates a compute instance", "-cci", "--create-compute-instance")
_deny("destroys a compute instance", "-dci", "--destroy-compute-instance")
_deny("creates the default compute instance", "-C", "--default-compute-instance")
_deny("writes a file", "-f", "--filename")

# Inside a subcommand the same letters can mean something else (``nvlink -p`` lists bus
# IDs, top-level ``-p`` clears ECC counts): each subcommand has its own refusals.
MUTATING_SUB: Dict[str, Dict[str, str]] = {
    "mig": {
        name: MUTATING[name]
        for name in (
            "-cgi",
            "--create-gpu-instance",
            "-dgi",
            "--destroy-gpu-instance",
            "-cci",
            "--create-compute-instance",
            "-dci",
            "--destroy-compute-instance",
            "-C",
            "--default-compute-instance",
        )
    },
    "nvlink": {
        "-sc": "sets NVLink counter control",
        "--setcontrol": "sets NVLink counter control",
        "-r": "resets NVLink counters",
        "--resetcounters": "resets NVLink counters",
        "-re": "resets NVLink error counters",
        "--reseterrorcounters": "resets NVLink error counters",
    },
    "topo": {},
}

# Read-only options; those in VALUED take a value (``--opt=value`` or the next word
# unless it starts with '-').
READ_ONLY_TOP: FrozenSet[str] = frozenset(
    {
        "-h",
        "--help",
        "--version",
        "-L",
        "--list-gpus",
        "-B",
        "--list-excluded-gpus",
        "-q",
        "--query",
        "-u",
        "--unit",
        "-x",
        "--xml-format",
        "--dtd",
        "-d",
        "--display",
        "-i",
        "--id",
        "-l",
        "--loop",
        "-lms",
        "--loop-ms",
        "--format",
        "--query-gpu",
        "--query-supported-clocks",
        "--query-compute-apps",
        "--query-accounted-apps",
        "--query-retired-pages",
        "--query-remapped-rows",
        "--query-unit",
    }
)
READ_ONLY_SUB: Dict[str, Optional[FrozenSet[str]]] = {
    # None: every option of the subcommand is read-only (topology display only)
    "topo": None,
    "mig": frozenset(
        {
            "-h",
            "--help",
            "-i",
            "--id",
            "-gi",
            "--gpu-instance-id",
            "-ci",
            "--compute-instance-id",
            "-lgip",
            "--list-gpu-instance-profiles",
            "-lgipp",
            "--list-gpu-instance-possible-placements",
            "-lgi",
            "--list-gpu-instances",
            "-lcip",
            "--list-compute-instance-profiles",
            "-lcipp",
            "--list-compute-instance-possible-placements",
            "-lci",
            "--list-compute-instances",
        }
    ),
    "nvlink": frozenset(
        {
            "-h",
            "--help",
            "-i",
            "--id",
            "-l",
            "--link",
            "-s",
            "--status",
            "-c",
            "--capabilities",
            "-p",
            "--pcibusid",
            "-R",
            "--remotelinkinfo",
            "-e",
            "--errorcounters",
        }
    ),
}
VALUED: FrozenSet[str] = frozenset(
    {
        "-d",
        "--display",
        "-i",
        "--id",
        "-l",
        "--loop",
        "-lms",
        "--loop-ms",
        "--format",
        "-gi",
        "--gpu-instance-id",
        "-ci",
        "--compute-instance-id",
        "--link",
    }
)


def check(argv: Sequence[str]) -> Optional[str]:
    """Why ``nvidia-smi ARGV`` is refused, or None when it is read-only (rules 1, 2)."""
    allowed: Optional[FrozenSet[str]] = READ_ONLY_TOP
    refused = MUTATING
    where = "nvidia-smi"
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-"):
            if where == "nvidia-smi" and word in READ_ONLY_SUB and i == 1:
                where = f"nvidia-smi {word}"
                allowed = READ_ONLY_SUB[word]
                refused = MUTATING_SUB[word]
                continue
            if where == "nvidia-smi" and i == 1:
                return f"subcommand {word!r} is not known to be read-only"
            return f"{word!r} is not an option value of a read-only option"
        option, has_value = (word.split("=", 1)[0], True) if "=" in word else (word, False)
        if option in refused:
            return f"{option} {refused[option]}"
        if allowed is not None and option not in allowed:
            return f"{where} option {option} is not known to be read-only"
        takes_next = option in VALUED and not has_value and i < len(words)
        if takes_next and not words[i].startswith("-"):
            i += 1
    return None


def _log(path: Optional[str], record: Dict[str, object]) -> None:
    if not path:
        return
    record = {"time": time.time(), "pid": os.getpid(), **record}
    line = json.dumps(record, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _parse(argv: List[str]) -> Tuple[str, Optional[str], List[str]]:
    real, log = "", None
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] == "--real":
            real = argv[i + 1]
        elif argv[i] == "--log":
            log = argv[i + 1]
        i += 2
    return real, log, argv[i + 1 :]


def main(argv: Optional[List[str]] = None) -> int:
    real, log, args = _parse(list(sys.argv[1:] if argv is None else argv))
    reason = check(args)
    if reason is not None:
        _log(log, {"event": "refused", "layer": "nvidia-smi", "argv": args, "reason": reason})
        sys.stderr.write(
            f"nvidia-smi (realgpu guard): refused `nvidia-smi {' '.join(args)}`: {reason}\n"
        )
        return REFUSED_EXIT
    if not real or not os.path.isabs(real) or not os.access(real, os.X_OK):
        _log(log, {"event": "no-real-binary", "layer": "nvidia-smi", "argv": args})
        sys.stderr.write("nvidia-smi (realgpu guard): no real nvidia-smi on this machine\n")
        return 127
    _log(log, {"event": "passed", "layer": "nvidia-smi", "argv": args, "real": real})
    os.execv(real, [real, *args])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
