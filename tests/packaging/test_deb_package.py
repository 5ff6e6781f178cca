"""The .deb: its files, modes, control fields, conffiles, scripts, and lintian.

What these tests stand on: ``dpkg-deb`` and ``lintian`` reading the built package.
What the maintainer scripts *do* under a running systemd is tested in tests/system.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.packaging import pkgbuild

pytestmark = pytest.mark.packaging

# A command that would start the service: systemctl/deb-systemd-invoke/invoke-rc.d with a
# start-like verb, or "enable --now".
STARTS = re.compile(
    r"\b(systemctl|deb-systemd-invoke|invoke-rc\.d|service)\b[^;|&\n]*"
    r"(\b(start|restart|try-restart|reload-or-restart|condrestart)\b|\benable\b.*--now)"
)
PINS = pkgbuild.builder().read_pins(pkgbuild.REPO / "packaging" / "vendor.txt")


def deb_entries(deb: Path) -> Dict[str, Tuple[str, str]]:
    """path (without the leading ./) -> (mode string, owner/group)."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True)
    entries: Dict[str, Tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        fields = line.split(None, 5)
        path = fields[5].split(" -> ")[0]
        entries[path[2:].rstrip("/")] = (fields[0], fields[1])
    entries.pop("", None)
    return entries


def field(deb: Path, name: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), name], check=True, capture_output=True)
    return out.stdout.decode().strip()


def control_member(deb: Path, member: str) -> str:
    out = subprocess.run(["dpkg-deb", "-I", str(deb), member], check=True, capture_output=True)
    return out.stdout.decode()


def test_deb_ships_the_program_the_unit_the_config_and_the_docs(deb: Path) -> None:
    entries = deb_entries(deb)
    expected = {
        "usr/bin/migrestore",
        "usr/bin/migrestore-sim",
        "lib/systemd/system/migrestore.service",
        "etc/migrestore.yaml",
        "usr/share/man/man8/migrestore.8.gz",
        "usr/share/man/man8/migrestore-sim.8.gz",
        "usr/share/doc/migrestore/README.md",
        "usr/share/doc/migrestore/copyright",
        "usr/share/doc/migrestore/changelog.gz",
        "usr/share/lintian/overrides/migrestore",
        "usr/share/migrestore/migrestore/__init__.py",
        "usr/share/migrestore/migrestore/cli.py",
        "usr/share/migrestore/migrestore/daemon.py",
        "usr/share/migrestore/migrestore/simulator/cli.py",
        "usr/share/migrestore/vendor/pynvml.py",
        "usr/share/migrestore/vendor/structlog/__init__.py",
        "usr/share/migrestore/vendor/sdnotify/__init__.py",
        "usr/share/migrestore/vendor/typing_extensions.py",
    }
    assert expected <= set(entries), sorted(expected - set(entries))
    # Every module of the source tree is shipped, and nothing else of it.
    source = {
        "usr/share/migrestore/" + p.relative_to(pkgbuild.REPO).as_posix()
        for p in (pkgbuild.REPO / "migrestore").rglob("*")
        if p.suffix in (".py", ".json") and "__pycache__" not in p.parts
    }
    shipped = {p for p in entries if p.startswith("usr/share/migrestore/migrestore/")}
    shipped_files = {p for p in shipped if not entries[p][0].startswith("d")}
    assert shipped_files == source


def test_deb_files_stay_in_their_places(deb: Path) -> None:
    allowed = (
        "etc",
        "etc/migrestore.yaml",
        "lib",
        "lib/systemd",
        "lib/systemd/system",
        "lib/systemd/system/migrestore.service",
        "usr",
        "usr/bin",
        "usr/bin/migrestore",
        "usr/bin/migrestore-sim",
        "usr/share",
        "usr/share/man",
        "usr/share/man/man8",
        "usr/share/lintian",
        "usr/share/lintian/overrides",
        "usr/share/lintian/overrides/migrestore",
        "usr/share/doc",
    )
    prefixes = (
        "usr/share/migrestore",
        "usr/share/doc/migrestore",
        "usr/share/man/man8/migrestore",
    )
    stray = [p for p in deb_entries(deb) if p not in allowed and not p.startswith(prefixes)]
    assert stray == []


def test_deb_modes_owners_and_no_compiled_files(deb: Path) -> None:
    entries = deb_entries(deb)
    for path, (mode, owner) in entries.items():
        assert owner == "root/root", path
        assert mode[8] != "w", f"{path} is world-writable ({mode})"
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
        if mode.startswith("d"):
            assert mode == "drwxr-xr-x", path
        elif path.startswith("usr/bin/"):
            assert mode == "-rwxr-xr-x", path
        else:
            assert mode == "-rw-r--r--", path


def test_deb_bundles_every_pinned_library_with_its_license(deb: Path) -> None:
    entries = deb_entries(deb)
    for pin in PINS:
        stem = re.sub(r"[-.]+", "_", pin.name)
        info = f"usr/share/migrestore/vendor/{stem}-{pin.version}.dist-info"
        assert f"{info}/METADATA" in entries, info
        licenses = [p for p in entries if p.startswith(f"{info}/licenses/")]
        assert licenses, f"{pin.name} {pin.version} ships no license file"


def test_deb_control_fields(deb: Path, built: pkgbuild.Built) -> None:
    assert field(deb, "Package") == "migrestore"
    assert field(deb, "Version") == built.version
    assert field(deb, "Architecture") == "all"
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    # procps: the unit's ExecReload= runs /bin/kill, which minimal systems may lack.
    assert depends == ["python3 (>= 3.9)", "python3-yaml", "procps"]
    assert field(deb, "Section") == "admin"
    assert int(field(deb, "Installed-Size")) > 0


def test_deb_conffile_is_the_config_only(deb: Path) -> None:
    assert control_member(deb, "conffiles").split() == ["/etc/migrestore.yaml"]


def test_deb_maintainer_scripts_parse_and_never_start_or_restart(deb: Path) -> None:
    for script in ("postinst", "prerm", "postrm"):
        text = control_member(deb, script)
        assert text.startswith("#!/bin/sh\n"), script
        check = subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True)
        assert check.returncode == 0, f"{script}: {check.stderr}"
        for line in text.splitlines():
            assert not STARTS.search(line.split("#", 1)[0]), f"{script}: {line.strip()}"


def test_deb_copyright_covers_every_bundled_library(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    text = (tmp_path / "usr/share/doc/migrestore/copyright").read_text()
    assert text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/")
    assert "Files: *\nCopyright: 2026 migrestore developers\nLicense: Apache-2.0\n" in text
    for pin in PINS:
        assert f"Comment: {pin.name} {pin.version}, license in" in text, pin.name
    for name in ("BSD-3-clause", "Expat", "PSF-2.0"):
        assert f"\nLicense: {name}\n " in text, f"no full text for {name}"


def test_lintian_is_clean(deb: Path) -> None:
    if shutil.which("lintian") is None:
        pkgbuild.skip_unless_ci("lintian is not installed (apt-get install lintian)")
    proc = subprocess.run(
        ["lintian", "--info", "--pedantic", str(deb)],
        capture_output=True,
        text=True,
    )
    tags: List[str] = [ln for ln in proc.stdout.splitlines() if re.match(r"^[EWIPX]: ", ln)]
    assert tags == [], "\n".join(tags)
    assert proc.returncode == 0, proc.stderr
