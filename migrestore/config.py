"""Config files: YAML text -> a validated ``Config``; GPUs -> rules; geometry -> YAML.

Rules:

1. One bad file, one ``ConfigError`` (exit 78). Every problem names the file, the
   1-based line (from the YAML node marks), the key path (``gpus[0].instances[1].profile``)
   and the fix. No library exception (yaml, OSError, UnicodeError) leaves this module.
2. Strict: unknown keys, wrong types, duplicate keys, anchors and aliases, explicit tags,
   tabs in indentation, nesting deeper than ``MAX_DEPTH`` and files above ``MAX_BYTES``
   are errors. Nothing is guessed and nothing is dropped silently.
3. ``parse`` is pure: text in, ``Config`` out. Only ``load`` touches the file system: the
   config file, a mig-parted file it references, and (when ``require_secure``) the owner
   and mode of those files and of the hook executables.
4. Native files: the first rule that matches a GPU wins, and GPUs no rule matches are
   left alone. mig-parted files keep mig-parted's meaning: its last matching entry wins,
   so the entries become rules in reverse order.
5. Profile names are checked against the bundled model tables
   (``tables.known_profile_names()``); whether a layout fits one particular GPU is the
   planner's question, asked with that GPU's own profile table.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from typing import (
    Callable,
    Dict,
    FrozenSet,
    List,
    NoReturn,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import yaml

from migrestore import tables
from migrestore.errors import ConfigError
from migrestore.model import (
    DEFAULT_CLIENTS,
    DRIFT_IGNORE,
    DRIFT_RESTORE,
    DRIFT_WARN,
    RESET_ALLOW,
    RESET_NEVER,
    Config,
    GiProfile,
    GpuIdentity,
    GpuInstance,
    GpuSpec,
    GpuState,
    Hook,
    InstanceSpec,
    Rule,
    Selector,
)

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "export",
    "load",
    "matches",
    "parse",
    "resolve",
]

MAX_BYTES = 1 << 20  # a config is a few KiB; anything near this is not a config
# The schema nests 6 deep (top > gpus > rule > instances > entry > compute); far deeper
# is an attack or an accident.
MAX_DEPTH = 32
NATIVE_VERSION = 1
MIG_PARTED_VERSION = "v1"

_MAX_COUNT = 64  # instances of one profile in one rule (a GPU holds at most 8 GIs)
_MAX_SLICE = 63  # placement starts (memory slices or placement units)
_MAX_INDEX = 4095  # GPU indexes
_MAX_SECONDS = 86400.0
_MAX_NUMBER_CHARS = 32  # longer numerals are rejected before Python converts them

_Scalar = Union[str, int, float, bool, None]
_Reader = Callable[[str], str]

# --------------------------------------------------------------------------- YAML layer

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_INT = _TAG + "int"
_FLOAT = _TAG + "float"
_BOOL = _TAG + "bool"
_NULL = _TAG + "null"
_MAP = _TAG + "map"
_SEQ = _TAG + "seq"

_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class _Reject(Exception):
    """Raised inside the composer: an anchor, an alias or too deep a nesting."""

    def __init__(self, line: int, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem
        self.fix = fix


class _Loader(yaml.SafeLoader):
    """PyYAML's safe composer, refusing anchors and aliases (so an alias bomb never
    expands) and nesting deeper than ``MAX_DEPTH`` (so the recursive composer never
    overflows the stack)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Optional[yaml.Node], index: int) -> Optional[yaml.Node]:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, yaml.AliasEvent):
            raise _Reject(
                line,
                f"YAML alias *{event.anchor} is not allowed",
                "write the value out in full",
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Reject(
                line,
                f"YAML anchor &{anchor} is not allowed",
                "remove the anchor and write values out in full",
            )
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Reject(
                    line,
                    f"nesting deeper than {MAX_DEPTH} levels",
                    "a migrestore config nests at most 6 levels",
                )
            try:
                return super().compose_node(parent, index)  # type: ignore[no-any-return]
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def _close_matches(word: str, possibilities: Sequence[str], n: int, cutoff: float) -> List[str]:
    """Suggestions for an error message (difflib is imported only when one is made)."""
    import difflib

    return difflib.get_close_matches(word, possibilities, n=n, cutoff=cutoff)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _line(node: Optional[yaml.Node]) -> Optional[int]:
    if node is None or node.start_mark is None:
        return None
    return int(node.start_mark.line) + 1


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class _Doc:
    """One file being parsed: raises errors naming it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, node: Optional[yaml.Node], key: str, problem: str, fix: str = "") -> NoReturn:
        raise ConfigError(self.path, _line(node), key, problem, fix)

    def fail_line(self, line: Optional[int], key: str, problem: str, fix: str = "") -> NoReturn:
        raise ConfigError(self.path, line, key, problem, fix)


def _compose(doc: _Doc, text: str) -> yaml.Node:
    """The node tree of ``text``, or a ConfigError; never a library exception."""
    nul = text.find("\x00")
    if nul >= 0:
        doc.fail_line(
            _line_of(text, nul),
            "",
            "contains a NUL byte: this is not a text file",
            "write the config as UTF-8 text",
        )
    for number, row in enumerate(text.split("\n"), 1):
        indent = row[: len(row) - len(row.lstrip(" \t"))]
        if "\t" in indent:
            doc.fail_line(number, "", "a tab in the indentation", "indent with spaces only")
    if not text.strip():
        doc.fail_line(
            None,
            "",
            "the file is empty",
            "write at least 'version: 1' and 'gpus: []', as the shipped /etc/migrestore.yaml does",
        )
    loader: Optional[_Loader] = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
    except _Reject as exc:
        doc.fail_line(exc.line, "", exc.problem, exc.fix)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = int(mark.line) + 1 if mark is not None else None
        problem = _one_line(exc.problem or exc.context or "invalid YAML")
        if exc.context and exc.problem:
            problem = f"{_one_line(exc.context)}, {problem}"
        doc.fail_line(
            at, "", f"YAML syntax error: {problem}", "check the indentation and the quoting"
        )
    except yaml.reader.ReaderError as exc:
        doc.fail_line(
            _line_of(text, exc.position),
            "",
            f"character #x{exc.character:04x} is not allowed in YAML",
            "remove the control character",
        )
    except yaml.YAMLError as exc:
        doc.fail_line(None, "", f"YAML error: {_one_line(exc)}", "check the file's syntax")
    except RecursionError:
        doc.fail_line(None, "", "nesting too deep", "a migrestore config nests at most 6 levels")
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        doc.fail_line(
            None,
            "",
            "the file holds no YAML document (only comments)",
            "write at least 'version: 1' and 'gpus: []'",
        )
    return node


# --------------------------------------------------------------------------- node access


def _sub(key: str, name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return f"{key}.{name}" if key else name
    quoted = json.dumps(name)
    return f"{key}.{quoted}" if key else quoted


def _at(key: str, index: int) -> str:
    return f"{key}[{index}]"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    names = {
        _STR: "a string",
        _INT: "an integer",
        _FLOAT: "a number",
        _BOOL: "a boolean",
        _NULL: "nothing (null)",
        _TAG + "timestamp": "a date",
    }
    if node.tag in names:
        return names[node.tag]
    return f"a value tagged {node.tag}"


def _check_tag(doc: _Doc, node: yaml.Node, key: str) -> None:
    expected = _MAP if isinstance(node, yaml.MappingNode) else _SEQ
    if not isinstance(node, yaml.ScalarNode) and node.tag != expected:
        doc.fail(node, key, f"YAML tag {node.tag} is not allowed", "remove the tag")


_Entries = Dict[str, Tuple[yaml.Node, yaml.Node]]


def _mapping(doc: _Doc, node: yaml.Node, key: str, what: str = "a mapping") -> _Entries:
    """The entries of a mapping node by key, checking key types and duplicates."""
    if not isinstance(node, yaml.MappingNode):
        doc.fail(node, key, f"expected {what}, got {_kind(node)}")
    _check_tag(doc, node, key)
    out: _Entries = {}
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode) or knode.tag != _STR:
            if isinstance(knode, yaml.ScalarNode) and knode.tag == _TAG + "merge":
                doc.fail(knode, key, "YAML merge keys (<<) are not allowed", "write keys out")
            shown = f" {knode.value!r}" if isinstance(knode, yaml.ScalarNode) else ""
            doc.fail(
                knode,
                key,
                f"key{shown} is {_kind(knode)}, not a string",
                "quote the key",
            )
        name = str(knode.value)
        if name in out:
            first = _line(out[name][0])
            doc.fail(
                knode,
                _sub(key, name),
                f"duplicate key (first at line {first}); YAML would silently keep only the last",
                "remove one of them",
            )
        out[name] = (knode, vnode)
    return out


def _check_keys(
    doc: _Doc,
    node: yaml.Node,
    entries: _Entries,
    key: str,
    allowed: Sequence[str],
    required: Sequence[str] = (),
    hints: Optional[Dict[str, str]] = None,
) -> None:
    for name, (knode, _value) in entries.items():
        if name not in allowed:
            close = _close_matches(name, allowed, n=1, cutoff=0.5)
            fix = f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(allowed)
            doc.fail(knode, _sub(key, name), "unknown key", fix)
    for name in required:
        if name not in entries:
            hint = (hints or {}).get(name, f"add '{name}:'")
            doc.fail(node, _sub(key, name), "missing required key", hint)


def _scalar(doc: _Doc, node: yaml.Node, key: str) -> _Scalar:
    if not isinstance(node, yaml.ScalarNode):
        doc.fail(node, key, f"expected a single value, got {_kind(node)}")
    tag = node.tag
    if tag == _STR:
        return str(node.value)
    if tag == _NULL:
        return None
    try:
        if tag == _BOOL:
            return bool(_CONSTRUCTOR.construct_yaml_bool(node))
        if tag in (_INT, _FLOAT):
            if len(node.value) > _MAX_NUMBER_CHARS:
                doc.fail(node, key, f"number {node.value[:20]}... is far too large")
            if tag == _INT:
                return int(_CONSTRUCTOR.construct_yaml_int(node))
            value = float(_CONSTRUCTOR.construct_yaml_float(node))
            if not math.isfinite(value):
                doc.fail(node, key, f"{node.value} is not a finite number")
            return value
    except (ValueError, KeyError, IndexError, TypeError, OverflowError):
        noun = _kind(node).split(" ", 1)[1]
        doc.fail(node, key, f"{node.value!r} is not a valid {noun}")
    doc.fail(node, key, f"{_kind(node)} is not allowed here", "quote the value")


def _str(doc: _Doc, node: yaml.Node, key: str, what: str = "a string") -> str:
    value = _scalar(doc, node, key)
    if not isinstance(value, str):
        doc.fail(node, key, f"expected {what}, got {_kind(node)}", "quote it")
    if not value:
        doc.fail(node, key, f"expected {what}, got an empty string")
    return value


def _int(
    doc: _Doc, node: yaml.Node, key: str, lo: int, hi: int, fix: str = "", low_fix: str = ""
) -> int:
    value = _scalar(doc, node, key)
    if isinstance(value, bool) or not isinstance(value, int):
        doc.fail(node, key, f"expected a whole number, got {_kind(node)}", fix)
    if value < lo:
        doc.fail(node, key, f"{value} is below the minimum {lo}", low_fix or fix)
    if value > hi:
        doc.fail(node, key, f"{value} is above the maximum {hi}", fix)
    return value


def _bool(doc: _Doc, node: yaml.Node, key: str) -> bool:
    value = _scalar(doc, node, key)
    if not isinstance(value, bool):
        doc.fail(node, key, f"expected true or false, got {_kind(node)}")
    return value


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?) *(ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _seconds(doc: _Doc, node: yaml.Node, key: str, lo: float, hi: float) -> float:
    """A duration: a number of seconds, or a string such as ``30s``, ``5m``, ``1h``."""
    value = _scalar(doc, node, key)
    fix = "write a number of seconds, or a duration such as 30s, 5m or 1h"
    if isinstance(value, bool) or value is None:
        doc.fail(node, key, f"expected a duration, got {_kind(node)}", fix)
    if isinstance(value, str):
        found = _DURATION.fullmatch(value.strip())
        if found is None or len(value) > _MAX_NUMBER_CHARS:
            doc.fail(node, key, f"{value!r} is not a duration", fix)
        seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    else:
        seconds = float(value)
    if seconds < lo:
        doc.fail(node, key, f"{_fmt_seconds(seconds)} is below the minimum {_fmt_seconds(lo)}")
    if seconds > hi:
        doc.fail(node, key, f"{_fmt_seconds(seconds)} is above the maximum {_fmt_seconds(hi)}")
    return seconds


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def _choice(doc: _Doc, node: yaml.Node, key: str, choices: Sequence[str]) -> str:
    value = _scalar(doc, node, key)
    if not isinstance(value, str) or value not in choices:
        shown = repr(value) if isinstance(value, str) else _kind(node)
        doc.fail(node, key, f"{shown} is not one of: {', '.join(choices)}")
    return value


def _seq(doc: _Doc, node: yaml.Node, key: str, what: str = "a list") -> List[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        doc.fail(node, key, f"expected {what}, got {_kind(node)}")
    _check_tag(doc, node, key)
    return list(node.value)


def _one_or_list(doc: _Doc, node: yaml.Node, key: str) -> List[Tuple[yaml.Node, str]]:
    """A single value or a non-empty list of values, with the key of each."""
    if isinstance(node, yaml.SequenceNode):
        items = _seq(doc, node, key)
        if not items:
            doc.fail(node, key, "an empty list matches nothing", "give at least one value")
        return [(item, _at(key, i)) for i, item in enumerate(items)]
    if isinstance(node, yaml.MappingNode):
        doc.fail(node, key, "expected a value or a list of values, got a mapping")
    return [(node, key)]


# --------------------------------------------------------------------------- profile names

# go-nvlib's grammar, which mig-parted checks: [<C>c.]<G>g.<GB>gb[+attr[,attr]|-attr]
_PROFILE = re.compile(
    r"(?:(?P<c>[0-9]+)c\.)?(?P<gi>(?P<g>[0-9]+)g\.[0-9]+gb"
    r"(?:\+[a-z][a-z0-9]*(?:\.[a-z0-9]+)*(?:,[a-z][a-z0-9]*(?:\.[a-z0-9]+)*)*"
    r"|-[a-z][a-z0-9]*(?:\.[a-z0-9]+)*)?)"
)


@dataclass(frozen=True)
class _ProfileName:
    gi: str  # the GPU-instance profile: "3g.40gb"
    gi_slices: int  # compute slices of the GI (the "3" of "3g")
    ci: str  # the compute-instance profile, normalised: the GI's name for the full CI
    ci_slices: int

    @property
    def full(self) -> bool:
        return self.ci == self.gi


def _split_profile(name: str) -> Optional[_ProfileName]:
    found = _PROFILE.fullmatch(name)
    if found is None:
        return None
    gi = found.group("gi")
    g = int(found.group("g"))
    c = int(found.group("c")) if found.group("c") is not None else g
    if g < 1 or g > 64 or c < 1 or c > g:
        return None
    ci = gi if c == g else f"{c}c.{gi}"
    return _ProfileName(gi=gi, gi_slices=g, ci=ci, ci_slices=c)


@dataclass(frozen=True)
class _ModelProfiles:
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
class _Catalog:
    """What the bundled tables say about profile names."""

    gi_names: FrozenSet[str]
    models: Tuple[_ModelProfiles, ...]
    ci_names: Dict[str, FrozenSet[str]]  # GI name -> CI names some table lists for it
    device_ids: FrozenSet[int]


@functools.lru_cache(maxsize=1)
def _catalog() -> _Catalog:
    models = tables.load_models()
    per_model = tuple(
        _ModelProfiles(
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
        if (split := _split_profile(name)) is None or split.full
    )
    return _Catalog(
        gi_names=known,
        models=per_model,
        ci_names=ci_names,
        device_ids=frozenset(t.pci_device_id for t in models.values()),
    )


def _closest(name: str, known: FrozenSet[str]) -> str:
    close = _close_matches(name, sorted(known), n=3, cutoff=0.5)
    if close:
        return "closest known: " + ", ".join(close)
    return "'migrestore profiles' lists the profiles of the installed GPUs"


def _check_gi_known(doc: _Doc, node: yaml.Node, key: str, name: str) -> None:
    known = _catalog().gi_names
    if name not in known:
        doc.fail(node, key, f"unknown GPU instance profile {name!r}", _closest(name, known))


def _gi_profile(doc: _Doc, node: yaml.Node, key: str) -> str:
    name = _str(doc, node, key, "a GPU instance profile name such as 1g.10gb")
    if name.startswith("MIG "):
        doc.fail(node, key, f"{name!r} carries NVML's 'MIG ' prefix", f"write {name[4:]!r}")
    split = _split_profile(name)
    if split is not None and not split.full:
        doc.fail(
            node,
            key,
            f"{name!r} is a compute-instance profile, not a GPU instance profile",
            f"write 'profile: {split.gi}' with 'compute: [{name}]'",
        )
    if split is not None:
        name = split.gi
    _check_gi_known(doc, node, key, name)
    return name


def _check_ci_known(doc: _Doc, node: yaml.Node, key: str, split: _ProfileName) -> None:
    listed = _catalog().ci_names.get(split.gi)
    if listed and split.ci not in listed:
        doc.fail(
            node,
            key,
            f"unknown compute-instance profile {split.ci!r}",
            f"a {split.gi} GI offers: {', '.join(sorted(listed))}",
        )


# --------------------------------------------------------------------------- selectors

_UUID = re.compile(r"GPU-[0-9A-Za-z][0-9A-Za-z-]*")
_BUS_ID = re.compile(
    r"(?:(?P<domain>[0-9A-Fa-f]{1,8}):)?(?P<bus>[0-9A-Fa-f]{1,2}):"
    r"(?P<device>[0-9A-Fa-f]{1,2})\.(?P<function>[0-7])"
)
_DEVICE_ID = re.compile(r"0[xX](?P<hex>[0-9A-Fa-f]{1,8})")

SELECTOR_KINDS = ("index", "uuid", "pci-bus-id", "model", "device-id")


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


def _device_id(doc: _Doc, node: yaml.Node, key: str) -> str:
    value = _scalar(doc, node, key)
    fix = 'write the PCI device ID as 8 hex digits, e.g. "0x233010DE", as nvidia-smi -q prints it'
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0xFFFFFFFF:
            doc.fail(node, key, f"{node.value} is not a 32-bit PCI device ID", fix)
        return f"0x{value:08X}"
    if not isinstance(value, str):
        doc.fail(node, key, f"expected a PCI device ID, got {_kind(node)}", fix)
    text = value.strip()
    if ":" in text and all(_DEVICE_ID.fullmatch(part) for part in text.split(":")):
        doc.fail(
            node,
            key,
            f"{value!r} carries a subsystem ID, which migrestore cannot observe",
            "match on the device ID alone, or select the GPUs by uuid or pci-bus-id",
        )
    found = _DEVICE_ID.fullmatch(text)
    if found is None:
        doc.fail(node, key, f"{value!r} is not a PCI device ID", fix)
    return f"0x{int(found.group('hex'), 16):08X}"


def _selector_value(doc: _Doc, kind: str, node: yaml.Node, key: str) -> str:
    if kind == "index":
        return str(_int(doc, node, key, 0, _MAX_INDEX))
    if kind == "device-id":
        return _device_id(doc, node, key)
    if kind == "pci-bus-id":
        # An unquoted 0000:18:00.0 reads as a YAML 1.1 base-60 number: use the text.
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_STR, _INT, _FLOAT):
            doc.fail(node, key, f"expected a PCI bus id, got {_kind(node)}")
        text = str(node.value)
        bus = normalize_bus_id(text)
        if bus is None:
            doc.fail(
                node,
                key,
                f"{text!r} is not a PCI bus id",
                'write it as nvidia-smi prints it, e.g. "00000000:18:00.0"',
            )
        return bus
    if kind == "uuid":
        text = _str(doc, node, key, "a GPU UUID")
        if text.startswith("MIG-"):
            doc.fail(
                node,
                key,
                f"{text!r} is a MIG device UUID",
                "select the GPU by its GPU-... UUID, as nvidia-smi -L prints it",
            )
        if not _UUID.fullmatch(text):
            doc.fail(node, key, f"{text!r} is not a GPU UUID", "copy it from nvidia-smi -L")
        return text
    return _str(doc, node, key, "a model name or glob")


def _match(doc: _Doc, node: yaml.Node, key: str) -> Tuple[Selector, ...]:
    fix = 'write "match: all", or a mapping such as match: {model: "NVIDIA H100*"}'
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR and node.value == "all":
            return (Selector("all"),)
        doc.fail(node, key, f"expected 'all' or a mapping of selectors, got {_kind(node)}", fix)
    entries = _mapping(doc, node, key, "'all' or a mapping of selectors")
    if not entries:
        doc.fail(node, key, "an empty match", fix)
    _check_keys(doc, node, entries, key, SELECTOR_KINDS)
    selectors: List[Selector] = []
    for kind, (_knode, vnode) in entries.items():
        values: List[str] = []
        for item, item_key in _one_or_list(doc, vnode, _sub(key, kind)):
            value = _selector_value(doc, kind, item, item_key)
            if value not in values:
                values.append(value)
        selectors.append(Selector(kind, tuple(values)))
    return tuple(selectors)


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Wanted:
    """One wanted GI with where it was written, for rule-level checks."""

    spec: InstanceSpec
    node: yaml.Node  # the instance entry
    key: str
    placement_node: Optional[yaml.Node] = None


def _compute(doc: _Doc, node: yaml.Node, key: str, gi: str) -> Tuple[str, ...]:
    items = _seq(doc, node, key, "a list of compute-instance profiles")
    if not items:
        doc.fail(
            node, key, "an empty list", "omit 'compute' for one compute instance covering the GI"
        )
    names: List[str] = []
    used = 0
    gi_slices = 0
    for i, item in enumerate(items):
        item_key = _at(key, i)
        name = _str(doc, item, item_key, "a compute-instance profile name")
        split = _split_profile(name)
        if split is None:
            doc.fail(item, item_key, f"{name!r} is not a profile name", f"e.g. 1c.{gi} or {gi}")
        if split.gi != gi:
            fix = f"write {split.ci_slices}c.{gi}" if split.ci_slices < split.gi_slices else ""
            doc.fail(item, item_key, f"{name!r} is not a compute-instance profile of {gi}", fix)
        _check_ci_known(doc, item, item_key, split)
        gi_slices = split.gi_slices
        used += split.ci_slices
        if used > gi_slices:
            doc.fail(
                item,
                item_key,
                f"the compute instances need {used} compute slices, a {gi} GI has {gi_slices}",
                "remove compute instances or use smaller ones",
            )
        names.append(split.ci)
    if len(names) == 1 and names[0] == gi:
        return ()  # the default: one CI covering the GI
    return tuple(names)


def _instances(doc: _Doc, node: yaml.Node, key: str) -> List[_Wanted]:
    out: List[_Wanted] = []
    for j, entry in enumerate(_seq(doc, node, key, "a list of instances")):
        ekey = _at(key, j)
        entries = _mapping(doc, entry, ekey, "an instance mapping such as {profile: 1g.10gb}")
        _check_keys(
            doc,
            entry,
            entries,
            ekey,
            ("profile", "count", "placement", "compute"),
            ("profile",),
            {"profile": "add 'profile:', e.g. profile: 1g.10gb"},
        )
        profile = _gi_profile(doc, entries["profile"][1], _sub(ekey, "profile"))
        count: Optional[int] = None
        if "count" in entries:
            count = _int(
                doc,
                entries["count"][1],
                _sub(ekey, "count"),
                1,
                _MAX_COUNT,
                low_fix="remove the entry to have none",
            )
        starts: List[Optional[int]] = []
        placement_node: Optional[yaml.Node] = None
        if "placement" in entries:
            placement_node = entries["placement"][1]
            pkey = _sub(ekey, "placement")
            fix = "a start slice, or a list of start slices when count > 1"
            if isinstance(placement_node, yaml.SequenceNode):
                items = _seq(doc, placement_node, pkey)
                if not items:
                    doc.fail(placement_node, pkey, "an empty list", fix)
                for i, item in enumerate(items):
                    start = _int(doc, item, _at(pkey, i), 0, _MAX_SLICE, fix)
                    if start in starts:
                        doc.fail(
                            item,
                            _at(pkey, i),
                            f"placement {start} is given twice for {profile}",
                            "each instance needs its own start slice",
                        )
                    starts.append(start)
                if count is None:
                    count = len(starts)
                elif count != len(starts):
                    doc.fail(
                        placement_node,
                        pkey,
                        f"{len(starts)} start slices for count {count}",
                        "give one start per instance",
                    )
            else:
                start = _int(doc, placement_node, pkey, 0, _MAX_SLICE, fix)
                if count is not None and count > 1:
                    doc.fail(
                        placement_node,
                        pkey,
                        f"one start slice for count {count}",
                        f"give a list of {count} starts, e.g. [0, 1]",
                    )
                starts.append(start)
        if count is None:
            count = 1
        if not starts:
            starts = [None] * count
        compute: Tuple[str, ...] = ()
        if "compute" in entries:
            compute = _compute(doc, entries["compute"][1], _sub(ekey, "compute"), profile)
        for where in starts:
            out.append(
                _Wanted(
                    InstanceSpec(profile=profile, placement=where, compute=compute),
                    entry,
                    ekey,
                    placement_node,
                )
            )
    return out


def _slices(start: int, size: int) -> str:
    return f"slice {start}" if size == 1 else f"slices {start}-{start + size - 1}"


def _placement_problem(
    model: _ModelProfiles, wanted: Sequence[_Wanted]
) -> Optional[Tuple[_Wanted, str, str]]:
    """Why the explicit placements of one rule cannot exist on ``model`` (or None)."""
    taken: List[Tuple[_Wanted, int, int]] = []  # (wanted, start, size)
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


def _check_layout(
    doc: _Doc,
    node: yaml.Node,
    key: str,
    wanted: Sequence[_Wanted],
    selectors: Sequence[Selector],
) -> None:
    """Rule-level checks against the bundled tables: one model offers every profile of
    the rule, no profile is wanted more often than that model allows, and explicit
    placements are valid starts that do not overlap. The models are those the rule's
    model and device-id selectors can match, when the tables have any of them."""
    if not wanted:
        return
    seen: Dict[Tuple[str, int], _Wanted] = {}
    for item in wanted:
        if item.spec.placement is None:
            continue
        pair = (item.spec.profile, item.spec.placement)
        if pair in seen:
            doc.fail(
                item.placement_node or item.node,
                _sub(item.key, "placement"),
                f"placement {pair[1]} is given twice for {pair[0]} (also at {seen[pair].key})",
                "each instance needs its own start slice",
            )
        seen[pair] = item
    names: List[str] = []
    for item in wanted:
        if item.spec.profile not in names:
            names.append(item.spec.profile)
    models = [m for m in _catalog().models if all(n in m.profiles for n in names)]
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
    doc.fail(item.placement_node or item.node, _sub(item.key, "placement"), problem, fix)


# --------------------------------------------------------------------------- native format

_TOP_KEYS = (
    "version",
    "clients",
    "client-timeout",
    "driver-wait",
    "ampere-reset",
    "drift",
    "hooks",
    "gpus",
    "mig-parted",
)
# A unit name never starts with "-": it would reach systemctl's argv as an option.
_UNIT = re.compile(
    r"[A-Za-z0-9:_.\\@][A-Za-z0-9:_.\\@-]*"
    r"\.(service|socket|target|timer|path|mount|scope|slice|device|swap)"
)
_HOOK_POINTS = ("post-apply",)


def _clients(doc: _Doc, node: yaml.Node, key: str) -> Tuple[str, ...]:
    units: List[str] = []
    for i, item in enumerate(_seq(doc, node, key, "a list of systemd units")):
        item_key = _at(key, i)
        unit = _str(doc, item, item_key, "a systemd unit name")
        if not _UNIT.fullmatch(unit) or len(unit) > 255:
            if unit.startswith("-"):
                fix = "a unit name cannot start with '-'"
            elif re.fullmatch(r"[A-Za-z0-9:_.@-]+", unit):
                fix = f"write {unit}.service"
            else:
                fix = ""
            doc.fail(item, item_key, f"{unit!r} is not a systemd unit name", fix)
        if unit in ("migrestore.service", "migrestore"):
            doc.fail(item, item_key, "migrestore cannot stop itself", "remove it from clients")
        if unit in units:
            doc.fail(item, item_key, f"{unit} is listed twice", "remove one")
        units.append(unit)
    return tuple(units)


def _hook(doc: _Doc, node: yaml.Node, key: str) -> Hook:
    entries = _mapping(doc, node, key, "a hook mapping such as {argv: [/usr/bin/true]}")
    _check_keys(doc, node, entries, key, ("argv", "timeout"), ("argv",))
    argv_node = entries["argv"][1]
    argv_key = _sub(key, "argv")
    items = _seq(doc, argv_node, argv_key, "a list: the program and its arguments")
    if not items:
        doc.fail(argv_node, argv_key, "an empty argv", "give the program's absolute path first")
    argv: List[str] = []
    for i, item in enumerate(items):
        item_key = _at(argv_key, i)
        if not isinstance(item, yaml.ScalarNode) or item.tag != _STR:
            doc.fail(item, item_key, f"expected a string, got {_kind(item)}", "quote it")
        argv.append(str(item.value))
    if not os.path.isabs(argv[0]):
        doc.fail(
            items[0],
            _at(argv_key, 0),
            f"{argv[0]!r} is not an absolute path",
            "hooks run with no shell and no PATH: write e.g. /usr/local/bin/regen-gres",
        )
    timeout = 60.0
    if "timeout" in entries:
        timeout = _seconds(doc, entries["timeout"][1], _sub(key, "timeout"), 1.0, 3600.0)
    return Hook(argv=tuple(argv), timeout=timeout, line=_line(node))


def _hooks(doc: _Doc, node: yaml.Node, key: str) -> Tuple[Hook, ...]:
    entries = _mapping(doc, node, key)
    _check_keys(doc, node, entries, key, _HOOK_POINTS)
    hooks: List[Hook] = []
    for point, (_knode, vnode) in entries.items():
        pkey = _sub(key, point)
        for i, item in enumerate(_seq(doc, vnode, pkey, "a list of hooks")):
            hooks.append(_hook(doc, item, _at(pkey, i)))
    return tuple(hooks)


def _rule(doc: _Doc, node: yaml.Node, key: str) -> Rule:
    entries = _mapping(doc, node, key, "a rule mapping with match and mig")
    _check_keys(
        doc,
        node,
        entries,
        key,
        ("match", "mig", "instances"),
        ("match", "mig"),
        {
            "match": "add 'match: all', or a mapping of selectors",
            "mig": "add 'mig: true' or 'mig: false'",
        },
    )
    selectors = _match(doc, entries["match"][1], _sub(key, "match"))
    mig = _bool(doc, entries["mig"][1], _sub(key, "mig"))
    wanted: List[_Wanted] = []
    if "instances" in entries:
        knode, vnode = entries["instances"]
        ikey = _sub(key, "instances")
        if not mig:
            doc.fail(
                knode,
                ikey,
                "a rule with mig: false cannot list instances",
                "remove instances, or set mig: true",
            )
        wanted = _instances(doc, vnode, ikey)
        _check_layout(doc, vnode, ikey, wanted, selectors)
    line = _line(node)
    spec = GpuSpec(
        mig=mig,
        instances=tuple(w.spec for w in wanted),
        source=f"{doc.path}:{line}",
    )
    return Rule(match=selectors, spec=spec, line=line)


def _native(
    doc: _Doc,
    root: yaml.Node,
    entries: _Entries,
    select: Optional[str],
    reader: Optional[_Reader],
) -> Config:
    _check_keys(
        doc,
        root,
        entries,
        "",
        _TOP_KEYS,
        ("version",),
        {"version": "start the file with 'version: 1'"},
    )
    vnode = entries["version"][1]
    version = _scalar(doc, vnode, "version")
    if not isinstance(version, int) or isinstance(version, bool) or version != NATIVE_VERSION:
        fix = "write 'version: 1'"
        if version == MIG_PARTED_VERSION:
            fix = "mig-parted files say version: v1 and need 'mig-configs:'; migrestore's own format says 'version: 1'"
        doc.fail(vnode, "version", f"unsupported version {version!r}", fix)

    def get(name: str) -> Optional[yaml.Node]:
        return entries[name][1] if name in entries else None

    clients = DEFAULT_CLIENTS
    node = get("clients")
    if node is not None:
        clients = _clients(doc, node, "clients")
    unit_timeout = 90.0
    node = get("client-timeout")
    if node is not None:
        unit_timeout = _seconds(doc, node, "client-timeout", 1.0, 3600.0)
    driver_wait = 120.0
    node = get("driver-wait")
    if node is not None:
        driver_wait = _seconds(doc, node, "driver-wait", 0.0, 3600.0)
    ampere_reset = RESET_ALLOW
    node = get("ampere-reset")
    if node is not None:
        ampere_reset = _choice(doc, node, "ampere-reset", (RESET_ALLOW, RESET_NEVER))
    drift_policy = DRIFT_RESTORE
    drift_interval = 60.0
    node = get("drift")
    if node is not None:
        drift = _mapping(doc, node, "drift")
        _check_keys(doc, node, drift, "drift", ("policy", "interval"))
        if "policy" in drift:
            drift_policy = _choice(
                doc, drift["policy"][1], "drift.policy", (DRIFT_RESTORE, DRIFT_WARN, DRIFT_IGNORE)
            )
        if "interval" in drift:
            drift_interval = _seconds(
                doc, drift["interval"][1], "drift.interval", 1.0, _MAX_SECONDS
            )
    hooks: Tuple[Hook, ...] = ()
    node = get("hooks")
    if node is not None:
        hooks = _hooks(doc, node, "hooks")

    if "gpus" in entries and "mig-parted" in entries:
        doc.fail(
            entries["mig-parted"][0],
            "mig-parted",
            "a config has either gpus or mig-parted, not both",
            "remove one of them",
        )
    selected: Optional[str] = None
    if "gpus" in entries:
        if select is not None:
            doc.fail_line(
                None,
                "select",
                f"--select {select} applies to mig-parted files; this is a native migrestore file",
                "drop --select",
            )
        gpus_node = entries["gpus"][1]
        items = _seq(doc, gpus_node, "gpus", "a list of rules")
        rules = tuple(_rule(doc, item, _at("gpus", i)) for i, item in enumerate(items))
    elif "mig-parted" in entries:
        rules, selected = _referenced_mig_parted(doc, entries["mig-parted"][1], select, reader)
    else:
        doc.fail(
            root,
            "gpus",
            "missing: the config declares no GPUs",
            "add 'gpus:' rules, 'gpus: []' to change nothing, or 'mig-parted:'",
        )
    return Config(
        path=doc.path,
        rules=rules,
        clients=clients,
        drift_policy=drift_policy,
        drift_interval=drift_interval,
        ampere_reset=ampere_reset,
        driver_wait=driver_wait,
        hooks=hooks,
        selected=selected,
        unit_timeout=unit_timeout,
    )


def _referenced_mig_parted(
    doc: _Doc, node: yaml.Node, select: Optional[str], reader: Optional[_Reader]
) -> Tuple[Tuple[Rule, ...], str]:
    entries = _mapping(doc, node, "mig-parted")
    _check_keys(
        doc,
        node,
        entries,
        "mig-parted",
        ("file", "select"),
        ("file",),
        {"file": "add 'file:' with the mig-parted config's absolute path"},
    )
    file_node = entries["file"][1]
    path = _str(doc, file_node, "mig-parted.file", "a file path")
    if not os.path.isabs(path):
        doc.fail(
            file_node, "mig-parted.file", f"{path!r} is not an absolute path", "write /etc/..."
        )
    if select is None and "select" in entries:
        select = _str(doc, entries["select"][1], "mig-parted.select", "a config name")
    if reader is None:
        doc.fail(
            file_node,
            "mig-parted.file",
            "parse() reads no files; a config that references a mig-parted file needs load()",
        )
    try:
        text = reader(path)
    except ConfigError as exc:
        doc.fail(file_node, "mig-parted.file", f"{path}: {exc.problem}", exc.fix)
    ref = _Doc(path)
    root = _compose(ref, text)
    ref_entries = _mapping(ref, root, "", "a mapping")
    if "mig-configs" not in ref_entries:
        doc.fail(
            file_node,
            "mig-parted.file",
            f"{path} is not a mig-parted config (it has no mig-configs)",
            "point it at a file with 'version: v1' and 'mig-configs:'",
        )
    return _mig_parted(ref, root, ref_entries, select)


# --------------------------------------------------------------------------- mig-parted


@dataclass(frozen=True)
class _MpEntry:
    node: yaml.Node
    key: str
    selectors: Tuple[Selector, ...]
    enabled: bool
    devices: Tuple[Tuple[str, int, yaml.Node], ...]  # (profile name, count > 0, key node)
    filtered: bool  # has a device-filter
    device_ids: Tuple[int, ...]


def _mp_entry(doc: _Doc, node: yaml.Node, key: str) -> _MpEntry:
    entries = _mapping(doc, node, key, "an entry with devices and mig-enabled")
    _check_keys(
        doc,
        node,
        entries,
        key,
        ("devices", "device-filter", "mig-enabled", "mig-devices"),
        ("devices", "mig-enabled"),
    )
    dnode = entries["devices"][1]
    dkey = _sub(key, "devices")
    selectors: List[Selector] = []
    if isinstance(dnode, yaml.ScalarNode):
        if dnode.tag != _STR or dnode.value != "all":
            doc.fail(dnode, dkey, f"expected 'all' or a list of GPU indexes, got {_kind(dnode)}")
        selectors.append(Selector("all"))
    else:
        items = _seq(doc, dnode, dkey, "'all' or a list of GPU indexes")
        if not items:
            doc.fail(dnode, dkey, "an empty list matches no GPU", "list GPU indexes, or write all")
        indexes: List[str] = []
        for i, item in enumerate(items):
            value = str(_int(doc, item, _at(dkey, i), 0, _MAX_INDEX))
            if value not in indexes:
                indexes.append(value)
        selectors.append(Selector("index", tuple(indexes)))
    device_ids: List[int] = []
    if "device-filter" in entries:
        fkey = _sub(key, "device-filter")
        values: List[str] = []
        for item, item_key in _one_or_list(doc, entries["device-filter"][1], fkey):
            value = _device_id(doc, item, item_key)
            if value not in values:
                values.append(value)
                device_ids.append(int(value, 16))
        selectors.append(Selector("device-id", tuple(values)))
    enabled = _bool(doc, entries["mig-enabled"][1], _sub(key, "mig-enabled"))
    devices: List[Tuple[str, int, yaml.Node]] = []
    mkey = _sub(key, "mig-devices")
    if "mig-devices" in entries:
        mnode = entries["mig-devices"][1]
        for name, (knode, vnode) in _mapping(doc, mnode, mkey).items():
            pkey = _sub(mkey, name)
            if _split_profile(name) is None:
                doc.fail(
                    knode,
                    pkey,
                    f"{name!r} is not a MIG profile name",
                    "write it as [<C>c.]<G>g.<GB>gb[+attr], e.g. 1g.10gb or 1c.3g.40gb",
                )
            count = _int(doc, vnode, pkey, 0, _MAX_COUNT)
            if count:
                devices.append((name, count, knode))
        if not enabled and devices:
            doc.fail(
                mnode,
                mkey,
                "mig-enabled is false but mig-devices lists devices",
                "write mig-devices: {}, or set mig-enabled: true",
            )
    elif enabled:
        doc.fail(
            node,
            mkey,
            "missing: mig-enabled: true needs mig-devices",
            "list the devices, or write mig-devices: {} for MIG on with no instances",
        )
    return _MpEntry(
        node=node,
        key=key,
        selectors=tuple(selectors),
        enabled=enabled,
        devices=tuple(devices),
        filtered="device-filter" in entries,
        device_ids=tuple(device_ids),
    )


def _mp_instances(doc: _Doc, entry: _MpEntry) -> List[_Wanted]:
    """mig-devices -> GIs. A GI-level name is one GI with its default CI; CI-level names
    of one GI profile are packed first-fit (largest first) into as few GIs as fit, as
    mig-parted keeps adding CIs to the GI it created last until that GI is full."""
    checked = not entry.filtered or any(d in _catalog().device_ids for d in entry.device_ids)
    out: List[_Wanted] = []
    cis: Dict[str, List[Tuple[_ProfileName, yaml.Node]]] = {}  # GI name -> CIs, file order
    for name, count, knode in entry.devices:
        key = _sub(_sub(entry.key, "mig-devices"), name)
        split = _split_profile(name)
        if split is None:  # _mp_entry checked the grammar
            continue
        if checked:
            _check_gi_known(doc, knode, key, split.gi)
            _check_ci_known(doc, knode, key, split)
        if split.full:
            out.extend(_Wanted(InstanceSpec(profile=split.gi), knode, key) for _ in range(count))
        else:
            cis.setdefault(split.gi, []).extend([(split, knode)] * count)
    for gi, singles in cis.items():
        singles = sorted(singles, key=lambda pair: -pair[0].ci_slices)  # stable on ties
        packed: List[List[Tuple[_ProfileName, yaml.Node]]] = []
        for split, knode in singles:
            for group in packed:
                if sum(s.ci_slices for s, _ in group) + split.ci_slices <= split.gi_slices:
                    group.append((split, knode))
                    break
            else:
                packed.append([(split, knode)])
        for group in packed:
            key = _sub(_sub(entry.key, "mig-devices"), group[0][0].ci)
            spec = InstanceSpec(profile=gi, compute=tuple(s.ci for s, _ in group))
            out.append(_Wanted(spec, group[0][1], key))
    if checked:
        _check_layout(doc, entry.node, _sub(entry.key, "mig-devices"), out, entry.selectors)
    return out


def _mig_parted(
    doc: _Doc, root: yaml.Node, entries: _Entries, select: Optional[str]
) -> Tuple[Tuple[Rule, ...], str]:
    """The rules of the selected config of a mig-parted file, and its name."""
    _check_keys(
        doc,
        root,
        entries,
        "",
        ("version", "mig-configs"),
        ("version", "mig-configs"),
        {"version": "a mig-parted file starts with 'version: v1'"},
    )
    vnode = entries["version"][1]
    version = _scalar(doc, vnode, "version")
    if version != MIG_PARTED_VERSION:
        doc.fail(
            vnode, "version", f"unsupported mig-parted version {version!r}", "write 'version: v1'"
        )
    cnode = entries["mig-configs"][1]
    configs = _mapping(doc, cnode, "mig-configs", "a mapping of config names")
    if not configs:
        doc.fail(cnode, "mig-configs", "no configs", "add at least one named config")
    parsed: Dict[str, List[_MpEntry]] = {}
    for label, (_knode, lnode) in configs.items():
        lkey = _sub("mig-configs", label)
        items = _seq(doc, lnode, lkey, "a list of entries")
        if not items:
            doc.fail(lnode, lkey, "an empty config", "add at least one entry")
        parsed[label] = [_mp_entry(doc, item, _at(lkey, i)) for i, item in enumerate(items)]
    labels = list(parsed)
    if select is None:
        if len(labels) > 1:
            doc.fail(
                cnode,
                "mig-configs",
                f"the file holds {len(labels)} configs and none is selected",
                f"choose one with --select NAME or mig-parted.select: {', '.join(labels)}",
            )
        select = labels[0]
    if select not in parsed:
        close = _close_matches(select, labels, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        doc.fail(
            cnode,
            "mig-configs",
            f"no config named {select!r}",
            f"{hint}configs in this file: {', '.join(labels)}",
        )
    rules: List[Rule] = []
    for entry in parsed[select]:
        wanted = _mp_instances(doc, entry) if entry.enabled else []
        line = _line(entry.node)
        spec = GpuSpec(
            mig=entry.enabled,
            instances=tuple(w.spec for w in wanted),
            source=f"{doc.path}:{line}",
        )
        rules.append(Rule(match=entry.selectors, spec=spec, line=line))
    # mig-parted applies every matching entry in turn, so the last one wins; with
    # first-match-wins rules, that is the entries in reverse order.
    rules.reverse()
    return tuple(rules), select


# --------------------------------------------------------------------------- entry points


def _parse(text: str, path: str, select: Optional[str], reader: Optional[_Reader]) -> Config:
    doc = _Doc(path)
    root = _compose(doc, text)
    entries = _mapping(doc, root, "", "a mapping of keys (the file's top level)")
    if "mig-configs" in entries:
        rules, selected = _mig_parted(doc, root, entries, select)
        return Config(path=path, rules=rules, selected=selected)
    return _native(doc, root, entries, select, reader)


def parse(text: str, path: str = "<config>", select: Optional[str] = None) -> Config:
    """Parse config text (native, or a mig-parted file) into a ``Config``. Pure.

    ``select`` names the config of a mig-parted file (``--select``); a file with a single
    config selects it. ``path`` only names the text in errors.

    Raises:
        ConfigError: anything wrong with the text, naming line, key and fix. A native
            config that references a mig-parted file (``mig-parted.file``) needs ``load``.
    """
    return _parse(text, path, select, None)


def _read_text(path: str, secure: bool, missing_fix: str = "") -> str:
    """The text of a config file, with every file-system problem as a ConfigError."""

    def fail(problem: str, fix: str = "") -> NoReturn:
        raise ConfigError(path, None, "", problem, fix)

    try:
        link = os.lstat(path)
    except FileNotFoundError:
        fail(
            "does not exist",
            missing_fix or "create it (see /usr/share/doc/migrestore/examples) or pass -c PATH",
        )
    except PermissionError:
        fail("cannot be reached: permission denied", "run as root")
    except (OSError, ValueError) as exc:
        fail(f"cannot be examined: {_os_reason(exc)}")
    if stat.S_ISLNK(link.st_mode):
        try:
            os.stat(path)
        except FileNotFoundError:
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            fail(f"is a dangling symlink (to {target})", "fix the link or replace it with the file")
        except OSError as exc:
            fail(f"cannot be followed: {_os_reason(exc)}")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        fail("cannot be read: permission denied", f"chmod 0644 {path}, or run as root")
    except IsADirectoryError:
        fail("is a directory, not a config file", "pass the file's path")
    except OSError as exc:
        fail(f"cannot be opened: {_os_reason(exc)}")
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            fail("is a directory, not a config file", "pass the file's path")
        if not stat.S_ISREG(info.st_mode):
            fail("is not a regular file", "pass the path of a plain file")
        if secure:
            fix = f"chown root:root {path} && chmod 0644 {path}"
            if info.st_uid != 0:
                fail(f"is owned by uid {info.st_uid}, not root: refusing to use it", fix)
            if info.st_mode & 0o022:
                mode = stat.S_IMODE(info.st_mode)
                fail(f"is writable by group or others (mode {mode:04o}): refusing to use it", fix)
            unsafe = _unsafe_directory(path)
            if unsafe is not None:
                fail(
                    f"{unsafe}, so another user could put another file in its place: "
                    "refusing to use it",
                    "keep it in a root-owned directory such as /etc",
                )
        if info.st_size > MAX_BYTES:
            fail(f"is {info.st_size} bytes; a config is at most {MAX_BYTES} bytes (1 MiB)")
        chunks: List[bytes] = []
        size = 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        fail(f"cannot be read: {_os_reason(exc)}")
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        fail(f"is larger than {MAX_BYTES} bytes (1 MiB)")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ConfigError(
            path,
            data.count(b"\n", 0, nul) + 1,
            "",
            "contains a NUL byte: binary data, or UTF-16 text",
            "save the config as UTF-8 text",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            path,
            data.count(b"\n", 0, exc.start) + 1,
            "",
            f"is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
            "save the config as UTF-8 text",
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    return _one_line(exc)


def _unsafe_directory(path: str) -> Optional[str]:
    """The first directory above ``path`` (symlinks resolved) that someone other than
    root could use to put another file in its place, or None. Such a directory is not
    owned by root, or group or others can write it without the sticky bit (a sticky
    /tmp is safe: only the owner of a root-owned file can rename or remove it)."""
    current = os.path.dirname(os.path.realpath(path))
    while True:
        try:
            info = os.stat(current)
        except OSError:
            return None  # the file's own check reports what is missing
        if info.st_uid != 0:
            return f"{current} is owned by uid {info.st_uid}"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return (
                f"{current} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
            )
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _check_hook_executable(config: Config) -> None:
    """Hooks run as root: refuse executables that someone other than root could change."""
    for i, hook in enumerate(config.hooks):
        exe = hook.argv[0]
        key = f"hooks.post-apply[{i}].argv[0]"
        fix = f"chown root:root {exe} && chmod 0755 {exe}"

        def fail(
            problem: str, fix: str = fix, key: str = key, line: Optional[int] = hook.line
        ) -> NoReturn:
            raise ConfigError(config.path, line, key, problem, fix)

        try:
            info = os.stat(exe)
        except FileNotFoundError:
            fail(f"hook executable {exe} does not exist", "install it, or remove the hook")
        except OSError as exc:
            fail(f"hook executable {exe} cannot be examined: {_os_reason(exc)}")
        if not stat.S_ISREG(info.st_mode):
            fail(f"hook executable {exe} is not a regular file", "point argv[0] at the program")
        if info.st_uid != 0:
            fail(f"hook executable {exe} is owned by uid {info.st_uid}, not root")
        if info.st_mode & 0o022:
            mode = stat.S_IMODE(info.st_mode)
            fail(f"hook executable {exe} is writable by group or others (mode {mode:04o})")
        if not info.st_mode & 0o111:
            fail(f"hook executable {exe} is not executable", f"chmod 0755 {exe}")
        unsafe = _unsafe_directory(exe)
        if unsafe is not None:
            fail(
                f"hook executable {exe}: {unsafe}, so another user could replace the "
                "program that runs as root",
                "keep hooks in a root-owned directory such as /usr/local/sbin",
            )


def load(
    path: str, select: Optional[str] = None, *, require_secure: Optional[bool] = None
) -> Config:
    """Read and parse a config file, and any mig-parted file it references.

    ``require_secure`` (default: running as root) refuses config files and hook
    executables that are not owned by root or that group or others can write: the
    daemon runs them as root.

    Raises:
        ConfigError: a missing, unreadable, oversized, binary, insecure or invalid file.
    """
    secure = os.geteuid() == 0 if require_secure is None else require_secure
    text = _read_text(path, secure)
    config = _parse(
        text,
        path,
        select,
        lambda ref: _read_text(
            ref, secure, "install the mig-parted config, or fix mig-parted.file"
        ),
    )
    if secure:
        _check_hook_executable(config)
    return config


# --------------------------------------------------------------------------- resolve


def _selector_matches(selector: Selector, gpu: GpuIdentity) -> bool:
    kind = selector.kind
    if kind == "all":
        return gpu.mig_capable
    if kind == "index":
        return any(v.strip().isdigit() and int(v) == gpu.index for v in selector.values)
    if kind == "uuid":
        return gpu.uuid.lower() in {v.lower() for v in selector.values}
    if kind == "pci-bus-id":
        observed = normalize_bus_id(gpu.pci_bus_id) or gpu.pci_bus_id.upper()
        return any((normalize_bus_id(v) or v.upper()) == observed for v in selector.values)
    if kind == "model":
        return any(fnmatch.fnmatchcase(gpu.name, v) for v in selector.values)
    if kind == "device-id":
        for value in selector.values:
            found = _DEVICE_ID.fullmatch(value.strip())
            if found is not None and int(found.group("hex"), 16) == gpu.pci_device_id:
                return True
        return False
    return False


def matches(rule: Rule, gpu: GpuIdentity) -> bool:
    """Whether ``gpu`` matches every selector of ``rule`` (a rule without selectors
    matches every GPU; ``all`` matches MIG-capable GPUs only)."""
    return all(_selector_matches(s, gpu) for s in rule.match)


def describe(gpu: GpuState) -> str:
    """How a GPU left untouched is reported: ``0 (GPU-...) NVIDIA H100 80GB HBM3``."""
    return f"{gpu.label()} {gpu.identity.name}"


def resolve(
    config: Config, observed: Sequence[GpuState]
) -> Tuple[Dict[str, GpuSpec], Tuple[str, ...]]:
    """The spec of the first rule matching each GPU, keyed by GPU uuid, and the labels of
    the GPUs no rule matches (they are left untouched)."""
    desired: Dict[str, GpuSpec] = {}
    untouched: List[str] = []
    for gpu in observed:
        for rule in config.rules:
            if matches(rule, gpu.identity):
                desired[gpu.uuid] = rule.spec
                break
        else:
            untouched.append(describe(gpu))
    return desired, tuple(untouched)


# --------------------------------------------------------------------------- export


def _plain(text: str) -> str:
    """``text`` as a YAML scalar: plain when YAML reads it back as the same string."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+/-]*", text):
        try:
            if yaml.safe_load(text) == text:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(text)


