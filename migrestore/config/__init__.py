"""Config files: YAML text -> a validated ``Config``; GPUs -> rules; geometry -> YAML.

The package's rooms, each opening with its own rules:

- ``yaml_strict``: the strict YAML layer and typed node readers both formats use;
- ``fields``: profile names, PCI ids, bounds and layout checks both formats share;
- ``native``: migrestore's ``version: 1`` format;
- ``migparted``: mig-parted files, with mig-parted's meaning;
- ``parsing``: which format a text is in (``parse``);
- ``files``: reading config files (``load``), the only module here that does I/O;
- ``matching``: which rule each observed GPU gets (``resolve``, ``matches``);
- ``exporter``: observed geometry -> a native config (``export``).

Rules:

1. One bad file, one ``ConfigError`` (exit 78) naming the file, the line, the key path
   and the fix. No library exception (yaml, OSError, UnicodeError) leaves the package.
2. ``parse``, ``resolve`` and ``export`` are pure; only ``load`` touches the file system.
3. Callers use the names below (``from migrestore import config``); the modules behind
   them are the package's own business.
"""

from __future__ import annotations

from migrestore.config.exporter import export
from migrestore.config.fields import known_profile_names, normalize_bus_id, parse_device_filter
from migrestore.config.files import MAX_BYTES, load
from migrestore.config.matching import check_rule, matches, resolve, unknown_profile_names
from migrestore.config.migparted import MIG_PARTED_VERSION
from migrestore.config.native import NATIVE_VERSION, SELECTOR_KINDS
from migrestore.config.parsing import parse
from migrestore.config.yaml_strict import MAX_DEPTH

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MIG_PARTED_VERSION",
    "NATIVE_VERSION",
    "SELECTOR_KINDS",
    "check_rule",
    "export",
    "known_profile_names",
    "load",
    "matches",
    "normalize_bus_id",
    "parse",
    "parse_device_filter",
    "resolve",
    "unknown_profile_names",
]
