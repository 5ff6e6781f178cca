"""sd_notify: tell systemd where the service is (READY, STATUS, WATCHDOG, ...).

Rules:

1. Without ``$NOTIFY_SOCKET`` every call is a no-op: the same code runs from a
   shell, under the simulator and under systemd.
2. The datagrams go through the ``sdnotify`` library, which connects to a filesystem
   path or to an abstract ``@name`` socket. It encodes text as Latin-1; systemd reads
   UTF-8, so the text is handed over as its UTF-8 bytes seen through Latin-1 and
   leaves the socket as UTF-8.
3. ``STATUS=`` is one line (newlines and other control characters become spaces)
   of at most ``STATUS_MAX`` characters, since ``systemctl status`` shows it as one.
4. A failed send never raises: READY that cannot be sent is systemd's problem to
   time out on, not a reason to abandon a GPU half-configured. The first failure is
   logged as a warning through the logger every ``Notifier`` is given (the daemon
   passes its own), and the next send connects again (the socket may have been
   re-created by a ``systemctl daemon-reexec``). Text that is not valid UTF-8 (a
   path with undecodable bytes) is sent with replacement characters, not refused.
   A send never blocks for long: systemd's socket queues a few datagrams only
   (``net.unix.max_dgram_qlen``, 10 by default), so when nothing reads it a send waits
   at most ``SEND_TIMEOUT`` once; the messages after it are dropped without waiting until
   one goes through again (a daemon stuck on a notification would ignore SIGTERM and
   never restore a drift).
5. ``READY=1`` means converged (the daemon sends it after verification), and nothing
   else.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Optional

import sdnotify

from migrestore.logs import BoundLogger

__all__ = ["STATUS_MAX", "Notifier", "one_line"]

STATUS_MAX = 200
SEND_TIMEOUT = 2.0  # seconds one datagram may wait for room in the socket (rule 4)


def one_line(text: str, limit: int = STATUS_MAX) -> str:
    """``text`` as one line of at most ``limit`` characters (``...`` marks a cut)."""
    cleaned = "".join(" " if (ord(ch) < 0x20 or ord(ch) == 0x7F) else ch for ch in text)
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > limit:
        cleaned = cleaned[: max(limit - 3, 0)].rstrip() + "..."
    return cleaned


class Notifier:
    """The service's channel to systemd.

    ``enabled`` says whether ``$NOTIFY_SOCKET`` was set when the object was made.
    """

    def __init__(self, log: BoundLogger) -> None:
        self._address = os.environ.get("NOTIFY_SOCKET", "")
        self._log = log
        self._sender: Any = None
        self._warned = False
        self._congested = False  # the last send found the queue full (rule 4)
        self._lock = threading.Lock()  # the daemon's watchdog keepalive sends from a thread

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    # ----------------------------------------------------------------- messages

    def ready(self, status: str) -> None:
        """``READY=1`` with a one-line ``STATUS=`` summary."""
        self._send(f"READY=1\nSTATUS={one_line(status)}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={one_line(text)}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """``RELOADING=1``; the daemon sends ``ready()`` again when the reload is
        done. MONOTONIC_USEC is what systemd 253 and later require with it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more from now before the start (or stop) timeout fires:
        sent before each slow step (stopping a unit, resetting a GPU)."""
        usec = max(int(seconds * 1_000_000), 1)
        self._send(f"EXTEND_TIMEOUT_USEC={usec}")

    # ----------------------------------------------------------------- watchdog

    @staticmethod
    def watchdog_interval() -> Optional[float]:
        """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None
        when systemd asks for none, or asks another process (``$WATCHDOG_PID``)."""
        pid_text = os.environ.get("WATCHDOG_PID", "")
        if pid_text:
            try:
                if int(pid_text) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2_000_000

    # ----------------------------------------------------------------- transport

    def _connect(self) -> Any:
        # sdnotify reads $NOTIFY_SOCKET itself and turns "@name" into an abstract
        # address; debug=True makes it raise instead of failing silently.
        return sdnotify.SystemdNotifier(debug=True)

    def _send(self, message: str) -> None:
        if not self._address:
            return
        payload = message.encode("utf-8", "replace").decode("latin-1")
        with self._lock:
            self._send_locked(message, payload)

    def _send_locked(self, message: str, payload: str) -> None:
        error: Optional[BaseException] = None
        for _attempt in range(2):
            try:
                if self._sender is None:
                    self._sender = self._connect()
                sock = getattr(self._sender, "socket", None)
                if sock is not None:
                    sock.settimeout(0.0 if self._congested else SEND_TIMEOUT)
                self._sender.notify(payload)
                self._congested = False
                return
            except (socket.timeout, BlockingIOError) as err:
                # nothing reads the socket: drop this one, do not wait for the next
                self._congested = True
                error = err
                break
            except (OSError, ValueError) as err:  # ValueError: a NUL in a path address
                error = err
                self._close()
        if not self._warned:
            self._warned = True
            kind = message.split("=", 1)[0]
            self._log.warning(
                "notify_failed",
                message=kind,
                socket=self._address,
                error=str(error),
            )

    def _close(self) -> None:
        sender, self._sender = self._sender, None
        sock = getattr(sender, "socket", None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Close the socket (also done when the object is collected)."""
        self._close()