def _ci_layout(gi: GpuInstance) -> Tuple[str, ...]:
    names = tuple(ci.profile for ci in sorted(gi.cis, key=lambda c: c.placement.start))
    if len(names) == 1 and names[0] == gi.profile:
        return ()
    return names


def _geometry(gpu: GpuState) -> Tuple[bool, Tuple[Tuple[str, int, Tuple[str, ...], int], ...]]:
    instances = tuple(
        (gi.profile, gi.placement.start, _ci_layout(gi), len(gi.cis))
        for gi in sorted(gpu.instances, key=lambda g: g.placement.start)
    )
    return gpu.mig_current, instances


def export(observed: Sequence[GpuState]) -> str:
    """The observed geometry as a native config: one rule per distinct geometry, naming
    its GPUs by UUID, with explicit placements and CI layouts; MIG-off GPUs as
    ``mig: false``. GPUs that are not MIG-capable are left out (and listed in a comment).
    A GI without any CI is written like one with the default CI (the config cannot ask
    for an empty GI), with a comment saying so."""
    groups: Dict[object, List[GpuState]] = {}
    left_out: List[GpuState] = []
    for gpu in observed:
        if not gpu.identity.mig_capable:
            left_out.append(gpu)
            continue
        groups.setdefault(_geometry(gpu), []).append(gpu)
    out = [
        "# migrestore config written by 'migrestore export' from the GPUs as they are.",
        "# Rules name GPUs by UUID, so they stay right when indexes change.",
        "version: 1",
    ]
    if not groups:
        out.append("gpus: []")
    else:
        out.append("gpus:")
    for gpus in groups.values():
        first = gpus[0]
        for gpu in gpus:
            out.append(
                f"  # GPU {gpu.index}: {_one_line(gpu.identity.name)} ({gpu.identity.pci_bus_id})"
            )
            if gpu.mig_pending != gpu.mig_current:
                pending = "on" if gpu.mig_pending else "off"
                out.append(
                    f"  # GPU {gpu.index}: MIG mode change to {pending} is pending; exported as it is now"
                )
        uuids = [_plain(g.uuid) for g in gpus]
        match = uuids[0] if len(uuids) == 1 else "[" + ", ".join(uuids) + "]"
        out.append(f"  - match: {{uuid: {match}}}")
        out.append(f"    mig: {'true' if first.mig_current else 'false'}")
        if not first.mig_current:
            continue
        instances = sorted(first.instances, key=lambda g: g.placement.start)
        if not instances:
            out.append("    instances: []")
            continue
        out.append("    instances:")
        for gi in instances:
            if not gi.cis:
                out.append(
                    f"      # the GI at {gi.placement.start} has no compute instance; "
                    "this config gives it the default one"
                )
            fields = [f"profile: {_plain(gi.profile)}", f"placement: {gi.placement.start}"]
            layout = _ci_layout(gi)
            if layout:
                fields.append("compute: [" + ", ".join(_plain(n) for n in layout) + "]")
            out.append("      - {" + ", ".join(fields) + "}")
    for gpu in left_out:
        out.append(
            f"# GPU {gpu.index} ({gpu.uuid}) {_one_line(gpu.identity.name)}: not MIG-capable, left out"
        )
    return "\n".join(out) + "\n"
