"""Config text -> ``Config``: which format a file is in, and the pure entry point.

Rules:

1. A file with ``mig-configs`` at its top level is a mig-parted file; anything else is
   read as a native file.
2. Pure: text in, ``Config`` out. A reader is passed in only by ``files.load``, for the
   mig-parted file a native config references.
3. ``Config.sha256`` comes from CPython's own SHA-256 module when there is one (``_sha256``,
   ``_sha2`` from 3.12), else from ``hashlib``: the digest is the same, and importing
   ``hashlib`` sets up OpenSSL's digests, 2 ms of every start (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, List, Optional

from migrestore.config.migparted import mig_parted_rules
from migrestore.config.native import TOP_KEYS, native_config
from migrestore.config.yaml_strict import Doc, Reader, compose, read_mapping, recognize
from migrestore.model import Config


def _sha256_constructor() -> Callable[[bytes], Any]:
    """Rule 3."""
    for name in ("_sha256", "_sha2"):
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    import hashlib

    return hashlib.sha256


_sha256 = _sha256_constructor()


def parse_text(text: str, path: str, select: Optional[str], reader: Optional[Reader]) -> Config:
    """``Config.sha256`` is of ``text`` as UTF-8, followed by a referenced mig-parted
    file's text when there is one."""
    doc = Doc(path)
    root = compose(doc, text)
    recognize(doc, root, (*TOP_KEYS, "mig-configs"), "start the file with 'version: 1'")
    entries = read_mapping(doc, root, "", "a mapping of keys (the file's top level)")
    digest = _sha256(text.encode("utf-8", "surrogatepass"))
    if "mig-configs" in entries:
        rules, selected = mig_parted_rules(doc, root, entries, select)
        return Config(path=path, rules=rules, selected=selected, sha256=digest.hexdigest())
    read: List[str] = []

    def reading(ref: str) -> str:
        assert reader is not None
        read.append(reader(ref))
        return read[-1]

    config = native_config(doc, root, entries, select, reading if reader is not None else None)
    for other in read:
        digest.update(other.encode("utf-8", "surrogatepass"))
    return dataclasses.replace(config, sha256=digest.hexdigest())


def parse(text: str, path: str = "<config>", select: Optional[str] = None) -> Config:
    """Parse config text (native, or a mig-parted file) into a ``Config``. Pure.

    ``select`` names the config of a mig-parted file (``--select``); a file with a single
    config selects it. ``path`` only names the text in errors.

    Raises:
        ConfigError: anything wrong with the text, naming line, key and fix. A native
            config that references a mig-parted file (``mig-parted.file``) needs ``load``.
    """
    return parse_text(text, path, select, None)
