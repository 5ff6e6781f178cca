"""packaging/build.py: reproducible output, the version override, its errors, Python 3.9,
and a man page that documents what the command line offers.

What these tests stand on: the builder run as ``make packages`` runs it, and the files it
produces, read with dpkg-deb and rpm.
"""

from __future__ import annotations

import argparse
import ast
import glob
import gzip
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Set

import pytest

from tests.packaging import pkgbuild

pytestmark = pytest.mark.packaging

MAN_PAGE = pkgbuild.REPO / "packaging" / "migrestore.8"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extract(deb: Path, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


def python39() -> Optional[str]:
    """A real Python 3.9 (pyenv's shims only redirect, so they are skipped)."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    matches = sorted(glob.glob(os.path.join(pyenv, "versions", "3.9*", "bin", "python3.9")))
    if matches:
        return matches[-1]
    found = shutil.which("python3.9")
    return found if found and "/shims/" not in found else None


def test_build_is_reproducible(tmp_path: Path) -> None:
    # Build twice from one snapshot of the inputs, so an edit to the working tree between
    # the two builds cannot make them differ.
    snapshot = tmp_path / "src"
    for name in ("packaging", "migrestore", "systemd", "etc", "docs"):
        shutil.copytree(
            pkgbuild.REPO / name, snapshot / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy2(pkgbuild.REPO / "README.md", snapshot / "README.md")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1790000000"}
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        subprocess.run(
            [sys.executable, str(snapshot / "packaging" / "build.py"), "--out", str(out)],
            check=True,
            capture_output=True,
            env=env,
        )
        digests.append(sorted((p.name, sha256(p)) for p in out.iterdir()))
    assert len(digests[0]) == 2
    assert digests[0] == digests[1]


def test_version_override_reaches_package_code_and_changelogs(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    other = pkgbuild.build(tmp_path_factory.getbasetemp(), "0.1.1")
    out = subprocess.run(
        ["dpkg-deb", "-f", str(other.deb), "Version"], check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "0.1.1"
    tree = extract(other.deb, tmp_path / "x")
    init = (tree / "usr/share/migrestore/migrestore/__init__.py").read_text()
    assert '__version__ = "0.1.1"' in init.splitlines()
    changelog = gzip.decompress((tree / "usr/share/doc/migrestore/changelog.gz").read_bytes())
    assert changelog.decode().startswith("migrestore (0.1.1) unstable; urgency=medium\n")
    assert other.rpm is not None
    rpm_version = subprocess.run(
        ["rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", str(other.rpm)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert rpm_version.stdout == "0.1.1-1"


@pytest.mark.parametrize("version", ["1.0-rc1", "v1.0", "1.0 beta", "1..0"])
def test_a_version_dpkg_or_rpm_would_reject_is_refused(version: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(pkgbuild.BUILD_SCRIPT), "--out", str(tmp_path), "--version", version],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"packaging/build.py: error: --version {version!r}: not a version both dpkg and rpm "
        "accept (use digits and dots, e.g. 0.1.1, optionally ~rc1 or +local1)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_every_shipped_python_file_parses_as_python39(deb: Path, tmp_path: Path) -> None:
    tree = extract(deb, tmp_path / "x")
    failures: List[str] = []
    files = [
        *sorted((tree / "usr/share/migrestore").rglob("*.py")),
        tree / "usr/bin/migrestore",
        tree / "usr/bin/migrestore-sim",
    ]
    for path in files:
        try:
            ast.parse(path.read_bytes(), str(path), feature_version=(3, 9))
        except SyntaxError as exc:
            failures.append(f"{path.relative_to(tree)}:{exc.lineno}: {exc.msg}")
    assert failures == []
    assert len(files) > 20


def test_the_bundled_libraries_and_the_cli_run_on_python39(deb: Path, tmp_path: Path) -> None:
    interpreter = python39()
    if interpreter is None:
        pytest.skip("no python3.9 interpreter (RHEL 9's version) on this machine")
    tree = extract(deb, tmp_path / "x")
    private = tree / "usr/share/migrestore"
    # -I -S: only the stdlib, the private dir and the vendor dir, as on a bare RHEL 9
    # (PyYAML comes from the distribution there, so modules that need it are not imported).
    code = (
        "import sys, pkgutil, importlib\n"
        f"sys.path[0:0] = [{str(private)!r}, {str(private / 'vendor')!r}]\n"
        "import structlog, pynvml, sdnotify, typing_extensions\n"
        "import migrestore\n"
        "failed = []\n"
        "for m in pkgutil.walk_packages(migrestore.__path__, 'migrestore.'):\n"
        "    if m.name.endswith('.__main__'):\n"
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name != 'yaml':\n"
        "            failed.append(f'{m.name}: {exc}')\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{m.name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "from migrestore.cli import main\n"
        "sys.exit(main(['--version']))\n"
    )
    proc = subprocess.run(
        [interpreter, "-I", "-S", "-B", "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == f"migrestore {pkgbuild.project_version()}"
    assert [ln for ln in lines[:-1] if ln.strip()] == []


def test_man_page_documents_every_command_and_exit_code() -> None:
    from migrestore import cli, errors

    page = MAN_PAGE.read_text()
    parser = cli.build_parser()
    sub_actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = sorted(sub_actions[0].choices)
    assert commands, "the CLI has no subcommands"
    for command in commands:
        assert re.search(rf"^\.TP\n\.B {re.escape(command)}$", page, re.MULTILINE), command
    codes = [v for k, v in vars(errors).items() if k.startswith("EXIT_")]
    for code in codes:
        assert re.search(rf"^\.TP\n\.B {code}$", page, re.MULTILINE), f"exit status {code}"


def long_options(parser: argparse.ArgumentParser) -> Set[str]:
    """Every ``--option`` of a parser and its subcommands, but --help."""
    found: Set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= long_options(sub)
        else:
            found |= {o for o in action.option_strings if o.startswith("--")}
    return found - {"--help"}


@pytest.mark.parametrize(
    "page, module",
    [("migrestore.8", "migrestore.cli"), ("migrestore-sim.8", "migrestore.simulator.cli")],
)
def test_man_pages_document_every_long_option(page: str, module: str) -> None:
    parser = importlib.import_module(module).build_parser()
    text = (pkgbuild.REPO / "packaging" / page).read_text()
    options = long_options(parser)
    assert "--json" in options or "--gpu" in options
    missing = sorted(o for o in options if o.replace("-", "\\-") not in text)
    assert missing == []


def test_simulator_man_page_documents_every_verb() -> None:
    from migrestore.simulator import cli

    page = (pkgbuild.REPO / "packaging" / "migrestore-sim.8").read_text()
    parser = cli.build_parser()
    sub_actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    verbs = sorted(sub_actions[0].choices)
    assert "hold" in verbs
    for verb in verbs:
        roff = verb.replace("-", "\\-")
        assert re.search(rf"^\.TP\n\.BI? {re.escape(roff)}\b", page, re.MULTILINE), verb


def test_man_pages_render_without_warnings(deb: Path, tmp_path: Path) -> None:
    if shutil.which("man") is None:
        pkgbuild.skip_unless_ci("man is not installed (apt-get install man-db)")
    tree = extract(deb, tmp_path / "x")
    for page in sorted((tree / "usr/share/man/man8").glob("*.8.gz")):
        proc = subprocess.run(
            ["man", "--warnings", "-l", str(page)],
            capture_output=True,
            text=True,
            env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"},
        )
        assert proc.returncode == 0, page.name
        assert proc.stderr == "", f"{page.name}: {proc.stderr}"
        assert "NAME" in proc.stdout and "SYNOPSIS" in proc.stdout
