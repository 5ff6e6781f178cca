"""The strict YAML layer under both config formats: text -> nodes -> checked values.

Rules:

1. One problem, one ``ConfigError`` (exit 78) naming the file, the 1-based line (from the
   node marks), the key path (``gpus[0].instances[1].profile``) and the fix. No yaml
   exception leaves this module.
2. Strict: anchors, aliases, merge keys, explicit tags, tabs in indentation, duplicate
   keys, unknown keys, NUL bytes and nesting deeper than ``MAX_DEPTH`` are errors.
   Nothing is guessed and nothing is dropped silently. A character YAML reads as a line
   break but editors do not (U+0085, U+2028, U+2029, a carriage return without a
   newline) is refused anywhere in the file, with its line and column: text after it
   could hide a rule in what an editor shows as a comment.
3. Numbers are finite: NaN and infinities are refused, and a numeral longer than
   ``_MAX_NUMBER_CHARS`` is refused before Python converts it.
4. Pure: text and nodes in, values out; no I/O.
5. No text of a file appears in an error before the file has parsed as YAML and is
   known to be a config (``recognize``): PyYAML's messages lose their quoted parts,
   anchors and aliases are not named, a file whose top level has none of the keys of a
   config is refused without naming a key. ``-c /etc/shadow`` must not print a
   password hash into the terminal and the journal.
"""

from __future__ import annotations

import json
import math
import re
from typing import Callable, Dict, List, NoReturn, Optional, Sequence, Tuple, Union

import yaml

from migrestore.errors import ConfigError

# The schema nests 6 deep (top > gpus > rule > instances > entry > compute); far deeper
# is an attack or an accident.
MAX_DEPTH = 32
_MAX_NUMBER_CHARS = 32  # longer numerals are rejected before Python converts them

Scalar = Union[str, int, float, bool, None]
Reader = Callable[[str], str]  # path -> text, raising ConfigError (given by ``files.load``)

