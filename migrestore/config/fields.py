"""What both config formats read: profile names, PCI ids, bounds, and wanted layouts.

Rules:

1. Profile names follow go-nvlib's grammar (``[<C>c.]<G>g.<GB>gb[+attr]``), the one
   mig-parted checks; ``split_profile`` is the only parser of it in the config.
2. Profile names are checked against the bundled model tables
   (``tables.known_profile_names()``); whether a layout fits one particular GPU is the
   planner's question, asked with that GPU's own profile table.
3. A PCI device id is kept as ``0x`` and 8 upper-case hex digits; a bus id in NVML's form
   (8-digit domain, upper-case hex).
4. Pure: no I/O (the bundled tables are package data, read once through ``tables``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional, Sequence, Tuple

import yaml

from migrestore import tables
from migrestore.config.yaml_strict import (
    Doc,
    close_matches,
    kind_of,
    read_scalar,
    read_str,
    sub_key,
)
from migrestore.model import InstanceSpec

MAX_COUNT = 64  # instances of one profile in one rule (a GPU holds at most 8 GIs)
MAX_SLICE = 63  # placement starts (memory slices or placement units)
MAX_INDEX = 4095  # GPU indexes
MAX_SECONDS = 86400.0

# go-nvlib's grammar, which mig-parted checks: [<C>c.]<G>g.<GB>gb[+attr[,attr]|-attr]
_PROFILE = re.compile(
    r"(?:(?P<c>[0-9]+)c\.)?(?P<gi>(?P<g>[0-9]+)g\.[0-9]+gb"
    r"(?:\+[a-z][a-z0-9]*(?:\.[a-z0-9]+)*(?:,[a-z][a-z0-9]*(?:\.[a-z0-9]+)*)*"
    r"|-[a-z][a-z0-9]*(?:\.[a-z0-9]+)*)?)"
)


@dataclass(frozen=True)
class ProfileName:
    gi: str  # the GPU-instance profile: "3g.40gb"
    gi_slices: int  # compute slices of the GI (the "3" of "3g")
    ci: str  # the compute-instance profile, normalised: the GI's name for the full CI
    ci_slices: int

    @property
    def full(self) -> bool:
        return self.ci == self.gi


def split_profile(name: str) -> Optional[ProfileName]:
    found = _PROFILE.fullmatch(name)
    if found is None:
        return None
    gi = found.group("gi")
    g = int(found.group("g"))
    c = int(found.group("c")) if found.group("c") is not None else g
    if g < 1 or g > 64 or c < 1 or c > g:
        return None
    ci = gi if c == g else f"{c}c.{gi}"
    return ProfileName(gi=gi, gi_slices=g, ci=ci, ci_slices=c)


def known_profile_names() -> FrozenSet[str]:
    """The GI and CI profile names some bundled table lists (for warnings only: a name
    no table knows is fine when the GPU offers it)."""
    return frozenset(tables.known_profile_names())


def gi_profile(doc: Doc, node: yaml.Node, key: str) -> str:
    """A GI profile name, checked for its grammar only: whether it exists is the
    answer of the GPUs the rule matches (``offers``)."""
    name = read_str(doc, node, key, "a GPU instance profile name such as 1g.10gb")
    if name.startswith("MIG "):
        doc.fail(node, key, f"{name!r} carries NVML's 'MIG ' prefix", f"write {name[4:]!r}")
    split = split_profile(name)
    if split is None:
        close = close_matches(name, sorted(known_profile_names()), n=3, cutoff=0.5)
        fix = "write it as <G>g.<GB>gb[+attr], e.g. 1g.10gb or 1g.10gb+me"
        if close:
            fix += "; closest known: " + ", ".join(close)
        doc.fail(node, key, f"{name!r} is not a GPU instance profile name", fix)
    if not split.full:
        doc.fail(
            node,
            key,
            f"{name!r} is a compute-instance profile, not a GPU instance profile",
            f"write 'profile: {split.gi}' with 'compute: [{name}]'",
        )
    return split.gi


UUID_RE = re.compile(r"GPU-[0-9A-Za-z][0-9A-Za-z-]*")
_BUS_ID = re.compile(
    r"(?:(?P<domain>[0-9A-Fa-f]{1,8}):)?(?P<bus>[0-9A-Fa-f]{1,2}):"
    r"(?P<device>[0-9A-Fa-f]{1,2})\.(?P<function>[0-7])"
)
# Go's strconv.ParseUint(s, 0, 32), which mig-parted reads device filters with.
_GO_UINT = (
    (re.compile(r"0[xX]_?[0-9A-Fa-f]+(?:_[0-9A-Fa-f]+)*"), 16, 2),
    (re.compile(r"0[bB]_?[01]+(?:_[01]+)*"), 2, 2),
    (re.compile(r"0[oO]_?[0-7]+(?:_[0-7]+)*"), 8, 2),
    (re.compile(r"0_?[0-7]+(?:_[0-7]+)*"), 8, 1),
    (re.compile(r"[1-9](?:_?[0-9])*|0"), 10, 0),
)


def _go_uint32(text: str) -> Optional[int]:
    for pattern, base, skip in _GO_UINT:
        if pattern.fullmatch(text):
            value = int(text[skip:].replace("_", ""), base)
            return value if value <= 0xFFFFFFFF else None
    return None


def parse_device_filter(text: str) -> Optional[Tuple[int, Optional[int]]]:
    """A device filter as mig-parted reads it: ``<device><vendor>`` with an optional
    ``:<subsystem device><subsystem vendor>``, each a 32-bit number (``0x233010DE``).
    None when it is malformed: mig-parted then matches no GPU with it."""
    parts = text.split(":")
    if len(parts) > 2:
        return None
    primary = _go_uint32(parts[0])
    if primary is None:
        return None
    if len(parts) == 1:
        return primary, None
    subsystem = _go_uint32(parts[1])
    return None if subsystem is None else (primary, subsystem)


def device_filter_matches(text: str, device_id: int, subsystem_id: int) -> bool:
    """mig-parted's match: the device id, and the subsystem id when the filter has one."""
    parsed = parse_device_filter(text)
    if parsed is None:
        return False
    primary, subsystem = parsed
    return primary == device_id and (subsystem is None or subsystem == subsystem_id)


