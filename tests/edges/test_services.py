"""services: which units are stopped and started, in what order, through a stateful
systemctl stand-in (tests/edges/fake_systemctl)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from migrestore.errors import EXIT_FAILED, ServiceError
from migrestore.services import (
    SYSTEMCTL_PATHS,
    Systemctl,
    check_unit_name,
    start_clients,
    stop_clients,
)

from .conftest import Journal
from .systemctl_fake import FakeSystemctl

DCGM = "nvidia-dcgm.service"
NVSM = "nvsm.service"
EXPORTER = "dcgm-exporter.service"


@pytest.fixture
def fake(tmp_path: Path) -> FakeSystemctl:
    return FakeSystemctl(tmp_path / "systemd")


@pytest.fixture
def ctl(fake: FakeSystemctl, monkeypatch: pytest.MonkeyPatch) -> Systemctl:
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return Systemctl()


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "nvidia-dcgm.service",
        "kubelet.service",
        "getty@tty1.service",
        "dev-nvidia0.device",
        "system-x\\x2dy.slice",
        "docker.socket",
        "a:b_c.target",
    ],
)
def test_valid_unit_names(name: str) -> None:
    assert check_unit_name(name) is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is empty"),
        ("--now.service", "starts with '-'"),
        ("-.mount", "starts with '-'"),
        ("nvidia-dcgm", "does not end in a unit type"),
        ("nvidia-dcgm.servic", "does not end in a unit type"),
        ("a b.service", "has characters systemd does not allow"),
        ("a;reboot.service", "has characters systemd does not allow"),
        ("x/../y.service", "has characters systemd does not allow"),
        (".service", "has no name before the type"),
        ("@x.service", "has no name before the type"),
        ("getty@.service", "is a template"),
        ("a@b@c.service", "has more than one '@'"),
        ("a" * 250 + ".service", "is longer than 255 characters"),
    ],
)
def test_invalid_unit_names(name: str, problem: str) -> None:
    found = check_unit_name(name)
    assert found is not None and found.startswith(problem)


def test_an_invalid_name_never_reaches_systemctl(ctl: Systemctl, fake: FakeSystemctl) -> None:
    with pytest.raises(ServiceError) as info:
        ctl.stop("--force", 5)
    assert str(info.value) == (
        "unit name '--force' starts with '-' (fix the clients list in the config)"
    )
    assert info.value.exit_code == EXIT_FAILED
    assert fake.calls() == []


# --------------------------------------------------------------------------- Systemctl


def test_binary_from_environment_or_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRESTORE_SYSTEMCTL", raising=False)
    assert Systemctl().binary in SYSTEMCTL_PATHS and not Systemctl().explicit
    monkeypatch.setenv("MIGRESTORE_SYSTEMCTL", "/opt/x/systemctl")
    assert Systemctl().binary == "/opt/x/systemctl" and Systemctl().explicit
    assert Systemctl("/usr/bin/systemctl").binary == "/usr/bin/systemctl"


def test_systemctl_is_never_looked_up_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stand-in first on the caller's PATH must never run as root
    planted = tmp_path / "systemctl"
    marker = tmp_path / "ran"
    planted.write_text(f"#!/bin/sh\ntouch {marker}\necho active\n")
    planted.chmod(0o755)
    monkeypatch.delenv("MIGRESTORE_SYSTEMCTL", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '')}")
    ctl = Systemctl()
    assert os.path.isabs(ctl.binary) and ctl.binary in SYSTEMCTL_PATHS
    with contextlib.suppress(ServiceError):
        ctl.state("a.service")
    assert not marker.exists()


def test_is_active_reads_the_state(ctl: Systemctl, fake: FakeSystemctl) -> None:
    fake.add("a.service", "active")
    fake.add("b.service", "inactive")
    fake.add("c.service", "activating")
    fake.add("d.service", "failed")
    fake.add("e.service", "deactivating")
    assert ctl.is_active("a.service")
    assert not ctl.is_active("b.service")
    assert ctl.is_active("c.service")
    assert not ctl.is_active("d.service")
    assert not ctl.is_active("e.service")
    assert not ctl.is_active("not-installed.service")
    assert fake.calls()[0] == "--no-ask-password is-active a.service"


def test_stop_and_start_no_block(ctl: Systemctl, fake: FakeSystemctl) -> None:
    fake.add(DCGM)
    ctl.stop(DCGM, 5)
    assert fake.state(DCGM) == "inactive"
    ctl.start_no_block(DCGM)
    assert fake.state(DCGM) == "active"
    assert fake.calls() == [
        f"--no-ask-password stop {DCGM}",
        f"--no-ask-password start --no-block {DCGM}",
    ]


def test_stop_failure_carries_systemctl_message(ctl: Systemctl, fake: FakeSystemctl) -> None:
    fake.add(DCGM)
    fake.fail_stop(DCGM, "Job for nvidia-dcgm.service canceled.")
    with pytest.raises(ServiceError) as info:
        ctl.stop(DCGM, 5)
    assert str(info.value) == f"stopping {DCGM} failed: Job for nvidia-dcgm.service canceled."


def test_stop_of_a_unit_not_loaded(ctl: Systemctl) -> None:
    with pytest.raises(ServiceError) as info:
        ctl.stop("ghost.service", 5)
    assert str(info.value) == (
        "stopping ghost.service failed: Failed to stop ghost.service: Unit ghost.service not loaded."
    )


def test_stop_is_bounded(ctl: Systemctl, fake: FakeSystemctl) -> None:
    fake.add(DCGM)
    fake.hang_stop(DCGM)
    with pytest.raises(ServiceError) as info:
        ctl.stop(DCGM, 0.3)
    assert str(info.value) == (
        f"stopping {DCGM}: systemctl did not return within 0.3 s and was killed "
        "(see 'systemctl list-jobs' and the unit's journal)"
    )


def test_missing_systemctl(tmp_path: Path) -> None:
    ctl = Systemctl(str(tmp_path / "nope"))
    with pytest.raises(ServiceError) as info:
        ctl.is_active(DCGM)
    assert str(info.value) == (
        f"unit {DCGM}: cannot run {tmp_path / 'nope'}: No such file or directory "
        "(is systemd installed? set MIGRESTORE_SYSTEMCTL to its systemctl)"
    )


def test_systemd_not_running(ctl: Systemctl, fake: FakeSystemctl) -> None:
    fake.down()
    with pytest.raises(ServiceError) as info:
        ctl.is_active(DCGM)
    assert str(info.value) == (
        f"unit {DCGM}: cannot read its state: System has not been booted with systemd as "
        "init system (PID 1). Can't operate. Failed to connect to bus: Host is down"
    )


# --------------------------------------------------------------------------- stop/start


def test_stops_only_active_units_in_order_and_returns_them(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    fake.add(DCGM)
    fake.add(NVSM, "inactive")
    fake.add(EXPORTER)
    stopped = stop_clients(ctl, [DCGM, "dcgm.service", NVSM, EXPORTER], 5, journal.log)
    assert stopped == (DCGM, EXPORTER)
    assert (fake.state(DCGM), fake.state(NVSM), fake.state(EXPORTER)) == (
        "inactive",
        "inactive",
        "inactive",
    )
    stops = [c for c in fake.calls() if " stop " in c]
    assert stops == [f"--no-ask-password stop {DCGM}", f"--no-ask-password stop {EXPORTER}"]
    assert journal.lines() == [
        f"<6>unit_stopped unit={DCGM}",
        '<7>unit_skipped outcome="not active" unit=dcgm.service',
        f'<7>unit_skipped outcome="not active" unit={NVSM}',
        f"<6>unit_stopped unit={EXPORTER}",
    ]


def test_nothing_active_stops_nothing(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    fake.add(DCGM, "inactive")
    assert stop_clients(ctl, [DCGM], 5, journal.log) == ()
    assert not [c for c in fake.calls() if " stop " in c]


def test_a_unit_that_went_down_with_its_dependency_is_counted_as_stopped(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    fake.add(DCGM, stops_with=[EXPORTER])
    fake.add(EXPORTER)
    stopped = stop_clients(ctl, [DCGM, EXPORTER], 5, journal.log)
    assert stopped == (DCGM, EXPORTER)
    assert [c for c in fake.calls() if " stop " in c] == [f"--no-ask-password stop {DCGM}"]
    assert journal.lines()[-1] == (
        f'<6>unit_stopped outcome="stopped with a dependency" unit={EXPORTER}'
    )
    start_clients(ctl, stopped, journal.log)
    assert fake.state(DCGM) == "active" and fake.state(EXPORTER) == "active"


def test_start_clients_reverse_order_no_block(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    for unit in (DCGM, NVSM, EXPORTER):
        fake.add(unit, "inactive")
    assert start_clients(ctl, [DCGM, NVSM, EXPORTER], journal.log) == ()
    assert fake.calls() == [
        f"--no-ask-password start --no-block {EXPORTER}",
        f"--no-ask-password start --no-block {NVSM}",
        f"--no-ask-password start --no-block {DCGM}",
    ]
    assert journal.lines() == [
        f"<6>unit_start_queued unit={EXPORTER}",
        f"<6>unit_start_queued unit={NVSM}",
        f"<6>unit_start_queued unit={DCGM}",
    ]


def test_a_start_failure_is_logged_and_the_others_still_start(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    fake.add(DCGM, "inactive")
    fake.add(NVSM, "inactive")
    fake.fail_start(NVSM, "Unit nvsm.service is masked.")
    assert start_clients(ctl, [DCGM, NVSM], journal.log) == (NVSM,)
    assert fake.state(DCGM) == "active"
    assert journal.lines() == [
        f'<3>unit_start_failed unit={NVSM} error="starting {NVSM} failed: '
        'Unit nvsm.service is masked."',
        f"<6>unit_start_queued unit={DCGM}",
    ]


def test_a_failed_stop_starts_again_what_was_stopped_and_raises(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    fake.add(DCGM)
    fake.add(NVSM)
    fake.add(EXPORTER)
    fake.fail_stop(NVSM, "Job for nvsm.service failed.")
    with pytest.raises(ServiceError) as info:
        stop_clients(ctl, [DCGM, NVSM, EXPORTER], 5, journal.log)
    assert str(info.value) == (
        f"stopping {NVSM} failed: Job for nvsm.service failed.; started again: {DCGM}, {NVSM}"
    )
    # Every unit that ran before is running again; the one after was never touched.
    assert (fake.state(DCGM), fake.state(NVSM), fake.state(EXPORTER)) == (
        "active",
        "active",
        "active",
    )
    assert [c for c in fake.calls() if " stop " in c or " start " in c] == [
        f"--no-ask-password stop {DCGM}",
        f"--no-ask-password stop {NVSM}",
        f"--no-ask-password start --no-block {NVSM}",
        f"--no-ask-password start --no-block {DCGM}",
    ]
    assert journal.lines()[-3] == (
        f'<3>unit_stop_failed unit={NVSM} error="stopping {NVSM} failed: '
        'Job for nvsm.service failed."'
    )


def test_a_timed_out_stop_is_rolled_back_too(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    fake.add(DCGM)
    fake.add(EXPORTER)
    fake.hang_stop(EXPORTER)
    with pytest.raises(ServiceError) as info:
        stop_clients(ctl, [DCGM, EXPORTER], 0.3, journal.log)
    assert str(info.value).startswith(
        f"stopping {EXPORTER}: systemctl did not return within 0.3 s and was killed"
    )
    assert str(info.value).endswith(f"; started again: {DCGM}, {EXPORTER}")
    assert fake.state(DCGM) == "active"


def test_rollback_that_cannot_start_a_unit_says_so(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    fake.add(DCGM)
    fake.add(NVSM)
    fake.fail_stop(NVSM, "stop refused")
    fake.fail_start(DCGM, "start refused")
    with pytest.raises(ServiceError) as info:
        stop_clients(ctl, [DCGM, NVSM], 5, journal.log)
    assert str(info.value) == (
        f"stopping {NVSM} failed: stop refused; started again: {NVSM}; "
        f"could not start again: {DCGM} (start them by hand)"
    )


def test_systemd_unreachable_before_any_stop_stops_nothing(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    fake.add(DCGM)
    fake.down()
    with pytest.raises(ServiceError, match="cannot read its state"):
        stop_clients(ctl, [DCGM], 5, journal.log)
    assert all(" stop " not in c and " start " not in c for c in fake.calls())


def test_invalid_names_are_refused_before_anything_is_stopped(
    ctl: Systemctl, fake: FakeSystemctl, journal: Journal
) -> None:
    fake.add(DCGM)
    with pytest.raises(ServiceError, match="unit name 'dcgm' does not end in a unit type"):
        stop_clients(ctl, [DCGM, "dcgm"], 5, journal.log)
    assert fake.calls() == []
    assert fake.state(DCGM) == "active"
