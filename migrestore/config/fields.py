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

import fnmatch
import functools
import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

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
from migrestore.model import GiProfile, InstanceSpec, Selector

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


@dataclass(frozen=True)
class ModelProfiles:
    name: str
    nvml_name: str
    pci_device_id: int
    profiles: Dict[str, GiProfile]

    def may_match(self, selectors: Sequence[Selector]) -> bool:
        """Whether a GPU of this model can match every selector (index, uuid and bus
        id selectors can match any model)."""
        for selector in selectors:
            if selector.kind == "model" and not any(
                fnmatch.fnmatchcase(self.nvml_name, v) for v in selector.values
            ):
                return False
            if selector.kind == "device-id" and not any(
                int(v, 16) == self.pci_device_id for v in selector.values
            ):
                return False
        return True


@dataclass(frozen=True)
class Catalog:
    """What the bundled tables say about profile names."""

    gi_names: FrozenSet[str]
    models: Tuple[ModelProfiles, ...]
    ci_names: Dict[str, FrozenSet[str]]  # GI name -> CI names some table lists for it
    device_ids: FrozenSet[int]


@functools.lru_cache(maxsize=1)
def catalog() -> Catalog:
    models = tables.load_models()
    per_model = tuple(
        ModelProfiles(
            name=name,
            nvml_name=table.nvml_name,
            pci_device_id=table.pci_device_id,
            profiles={p.name: p for p in table.profiles},
        )
        for name, table in sorted(models.items())
    )
    ci_names: Dict[str, FrozenSet[str]] = {}
    for entry in per_model:
        for gi_name, profile in entry.profiles.items():
            names = frozenset(ci.name for ci in profile.ci_profiles)
            if names:
                ci_names[gi_name] = ci_names.get(gi_name, frozenset()) | names
    known = frozenset(
        name
        for name in tables.known_profile_names()
        if (split := split_profile(name)) is None or split.full
    )
    return Catalog(
        gi_names=known,
        models=per_model,
        ci_names=ci_names,
        device_ids=frozenset(t.pci_device_id for t in models.values()),
    )


def _closest(name: str, known: FrozenSet[str]) -> str:
    close = close_matches(name, sorted(known), n=3, cutoff=0.5)
    if close:
        return "closest known: " + ", ".join(close)
    return "'migrestore profiles' lists the profiles of the installed GPUs"


def check_gi_known(doc: Doc, node: yaml.Node, key: str, name: str) -> None:
    known = catalog().gi_names
    if name not in known:
        doc.fail(node, key, f"unknown GPU instance profile {name!r}", _closest(name, known))


def gi_profile(doc: Doc, node: yaml.Node, key: str) -> str:
    name = read_str(doc, node, key, "a GPU instance profile name such as 1g.10gb")
    if name.startswith("MIG "):
        doc.fail(node, key, f"{name!r} carries NVML's 'MIG ' prefix", f"write {name[4:]!r}")
    split = split_profile(name)
    if split is not None and not split.full:
        doc.fail(
            node,
            key,
            f"{name!r} is a compute-instance profile, not a GPU instance profile",
            f"write 'profile: {split.gi}' with 'compute: [{name}]'",
        )
    if split is not None:
        name = split.gi
    check_gi_known(doc, node, key, name)
    return name


def check_ci_known(doc: Doc, node: yaml.Node, key: str, split: ProfileName) -> None:
    listed = catalog().ci_names.get(split.gi)
    if listed and split.ci not in listed:
        doc.fail(
            node,
            key,
            f"unknown compute-instance profile {split.ci!r}",
            f"a {split.gi} GI offers: {', '.join(sorted(listed))}",
        )


