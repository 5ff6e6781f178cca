"""The layers of docs/ARCHITECTURE.md, enforced: every import of the package (lazy ones
inside functions included) is read from the source with ``ast`` and checked against the
rules below; a test adds a forbidden import to a copy of the tree and sees the check fail.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "migrestore"

# Modules that decide (pure): no I/O, no driver, no parser of files.
PURE = ("model", "errors", "placement", "planner", "render", "validate")
IO_MODULES = {
    "os",
    "io",
    "subprocess",
    "socket",
    "fcntl",
    "shutil",
    "tempfile",
    "pathlib",
    "select",
    "selectors",
    "signal",
    "ctypes",
    "pynvml",
    "yaml",
    "sdnotify",
    "structlog",
}
# The edge helpers both migrestore and the simulator import: stdlib only.
STDLIB_ONLY = {"atomic": {"migrestore.errors"}, "proc": set()}
# What the simulator may use of migrestore (besides itself).
SIMULATOR_MAY_USE = {
    "migrestore.errors",
    "migrestore.model",
    "migrestore.tables",
    "migrestore.atomic",
    "migrestore.proc",
}
# The composition roots: only they (and the simulator's own files) choose the backend.
ROOTS = {"migrestore.cli", "migrestore.daemon", "migrestore.__main__"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> Iterator[Tuple[str, int]]:
    """Every module ``path`` imports (``from a import b`` yields ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def _is(name: str, target: str) -> bool:
    return name == target or name.startswith(target + ".")


def _stdlib(name: str) -> bool:
    top = name.split(".")[0]
    if top == "migrestore":
        return False
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if names is not None:
        return top in names
    spec = importlib.util.find_spec(top)
    origin = (spec.origin or "") if spec is not None else "site-packages"
    return "site-packages" not in origin and "dist-packages" not in origin


def violations(root: Path) -> List[str]:
    """One line per import across a forbidden boundary, ``file:line: rule``."""
    found: List[str] = []
    modules: Dict[str, Path] = {
        _module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts
    }
    known: Set[str] = set(modules)
    for module, path in modules.items():
        short = module.rpartition(".")[2]
        in_simulator = _is(module, "migrestore.simulator")
        where = path.relative_to(root.parent)
        for name, line in _imports(path, module):
            at = f"{where}:{line}: imports {name}"
            if _is(name, "pynvml") and module != "migrestore.nvml":
                found.append(f"{at}: only migrestore/nvml.py imports pynvml")
            if module == "migrestore.nvml" and any(
                _is(name, m)
                for m in ("migrestore.simulator", "migrestore.tables", "migrestore.backend")
            ):
                found.append(f"{at}: the NVML adapter knows neither its fake nor the tables")
            if (
                _is(name, "migrestore.simulator")
                and not in_simulator
                and module != "migrestore.backend"
            ):
                found.append(f"{at}: only migrestore/backend.py attaches the simulator")
            if _is(name, "migrestore.backend") and module not in ROOTS:
                found.append(f"{at}: only the roots (cli, daemon) choose the backend")
            if (
                any(_is(name, r) for r in ("migrestore.cli", "migrestore.daemon"))
                and module not in ROOTS
                and not in_simulator
            ):
                found.append(f"{at}: nothing imports the roots")
            if module.count(".") == 1 and short in PURE and name.split(".")[0] in IO_MODULES:
                found.append(f"{at}: {short} is pure and does no I/O")
            if module.count(".") == 1 and short in STDLIB_ONLY:
                allowed = STDLIB_ONLY[short]
                ok = name == "migrestore" or any(_is(name, a) for a in allowed)
                if not ok and not _stdlib(name):
                    found.append(f"{at}: {short} is stdlib-only (the simulator imports it)")
            if (
                in_simulator
                and name in known
                and not _is(name, "migrestore.simulator")
                and name not in SIMULATOR_MAY_USE | {"migrestore"}
            ):
                found.append(f"{at}: the simulator uses only {sorted(SIMULATOR_MAY_USE)}")
    return found


def test_the_package_respects_its_layers() -> None:
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(
    ("module", "line", "rule"),
    [
        ("nvml.py", "from migrestore import simulator", "knows neither its fake"),
        ("nvml.py", "from migrestore.tables import load_models", "knows neither its fake"),
        ("planner.py", "import pynvml", "only migrestore/nvml.py imports pynvml"),
        ("engine.py", "from migrestore.simulator import core", "only migrestore/backend.py"),
        ("executor.py", "from migrestore import backend", "only the roots"),
        ("model.py", "import subprocess", "model is pure"),
        ("render.py", "import os.path", "render is pure"),
        ("atomic.py", "import yaml", "stdlib-only"),
        ("simulator/fakelib.py", "from migrestore import nvml", "the simulator uses only"),
        ("services.py", "from migrestore.daemon import Daemon", "nothing imports the roots"),
    ],
)
def test_a_forbidden_import_fails_the_check(
    tmp_path: Path, module: str, line: str, rule: str
) -> None:
    copy = tmp_path / "migrestore"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    target = copy / module
    # lazily, inside a function, where a reader of the file's top would not see it
    target.write_text(
        target.read_text(encoding="utf-8") + f"\n\ndef _sneaky() -> None:\n    {line}\n",
        encoding="utf-8",
    )
    found = violations(copy)
    assert len(found) >= 1, found
    assert all(f"migrestore/{module}:" in f for f in found), found
    assert any(rule in f for f in found), found
