"""A Debian rootfs booted with a real systemd (systemd-nspawn), for the system tier.

Rules:

1. The rootfs is made once per suite (Debian 11 bullseye, 12 bookworm, 13 trixie) and
   package set by debootstrap and cached under /var/cache/migrestore-tests, keyed by
   everything that shapes it (suite, variant, packages, mirror); every test module works
   on its own copy (``cp -a --reflink=auto``), so each starts clean.
2. A booted container is always powered off and waited for, also when a test fails:
   ``Container`` is a context manager, and ``poweroff`` falls back to signals on the
   nspawn process this module started (never on anything else).
3. Commands run inside through ``nsenter`` into the container's PID 1, with a fixed,
   minimal environment; before boot, setup commands run in a non-booted nspawn (which
   gives them /proc, /dev and a boot id, as dpkg and migrestore-sim expect).
4. Waiting is bounded: every wait has a deadline and fails naming what it waited for.
5. A container shares this machine's network unless a test gives it a namespace, so no
   copy starts sshd at boot: a test that wants it enables it in its own namespace.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

SUITE = "bookworm"
# The releases the .deb must install and boot on: Debian 11 (Python 3.9, systemd 247),
# 12 (Python 3.11, systemd 252) and 13 (Python 3.13, systemd 257).
SUITES = ("bullseye", "bookworm", "trixie")
VARIANT = "minbase"
# What the system tests need (systemd as PID 1) plus the package's dependencies, so
# `dpkg -i` finds them installed; minbase has no procps (the unit's /bin/kill).
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "python3-yaml", "procps")
# Debian 12 also carries sshd (the fleet tests reach their nodes with Ansible) and rpm
# (the .rpm test installs with it): one rootfs serves every Debian 12 test, so a fresh
# machine debootstraps three trees, not four. sshd is disabled in every copy (rule 5).
EXTRA = {"bookworm": ("openssh-server", "rpm")}
CACHE_DIR = Path(os.environ.get("MIGRESTORE_TEST_CACHE", "/var/cache/migrestore-tests"))
MIRROR = os.environ.get("MIGRESTORE_TEST_MIRROR", "http://deb.debian.org/debian")
NSPAWN_RUNTIME = Path("/run/systemd/nspawn")
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

T = TypeVar("T")


class SystemTestError(Exception):
    """The harness could not do what a test asked; names the step and what was seen."""


def missing_prerequisite() -> Optional[str]:
    """Why the system tier cannot run here, or None."""
    if os.geteuid() != 0:
        return "the system tier boots containers with systemd-nspawn: run it as root"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nsenter", "util-linux"),
        ("dpkg-deb", "dpkg"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


def wait_for(what: str, probe: Callable[[], Optional[T]], timeout: float = 60.0) -> T:
    """Call ``probe`` until it returns something other than None (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise SystemTestError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- rootfs


def packages(suite: str) -> Tuple[str, ...]:
    return (*INCLUDE, *EXTRA.get(suite, ()))


def cache_key(suite: str = SUITE) -> str:
    text = "|".join((suite, VARIANT, ",".join(packages(suite)), MIRROR))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pristine_rootfs(suite: str = SUITE) -> Path:
    """The cached debootstrap tree of ``suite`` (made on first use, one to three minutes;
    then reused)."""
    if suite not in SUITES:
        raise SystemTestError(f"suite {suite!r}: the system tier knows {', '.join(SUITES)}")
    include = packages(suite)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / f"{suite}-{VARIANT}-{cache_key(suite)}"
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").is_file():
            return target / "root"
        partial = Path(f"{target}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.mkdir()
        log = partial / "debootstrap.log"
        with open(log, "w") as out:
            proc = subprocess.run(
                [
                    "debootstrap",
                    f"--variant={VARIANT}",
                    f"--include={','.join(include)}",
                    suite,
                    str(partial / "root"),
                    MIRROR,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**ENV, "DEBIAN_FRONTEND": "noninteractive"},
            )
        if proc.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
            raise SystemTestError(
                f"debootstrap {suite} from {MIRROR} failed ({proc.returncode}): {tail[0]} "
                f"(full log: {log}; set MIGRESTORE_TEST_MIRROR to use another mirror)"
            )
        (partial / ".complete").write_text(f"{suite} {VARIANT} {','.join(include)} {MIRROR}\n")
        partial.rename(target)
        return target / "root"


def copy_rootfs(dest: Path, suite: str = SUITE) -> Path:
    """A private, writable copy of the pristine rootfs of ``suite`` at ``dest``; sshd,
    if the suite has it, is disabled (rule 5)."""
    source = pristine_rootfs(suite)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(dest)], check=True)
    if (dest / "lib/systemd/system/ssh.service").exists():
        subprocess.run(
            ["systemctl", f"--root={dest}", "disable", "--quiet", "ssh.service"],
            check=True,
            env=ENV,
        )
    return dest


