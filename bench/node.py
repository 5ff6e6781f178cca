"""A private simulated node for the subprocess benchmarks: state files, config, notify
socket, systemctl stand-in, environment.

Rules:

1. Nothing outside the workspace directory is written: the simulator's boot id, the
   notify socket, the unit states and the bytecode cache (``PYTHONPYCACHEPREFIX``) all
   live in it. The GPU lock and the state file live where a node keeps them, on a
   tmpfs (``/run`` is one on every systemd node): in a private directory under
   ``/dev/shm``, removed by ``close``, when the machine has one; else in the
   workspace. The simulator's state files, which stand in for the driver, live there
   too: NVML writes no file, and an fsync on a disk would time the disk, which a node
   never pays.
2. Subprocesses run ``sys.executable`` with ``PYTHONPATH`` set to the repository, the
   way the integration tests run migrestore, with bytecode writing on (an installed
   package ships its bytecode; a run that compiles every module measures the compiler).
3. The notify socket records when each datagram arrived, so "time to READY" is the
   arrival of ``READY=1``, not the moment someone looked.
4. A command run to its exit also leaves its CPU time (user + system, from
   ``getrusage`` of the waited child) in ``last_cpu``: queueing for a CPU on a shared
   machine stretches wall times, not CPU times.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from migrestore import engine, logs
from migrestore.backend import Simulated
from migrestore.model import Config
from migrestore.nvml import Nvml
from migrestore.simulator import cli as simcli
from tests.edges.systemctl_fake import FakeSystemctl

ROOT = Path(__file__).resolve().parents[1]
MODEL = "h100-80gb-hbm3"
CLIENTS: Tuple[str, ...] = ("nvidia-dcgm.service", "dcgm-exporter.service")
DEPENDENCIES = "import pynvml, yaml, structlog, sdnotify"

CONFIG = """\
version: 1
clients: [{clients}]
gpus:
  - match: all
    mig: true
    instances:
      - {{profile: 1g.10gb, count: 7}}
