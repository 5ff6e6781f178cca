"""Running one scenario under one injected NVML fault, and judging the outcome.

Rules:

1. A run starts from the scenario's template (or, for the watch, from the converged
   geometry plus fresh drift), arms one fault, and runs the real code: ``migrestore
   apply`` through ``cli.main`` in this process, or one watch tick of the daemon
   (``Daemon.check``, what the watch loop calls every interval).
2. What passes: the fault fired; the run ended either with one error line that names the
   NVML error, the GPU (for calls that take one) and the action, with the documented exit
   code (77 for a reset the platform refuses, else 1; 69 for the init), or (only for a read) with a verified success; every client unit it stopped runs
   again and its process holds the GPU again; every worker's MIG device still exists with
   the worker on it; and a second, fault-free run converges.
3. Every run is recorded (``Record``); the tests publish the counts per scenario and
   error, and the failures in full.
"""

from __future__ import annotations

import abc
import contextlib
import io
import json
import os
import re
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple, TypeVar

import pytest
import structlog

from migrestore import engine, logs
from migrestore.daemon import Daemon
from migrestore.errors import EXIT_FAILED, EXIT_REBOOT, EXIT_UNAVAILABLE, MigrestoreError
from migrestore.model import Config
from migrestore.notify import Notifier
from tests.reliability.rig import Rig, fast_dir
from tests.reliability.scenarios import (
    CALLS,
    CHANGES,
    GPU_RESET,
    INIT,
    NEVER,
    SYSTEM_CALLS,
    UNKNOWN,
    Fault,
    Scenario,
    config_of,
)

ERROR_PREFIX = "migrestore: error: "
# Profile-table reads that identical GPUs share within a session: the GPUs' threads may
# race for them, so a run can make fewer of them than the counted run did.
SHARED_READS = frozenset(
    {
        "nvmlDeviceGetGpuInstanceProfileInfoV",
        "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
        "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
        "nvmlGpuInstanceGetComputeInstancePossiblePlacements",
    }
)
# Calls made before the GPU's UUID is known: their errors name the GPU by index.
BEFORE_UUID = frozenset({"nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetUUID"})
GPU_LABEL = re.compile(
    r"GPU \d+ \(GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\)"
)
# "<what was being done>: NVML_ERROR_X" or "<action> failed: NVML_ERROR_X"
ACTION = re.compile(r"(?:GPU \d+(?: \([^)]*\))?|NVML): (?P<action>.+?)(?: failed)?: NVML_ERROR_")

# Set to run every call position instead of a sample (the figures in RELIABILITY.md).
FULL_ENV = "MIGRESTORE_RELIABILITY_FULL"
# Set to a directory: each test writes its records there as JSON.
OUT_ENV = "MIGRESTORE_RELIABILITY_OUT"


def full_run() -> bool:
    return os.environ.get(FULL_ENV, "") not in ("", "0")


@dataclass
class Record:
    scenario: str
    function: str
    nth: int
    error: str
    outcome: str = ""  # error | success | not reached (fault matrix); killed | ended (crash)
    code: int = 0
    message: str = ""
    problems: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and self.outcome != "not reached"

    @property
    def reached(self) -> bool:
        return self.outcome != "not reached"


REFUSED_RESET = frozenset({"NVML_ERROR_RESET_REQUIRED", "NVML_ERROR_NOT_SUPPORTED"})


def expected_code(fault: Fault) -> int:
    if fault.function == INIT:
        return EXIT_UNAVAILABLE
    if fault.function == GPU_RESET and fault.error in REFUSED_RESET:
        # the platform refuses the reset: a reboot is needed (executor rule 7)
        return EXIT_REBOOT
    return EXIT_FAILED


def judge_message(fault: Fault, message: str) -> List[str]:
    """Rule 2: the error names the NVML error, the GPU and the action."""
    problems: List[str] = []
    if fault.error not in message:
        problems.append(f"the error does not name {fault.error}")
    if fault.function == INIT:
        if "driver" not in message:
            problems.append("an NVML init failure does not say the driver is unavailable")
        return problems
    if fault.function in BEFORE_UUID and re.match(r"GPU \d+: ", message):
        pass  # the GPU by index: its UUID is what was being read
    elif fault.function not in SYSTEM_CALLS and not GPU_LABEL.search(message):
        problems.append("the error names no GPU (index and UUID)")
    match = ACTION.search(message)
    if match is None or not match.group("action").strip():
        problems.append("the error names no action")
    return problems