def ensure_nspawn_runtime() -> None:
    """nspawn keeps per-container state in /run/systemd/nspawn and refuses to delete it
    unless it is on a tmpfs ("Attempted to remove disk file system"); hosts that boot
    without systemd may have /run on disk, so give it a tmpfs of its own there."""
    NSPAWN_RUNTIME.mkdir(parents=True, exist_ok=True)
    fstype = subprocess.run(
        ["stat", "-f", "-c", "%T", str(NSPAWN_RUNTIME)], capture_output=True, text=True
    ).stdout.strip()
    if fstype not in ("tmpfs", "ramfs"):
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "mode=0755,size=16m", "tmpfs", str(NSPAWN_RUNTIME)],
            check=True,
        )


# --------------------------------------------------------------------------- container


class Container:
    """One rootfs, booted with ``boot()`` and always powered off on exit."""

    def __init__(self, root: Path, log_dir: Path, nspawn_args: Sequence[str] = ()) -> None:
        self.root = root
        self.log_dir = log_dir
        # Extra options of the booting nspawn (e.g. --network-namespace-path=).
        self.nspawn_args = tuple(nspawn_args)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.pid1 = 0
        self.poweroff_requested = False  # asked, not yet waited for (request_poweroff)
        self.boots = 0
        self.boot_seconds: List[float] = []

    # -- before boot

    def setup(
        self, argv: Sequence[str], timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the (not booted) rootfs; fails the step on a non-zero exit."""
        if self.proc is not None:
            raise SystemTestError("setup() runs only while the container is powered off")
        ensure_nspawn_runtime()
        proc = subprocess.run(
            [
                "systemd-nspawn",
                "-q",
                "-D",
                str(self.root),
                "--register=no",
                "--keep-unit",
                "--console=pipe",
                "--",
                *argv,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=ENV,
        )
        if proc.returncode != 0:
            raise SystemTestError(
                f"in {self.root}: {' '.join(argv)} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the rootfs (works booted or not: it is a directory)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.root / path.lstrip("/"))

    # -- boot and power

    def boot(self, timeout: float = 90.0) -> None:
        if self.proc is not None:
            raise SystemTestError("boot(): the container is already running")
        ensure_nspawn_runtime()
        self.boots += 1
        log = self.log_dir / f"boot-{self.boots}.log"
        started = time.monotonic()
        with open(log, "wb") as console:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "-q",
                    "-D",
                    str(self.root),
                    "-b",
                    "--register=no",
                    "--keep-unit",
                    "--console=pipe",
                    *self.nspawn_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=ENV,
            )
        nspawn = self.proc

        def pid1() -> Optional[int]:
            if nspawn.poll() is not None:
                raise SystemTestError(
                    f"systemd-nspawn exited {nspawn.returncode} during boot; see {log.name}"
                )
            children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children")
            try:
                pids = children.read_text().split()
            except OSError:
                return None
            # nspawn's first child is a helper that forks the container's init and
            # exits: only a child that runs systemd is PID 1 (a helper taken for it
            # made every later nsenter fail until the boot wait ran out, now and then)
            for pid in pids:
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                if comm == "systemd":
                    return int(pid)
            return None

        try:
            self.pid1 = wait_for("the container's PID 1", pid1, timeout)

            deadline = started + timeout

            def running() -> Optional[str]:
                if nspawn.poll() is not None:
                    raise SystemTestError(
                        f"systemd-nspawn exited {nspawn.returncode} during boot; see {log.name}"
                    )
                left = max(1.0, deadline - time.monotonic())
                try:
                    proc = self.run(
                        ["systemctl", "is-system-running", "--wait"], check=False, timeout=left
                    )
                except subprocess.TimeoutExpired:
                    jobs = self.run(["systemctl", "list-jobs", "--no-legend"], check=False)
                    raise SystemTestError(
                        f"the container did not finish booting in {timeout:.0f}s; "
                        f"jobs still queued: {jobs.stdout.strip() or 'none'}"
                    ) from None
                state = proc.stdout.strip()
                return state if state in ("running", "degraded") else None

            wait_for("the container to finish booting", running, timeout)
        except BaseException:
            self.poweroff()
            raise
        self.boot_seconds.append(time.monotonic() - started)

    def request_poweroff(self) -> None:
        """Ask the container to power off without waiting (``poweroff`` waits): a test
        with several containers asks all first, so they shut down side by side."""
        proc = self.proc
        if proc is not None and proc.poll() is None and not self.poweroff_requested:
            self.poweroff_requested = True
            self.run(["systemctl", "poweroff"], check=False, timeout=30)

    def poweroff(self, timeout: float = 60.0) -> None:
        """Power off and wait for nspawn; signals only the nspawn process started here."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self.request_poweroff()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.terminate()  # nspawn asks the container to power off
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=30)
        finally:
            self.proc = None
            self.pid1 = 0
            self.poweroff_requested = False

    def reboot(self, timeout: float = 90.0) -> None:
        """``systemctl reboot`` inside (nspawn exits 133), then boot again: a new boot id."""
        proc = self.proc
        if proc is None:
            raise SystemTestError("reboot(): the container is not running")
        self.run(["systemctl", "reboot"], check=False, timeout=30)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                self.poweroff()
            self.proc = None
            self.pid1 = 0
        if code != 133:
            raise SystemTestError(f"systemctl reboot: nspawn exited {code}, expected 133")
        self.boot(timeout)

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.poweroff()

    # -- inside the running container

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 120.0,
        env: Optional[Dict[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        if not self.pid1:
            raise SystemTestError(f"run({' '.join(argv)}): the container is not running")
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "--", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**ENV, **(env or {})},
        )
        if check and proc.returncode != 0:
            raise SystemTestError(
                f"in the container: {' '.join(argv)} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    def show(self, unit: str, *props: str) -> Dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        argv = ["systemctl", "show", unit]
        for prop in props:
            argv += ["-p", prop]
        out = self.run(argv).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, since_cursor: Optional[str] = None) -> str:
        argv = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
        if since_cursor:
            argv += ["--after-cursor", since_cursor]
        return self.run(argv).stdout

    def cursor(self) -> str:
        """The journal position now, to read only what comes after it."""
        out = self.run(["journalctl", "--no-pager", "-n", "0", "--show-cursor"]).stdout
        for line in out.splitlines():
            if line.startswith("-- cursor: "):
                return line[len("-- cursor: ") :]
        raise SystemTestError(f"journalctl --show-cursor printed no cursor: {out!r}")

    def boot_id(self) -> str:
        return self.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()

    def wait_unit(self, unit: str, states: Sequence[str], timeout: float = 60.0) -> Dict[str, str]:
        """Wait until the unit's ActiveState is one of ``states``; its properties then."""
        props = ("ActiveState", "SubState", "Result", "MainPID", "InvocationID", "NRestarts")

        def probe() -> Optional[Dict[str, str]]:
            info = self.show(unit, *props)
            return info if info.get("ActiveState") in states else None

        try:
            return wait_for(f"{unit} to be {'/'.join(states)}", probe, timeout)
        except SystemTestError as exc:
            now = self.show(unit, *props)
            raise SystemTestError(f"{exc}; it is {now}; journal:\n{self.journal(unit)}") from exc