def format_device_filter(primary: int, subsystem: Optional[int]) -> str:
    text = f"0x{primary:08X}"
    return text if subsystem is None else f"{text}:0x{subsystem:08X}"


def normalize_bus_id(text: str) -> Optional[str]:
    """``18:00.0``, ``0000:18:00.0`` and ``00000000:18:00.0`` -> ``00000000:18:00.0``
    (NVML's form: 8-digit domain, upper-case hex). None when ``text`` is not a bus id."""
    found = _BUS_ID.fullmatch(text.strip())
    if found is None:
        return None
    domain = int(found.group("domain") or "0", 16)
    return (
        f"{domain:08X}:{int(found.group('bus'), 16):02X}:"
        f"{int(found.group('device'), 16):02X}.{found.group('function')}"
    )


def read_device_id(doc: Doc, node: yaml.Node, key: str) -> str:
    """A native ``device-id`` selector: ``0x233010DE``, or with the subsystem
    ``0x233010DE:0x16C010DE``; normalised to upper-case 8-digit hex."""
    value = read_scalar(doc, node, key)
    fix = (
        'write the PCI device ID as 8 hex digits, e.g. "0x233010DE" (with the subsystem: '
        '"0x233010DE:0x16C010DE"), as nvidia-smi -q prints it'
    )
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0xFFFFFFFF:
            doc.fail(node, key, f"{node.value} is not a 32-bit PCI device ID", fix)
        return format_device_filter(value, None)
    if not isinstance(value, str):
        doc.fail(node, key, f"expected a PCI device ID, got {kind_of(node)}", fix)
    parsed = parse_device_filter(value.strip())
    if parsed is None:
        doc.fail(node, key, f"{value!r} is not a PCI device ID", fix)
    return format_device_filter(*parsed)


@dataclass(frozen=True)
class Wanted:
    """One wanted GI with where it was written, for rule-level checks."""

    spec: InstanceSpec
    node: yaml.Node  # the instance entry
    key: str
    placement_node: Optional[yaml.Node] = None


def check_placements_unique(doc: Doc, wanted: Sequence[Wanted]) -> None:
    """No start slice is given twice for one profile in one rule (whatever the GPU)."""
    seen: Dict[Tuple[str, int], Wanted] = {}
    for item in wanted:
        if item.spec.placement is None:
            continue
        pair = (item.spec.profile, item.spec.placement)
        if pair in seen:
            doc.fail(
                item.placement_node or item.node,
                sub_key(item.key, "placement"),
                f"placement {pair[1]} is given twice for {pair[0]} (also at {seen[pair].key})",
                "each instance needs its own start slice",
            )
        seen[pair] = item