class Driver(abc.ABC):
    """Runs a scenario: fault-free, under a fault, and the second run after it."""

    def __init__(self, rig: Rig, scenario: Scenario, cfg: Config) -> None:
        self.rig = rig
        self.scenario = scenario
        self.cfg = cfg

    @abc.abstractmethod
    def reset(self) -> None:
        """Bring the node to where each run starts."""

    @abc.abstractmethod
    def once(self) -> Tuple[int, str]:
        """One run: (exit code, the error line's message or "")."""

    def again(self) -> Tuple[int, str]:
        """The fault-free run after a faulted one: the next attempt."""
        return self.once()

    def count(self) -> Dict[str, int]:
        """Calls per function of a fault-free run (rule 3 of scenarios)."""
        self.reset()
        for function in CALLS:
            self.rig.sim.fail(function, NEVER, UNKNOWN)
        code, message = self.once()
        assert code == 0, f"{self.scenario.name}: the fault-free run failed: {message}"
        counts = {f.function: f.seen for f in self.rig.sim.state().faults if f.seen}
        self.rig.sim.clear_faults()
        return counts

    def check(self, fault: Fault) -> Record:
        record = Record(self.scenario.name, fault.function, fault.nth, fault.error)
        self.reset()
        self.rig.sim.fail(fault.function, fault.nth, fault.error)
        record.code, record.message = self.once()
        if fault.function in self.rig.pending_faults():
            self.rig.sim.clear_faults()
            if fault.function in SHARED_READS and self.rig.gpu_count > 1:
                # The GPUs' threads raced for the profile table they share, and fewer
                # reads were made than in the counted run: nothing to judge.
                record.outcome = "not reached"
                return record
            record.problems.append("the fault was never reached")
        if record.code == 0:
            record.outcome = "success"
            if fault.function in CHANGES:
                record.problems.append("a failed change ended in success")
            elif not self.converged():
                record.problems.append("success reported, but the GPUs are not as declared")
        else:
            record.outcome = "error"
            if record.code != expected_code(fault):
                record.problems.append(f"exit code {record.code}, expected {expected_code(fault)}")
            record.problems.extend(judge_message(fault, record.message))
        record.problems.extend(self.rig.clients_back())
        record.problems.extend(self.rig.workers_intact())
        code, message = self.again()
        if code != 0:
            record.problems.append(f"the fault-free run after it failed ({code}): {message}")
        elif not self.converged():
            record.problems.append("the fault-free run after it did not converge")
        record.problems.extend(f"after the second run: {p}" for p in self.rig.clients_back())
        record.problems.extend(f"after the second run: {p}" for p in self.rig.workers_intact())
        return record

    def converged(self) -> bool:
        """Whether the GPUs are as declared now."""
        return self.rig.converged(self.cfg)

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the driver holds."""


class ApplyDriver(Driver):
    """``migrestore apply`` (clients managed) from the scenario's template."""

    def __init__(
        self, rig: Rig, scenario: Scenario, cfg: Config, capsys: pytest.CaptureFixture[str]
    ) -> None:
        super().__init__(rig, scenario, cfg)
        self.capsys = capsys

    def reset(self) -> None:
        self.rig.restore()

    def once(self) -> Tuple[int, str]:
        result = self.rig.migrestore(self.capsys, "apply")
        lines = [line for line in result.err.splitlines() if line.startswith(ERROR_PREFIX)]
        if result.code == 0:
            return 0, ""
        if len(lines) != 1:
            tail = result.err.strip().splitlines()[-3:]
            return result.code, f"expected one error line, got {len(lines)}: {tail}"
        return result.code, lines[0][len(ERROR_PREFIX) :]

    def close(self) -> None:
        # every run opened and closed its own NVML session; only a fault may be left armed
        self.rig.sim.clear_faults()


class WatchDriver(Driver):
    """One NVML session for all runs, like the daemon; each run is a watch tick after
    fresh drift. The tick is ``Daemon.check``, which the watch loop calls every interval;
    an error it raises is what the loop reports (``watch_failed``) before the next tick."""

    def __init__(self, rig: Rig, scenario: Scenario, cfg: Config) -> None:
        super().__init__(rig, scenario, cfg)
        self.journal = io.StringIO()
        logs.configure("journal", "info", self.journal)
        self.daemon = Daemon(
            cfg,
            config_path=rig.config_path,
            select_name=None,
            simulate=rig.state,
            log=logs.get_logger(),
            notifier=Notifier(logs.get_logger()),
        )
        self.daemon.nv = self.daemon.wait_for_driver()
        self.daemon.converge()

    def reset(self) -> None:
        assert self.scenario.drift is not None
        self.scenario.drift(self.rig)

    def once(self) -> Tuple[int, str]:
        return self.tick("interval")

    def again(self) -> Tuple[int, str]:
        """The next attempt after a failed tick: the daemon backs a GPU whose restore
        failed off (issue 12 item 8) until its geometry changes, the delay passes or
        SIGHUP asks; the tick a SIGHUP runs tries every GPU again at once."""
        return self.tick("reload")

    def tick(self, reason: str) -> Tuple[int, str]:
        try:
            self.daemon.check(reason)
        except MigrestoreError as exc:
            return exc.exit_code, str(exc)
        except Exception as exc:  # a bug: the watch loop would die with it
            return 70, f"{type(exc).__name__}: {exc}: {traceback.format_exc(limit=3)}"
        return 0, ""

    def converged(self) -> bool:
        # through the daemon's own session: a second session in this process would take
        # the simulator from beneath it
        assert self.daemon.nv is not None
        plan = engine.decide(self.cfg, self.daemon.nv.observe(), force=True).plan
        return plan.converged

    def close(self) -> None:
        self.daemon.close()
        structlog.reset_defaults()