TAG = "tag:yaml.org,2002:"
STR = TAG + "str"
INT = TAG + "int"
FLOAT = TAG + "float"
BOOL = TAG + "bool"
NULL = TAG + "null"
MAP = TAG + "map"
SEQ = TAG + "seq"

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
                "a YAML alias (*name) is not allowed",
                "write the value out in full",
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Reject(
                line,
                "a YAML anchor (&name) is not allowed",
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


def close_matches(word: str, possibilities: Sequence[str], n: int, cutoff: float) -> List[str]:
    """Suggestions for an error message (difflib is imported only when one is made)."""
    import difflib

    return difflib.get_close_matches(word, possibilities, n=n, cutoff=cutoff)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def node_line(node: Optional[yaml.Node]) -> Optional[int]:
    if node is None or node.start_mark is None:
        return None
    return int(node.start_mark.line) + 1


def one_line(text: object) -> str:
    return " ".join(str(text).split())


class Doc:
    """One file being parsed: raises errors naming it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, node: Optional[yaml.Node], key: str, problem: str, fix: str = "") -> NoReturn:
        raise ConfigError(self.path, node_line(node), key, problem, fix)

    def fail_line(
        self,
        line: Optional[int],
        key: str,
        problem: str,
        fix: str = "",
        column: Optional[int] = None,
    ) -> NoReturn:
        raise ConfigError(self.path, line, key, problem, fix, column)


def _untab_flow(doc: Doc, text: str) -> str:
    """``text`` with the tabs YAML's flow style (and so JSON) allows as whitespace turned
    into spaces, which PyYAML's scanner cannot read; a tab in block indentation is an
    error (its width is up to the editor). Quoted scalars and comments are left as they
    are, and a tab between two characters of a plain scalar is left for the YAML reader
    to refuse. One character for one character: lines and columns do not move."""
    if "\t" not in text:
        return text
    out = list(text)
    depth = 0  # open flow collections
    quote = ""
    prev = "\n"  # the last character that is not blank on this line; newline at a start
    number = 1
    i, size = 0, len(text)
    while i < size:
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == "\n":
                number += 1
            elif c == quote:
                if quote == "'" and text[i + 1 : i + 2] == "'":
                    i += 2
                    continue
                quote, prev = "", c
            i += 1
            continue
        if c == "\n":
            number, prev = number + 1, "\n"
            i += 1
            continue
        if c in " \t":
            end = i
            while end < size and text[end] in " \t":
                end += 1
            if "\t" in text[i:end]:
                after = text[end] if end < size else "\n"
                if depth == 0 and prev == "\n":
                    doc.fail_line(number, "", "a tab in the indentation", "indent with spaces only")
                separates = prev in "\n[]{},:\"'" or after in "\n]},:#[{\"'"
                if depth > 0 and separates:
                    for k in range(i, end):
                        out[k] = " "
            i = end
            continue
        blank_before = i == 0 or text[i - 1] in " \t\n"
        if c == "#" and blank_before:
            while i < size and text[i] != "\n":
                i += 1
            continue
        opens = blank_before or prev in "[{," or (depth > 0 and prev == ":")
        if c in "\"'" and opens:
            quote = c
        elif c in "[{" and opens:
            depth += 1
        elif c in "]}" and depth > 0:
            depth -= 1
        prev = c
        i += 1
    return "".join(out)


# What YAML (1.1, PyYAML) reads as a line break but editors, pagers and terminals show
# inside a line: NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR, and a carriage return not
# followed by a newline (``cat`` and terminals return to the line's start and overwrite
# it; vim shows ^M). Text after one could hide a rule in what reads as a comment.
_HIDDEN_BREAK = re.compile("[\u0085\u2028\u2029]|\r(?!\n)")
_BREAK_NAMES = {
    "\u0085": "U+0085 (NEXT LINE)",
    "\u2028": "U+2028 (LINE SEPARATOR)",
    "\u2029": "U+2029 (PARAGRAPH SEPARATOR)",
    "\r": "a carriage return (U+000D) not followed by a newline",
}


def _refuse_hidden_breaks(doc: Doc, text: str) -> None:
    """Rule 2: a character YAML reads as a line break and editors do not is refused
    anywhere in the file, quoted strings included (an escape such as ``\\u2028`` puts
    one in a string safely), with the line and column an editor shows."""
    found = _HIDDEN_BREAK.search(text)
    if found is None:
        return
    at = found.start()
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    doc.fail_line(
        _line_of(text, at),
        "",
        f"{_BREAK_NAMES[found.group()]} is a line break to YAML but not to editors, so "
        "what follows it could be a hidden rule: refusing the file",
        "remove it; in a double-quoted string, write an escape such as \\u2028 instead",
        column,
    )


# A quoted part of a PyYAML message (a Python repr): the file's text (a tag handle, an
# escape...). One character and PyYAML's token names ('<block end>') are kept.
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
_KEPT = re.compile(r".|\\(?:[a-z0-9'\"\\]|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})|<[a-z ]+>")


def _quoted(found: re.Match[str]) -> str:
    inner = found.group(1) if found.group(1) is not None else found.group(2)
    return found.group(0) if _KEPT.fullmatch(inner) else "(text not shown)"


def _no_text(message: object) -> str:
    """A PyYAML message without the file's text in it (rule 5): the file has not parsed,
    so nothing says it is a config and not, say, a copy of /etc/shadow."""
    return _QUOTED.sub(_quoted, one_line(message))


def recognize(doc: Doc, root: yaml.Node, marks: Sequence[str], fix: str) -> None:
    """Rule 5: the file's text may appear in errors only once it is known to be a config:
    its top level is a mapping with at least one of the keys ``marks`` (the keys a config
    has at its top level). Before that, errors name the file and the line, nothing it
    holds."""
    if not isinstance(root, yaml.MappingNode):
        shape = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        doc.fail(root, "", f"expected a mapping of keys (the file's top level), got {shape}", fix)
    for knode, _value in root.value:
        if isinstance(knode, yaml.ScalarNode) and knode.tag == STR and knode.value in marks:
            return
    doc.fail_line(
        None,
        "",
        "not a migrestore config: no key of its top level is one a config has "
        f"({', '.join(marks[:2])}, ...); its content is not shown",
        fix,
    )


def compose(doc: Doc, text: str) -> yaml.Node:
    """The node tree of ``text``, or a ConfigError; never a library exception."""
    nul = text.find("\x00")
    if nul >= 0:
        doc.fail_line(
            _line_of(text, nul),
            "",
            "contains a NUL byte: this is not a text file",
            "write the config as UTF-8 text",
        )
    _refuse_hidden_breaks(doc, text)
    text = _untab_flow(doc, text)
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
        problem = _no_text(exc.problem or exc.context or "invalid YAML")
        if exc.context and exc.problem:
            problem = f"{_no_text(exc.context)}, {problem}"
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
    except yaml.YAMLError:
        doc.fail_line(None, "", "not valid YAML", "check the file's syntax")
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


def sub_key(key: str, name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return f"{key}.{name}" if key else name
    quoted = json.dumps(name)
    return f"{key}.{quoted}" if key else quoted


def at_index(key: str, index: int) -> str:
    return f"{key}[{index}]"


def kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    names = {
        STR: "a string",
        INT: "an integer",
        FLOAT: "a number",
        BOOL: "a boolean",
        NULL: "nothing (null)",
        TAG + "timestamp": "a date",
    }
    if node.tag in names:
        return names[node.tag]
    return f"a value tagged {node.tag}"


def _check_tag(doc: Doc, node: yaml.Node, key: str) -> None:
    expected = MAP if isinstance(node, yaml.MappingNode) else SEQ
    if not isinstance(node, yaml.ScalarNode) and node.tag != expected:
        doc.fail(node, key, f"YAML tag {node.tag} is not allowed", "remove the tag")


Entries = Dict[str, Tuple[yaml.Node, yaml.Node]]


def read_mapping(doc: Doc, node: yaml.Node, key: str, what: str = "a mapping") -> Entries:
    """The entries of a mapping node by key, checking key types and duplicates."""
    if not isinstance(node, yaml.MappingNode):
        doc.fail(node, key, f"expected {what}, got {kind_of(node)}")
    _check_tag(doc, node, key)
    out: Entries = {}
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode) or knode.tag != STR:
            if isinstance(knode, yaml.ScalarNode) and knode.tag == TAG + "merge":
                doc.fail(knode, key, "YAML merge keys (<<) are not allowed", "write keys out")
            shown = f" {knode.value!r}" if isinstance(knode, yaml.ScalarNode) else ""
            doc.fail(
                knode,
                key,
                f"key{shown} is {kind_of(knode)}, not a string",
                "quote the key",
            )
        name = str(knode.value)
        if name in out:
            first = node_line(out[name][0])
            doc.fail(
                knode,
                sub_key(key, name),
                f"duplicate key (first at line {first}); YAML would silently keep only the last",
                "remove one of them",
            )
        out[name] = (knode, vnode)
    return out


def check_keys(
    doc: Doc,
    node: yaml.Node,
    entries: Entries,
    key: str,
    allowed: Sequence[str],
    required: Sequence[str] = (),
    hints: Optional[Dict[str, str]] = None,
) -> None:
    for name, (knode, _value) in entries.items():
        if name not in allowed:
            close = close_matches(name, allowed, n=1, cutoff=0.5)
            fix = f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(allowed)
            doc.fail(knode, sub_key(key, name), "unknown key", fix)
    for name in required:
        if name not in entries:
            hint = (hints or {}).get(name, f"add '{name}:'")
            doc.fail(node, sub_key(key, name), "missing required key", hint)


def read_scalar(doc: Doc, node: yaml.Node, key: str) -> Scalar:
    if not isinstance(node, yaml.ScalarNode):
        doc.fail(node, key, f"expected a single value, got {kind_of(node)}")
    tag = node.tag
    if tag == STR:
        return str(node.value)
    if tag == NULL:
        return None
    try:
        if tag == BOOL:
            return bool(_CONSTRUCTOR.construct_yaml_bool(node))
        if tag in (INT, FLOAT):
            if len(node.value) > _MAX_NUMBER_CHARS:
                doc.fail(node, key, f"number {node.value[:20]}... is far too large")
            if tag == INT:
                return int(_CONSTRUCTOR.construct_yaml_int(node))
            value = float(_CONSTRUCTOR.construct_yaml_float(node))
            if not math.isfinite(value):
                doc.fail(node, key, f"{node.value} is not a finite number")
            return value
    except (ValueError, KeyError, IndexError, TypeError, OverflowError):
        noun = kind_of(node).split(" ", 1)[1]
        doc.fail(node, key, f"{node.value!r} is not a valid {noun}")
    doc.fail(node, key, f"{kind_of(node)} is not allowed here", "quote the value")


def read_str(doc: Doc, node: yaml.Node, key: str, what: str = "a string") -> str:
    value = read_scalar(doc, node, key)
    if not isinstance(value, str):
        doc.fail(node, key, f"expected {what}, got {kind_of(node)}", "quote it")
    if not value:
        doc.fail(node, key, f"expected {what}, got an empty string")
    return value


def read_int(
    doc: Doc, node: yaml.Node, key: str, lo: int, hi: int, fix: str = "", low_fix: str = ""
) -> int:
    value = read_scalar(doc, node, key)
    if isinstance(value, bool) or not isinstance(value, int):
        doc.fail(node, key, f"expected a whole number, got {kind_of(node)}", fix)
    if value < lo:
        doc.fail(node, key, f"{value} is below the minimum {lo}", low_fix or fix)
    if value > hi:
        doc.fail(node, key, f"{value} is above the maximum {hi}", fix)
    return value


def read_bool(doc: Doc, node: yaml.Node, key: str) -> bool:
    value = read_scalar(doc, node, key)
    if not isinstance(value, bool):
        doc.fail(node, key, f"expected true or false, got {kind_of(node)}")
    return value


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?) *(ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def read_seconds(doc: Doc, node: yaml.Node, key: str, lo: float, hi: float) -> float:
    """A duration: a number of seconds, or a string such as ``30s``, ``5m``, ``1h``."""
    value = read_scalar(doc, node, key)
    fix = "write a number of seconds, or a duration such as 30s, 5m or 1h"
    if isinstance(value, bool) or value is None:
        doc.fail(node, key, f"expected a duration, got {kind_of(node)}", fix)
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


def read_choice(doc: Doc, node: yaml.Node, key: str, choices: Sequence[str]) -> str:
    value = read_scalar(doc, node, key)
    if not isinstance(value, str) or value not in choices:
        shown = repr(value) if isinstance(value, str) else kind_of(node)
        doc.fail(node, key, f"{shown} is not one of: {', '.join(choices)}")
    return value


def read_seq(doc: Doc, node: yaml.Node, key: str, what: str = "a list") -> List[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        doc.fail(node, key, f"expected {what}, got {kind_of(node)}")
    _check_tag(doc, node, key)
    return list(node.value)


def read_one_or_list(doc: Doc, node: yaml.Node, key: str) -> List[Tuple[yaml.Node, str]]:
    """A single value or a non-empty list of values, with the key of each."""
    if isinstance(node, yaml.SequenceNode):
        items = read_seq(doc, node, key)
        if not items:
            doc.fail(node, key, "an empty list matches nothing", "give at least one value")
        return [(item, at_index(key, i)) for i, item in enumerate(items)]
    if isinstance(node, yaml.MappingNode):
        doc.fail(node, key, "expected a value or a list of values, got a mapping")
    return [(node, key)]