"""


class HarnessError(Exception):
    """A benchmark could not run (not a measurement): names what and why."""


TMPFS = "/dev/shm"


def _runtime_directory(workspace: Path) -> Path:
    """Where the lock and the state file go (rule 1)."""
    if os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="migrestore-bench-run-", dir=TMPFS))
    path = workspace / "run"
    path.mkdir(exist_ok=True)
    return path


class NotifySocket:
    """A datagram socket in place of systemd's, with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        with_suffix = Path(self.path)
        if with_suffix.exists():
            with_suffix.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def drain(self) -> None:
        while True:
            try:
                self.sock.recv(65536)
            except BlockingIOError:
                return

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> float:
        """``time.perf_counter()`` when ``READY=1`` arrived."""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise HarnessError(f"no READY=1 from the daemon (pid {proc.pid}) in {timeout:.0f}s")
            readable, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if readable:
                data = self.sock.recv(65536)
                arrived = time.perf_counter()
                if b"READY=1" in data.split(b"\n"):
                    return arrived
            elif proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise HarnessError(
                    f"the daemon exited with {proc.returncode} before READY=1: {err.strip()[-500:]}"
                )

    def close(self) -> None:
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class Workspace:
    """A simulated node in ``directory``: state files of converged GPUs, the config,
    the unit stand-in, the notify socket."""

    def __init__(self, directory: Path, gpu_counts: Sequence[int]) -> None:
        self.dir = directory
        self.units = FakeSystemctl(directory / "systemd")
        for unit in CLIENTS:
            self.units.add(unit)
        self.config = directory / "migrestore.yaml"
        self.config.write_text(CONFIG.format(clients=", ".join(CLIENTS)))
        (directory / "boot_id").write_text("bench-boot\n")
        self.notify = NotifySocket(directory / "notify.sock")
        self.run_dir = _runtime_directory(directory)
        self.env = self._environment()
        self.states: Dict[int, str] = {}
        self.last_cpu = 0.0  # rule 4
        for count in gpu_counts:
            self.states[count] = self.converged_state(count)

    def _environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        for key in (
            "PYTHONDONTWRITEBYTECODE",
            "MIGRESTORE_SIMULATE",
            "MIGRESTORE_CONFIG",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
            "PYTHONPROFILEIMPORTTIME",
        ):
            env.pop(key, None)
        env.update(self.units.env())
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "PYTHONPYCACHEPREFIX": str(self.dir / "pycache"),
                "NOTIFY_SOCKET": self.notify.path,
                "MIGRESTORE_LOCK": str(self.run_dir / "migrestore.lock"),
                "MIGRESTORE_STATE": str(self.run_dir / "migrestore" / "state.json"),
                "MIGRESTORE_SIM_BOOT_ID_FILE": str(self.dir / "boot_id"),
            }
        )
        return env

    @contextlib.contextmanager
    def boot(self) -> Iterator[None]:
        """This process sees the workspace's boot id, so the simulator in this process
        does not take the state files for ones from an earlier boot."""
        key = "MIGRESTORE_SIM_BOOT_ID_FILE"
        saved = os.environ.get(key)
        os.environ[key] = self.env[key]
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved

    def converged_state(self, count: int) -> str:
        """A state file of ``count`` H100s already converged to the config."""
        path = str(self.run_dir / f"gpus-{count}.json")
        with self.boot():
            with contextlib.redirect_stdout(io.StringIO()):
                code = simcli.main(["init", path, f"{MODEL}:{count}", "--force"])
            if code != 0:
                raise HarnessError(f"migrestore-sim init {path} {MODEL}:{count} exited {code}")
            logs.configure("json", "error")
            with Nvml(Simulated(path)) as nv:
                engine.converge(nv, self.load_config(), log=logs.get_logger())
        return path

    def load_config(self) -> Config:
        from migrestore import config as configmod

        return configmod.parse(self.config.read_text(), str(self.config))

    # ------------------------------------------------------------------ command lines

    def migrestore_argv(self, count: int, *args: str, python: Sequence[str] = ()) -> List[str]:
        return [
            sys.executable,
            *python,
            "-m",
            "migrestore",
            "--simulate",
            self.states[count],
            "-c",
            str(self.config),
            "--log-format",
            "journal",
            *args,
        ]

    def run_to_exit(self, argv: Sequence[str], timeout: float = 120.0) -> Tuple[float, str]:
        """Seconds from start to exit, and stderr. Raises HarnessError on failure.

        The command gets no notify socket: nobody reads it meanwhile, and a full socket
        queue would block a daemon's sd_notify."""
        env = {k: v for k, v in self.env.items() if k != "NOTIFY_SOCKET"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        try:
            done = subprocess.run(
                list(argv), env=env, capture_output=True, timeout=timeout, cwd=str(self.dir)
            )
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{' '.join(argv)} did not exit within {timeout:.0f}s") from None
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.last_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        err = done.stderr.decode(errors="replace")
        if done.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} exited {done.returncode}: {err.strip()[-500:]}")
        return elapsed, err

    def warm(self, count: int) -> None:
        """Run the daemon once to its exit, so the bytecode cache is full (an installed
        package ships its bytecode; compiling would cost time and leave its memory in
        the process)."""
        self.run_to_exit(self.migrestore_argv(count, "daemon", "--once"))

    def start_daemon(self, count: int) -> Tuple[subprocess.Popen[bytes], float]:
        self.notify.drain()
        started = time.perf_counter()
        proc = subprocess.Popen(
            self.migrestore_argv(count, "daemon"),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=str(self.dir),
        )
        return proc, started

    def time_to_ready(self, count: int, timeout: float = 120.0) -> float:
        proc, started = self.start_daemon(count)
        try:
            ready = self.notify.wait_ready(proc, timeout)
        finally:
            stop(proc)
        return ready - started

    def close(self) -> None:
        self.notify.close()
        if not self.run_dir.is_relative_to(self.dir):
            shutil.rmtree(self.run_dir, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> Optional[int]:
    """SIGTERM, then wait; SIGKILL if it does not end."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()
    return proc.returncode
