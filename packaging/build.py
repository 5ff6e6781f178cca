#!/usr/bin/env python3
"""Build the migrestore .deb and .rpm from this checkout (``make packages``).

    python3 packaging/build.py --out dist [--version 0.1.1] [--format deb|rpm|all]

Rules:

1. One staged tree serves both packages. They differ only where the distributions do:
   the unit is in /lib/systemd/system in the .deb and in %{_unitdir} in the .rpm; the
   .rpm also ships a preset (Debian enables units from the maintainer scripts, and its
   default preset policy is "enable" anyway); the lintian overrides go in the .deb only.
2. The code runs from a private directory, /usr/share/migrestore (arch-independent),
   with the pure-Python libraries the distributions lack bundled in ``vendor/`` at the
   versions and hashes pinned in packaging/vendor.txt, and started by launchers that run
   the distribution's /usr/bin/python3 isolated (-I) from user site dirs.
3. Inputs are this checkout and vendor.txt, nothing from the build host's site-packages.
   Only ``*.py`` and ``*.json`` files under migrestore/ are shipped.
4. Reproducible: times are clamped to SOURCE_DATE_EPOCH (default: the last commit's time),
   owners are root, gzip stores no name or time.
5. Modes are 0755 for directories and the launchers and 0644 for everything else:
   nothing is world-writable.
6. ``--version`` overrides the version everywhere (package, ``migrestore --version``,
   changelog): a changelog entry is added when the top one is for another version.
7. A failure is one line on stderr naming what failed and the fix, and exit status 1.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NAME = "migrestore"
MAINTAINER = "migrestore developers <dev@migrestore.invalid>"
PRIVATE_DIR = "usr/share/migrestore"
DEB_UNIT_DIR = "lib/systemd/system"
RPM_UNIT_DIR = "usr/lib/systemd/system"
RPM_PRESET = "usr/lib/systemd/system-preset/50-migrestore.preset"
CONFFILE = "etc/migrestore.yaml"
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*([~+][0-9A-Za-z.]+)?$")
INIT_VERSION_RE = re.compile(r'^__version__ = "([^"]+)"$', re.MULTILINE)
CHANGELOG_HEAD_RE = re.compile(r"^(\S+) \(([^)]+)\) (\S+); urgency=\S+$")
CHANGELOG_TRAILER_RE = re.compile(r"^ -- (.+?)  (.+)$")

# What the copyright file says about each bundled distribution, by its name in vendor.txt:
# (files, copyright holders, Debian license name(s), license files in its dist-info; an
# empty tuple means the text is the header of the module, as for nvidia-ml-py).
VENDOR_COPYRIGHT: Dict[str, Tuple[str, str, str, Tuple[str, ...]]] = {
    "nvidia-ml-py": ("pynvml.py", "2011-2025 NVIDIA Corporation", "BSD-3-clause", ()),
    "structlog": (
        "structlog/*",
        "2013 Hynek Schlawack and the structlog contributors",
        "Expat or Apache-2.0",
        ("LICENSE-MIT", "NOTICE"),
    ),
    "typing-extensions": (
        "typing_extensions.py",
        "2001-2023 Python Software Foundation",
        "PSF-2.0",
        ("LICENSE",),
    ),
    "sdnotify": ("sdnotify/*", "2016 Brett Bethke", "Expat", ("LICENSE.txt",)),
}


class BuildError(Exception):
    """A build step failed; the message names the step and the fix."""


@dataclass(frozen=True)
class Pin:
    """One line of vendor.txt: ``name==version`` with its hashes."""

    name: str
    version: str


@dataclass(frozen=True)
class ChangelogEntry:
    version: str
    distribution: str
    changes: Tuple[str, ...]  # the lines between the header and the trailer, as written
    author: str
    date: str  # RFC 2822, as in the Debian changelog


# --------------------------------------------------------------------------- inputs


def project_version(root: Path) -> str:
    """The ``__version__`` of migrestore/__init__.py."""
    text = (root / "migrestore" / "__init__.py").read_text(encoding="utf-8")
    match = INIT_VERSION_RE.search(text)
    if not match:
        raise BuildError(
            "migrestore/__init__.py: no line '__version__ = \"X.Y.Z\"' (restore it, or pass --version)"
        )
    return match.group(1)


def read_pins(path: Path) -> Tuple[Pin, ...]:
    """The ``name==version`` pins of a requirements file with ``--hash`` lines."""
    pins: List[Pin] = []
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)\s+(--hash=sha256:[0-9a-f]{64}\s*)+$", line)
        if not match:
            raise BuildError(
                f"{path}:{number}: expected 'name==version --hash=sha256:...', got {line!r}"
            )
        pins.append(Pin(match.group(1).lower(), match.group(2)))
    return tuple(pins)


def read_changelog(path: Path) -> Tuple[ChangelogEntry, ...]:
    """Parse a Debian-format changelog (the one source for both packages)."""
    entries: List[ChangelogEntry] = []
    head: Optional[Tuple[str, str]] = None
    changes: List[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if head is None:
            if not line.strip():
                continue
            match = CHANGELOG_HEAD_RE.match(line)
            if not match or match.group(1) != NAME:
                raise BuildError(
                    f"{path}:{number}: expected 'migrestore (VERSION) unstable; urgency=medium'"
                )
            head = (match.group(2), match.group(3))
            changes = []
            continue
        trailer = CHANGELOG_TRAILER_RE.match(line)
        if trailer:
            while changes and not changes[0].strip():
                changes.pop(0)
            while changes and not changes[-1].strip():
                changes.pop()
            entries.append(
                ChangelogEntry(head[0], head[1], tuple(changes), trailer.group(1), trailer.group(2))
            )
            head = None
        else:
            changes.append(line)
    if head is not None or not entries:
        raise BuildError(f"{path}: the last entry has no ' -- NAME <EMAIL>  DATE' line")
    return tuple(entries)


def source_date_epoch(root: Path) -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time, else now."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%ct"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if out:
            return int(out)
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    return int(os.path.getmtime(root / "migrestore" / "__init__.py"))


def with_version_entry(
    entries: Sequence[ChangelogEntry], version: str, epoch: int
) -> Tuple[ChangelogEntry, ...]:
    """The changelog, with an entry for ``version`` on top when it has none."""
    if entries and entries[0].version == version:
        return tuple(entries)
    entry = ChangelogEntry(
        version,
        "unstable",
        (f"  * Built as version {version} from the {entries[0].version} sources.",),
        MAINTAINER,
        email.utils.formatdate(epoch, usegmt=False),
    )
    return (entry, *entries)


def debian_changelog(entries: Sequence[ChangelogEntry]) -> str:
    parts = []
    for e in entries:
        body = "\n".join(e.changes)
        parts.append(
            f"{NAME} ({e.version}) {e.distribution}; urgency=medium\n\n{body}\n\n"
            f" -- {e.author}  {e.date}\n"
        )
    return "\n".join(parts)


def rpm_changelog(entries: Sequence[ChangelogEntry]) -> str:
    """The same entries as an rpm %changelog (newest first, ``* DAY MON DD YYYY``)."""
    parts = []
    for e in entries:
        when = email.utils.parsedate_to_datetime(e.date)
        items: List[str] = []
        for line in e.changes:
            text = line.strip()
            if text.startswith("* "):
                items.append("- " + text[2:])
            elif text and items:
                items[-1] += " " + text
        body = "\n".join(item.replace("%", "%%") for item in items)
        parts.append(f"* {when.strftime('%a %b %d %Y')} {e.author} - {e.version}-1\n{body}\n")
    return "\n".join(parts).rstrip("\n")


# --------------------------------------------------------------------------- staging


def run(argv: Sequence[str], what: str, fix: str) -> str:
    """Run a tool; a failure becomes one BuildError line with the tool's last line."""
    try:
        proc = subprocess.run(
            list(argv), check=False, capture_output=True, text=True, env=build_env()
        )
    except OSError as exc:
        raise BuildError(f"{what}: cannot run {argv[0]}: {exc.strerror} ({fix})") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise BuildError(f"{what}: {argv[0]} exited {proc.returncode}: {last} ({fix})")
    return proc.stdout


