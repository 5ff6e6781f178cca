"""A simulated GPU node driven in-process, for the reliability tests.

Rules:

1. Built on ``tests.integration.daemon_util.Node``: a simulator state file, the systemctl
   stand-in whose client units run a process that really holds a simulated GPU, and the
   lock and state-file paths of the run. Nothing of migrestore is replaced: commands run
   through ``migrestore.cli.main`` in this process (or as real processes where a process
   boundary is the point), against ``Nvml(Simulated(STATE))``.
2. The simulator is inspected and steered through its Python API (``Simulator`` on the
   same state file), never through ``migrestore-sim`` subprocesses, so a check costs
   milliseconds.
3. State files live on ``/dev/shm`` when it exists: the simulator fsyncs every change, and
   the fault matrix makes thousands of runs.
4. A rig can snapshot its state file as a template and go back to it before each run; the
   client units' current holder processes are registered again, so a run always starts
   with every client holding its GPU and every worker process on its MIG device.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from migrestore import config as configmod
from migrestore import engine
from migrestore.backend import Simulated
from migrestore.model import Config
from migrestore.nvml import Nvml
from migrestore.simulator import Simulator
from migrestore.simulator.state import GiRecord, GpuRecord, SimState
from tests.integration.cli_util import Result, run
from tests.integration.daemon_util import Node

# What a command run in this process needs from the node's environment.
ENV_KEYS = (
    "MIGRESTORE_SYSTEMCTL",
    "FAKE_SYSTEMCTL_DIR",
    "MIGRESTORE_LOCK",
    "MIGRESTORE_STATE",
    "MIGRESTORE_SIM_BOOT_ID_FILE",
    "PYTHONPATH",
)
PROMPT_SYSTEMCTL = Path(__file__).resolve().with_name("prompt_systemctl")
HOLDER_WAIT = 20.0  # seconds for a restarted client unit's process to hold its GPU again


@contextlib.contextmanager
def fast_dir(prefix: str) -> Iterator[Path]:
    """A private directory on tmpfs (``/dev/shm``) when there is one, removed afterwards."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Worker:
    """A process registered on a MIG device: the instance must never be destroyed."""

    gpu: int
    gi_start: int
    mig_uuid: str
    pid: int


def gi_at(state: SimState, gpu: int, start: int) -> Optional[GiRecord]:
    for gi in state.gpus[gpu].gis:
        if gi.start == start:
            return gi
    return None


