"""systemd/migrestore.service: systemd-analyze verify and security, and the unit's
promises checked against the code (paths it must leave writable, exit codes, clients)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from migrestore import backend, cdi, daemon, errors, lock, model, services, statefile
from migrestore.metrics import DEFAULT_TEXTFILE

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "migrestore.service"
DOC = ROOT / "docs" / "SYSTEMD.md"
MAN_PAGE = ROOT / "packaging" / "migrestore.8"
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives() -> Dict[str, List[Tuple[str, str]]]:
    """section -> [(key, value)] in file order; comments and blank lines dropped."""
    out: Dict[str, List[Tuple[str, str]]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        out[section].append((key, value))
    return out


def values(section: str, key: str) -> List[str]:
    """Every value of ``key``, space-separated lists split, across repeated lines."""
    found: List[str] = []
    for k, v in directives()[section]:
        if k == key:
            found += v.split()
    return found


def one(section: str, key: str) -> str:
    matches = [v for k, v in directives()[section] if k == key]
    assert len(matches) == 1, f"{key}= appears {len(matches)} times in [{section}]"
    return matches[0]


def comments() -> str:
    return "\n".join(
        line for line in UNIT.read_text().splitlines() if line.lstrip().startswith("#")
    )


# --------------------------------------------------------------------------- systemd-analyze


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at an executable that exists here (verify
    checks that the binary exists; the package installs the real one)."""
    binary = tmp_path / "bin" / "migrestore"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/migrestore daemon\n" in text
    unit = tmp_path / "migrestore.service"
    unit.write_text(text.replace("ExecStart=/usr/bin/migrestore", f"ExecStart={binary}"))
    return unit


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    unit = verifiable_copy(tmp_path)
    env = dict(os.environ)
    argv = [str(ANALYZE), "verify"]
    if MAN_PAGE.exists() and shutil.which("man"):
        # Documentation=man:migrestore(8): let verify find the page the package ships.
        (tmp_path / "man" / "man8").mkdir(parents=True)
        shutil.copy(MAN_PAGE, tmp_path / "man" / "man8" / "migrestore.8")
        env["MANPATH"] = str(tmp_path / "man")
    else:
        argv.append("--man=no")
    proc = subprocess.run([*argv, str(unit)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).strip() == ""


def documented_exposure() -> Tuple[str, str]:
    """(exposure, systemd version) as docs/SYSTEMD.md records them."""
    match = re.search(r"exposure level[^\n]*?(\d+\.\d) \w+[^\n]*?systemd (\d+)", DOC.read_text())
    assert match, "docs/SYSTEMD.md records no 'exposure level X.Y ... systemd NNN'"
    return match.group(1), match.group(2)


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    unit = verifiable_copy(tmp_path)
    proc = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    exposure, label = match.groups()
    version = subprocess.run(
        [str(ANALYZE), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    print(f"systemd-analyze security (systemd {version}): exposure {exposure} {label}")
    documented, documented_version = documented_exposure()
    if version == documented_version:
        # The same scoring rules: the unit changed, or the document is stale.
        assert exposure == documented, (
            f"exposure is {exposure}, docs/SYSTEMD.md says {documented}: update one of them"
        )
    assert float(exposure) < 7.0  # MEDIUM or better under any scoring


# --------------------------------------------------------------------------- contract


def test_type_notify_and_commands() -> None:
    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    assert one("Service", "ExecStart") == "/usr/bin/migrestore daemon"
    assert one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Install", "WantedBy") == "multi-user.target"


def test_ordered_after_the_driver() -> None:
    after = values("Unit", "After")
    for unit in (
        "nvidia-persistenced.service",
        "nvidia-fabricmanager.service",
        "systemd-modules-load.service",
    ):
        assert unit in after


def test_ordered_before_every_consumer_and_every_default_client() -> None:
    before = values("Unit", "Before")
    for unit in (
        "docker.service",
        "containerd.service",
        "crio.service",
        "kubelet.service",
        "slurmd.service",
        "nvidia-cdi-refresh.service",
        *model.DEFAULT_CLIENTS,
    ):
        assert unit in before, f"{unit} is not in Before="
    # Nothing we order before may also be ordered after: that is a cycle.
    assert not set(before) & set(values("Unit", "After"))


def test_kill_switches() -> None:
    assert "!/etc/migrestore.disabled" in values("Unit", "ConditionPathExists")
    assert "!migrestore=disabled" in values("Unit", "ConditionKernelCommandLine")


def test_bounded_start_and_restart_policy() -> None:
    assert 0 < int(one("Service", "TimeoutStartSec")) <= 900
    assert one("Service", "Restart") == "on-failure"
    prevent = values("Service", "RestartPreventExitStatus")
    assert str(errors.EXIT_CONFIG) in prevent  # an invalid config must not loop
    # a GPU whose MIG change needs a reboot (passthrough, nvidia_drm...) must not loop
    assert str(errors.EXIT_REBOOT) in prevent
    assert str(errors.EXIT_UNAVAILABLE) not in prevent  # a late driver may come
    assert one("Unit", "StartLimitBurst")
    assert one("Service", "WatchdogSec")


def seconds(value: str) -> float:
    """A systemd time span as the unit writes it: "600", "180s" or "5min"."""
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_the_timeouts_match_the_bounded_steps() -> None:
    """Issue 12 item 2: every timeout of the unit covers the bounded step it can catch
    under way, with the default settings; longer settings ask for their own time
    (EXTEND_TIMEOUT_USEC, tests/reliability/test_signals.py rule 6)."""
    defaults = {f.name: f.default for f in dataclasses.fields(model.Config)}
    # the start: its first message asks for the driver wait and the lock wait, so
    # TimeoutStartSec= need only cover the default ones
    start = seconds(one("Service", "TimeoutStartSec"))
    assert start >= defaults["driver_wait"] + daemon.TICK_BUDGET
    # the stop: SIGTERM lands in the longest single step (a reset), then one client
    # unit is started again; the daemon asks for more when its pass declared more
    longest_step = max(backend.RESET_TIMEOUT, defaults["unit_timeout"], defaults["cdi_timeout"])
    stop = seconds(one("Service", "TimeoutStopSec"))
    assert stop >= longest_step + daemon.STOP_MARGIN + services.QUERY_TIMEOUT
    # the watchdog: a tick is pinged for as long as it declared, so a tick that
    # outlives TICK_BUDGET + WatchdogSec= without declaring more is a hang
    assert seconds(one("Service", "WatchdogSec")) > daemon.TICK_BUDGET


def test_conflicts_with_mig_manager_and_is_ordered_against_it() -> None:
    assert values("Unit", "Conflicts") == ["nvidia-mig-manager.service"]
    assert "nvidia-mig-manager.service" in values("Unit", "After")


def test_what_the_code_writes_stays_writable() -> None:
    """ProtectSystem=strict: the lock, the state file and the CDI spec must be under a
    ReadWritePaths= (or StateDirectory=) entry, or the daemon fails at boot."""
    assert one("Service", "ProtectSystem") == "strict"
    # "-PATH": the entry is ignored when PATH does not exist
    writable = [os.path.realpath(p.lstrip("-")) for p in values("Service", "ReadWritePaths")]
    writable += ["/var/lib/" + d for d in values("Service", "StateDirectory")]

    def covered(path: str) -> bool:
        # /var/run is /run on every target distribution.
        real = re.sub(r"^/var/run/", "/run/", path)
        return any(real == w or real.startswith(w.rstrip("/") + "/") for w in writable)

    for path in (lock.DEFAULT_LOCK, statefile.DEFAULT_STATE, cdi.CDI_OUTPUT, DEFAULT_TEXTFILE):
        assert covered(path), f"{path} is not writable under ProtectSystem=strict"


def test_directives_that_would_break_nvml_are_absent_and_explained() -> None:
    keys = {k for k, _ in directives()["Service"]}
    text = comments()
    for key in (
        "PrivateDevices",
        "DevicePolicy",
        "DeviceAllow",
        "ProtectKernelModules",
        "ProtectClock",
        "ProtectKernelTunables",
        "ProcSubset",
        "User",
        "DynamicUser",
        "PrivateUsers",
        "SystemCallFilter",
    ):
        assert key not in keys, f"{key}= breaks NVML or nvidia-modprobe"
        assert f"{key}=" in text, f"the unit does not say why {key}= is left out"


def test_every_hardening_directive_has_its_reason_above_it() -> None:
    """Each directive follows its comment directly, or a directive of the same group:
    a blank line between a reason and a directive is a directive without a reason."""
    lines = UNIT.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Hardening."))
    end = next(i for i, line in enumerate(lines) if line.startswith("[Install]"))
    for previous, line in zip(lines[start : end - 1], lines[start + 1 : end]):
        if line.strip() and not line.startswith("#"):
            key = line.split("=", 1)[0]
            assert previous.startswith("#") or "=" in previous, f"{key}= has no reason"
    service = directives()["Service"]
    assert ("NoNewPrivileges", "yes") in service
    assert ("MemoryDenyWriteExecute", "yes") in service
    assert ("RestrictAddressFamilies", "AF_UNIX") in service


def test_documentation_covers_the_consumer_recipes() -> None:
    text = DOC.read_text()
    for needle in (
        "Requires=migrestore.service",
        "Wants=migrestore.service",
        "After=migrestore.service",
        "systemctl reload migrestore",
        "systemd-analyze security",
    ):
        assert needle in text, f"docs/SYSTEMD.md does not mention {needle}"
