"""notify: the datagrams systemd receives, read from a real AF_UNIX SOCK_DGRAM socket."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from migrestore import logs
from migrestore.notify import STATUS_MAX, Notifier, one_line

from .conftest import Journal


def _bind_path(tmp_path: Path) -> Tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    return sock, path


def _bind_abstract() -> Tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"migrestore-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    return sock, "@" + name


@pytest.fixture(params=["path", "abstract"])
def systemd(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    sock, address = _bind_path(tmp_path) if request.param == "path" else _bind_abstract()
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    try:
        yield sock
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(65536).decode("utf-8")


def test_ready_sends_ready_and_status_in_one_datagram(systemd: socket.socket) -> None:
    n = Notifier(logs.get_logger())
    assert n.enabled
    n.ready("converged: 2 GPUs as configured")
    assert recv(systemd) == "READY=1\nSTATUS=converged: 2 GPUs as configured"


def test_each_message(systemd: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    n = Notifier(logs.get_logger())
    n.status("stopping client units")
    n.watchdog()
    n.stopping()
    n.extend_timeout(90)
    n.extend_timeout(0.5)
    n.reloading()
    assert recv(systemd) == "STATUS=stopping client units"
    assert recv(systemd) == "WATCHDOG=1"
    assert recv(systemd) == "STOPPING=1"
    assert recv(systemd) == "EXTEND_TIMEOUT_USEC=90000000"
    assert recv(systemd) == "EXTEND_TIMEOUT_USEC=500000"
    reloading = recv(systemd).split("\n")
    assert reloading[0] == "RELOADING=1"
    key, _, value = reloading[1].partition("=")
    assert key == "MONOTONIC_USEC" and int(value) > 0


def test_status_is_one_bounded_line(systemd: socket.socket) -> None:
    n = Notifier(logs.get_logger())
    n.status("failed: GPU 0\n  create GI\tat 4:4\r\nNVML_ERROR_IN_USE")
    assert recv(systemd) == "STATUS=failed: GPU 0 create GI at 4:4 NVML_ERROR_IN_USE"
    n.status("x" * 1000)
    text = recv(systemd)
    assert text == "STATUS=" + "x" * (STATUS_MAX - 3) + "..."


def test_non_ascii_status_arrives_as_utf8(systemd: socket.socket) -> None:
    Notifier(logs.get_logger()).status("GPU 0 → 3g.40gb ✓")
    assert recv(systemd) == "STATUS=GPU 0 → 3g.40gb ✓"


def test_one_line() -> None:
    assert one_line("a\nb\tc  d") == "a b c d"
    assert one_line("abcdef", limit=5) == "ab..."
    assert one_line("") == ""


def test_no_socket_means_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier(logs.get_logger())
    assert not n.enabled
    n.ready("x")
    n.status("y")
    n.watchdog()


def test_a_missing_socket_is_logged_once_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: Journal
) -> None:
    address = str(tmp_path / "gone")
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    n = Notifier(journal.log)
    n.ready("converged")
    n.status("again")
    assert journal.lines() == [
        f'<4>notify_failed error="[Errno 2] No such file or directory" message=READY '
        f"socket={address}"
    ]


def test_reconnects_when_the_socket_is_recreated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, path = _bind_path(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier(logs.get_logger())
    n.status("one")
    assert first.recv(100) == b"STATUS=one"
    first.close()
    os.unlink(path)
    second, _ = _bind_path(tmp_path)
    second.settimeout(5)
    try:
        n.status("two")
        assert second.recv(100) == b"STATUS=two"
    finally:
        second.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        (None, None, None),
        ("0", None, None),
        ("junk", None, None),
        ("30000000", "junk", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str, expected: float
) -> None:
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
        monkeypatch.setenv("WATCHDOG_PID", value)
    assert Notifier.watchdog_interval() == expected


def test_text_that_is_not_utf8_is_sent_replaced_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a config path with undecodable bytes reaches STATUS= as a lone surrogate
    sock, path = _bind_path(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier(logs.get_logger())
    n.status("failed: /etc/migrestore-\udcff.yaml:3: bad")
    assert sock.recv(200) == b"STATUS=failed: /etc/migrestore-?.yaml:3: bad"
    sock.close()


def test_a_socket_nobody_reads_never_blocks_the_service(
    systemd: socket.socket, monkeypatch: pytest.MonkeyPatch, journal: Journal
) -> None:
    """systemd's socket queues a few datagrams (net.unix.max_dgram_qlen): when nothing
    reads it, one send waits at most SEND_TIMEOUT and the rest are dropped at once, with
    one warning; once the queue drains, messages go through again."""
    monkeypatch.setattr("migrestore.notify.SEND_TIMEOUT", 0.05)
    n = Notifier(journal.log)
    for i in range(200):  # far more than any queue holds
        n.status(f"step {i}")
    warnings = journal.lines()
    assert len(warnings) == 1 and warnings[0].startswith("<4>notify_failed"), warnings
    assert "message=STATUS" in warnings[0]
    systemd.settimeout(0)
    with pytest.raises(BlockingIOError):
        while True:  # drain what was queued
            systemd.recv(65536)
    systemd.settimeout(5)
    n.ready("converged")
    assert recv(systemd) == "READY=1\nSTATUS=converged"