def build_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    env["TZ"] = "UTC"
    env.pop("PYTHONPATH", None)
    return env


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def copy(src: Path, dst: Path, mode: int = 0o644) -> None:
    if not src.is_file():
        raise BuildError(
            f"{src.relative_to(ROOT) if src.is_relative_to(ROOT) else src}: missing "
            "(it is part of the package; restore it from git)"
        )
    write(dst, src.read_bytes(), mode)


def gzip_bytes(data: bytes) -> bytes:
    """gzip -9n: no name, no time, so the output depends on the input only."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def vendor_install(pins_file: Path, target: Path) -> None:
    """pip-install the pinned, hash-checked bundled libraries into ``target``."""
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--no-deps",
            "--no-compile",
            "--require-hashes",
            "--target",
            str(target),
            "-r",
            str(pins_file),
        ],
        "bundling the libraries of packaging/vendor.txt",
        "PyPI must be reachable, and each pin's hash must match its file",
    )
    # pip's own bookkeeping and the example script of nvidia-ml-py are not part of the
    # libraries; the METADATA and license files stay.
    for junk in ("INSTALLER", "RECORD", "REQUESTED", "direct_url.json", "top_level.txt"):
        for path in target.glob(f"*.dist-info/{junk}"):
            path.unlink()
    for extra in ("example.py", "bin"):
        path = target / extra
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for cache in list(target.rglob("__pycache__")):
        shutil.rmtree(cache)


def nvml_license_text(pynvml: Path) -> str:
    """nvidia-ml-py ships its BSD license only as the header of pynvml.py."""
    lines = pynvml.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("#####"):
        raise BuildError(f"{pynvml}: no license header found (check the nvidia-ml-py pin)")
    body: List[str] = []
    for line in lines[1:]:
        if line.startswith("#####"):
            break
        body.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
    text = "\n".join(body).strip("\n")
    if "Redistribution and use" not in text:
        raise BuildError(f"{pynvml}: the header is not the BSD license (check the pin)")
    return text + "\n"


def dist_info(vendor: Path, pin: Pin) -> Path:
    stem = re.sub(r"[-.]+", "_", pin.name)
    for path in vendor.glob("*.dist-info"):
        name, _, version = path.name[: -len(".dist-info")].rpartition("-")
        if re.sub(r"[-.]+", "_", name).lower() == stem and version == pin.version:
            return path
    raise BuildError(f"{vendor}: no dist-info for {pin.name}=={pin.version} after pip install")


def copyright_text(vendor: Path, pins: Sequence[Pin]) -> str:
    """A machine-readable debian/copyright for migrestore and every bundled library."""
    out = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
        f"Upstream-Name: {NAME}",
        "Comment: migrestore bundles the pure-Python libraries listed below in",
        " /usr/share/migrestore/vendor, at the versions pinned in its packaging/vendor.txt;",
        " each keeps its license file in its *.dist-info directory there.",
        "",
        "Files: *",
        "Copyright: 2026 migrestore developers",
        "License: Apache-2.0",
        "",
    ]
    texts: Dict[str, str] = {}
    for pin in pins:
        if pin.name not in VENDOR_COPYRIGHT:
            raise BuildError(
                f"packaging/vendor.txt: {pin.name} is bundled but has no VENDOR_COPYRIGHT "
                "entry in packaging/build.py (add its files, holders and license)"
            )
        files, holders, license_name, license_files = VENDOR_COPYRIGHT[pin.name]
        info = dist_info(vendor, pin)
        out += [
            f"Files: usr/share/migrestore/vendor/{files}",
            f"Copyright: {holders}",
            f"License: {license_name}",
            f"Comment: {pin.name} {pin.version}, license in {info.name}/licenses/",
            "",
        ]
        if license_files:
            parts = []
            for name in license_files:
                path = info / "licenses" / name
                if not path.is_file():
                    raise BuildError(f"{path}: missing (check the {pin.name} pin)")
                parts.append(path.read_text(encoding="utf-8").strip("\n"))
            text = "\n\n".join(parts)
        else:
            text = (info / "licenses" / "LICENSE").read_text(encoding="utf-8").strip("\n")
        for name in license_name.split(" or "):
            if name == "Apache-2.0":
                continue
            texts.setdefault(name, text)
    out += [
        "License: Apache-2.0",
        " On Debian systems, the full text of the Apache License 2.0 is in",
        " /usr/share/common-licenses/Apache-2.0; it is also shipped as",
        " /usr/share/licenses/migrestore/LICENSE in the .rpm.",
    ]
    for name, text in texts.items():
        out += ["", f"License: {name}"]
        for line in text.splitlines():
            out.append(" " + line.rstrip() if line.strip() else " .")
    return "\n".join(out) + "\n"


def apache_license(root: Path) -> bytes:
    for path in (root / "LICENSE", Path("/usr/share/common-licenses/Apache-2.0")):
        if path.is_file():
            text = path.read_bytes()
            if b"Apache License" in text and b"Version 2.0" in text:
                return text
    raise BuildError(
        "LICENSE: no Apache-2.0 text in the checkout or /usr/share/common-licenses "
        "(add the Apache License 2.0 as LICENSE at the top of the repo)"
    )


def stage_common(
    root: Path,
    stage: Path,
    version: str,
    vendor_dir: Path,
    pins: Sequence[Pin],
    changelog: Sequence[ChangelogEntry],
) -> None:
    """The files both packages ship (not the unit: its directory differs)."""
    private = stage / PRIVATE_DIR
    for src in sorted((root / "migrestore").rglob("*")):
        if not src.is_file() or src.suffix not in (".py", ".json"):
            continue
        if "__pycache__" in src.parts:
            continue
        rel = src.relative_to(root)
        data = src.read_bytes()
        if rel == Path("migrestore/__init__.py"):
            text, count = INIT_VERSION_RE.subn(f'__version__ = "{version}"', data.decode())
            if count != 1:
                raise BuildError("migrestore/__init__.py: no single __version__ line to set")
            data = text.encode()
        write(private / rel, data)
    shutil.copytree(vendor_dir, private / "vendor")
    for name in ("migrestore", "migrestore-sim"):
        copy(HERE / "bin" / name, stage / "usr/bin" / name, 0o755)
    copy(root / "etc" / "migrestore.yaml", stage / CONFFILE)
    for page in ("migrestore.8", "migrestore-sim.8"):
        man = (HERE / page).read_bytes()
        write(stage / "usr/share/man/man8" / f"{page}.gz", gzip_bytes(man))
    doc = stage / "usr/share/doc" / NAME
    copy(root / "README.md", doc / "README.md")
    # INSTALL.md tells how to build and install the packages: not for an installed one.
    for md in sorted((root / "docs").glob("*.md")):
        if md.name != "INSTALL.md":
            copy(md, doc / md.name)
    examples = root / "etc" / "examples"
    if examples.is_dir():
        for example in sorted(examples.glob("*.yaml")):
            copy(example, doc / "examples" / example.name)
    write(doc / "copyright", copyright_text(private / "vendor", pins).encode())
    write(doc / "changelog.gz", gzip_bytes(debian_changelog(changelog).encode()))


def normalize(tree: Path, epoch: int) -> None:
    """Modes 0755/0644 (launchers and maintainer scripts keep 0755), times clamped."""
    for path in sorted(tree.rglob("*"), reverse=True):
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)
        if path.stat().st_mtime > epoch:
            os.utime(path, (epoch, epoch))
    tree.chmod(0o755)
    os.utime(tree, (epoch, epoch))


def tree_size_kib(tree: Path) -> int:
    total = 0
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += (path.stat().st_size + 1023) // 1024
        elif path.is_dir():
            total += 1
    return total


# --------------------------------------------------------------------------- packages


def build_deb(root: Path, common: Path, work: Path, out: Path, version: str, epoch: int) -> Path:
    tree = work / "deb"
    shutil.copytree(common, tree, symlinks=True)
    copy(root / "systemd" / "migrestore.service", tree / DEB_UNIT_DIR / "migrestore.service")
    copy(HERE / "debian" / "lintian-overrides", tree / "usr/share/lintian/overrides" / NAME)
    installed_kib = tree_size_kib(tree)
    control_dir = tree / "DEBIAN"
    control_dir.mkdir()
    for script in ("postinst", "prerm", "postrm"):
        copy(HERE / "debian" / script, control_dir / script, 0o755)
    write(control_dir / "conffiles", f"/{CONFFILE}\n".encode())
    sums = []
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and "DEBIAN" not in p.parts):
        digest = hashlib.md5(path.read_bytes()).hexdigest()  # dpkg's md5sums format
        sums.append(f"{digest}  {path.relative_to(tree).as_posix()}\n")
    write(control_dir / "md5sums", "".join(sums).encode())
    control = (HERE / "debian" / "control.in").read_text(encoding="utf-8")
    control = control.replace("@VERSION@", version)
    control = control.replace("@INSTALLED_SIZE@", str(installed_kib))
    write(control_dir / "control", control.encode())
    normalize(tree, epoch)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{NAME}_{version}_all.deb"
    run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(deb)],
        "building the .deb",
        "install dpkg-deb (apt-get install dpkg)",
    )
    return deb


def build_rpm(
    root: Path,
    common: Path,
    work: Path,
    out: Path,
    version: str,
    epoch: int,
    pins: Sequence[Pin],
    changelog: Sequence[ChangelogEntry],
) -> Path:
    tree = work / "rpm-stage"
    shutil.copytree(common, tree, symlinks=True)
    copy(root / "systemd" / "migrestore.service", tree / RPM_UNIT_DIR / "migrestore.service")
    copy(HERE / "migrestore.preset", tree / RPM_PRESET)
    write(tree / "usr/share/licenses" / NAME / "LICENSE", apache_license(root))
    # rpm ships the changelog as text and the man page is already compressed.
    doc = tree / "usr/share/doc" / NAME
    (doc / "changelog.gz").unlink()
    write(doc / "changelog", debian_changelog(changelog).encode())
    normalize(tree, epoch)
    provides = "\n".join(
        f"Provides:       bundled(python3dist({p.name})) = {p.version}" for p in pins
    )
    spec = (HERE / "rpm" / "migrestore.spec.in").read_text(encoding="utf-8")
    for key, value in (
        ("@VERSION@", version),
        ("@BUNDLED_PROVIDES@", provides),
        ("@STAGE@", str(tree)),
        ("@CHANGELOG@", rpm_changelog(changelog)),
    ):
        spec = spec.replace(key, value)
    leftover = re.search(r"@[A-Z_]+@", spec)
    if leftover:
        raise BuildError(f"packaging/rpm/migrestore.spec.in: {leftover.group(0)} is not filled")
    spec_path = work / "migrestore.spec"
    spec_path.write_text(spec, encoding="utf-8")
    topdir = work / "rpmbuild"
    out.mkdir(parents=True, exist_ok=True)
    run(
        [
            "rpmbuild",
            "-bb",
            "--quiet",
            "--define",
            f"_topdir {topdir}",
            "--define",
            f"_rpmdir {out}",
            "--define",
            "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
            "--define",
            "_buildhost reproducible",
            "--define",
            "use_source_date_epoch_as_buildtime 1",
            "--define",
            "clamp_mtime_to_source_date_epoch 1",
            "--define",
            "_build_id_links none",
            str(spec_path),
        ],
        "building the .rpm",
        "install rpmbuild (apt-get install rpm)",
    )
    rpm = out / f"{NAME}-{version}-1.noarch.rpm"
    if not rpm.is_file():
        raise BuildError(f"building the .rpm: rpmbuild did not write {rpm}")
    return rpm


def build(
    out: Path, version: Optional[str] = None, formats: Sequence[str] = ("deb", "rpm")
) -> List[Path]:
    """Build the packages into ``out``; return their paths (deb first)."""
    root = ROOT
    version = version or project_version(root)
    if not VERSION_RE.match(version):
        raise BuildError(
            f"--version {version!r}: not a version both dpkg and rpm accept (use digits and "
            "dots, e.g. 0.1.1, optionally ~rc1 or +local1)"
        )
    epoch = source_date_epoch(root)
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
    pins = read_pins(HERE / "vendor.txt")
    changelog = with_version_entry(read_changelog(HERE / "changelog"), version, epoch)
    built: List[Path] = []
    with tempfile.TemporaryDirectory(prefix="migrestore-build-") as tmp:
        work = Path(tmp)
        vendor_dir = work / "vendor"
        vendor_install(HERE / "vendor.txt", vendor_dir)
        pynvml = vendor_dir / "pynvml.py"
        nvml_pin = next((p for p in pins if p.name == "nvidia-ml-py"), None)
        if nvml_pin is not None:
            info = dist_info(vendor_dir, nvml_pin)
            write(info / "licenses" / "LICENSE", nvml_license_text(pynvml).encode())
        common = work / "common"
        stage_common(root, common, version, vendor_dir, pins, changelog)
        if "deb" in formats:
            built.append(build_deb(root, common, work, out, version, epoch))
        if "rpm" in formats:
            built.append(build_rpm(root, common, work, out, version, epoch, pins, changelog))
    return built


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build the migrestore .deb and .rpm.")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory")
    parser.add_argument("--version", help="package version (default: migrestore.__version__)")
    parser.add_argument(
        "--format", choices=("deb", "rpm", "all"), default="all", help="which packages"
    )
    args = parser.parse_args(argv)
    formats = ("deb", "rpm") if args.format == "all" else (args.format,)
    try:
        for path in build(args.out.resolve(), args.version, formats):
            print(path)
    except BuildError as exc:
        sys.stderr.write(f"packaging/build.py: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
