"""A harness for `migrestore daemon` as systemd runs it: a real NOTIFY_SOCKET the test
owns, the systemctl stand-in with real main processes, simulated GPUs in a state file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from tests.edges.systemctl_fake import FakeSystemctl

ROOT = Path(__file__).resolve().parents[2]
SUPERVISED = Path(__file__).resolve().with_name("supervised_systemctl")


def sim_argv(*args: str) -> List[str]:
    return [
        sys.executable,
        "-c",
        "from migrestore.simulator.cli import main; raise SystemExit(main())",
        *args,
    ]


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: List[str] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return
            self.messages.append(data.decode())

    def wait_for(self, needle: str, timeout: float = 30.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            for msg in self.messages[after:]:
                if needle in msg:
                    return msg
        raise AssertionError(f"no {needle!r} in notifications: {self.messages}")

    def fields(self, key: str) -> List[str]:
        self.drain()
        out = []
        for msg in self.messages:
            for line in msg.splitlines():
                if line.startswith(key + "="):
                    out.append(line[len(key) + 1 :])
        return out

    def close(self) -> None:
        self.sock.close()


class Node:
    """A simulated GPU node: state file, units, notify socket, config."""

    def __init__(self, tmp: Path, spec: str) -> None:
        self.tmp = tmp
        self.state = str(tmp / "gpus.json")
        self.boot_id = tmp / "boot_id"
        self.boot_id.write_text("boot-1\n")
        self.config = tmp / "migrestore.yaml"
        self.units = FakeSystemctl(tmp / "systemd")
        self.notify = NotifySocket(tmp / "notify.sock")
        self.env = dict(os.environ)
        self.env.update(self.units.env())
        self.env.update(
            {
                "MIGRESTORE_SYSTEMCTL": str(SUPERVISED),
                "NOTIFY_SOCKET": self.notify.path,
                "MIGRESTORE_LOCK": str(tmp / "migrestore.lock"),
                "MIGRESTORE_STATE": str(tmp / "run" / "state.json"),
                "MIGRESTORE_SIM_BOOT_ID_FILE": str(self.boot_id),
                "PYTHONPATH": str(ROOT),
            }
        )
        self.env.pop("MIGRESTORE_SIMULATE", None)
        self.env.pop("WATCHDOG_USEC", None)
        self.env.pop("JOURNAL_STREAM", None)
        self.sim("init", self.state, spec)
        self.procs: List[subprocess.Popen[str]] = []
        self.daemon: Optional[subprocess.Popen[str]] = None

    # ------------------------------------------------------------------ simulator

    def sim(self, *args: str) -> str:
        done = subprocess.run(
            sim_argv(*args), env=self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"migrestore-sim {args}: {done.stderr}"
        return done.stdout

    def show(self) -> Dict[str, Any]:
        data: Dict[str, Any] = json.loads(self.sim("show", self.state, "--json"))
        return data

    def changes(self) -> int:
        value = self.show()["change_count"]
        assert isinstance(value, int)
        return value

    def geometry(self, gpu: int) -> List[Any]:
        done = self.migrestore("status", "--json")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        return [(gi["profile"], tuple(gi["placement"])) for gi in data["gpus"][gpu]["instances"]]

    def mig(self, gpu: int) -> Dict[str, Any]:
        done = self.migrestore("status", "--json")
        data: Dict[str, Any] = json.loads(done.stdout)["gpus"][gpu]["mig"]
        return data

    def reboot(self) -> None:
        """A new boot id: the simulator applies reboot semantics at its next read."""
        self.boot_id.write_text(f"boot-{time.monotonic_ns()}\n")

    # ------------------------------------------------------------------ units

    def client_unit(self, unit: str, gpu: int) -> None:
        """A unit whose main process holds simulated GPU ``gpu`` while it runs."""
        (self.units.dir / "exec").mkdir(exist_ok=True)
        cmd = " ".join(shlex.quote(a) for a in sim_argv("hold", self.state, "--gpu", str(gpu)))
        (self.units.dir / "exec" / unit).write_text(cmd + "\n")
        self.units.add(unit, state="inactive")
        done = subprocess.run(
            [str(SUPERVISED), "start", unit],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        self.wait_holders(gpu, 1)

    def holders(self, gpu: int) -> List[int]:
        gpus = self.show()["gpus"]
        pids: List[int] = gpus[gpu]["holders"]
        return pids

    def wait_holders(self, gpu: int, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.holders(gpu)) == count:
                return
            time.sleep(0.1)
        raise AssertionError(f"GPU {gpu}: holders {self.holders(gpu)}, wanted {count}")

    def unit_pid(self, unit: str) -> Optional[int]:
        path = self.units.dir / "pids" / unit
        return int(path.read_text()) if path.exists() else None

    # ------------------------------------------------------------------ migrestore

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def migrestore(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "migrestore",
            "--simulate",
            self.state,
            "-c",
            str(self.config),
            *args,
        ]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def start_daemon(
        self, *extra: str, env: Optional[Dict[str, str]] = None
    ) -> subprocess.Popen[str]:
        argv = [
            sys.executable,
            "-m",
            "migrestore",
            "--simulate",
            self.state,
            "-c",
            str(self.config),
            "--log-format",
            "journal",
            "daemon",
            *extra,
        ]
        self.daemon = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self.daemon

    def stop_daemon(self, timeout: float = 30.0) -> tuple[int, str]:
        assert self.daemon is not None
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
        _out, err = self.daemon.communicate(timeout=timeout)
        return self.daemon.returncode, err

    def wait_daemon(self, timeout: float = 60.0) -> tuple[int, str]:
        assert self.daemon is not None
        _out, err = self.daemon.communicate(timeout=timeout)
        return self.daemon.returncode, err

    @contextlib.contextmanager
    def gpu_lock(self) -> Iterator[None]:
        """Hold the GPU lock's directory lock, as a concurrent migrestore would: drift made
        inside the block is seen by no watch tick until it is left."""
        lock = os.open(os.path.dirname(self.env["MIGRESTORE_LOCK"]), os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

    def wait_backed_off(self, ticks: int = 3) -> None:
        """Wait for ``ticks`` more STATUS= lines of ticks that backed a GPU off."""
        for _ in range(ticks):
            seen = len(self.notify.messages)
            self.notify.wait_for("STATUS=restore backed off", after=seen)

    def wait_until(self, check: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def cleanup(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        pids = self.units.dir / "pids"
        if pids.is_dir():
            for f in pids.iterdir():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(f.read_text()), signal.SIGKILL)
        self.notify.close()