class Rig:
    """A simulated node (see the module docstring)."""

    def __init__(self, tmp: Path, spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.node = Node(tmp, spec)
        self.node.env["MIGRESTORE_SYSTEMCTL"] = str(PROMPT_SYSTEMCTL)
        for key in ENV_KEYS:
            monkeypatch.setenv(key, self.node.env[key])
        for key in ("NOTIFY_SOCKET", "MIGRESTORE_SIMULATE", "WATCHDOG_USEC", "JOURNAL_STREAM"):
            monkeypatch.delenv(key, raising=False)
        self.sim = Simulator(self.node.state)
        self.clients: List[Tuple[str, int]] = []
        self.workers: List[Worker] = []
        self._worker_procs: List[subprocess.Popen[bytes]] = []
        self.template = b""

    # ------------------------------------------------------------------ paths

    @property
    def state(self) -> str:
        return self.node.state

    @property
    def config_path(self) -> str:
        return str(self.node.config)

    def write_config(self, text: str) -> Config:
        self.node.write_config(text)
        return configmod.load(self.config_path)

    # ------------------------------------------------------------------ commands

    def migrestore(self, capsys: pytest.CaptureFixture[str], *args: str) -> Result:
        """``migrestore --simulate STATE -c CONFIG --log-format json ARGS`` in this process."""
        return run(
            capsys,
            "--simulate",
            self.state,
            "-c",
            self.config_path,
            "--log-format",
            "json",
            *args,
        )

    def converged(self, cfg: Config) -> bool:
        """Whether the GPUs are as ``cfg`` declares (a fresh NVML session, no lock)."""
        with Nvml(Simulated(self.state)) as nv:
            plan = engine.decide(cfg, nv.observe(), force=True).plan
        return plan.converged

    # ------------------------------------------------------------------ clients, workers

    def client(self, unit: str, gpu: int) -> None:
        """A client unit whose process holds ``gpu`` while it runs (started now)."""
        self.node.client_unit(unit, gpu)
        self.clients.append((unit, gpu))

    def unit_pid(self, unit: str) -> Optional[int]:
        return self.node.unit_pid(unit)

    def clients_back(self, timeout: float = HOLDER_WAIT) -> List[str]:
        """Wait until every client unit is active and its process holds its GPU again;
        returns what is still wrong when the time is up (empty: all back)."""
        deadline = time.monotonic() + timeout
        while True:
            problems = self._client_problems()
            if not problems or time.monotonic() >= deadline:
                return problems
            time.sleep(0.02)

    def start_clients(self) -> None:
        """Start the client units that are down (the test's own hand, not migrestore's)
        and wait until their processes hold their GPUs."""
        for unit, _gpu in self.clients:
            if self.node.units.state(unit) != "active" or self.unit_pid(unit) is None:
                done = subprocess.run(
                    [str(PROMPT_SYSTEMCTL), "start", unit],
                    env=self.node.env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert done.returncode == 0, done.stderr
        problems = self.clients_back()
        assert not problems, problems

    def _client_problems(self) -> List[str]:
        problems: List[str] = []
        state = self.sim.state()
        for unit, gpu in self.clients:
            status = self.node.units.state(unit)
            if status != "active":
                problems.append(f"{unit} is {status}")
                continue
            pid = self.unit_pid(unit)
            if pid is None or pid not in state.gpus[gpu].holders:
                problems.append(f"{unit}: its process does not hold GPU {gpu}")
        return problems

    def worker(self, gpu: int, gi_start: int) -> Worker:
        """A process on the (first) CI of the GI at ``gi_start`` of ``gpu``."""
        gi = gi_at(self.sim.state(), gpu, gi_start)
        assert gi is not None, f"GPU {gpu} has no GI at slice {gi_start}"
        proc = subprocess.Popen(
            ["sleep", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._worker_procs.append(proc)
        _ci_id, mig_uuid = self.sim.run_process(gpu, gi.id, pid=proc.pid)
        found = Worker(gpu, gi_start, mig_uuid, proc.pid)
        self.workers.append(found)
        return found

    def workers_intact(self) -> List[str]:
        """Each worker's MIG device still exists and still lists the worker's pid."""
        problems: List[str] = []
        state = self.sim.state()
        for w in self.workers:
            cis = [ci for gi in state.gpus[w.gpu].gis for ci in gi.cis if ci.uuid == w.mig_uuid]
            if not cis:
                problems.append(f"GPU {w.gpu}: the MIG device {w.mig_uuid} of pid {w.pid} is gone")
            elif w.pid not in cis[0].pids:
                problems.append(f"GPU {w.gpu}: pid {w.pid} no longer runs on {w.mig_uuid}")
        return problems

    # ------------------------------------------------------------------ template

    def save_template(self) -> None:
        self.template = Path(self.state).read_bytes()

    def restore(self) -> None:
        """Put the template back (under the simulator's own lock) and register the client
        units' current processes as holders again."""
        assert self.template, "save_template() first"
        tmp = f"{self.state}.restore"
        Path(tmp).write_bytes(self.template)
        with open(self.state + ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.replace(tmp, self.state)
        for unit, gpu in self.clients:
            pid = self.unit_pid(unit)
            if pid is not None:
                self.sim.hold(gpu, pid)

    # ------------------------------------------------------------------ simulator

    @property
    def gpu_count(self) -> int:
        return len(self.sim.state().gpus)

    def gpu(self, index: int) -> GpuRecord:
        return self.sim.state().gpus[index]

    def changes(self) -> int:
        return self.sim.change_count

    def pending_faults(self) -> Dict[str, int]:
        return {f.function: f.nth for f in self.sim.state().faults}

    def close(self) -> None:
        for proc in self._worker_procs:
            proc.kill()
            proc.wait()
        self.node.cleanup()
        self.sim.close()


def destroy_gi_at(rig: Rig, gpus: Sequence[int], start: int) -> None:
    """Drift: remove the GI at ``start`` (and its CIs) on each of ``gpus``."""
    state = rig.sim.state()
    for gpu in gpus:
        gi = gi_at(state, gpu, start)
        assert gi is not None, f"GPU {gpu} has no GI at slice {start}"
        for ci in list(gi.cis):
            rig.sim.destroy_ci(gpu, gi.id, ci.id)
        rig.sim.destroy_gi(gpu, gi.id)
