"""The .rpm: metadata, dependencies, scriptlets, config flags, rpmlint, and an install into
an rpm root.

What these tests stand on: ``rpm -qp`` and ``rpmlint`` reading the built package, and
``rpm --root`` installing it (without scriptlets: they need a running systemd, and the
.deb's equivalents are exercised under one in tests/system).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from tests.packaging import pkgbuild

pytestmark = pytest.mark.packaging

STARTS = re.compile(
    r"\b(systemctl|service)\b[^;|&\n]*"
    r"(\b(start|restart|try-restart|reload-or-restart|condrestart)\b|\benable\b.*--now)"
)
PINS = pkgbuild.builder().read_pins(pkgbuild.REPO / "packaging" / "vendor.txt")
RPMLINT_CONFIG = pkgbuild.REPO / "packaging" / "rpm" / "rpmlint.toml"
RPMLINTRC = pkgbuild.REPO / "packaging" / "rpm" / "migrestore.rpmlintrc"


def query(rpm: Path, *args: str) -> str:
    out = subprocess.run(["rpm", "-qp", *args, str(rpm)], check=True, capture_output=True)
    return out.stdout.decode()


def scriptlets(rpm: Path) -> Dict[str, str]:
    """'postinstall' -> body, from ``rpm -qp --scripts``."""
    parts: Dict[str, str] = {}
    current = ""
    for line in query(rpm, "--scripts").splitlines():
        head = re.match(r"^(\w+) (?:scriptlet|program) \(using /bin/sh\):$", line)
        if head:
            current = head.group(1)
            parts[current] = ""
        elif current:
            parts[current] += line + "\n"
    return parts


def test_rpm_identity(rpm: Path, built: pkgbuild.Built) -> None:
    fmt = "%{NAME}|%{VERSION}|%{RELEASE}|%{ARCH}|%{LICENSE}"
    name, version, release, arch, license_tag = query(rpm, "--qf", fmt).split("|")
    assert (name, version, release, arch) == ("migrestore", built.version, "1", "noarch")
    assert license_tag.startswith("Apache-2.0 AND ")
    assert rpm.name == f"migrestore-{built.version}-1.noarch.rpm"


def test_rpm_requires_python39_and_pyyaml_and_provides_the_bundled_libraries(rpm: Path) -> None:
    requires = set(query(rpm, "--requires").splitlines())
    assert {"python3 >= 3.9", "python3-pyyaml", "systemd", "/usr/bin/kill"} <= requires
    provides = set(query(rpm, "--provides").splitlines())
    for pin in PINS:
        assert f"bundled(python3dist({pin.name})) = {pin.version}" in provides


def test_rpm_has_the_same_files_as_the_deb_where_the_distributions_agree(
    rpm: Path, deb: Path
) -> None:
    fmt = "[%{FILEMODES:perms} %{FILENAMES}\n]"
    rpm_files = {
        line.split(" ", 1)[1].lstrip("/")
        for line in query(rpm, "--qf", fmt).splitlines()
        if not line.startswith("d")
    }
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True)
    deb_files = {
        line.split(None, 5)[5][2:] for line in out.stdout.splitlines() if not line.startswith("d")
    }
    # Where they differ, and why: the unit's directory, the preset (rpm), lintian's
    # overrides (deb), the license directory (rpm), the changelog's compression.
    deb_only = {
        "lib/systemd/system/migrestore.service",
        "usr/share/lintian/overrides/migrestore",
        "usr/share/doc/migrestore/changelog.gz",
    }
    rpm_only = {
        "usr/lib/systemd/system/migrestore.service",
        "usr/lib/systemd/system-preset/50-migrestore.preset",
        "usr/share/licenses/migrestore/LICENSE",
        "usr/share/doc/migrestore/changelog",
    }
    assert deb_only <= deb_files
    assert rpm_only <= rpm_files
    assert deb_files - deb_only == rpm_files - rpm_only


def test_rpm_config_is_noreplace(rpm: Path) -> None:
    flags = dict(
        line.rsplit(" ", 1)
        for line in query(rpm, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines()
    )
    assert flags["/etc/migrestore.yaml"] == "cn"  # %config(noreplace)
    assert "l" in flags["/usr/share/licenses/migrestore/LICENSE"]  # %license
    assert "d" in flags["/usr/share/doc/migrestore/README.md"]  # %doc
    assert query(rpm, "--configfiles").split() == ["/etc/migrestore.yaml"]


def test_rpm_modes_and_owners(rpm: Path) -> None:
    fmt = "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]"
    for line in query(rpm, "--qf", fmt).splitlines():
        perms, owner, path = line.split(" ", 2)
        assert owner == "root:root", path
        assert perms[8] != "w", f"{path} is world-writable ({perms})"
        if path.startswith("/usr/bin/") or perms.startswith("d"):
            assert perms[1:] == "rwxr-xr-x", path
        else:
            assert perms == "-rw-r--r--", path


def test_rpm_scriptlets_enable_on_first_install_and_never_start_or_restart(rpm: Path) -> None:
    parts = scriptlets(rpm)
    assert set(parts) == {"postinstall", "preuninstall", "postuninstall", "posttrans"}
    post = parts["postinstall"]
    assert re.search(
        r'if \[ "\$1" -eq 1 \]; then\n(\s*#.*\n)*\s*systemctl --no-reload preset', post
    )
    preun = parts["preuninstall"]
    assert re.search(
        r'if \[ "\$1" -eq 0 \]; then\n(\s*#.*\n)*\s*systemctl --no-reload disable --now', preun
    )
    for name, body in parts.items():
        for line in body.splitlines():
            assert not STARTS.search(line.split("#", 1)[0]), f"{name}: {line.strip()}"
        check = subprocess.run(["sh", "-n"], input=body, text=True, capture_output=True)
        assert check.returncode == 0, f"{name}: {check.stderr}"


def test_rpm_changelog_matches_the_version(rpm: Path, built: pkgbuild.Built) -> None:
    top = query(rpm, "--changelog").splitlines()[0]
    assert top.startswith("* ") and top.endswith(f" - {built.version}-1")


def test_rpmlint_is_clean(rpm: Path) -> None:
    if shutil.which("rpmlint") is None:
        pkgbuild.skip_unless_ci("rpmlint is not installed (apt-get install rpmlint)")
    proc = subprocess.run(
        ["rpmlint", "-c", str(RPMLINT_CONFIG), "-r", str(RPMLINTRC), str(rpm)],
        capture_output=True,
        text=True,
    )
    findings: List[str] = [ln for ln in proc.stdout.splitlines() if re.search(r": [EW]: ", ln)]
    assert findings == [], "\n".join(findings)
    assert "0 errors, 0 warnings" in proc.stdout
    assert proc.returncode == 0


def test_rpm_installs_into_an_rpm_root(rpm: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pkgbuild.skip_unless_ci("installing into an rpm root sets file owners: needs root")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["rpm", "--root", str(root), "--initdb"], check=True)
    subprocess.run(
        ["rpm", "--root", str(root), "-i", "--nodeps", "--noscripts", str(rpm)],
        check=True,
        capture_output=True,
    )
    verify = subprocess.run(
        ["rpm", "--root", str(root), "-V", "--nodeps", "migrestore"], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    launcher = root / "usr/bin/migrestore"
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o755
    assert launcher.read_text().startswith("#!/usr/bin/python3 -IB\n")
    assert (root / "usr/lib/systemd/system/migrestore.service").is_file()
    preset = (root / "usr/lib/systemd/system-preset/50-migrestore.preset").read_text()
    assert "enable migrestore.service" in preset.splitlines()
    assert (root / "usr/share/migrestore/vendor/pynvml.py").is_file()
    for path in root.rglob("*"):
        if path.is_symlink() or "var/lib/rpm" in path.as_posix():
            continue
        assert not path.stat().st_mode & stat.S_IWOTH, f"{path} is world-writable"