UUID_RE = re.compile(r"GPU-[0-9A-Za-z][0-9A-Za-z-]*")
_BUS_ID = re.compile(
    r"(?:(?P<domain>[0-9A-Fa-f]{1,8}):)?(?P<bus>[0-9A-Fa-f]{1,2}):"
    r"(?P<device>[0-9A-Fa-f]{1,2})\.(?P<function>[0-7])"
)
DEVICE_ID_RE = re.compile(r"0[xX](?P<hex>[0-9A-Fa-f]{1,8})")


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
    value = read_scalar(doc, node, key)
    fix = 'write the PCI device ID as 8 hex digits, e.g. "0x233010DE", as nvidia-smi -q prints it'
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0xFFFFFFFF:
            doc.fail(node, key, f"{node.value} is not a 32-bit PCI device ID", fix)
        return f"0x{value:08X}"
    if not isinstance(value, str):
        doc.fail(node, key, f"expected a PCI device ID, got {kind_of(node)}", fix)
    text = value.strip()
    if ":" in text and all(DEVICE_ID_RE.fullmatch(part) for part in text.split(":")):
        doc.fail(
            node,
            key,
            f"{value!r} carries a subsystem ID, which migrestore cannot observe",
            "match on the device ID alone, or select the GPUs by uuid or pci-bus-id",
        )
    found = DEVICE_ID_RE.fullmatch(text)
    if found is None:
        doc.fail(node, key, f"{value!r} is not a PCI device ID", fix)
    return f"0x{int(found.group('hex'), 16):08X}"


@dataclass(frozen=True)
class Wanted:
    """One wanted GI with where it was written, for rule-level checks."""

    spec: InstanceSpec
    node: yaml.Node  # the instance entry
    key: str
    placement_node: Optional[yaml.Node] = None


def _slices(start: int, size: int) -> str:
    return f"slice {start}" if size == 1 else f"slices {start}-{start + size - 1}"


def _placement_problem(
    model: ModelProfiles, wanted: Sequence[Wanted]
) -> Optional[Tuple[Wanted, str, str]]:
    """Why the explicit placements of one rule cannot exist on ``model`` (or None)."""
    taken: List[Tuple[Wanted, int, int]] = []  # (wanted, start, size)
    for item in wanted:
        start = item.spec.placement
        if start is None:
            continue
        profile = model.profiles[item.spec.profile]
        sizes = {p.start: p.size for p in profile.placements}
        if start not in sizes:
            valid = ", ".join(str(s) for s in sorted(sizes)) or "none"
            return (
                item,
                f"{profile.name} cannot start at slice {start}",
                f"valid starts: {valid}",
            )
        size = sizes[start]
        for other, other_start, other_size in taken:
            if other_start < start + size and start < other_start + other_size:
                return (
                    item,
                    f"{profile.name} at {start} ({_slices(start, size)}) overlaps "
                    f"{other.spec.profile} at {other_start} ({_slices(other_start, other_size)}) "
                    f"of {other.key}",
                    "choose starts that do not overlap, or omit placement to let migrestore choose",
                )
        taken.append((item, start, size))
    return None


def check_layout(
    doc: Doc,
    node: yaml.Node,
    key: str,
    wanted: Sequence[Wanted],
    selectors: Sequence[Selector],
) -> None:
    """Rule-level checks against the bundled tables: one model offers every profile of
    the rule, no profile is wanted more often than that model allows, and explicit
    placements are valid starts that do not overlap. The models are those the rule's
    model and device-id selectors can match, when the tables have any of them."""
    if not wanted:
        return
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
    names: List[str] = []
    for item in wanted:
        if item.spec.profile not in names:
            names.append(item.spec.profile)
    models = [m for m in catalog().models if all(n in m.profiles for n in names)]
    models = [m for m in models if m.may_match(selectors)] or models
    if not models:
        doc.fail(
            node,
            key,
            f"no known GPU model offers all of {', '.join(names)}",
            "the profiles of one rule must exist on one GPU model; write one rule per model",
        )
    counts: Dict[str, int] = {}
    for item in wanted:
        name = item.spec.profile
        counts[name] = counts.get(name, 0) + 1
        limit = max(m.profiles[name].max for m in models)
        if counts[name] > limit:
            doc.fail(
                item.node,
                item.key,
                f"{counts[name]} instances of {name}, but a GPU holds at most {limit}",
                "lower the count",
            )
    if not any(item.spec.placement is not None for item in wanted):
        return
    problems = [_placement_problem(m, wanted) for m in models]
    if any(p is None for p in problems):
        return
    item, problem, fix = next(p for p in problems if p is not None)
    doc.fail(item.placement_node or item.node, sub_key(item.key, "placement"), problem, fix)