# --------------------------------------------------------------------------- tables


def tally(records: Sequence[Record]) -> Dict[str, Dict[str, Tuple[int, int]]]:
    """scenario -> error -> (runs, passed)."""
    table: Dict[str, Dict[str, Tuple[int, int]]] = {}
    for r in records:
        if not r.reached:
            continue
        runs, passed = table.setdefault(r.scenario, {}).get(r.error, (0, 0))
        table[r.scenario][r.error] = (runs + 1, passed + int(r.passed))
    return table


def successes(records: Sequence[Record]) -> Dict[str, int]:
    """function -> runs that ended in a verified success (faults on harmless reads)."""
    out: Dict[str, int] = {}
    for r in records:
        if r.outcome == "success":
            out[r.function] = out.get(r.function, 0) + 1
    return out


def render(records: Sequence[Record], errors: Sequence[str]) -> str:
    table = tally(records)
    short = [e.replace("NVML_ERROR_", "") for e in errors]
    lines = ["| scenario | " + " | ".join(short) + " | all |", "|---" * (len(errors) + 2) + "|"]
    for scenario, row in table.items():
        cells = []
        total = [0, 0]
        for error in errors:
            runs, passed = row.get(error, (0, 0))
            total[0] += runs
            total[1] += passed
            cells.append(f"{passed}/{runs}" if runs else "-")
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {total[1]}/{total[0]} |")
    return "\n".join(lines)


def publish(name: str, payload: Dict[str, Any]) -> None:
    """Write ``payload`` as ``$MIGRESTORE_RELIABILITY_OUT/<name>.json`` when set."""
    out = os.environ.get(OUT_ENV)
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.write("\n")


def records_json(records: Sequence[Record]) -> List[Dict[str, Any]]:
    return [asdict(r) for r in records]


def describe_failures(records: Sequence[Record], limit: int = 20) -> str:
    failed = [r for r in records if r.reached and not r.passed]
    lines = [
        f"{r.scenario}: {r.error} on call {r.nth} of {r.function}: exit {r.code}, "
        f"{r.message!r}: {'; '.join(r.problems)}"
        for r in failed[:limit]
    ]
    if len(failed) > limit:
        lines.append(f"... and {len(failed) - limit} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------- workers

T = TypeVar("T")


def run_shares(
    workers: int, items: Sequence[T], part: Callable[[Sequence[T]], List[Record]]
) -> List[Record]:
    """Run ``part`` on ``workers`` interleaved shares of ``items`` at once: one in this
    process, the others in forked children (each builds its own rig, so they share
    nothing but the code). A child that fails raises here with its traceback."""
    children: List[Tuple[int, str]] = []
    records: List[Record] = []
    with tempfile.TemporaryDirectory(prefix="migrestore-shares-") as out:
        for index in range(1, workers):
            path = os.path.join(out, f"{index}.json")
            pid = os.fork()
            if pid == 0:  # the child: run its share, write it, and leave without cleanup
                code = 0
                try:
                    payload: Dict[str, Any] = {"records": records_json(part(items[index::workers]))}
                except BaseException:
                    payload = {"error": traceback.format_exc()}
                    code = 1
                try:
                    with open(path, "w", encoding="utf-8") as f:
                        json.dump(payload, f)
                finally:
                    os._exit(code)
            children.append((pid, path))
        try:
            records.extend(part(items[0::workers]))
        finally:
            for pid, path in children:
                os.waitpid(pid, 0)
                try:
                    with open(path, encoding="utf-8") as f:
                        payload = json.load(f)
                except (OSError, ValueError) as exc:
                    payload = {"error": f"no result from worker {pid}: {exc}"}
                if "error" in payload:
                    raise AssertionError(f"worker {pid} failed:\n{payload['error']}")
                records.extend(Record(**r) for r in payload["records"])
    return records


@contextlib.contextmanager
def session(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Driver]:
    """A fresh rig at the scenario's start (its template saved), and the driver that
    runs the scenario on it."""
    with fast_dir("migrestore-rel-") as tmp:
        rig = Rig(tmp, scenario.spec, monkeypatch)
        try:
            scenario.prepare(rig, capsys)
            cfg = config_of(scenario, rig)
            rig.save_template()
            driver: Driver
            if scenario.watch:
                driver = WatchDriver(rig, scenario, cfg)
            else:
                driver = ApplyDriver(rig, scenario, cfg, capsys)
            try:
                yield driver
            finally:
                driver.close()
        finally:
            rig.close()
