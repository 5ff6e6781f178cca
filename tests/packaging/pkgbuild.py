"""Build the packages once per test session, for tests/packaging and tests/system.

Rules:

1. The packages are built by running ``packaging/build.py``, the command ``make packages``
   runs, so the tests check the artifacts that ship.
2. One build per version per session: the output directory under pytest's session temp
   dir is the cache, so both test tiers share it.
3. A missing build tool is a skip with the apt package to install, except in CI (CI=true),
   where these tiers must run: there it is a failure. A failing build is a test failure
   with the builder's one-line error.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "packaging" / "build.py"
TOOLS = (("dpkg-deb", "dpkg"), ("rpmbuild", "rpm"))


@dataclass(frozen=True)
class Built:
    version: str
    deb: Path
    rpm: Optional[Path]


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip a test whose tool or privilege is missing; in CI, fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run this tier (install it in .ci/run)")
    pytest.skip(reason)


def missing_tools(tools: Tuple[Tuple[str, str], ...] = TOOLS) -> Optional[str]:
    """A skip reason naming the first missing tool and its apt package, or None."""
    for tool, package in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


def builder() -> ModuleType:
    """packaging/build.py as a module (it is a script, not part of a package)."""
    name = "migrestore_packaging_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BUILD_SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def project_version() -> str:
    return str(builder().project_version(REPO))


def build(session_tmp: Path, version: Optional[str] = None, rpm: bool = True) -> Built:
    """The packages for ``version`` (default: the project's), built once per session."""
    version = version or project_version()
    out = session_tmp / f"dist-{version}"
    deb_path = out / f"migrestore_{version}_all.deb"
    rpm_path = out / f"migrestore-{version}-1.noarch.rpm"
    if not deb_path.is_file() or (rpm and not rpm_path.is_file()):
        reason = missing_tools(TOOLS if rpm else TOOLS[:1])
        if reason:
            skip_unless_ci(reason)
        argv = [sys.executable, str(BUILD_SCRIPT), "--out", str(out), "--version", version]
        argv += ["--format", "all" if rpm else "deb"]
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            pytest.fail(f"packaging/build.py failed ({proc.returncode}): {proc.stderr.strip()}")
    return Built(version, deb_path, rpm_path if rpm_path.is_file() else None)
