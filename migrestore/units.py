"""systemd unit names: the one rule for client units, used by the config (and so by
``validate``, ``apply`` and the daemon alike) and by ``services`` before a name reaches
systemctl.

Rules:

1. A client unit name is one systemd itself accepts: at most ``UNIT_NAME_MAX``
   characters, systemd's characters only (``A-Z a-z 0-9 : _ . \\ @ -``), a name before
   one of the unit types in ``UNIT_SUFFIXES``, and at most one ``@``.
2. It never starts with ``-``: it would reach systemctl's argv as an option.
3. A template without an instance (``foo@.service``) is refused: it can be neither
   started nor stopped.
4. Every refusal says what is wrong and how to write it instead.
5. Pure: a string in, an answer out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = [
    "UNIT_NAME_MAX",
    "UNIT_SUFFIXES",
    "UnitNameProblem",
    "check_unit_name",
    "unit_name_problem",
]

UNIT_SUFFIXES: Tuple[str, ...] = (
    "service",
    "socket",
    "target",
    "timer",
    "path",
    "mount",
    "automount",
    "swap",
    "slice",
    "scope",
    "device",
)
UNIT_NAME_MAX = 255

_NAME_CHARS = re.compile(r"[A-Za-z0-9:_.\\@-]+")


@dataclass(frozen=True)
class UnitNameProblem:
    problem: str  # completes "unit name 'x' ...": "is a template with no instance"
    fix: str


def unit_name_problem(name: str) -> Optional[UnitNameProblem]:
    """What is wrong with ``name`` as a client unit name and the fix, or None."""
    types = ", ".join("." + s for s in UNIT_SUFFIXES)
    if not name:
        return UnitNameProblem("is empty", "write a unit name such as nvidia-dcgm.service")
    if len(name) > UNIT_NAME_MAX:
        return UnitNameProblem(
            f"is longer than {UNIT_NAME_MAX} characters", "systemd refuses longer unit names"
        )
    if name.startswith("-"):
        return UnitNameProblem("starts with '-'", "a unit name cannot start with '-'")
    if not _NAME_CHARS.fullmatch(name):
        return UnitNameProblem(
            "has characters systemd does not allow in unit names "
            "(allowed: A-Z a-z 0-9 : _ . \\ @ -)",
            "escape other characters as systemd-escape does",
        )
    prefix, dot, suffix = name.rpartition(".")
    if not dot or suffix not in UNIT_SUFFIXES:
        fix = f"write {name}.service" if not dot else f"end it in a unit type: {types}"
        return UnitNameProblem(f"does not end in a unit type ({types})", fix)
    if not prefix or prefix.startswith("@"):
        return UnitNameProblem(
            "has no name before the type", f"write the unit's name, e.g. name.{suffix}"
        )
    if "@" in prefix:
        template, _, instance = prefix.partition("@")
        if "@" in instance:
            return UnitNameProblem(
                "has more than one '@'", f"write one '@', e.g. {template}@INSTANCE.{suffix}"
            )
        if not instance:
            return UnitNameProblem(
                "is a template with no instance",
                f"name an instance: {template}@INSTANCE.{suffix}",
            )
    return None


def check_unit_name(name: str) -> Optional[str]:
    """What is wrong with ``name`` as a unit name, or None when it is a valid one."""
    found = unit_name_problem(name)
    return found.problem if found is not None else None
