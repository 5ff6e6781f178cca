"""GPU client units: stop them before the GPUs change, start them again afterwards.

Rules:

1. Stops are synchronous and bounded: ``systemctl stop UNIT`` under a timeout, one
   unit at a time, in the configured order (monitoring agents misbehave when stopped
   together). Starts never wait: ``systemctl start --no-block UNIT`` only enqueues the
   job. A client is normally ordered ``After=migrestore.service``, so a blocking start
   from inside our own start job would wait for a job that waits for us: a boot
   deadlock (mig-parted learned this twice).
2. Only units that were active are stopped, and exactly those are started again.
   A listed unit that went down because an earlier one was stopped (it ``Requires=``
   or ``BindsTo=`` it) counts as stopped by us, so it comes back too.
3. Never leave clients stopped: when a stop fails, every unit stopped so far, and the
   one whose stop failed (it was running, and a timed-out stop job can still complete
   in systemd after ``systemctl`` gave up) are started again before ServiceError is
   raised.
4. Unit names are checked before they reach an argv, by ``units.check_unit_name``: the
   rule the config applies, so a name the config accepts is never refused here.
5. ``systemctl`` runs with ``--no-ask-password`` (a service cannot answer a prompt)
   and every call is bounded. It runs from a fixed, root-owned absolute path
   (``/usr/bin/systemctl``, or ``/bin/systemctl`` where only that exists), never found
   through PATH; ``$MIGRESTORE_SYSTEMCTL`` names another one explicitly (set by whoever
   starts migrestore, which is how tests put a stand-in in its place).
6. ``clients_stopped`` is the one place a pass stops clients: a context manager that,
   on every way out (success, error, Ctrl-C), starts exactly the units it stopped plus
   those an earlier run left stopped. Before the first stop it writes a note beside the
   state file naming them, so a run killed in between leaves the next run a list to
   start; the note then keeps only the units whose start could not be queued.
7. Fabric Manager's unit (``nvidia-fabricmanager.service``) is only ever read
   (``fabric_manager_state``, ``is-active``): never stopped nor restarted. Stopping it
   is what makes a single-GPU reset impossible on an Ampere NVSwitch node.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, List, Optional, Sequence, Tuple

from migrestore.errors import ServiceError
from migrestore.logs import BoundLogger
from migrestore.proc import Completed, run_bounded
from migrestore.units import UNIT_SUFFIXES, check_unit_name

__all__ = [
    "QUERY_TIMEOUT",
    "UNIT_SUFFIXES",
    "Clients",
    "Systemctl",
    "check_unit_name",
    "clients_stopped",
    "fabric_manager_state",
    "manages_units",
    "read_note",
    "start_clients",
    "stop_clients",
    "validate_unit",
]

QUERY_TIMEOUT = 30.0  # is-active and start --no-block: both answer at once unless systemd is stuck

# The states in which a unit's processes may be holding a GPU.
RUNNING_STATES = frozenset({"active", "reloading", "activating", "refreshing"})
KNOWN_STATES = RUNNING_STATES | frozenset({"inactive", "failed", "deactivating", "maintenance"})


def validate_unit(name: str) -> str:
    """``name`` when it is a valid unit name; else ServiceError naming the problem."""
    problem = check_unit_name(name)
    if problem is not None:
        raise ServiceError(f"unit name {name!r} {problem} (fix the clients list in the config)")
    return name


def _message(result: Completed) -> str:
    text = " ".join((result.stderr.strip() or result.stdout.strip()).split())
    return text or f"systemctl exited with status {result.returncode}"


SYSTEMCTL_PATHS = ("/usr/bin/systemctl", "/bin/systemctl")


def system_systemctl() -> str:
    """The system's systemctl at its fixed path (rule 5): the first of SYSTEMCTL_PATHS
    that exists, else the first (running it then fails with a clear error)."""
    for path in SYSTEMCTL_PATHS:
        if os.path.isfile(path):
            return path
    return SYSTEMCTL_PATHS[0]


class Systemctl:
    """A thin, bounded wrapper around the ``systemctl`` command."""

    def __init__(self, binary: Optional[str] = None) -> None:
        named = binary or os.environ.get("MIGRESTORE_SYSTEMCTL")
        #: True when a systemctl was named (argument or environment), not the system's own
        self.explicit = bool(named)
        self.binary = named or system_systemctl()

    def _run(self, args: Sequence[str], timeout: float, what: str) -> Completed:
        argv = [self.binary, "--no-ask-password", *args]
        try:
            result = run_bounded(argv, timeout)
        except OSError as err:
            raise ServiceError(
                f"{what}: cannot run {self.binary}: {err.strerror or err} "
                "(is systemd installed? set MIGRESTORE_SYSTEMCTL to its systemctl)"
            ) from None
        if result.timed_out:
            raise ServiceError(
                f"{what}: systemctl did not return within {timeout:g} s and was killed "
                "(see 'systemctl list-jobs' and the unit's journal)"
            )
        return result

    def state(self, unit: str) -> str:
        """The unit's ActiveState (``active``, ``inactive``, ``activating``, ...)."""
        validate_unit(unit)
        result = self._run(["is-active", unit], QUERY_TIMEOUT, f"unit {unit}")
        lines = result.stdout.split()
        state = lines[0] if lines else ""
        if state not in KNOWN_STATES:
            raise ServiceError(f"unit {unit}: cannot read its state: {_message(result)}")
        return state

    def is_active(self, unit: str) -> bool:
        """True when the unit is running (active, reloading, activating, refreshing).
        A unit that is deactivating is on its way down already: not ours to restart."""
        return self.state(unit) in RUNNING_STATES

    def stop(self, unit: str, timeout: float) -> None:
        """``systemctl stop UNIT``, waiting at most ``timeout`` seconds."""
        validate_unit(unit)
        result = self._run(["stop", unit], timeout, f"stopping {unit}")
        if not result.ok:
            raise ServiceError(f"stopping {unit} failed: {_message(result)}")

    def start_no_block(self, unit: str) -> None:
        """``systemctl start --no-block UNIT``: enqueue the start job and return."""
        validate_unit(unit)
        result = self._run(["start", "--no-block", unit], QUERY_TIMEOUT, f"starting {unit}")
        if not result.ok:
            raise ServiceError(f"starting {unit} failed: {_message(result)}")


FABRIC_MANAGER = "nvidia-fabricmanager.service"


def fabric_manager_state(ctl: Optional[Systemctl]) -> str:
    """Fabric Manager's ActiveState (rule 7), or "unknown" when no unit can be read (no
    systemd, no systemctl, a state systemctl does not give)."""
    if not manages_units(ctl):
        return "unknown"
    assert ctl is not None
    try:
        return ctl.state(FABRIC_MANAGER)
    except ServiceError:
        return "unknown"


def start_clients(ctl: Systemctl, units: Sequence[str], log: BoundLogger) -> Tuple[str, ...]:
    """Start ``units`` again, in reverse order, without waiting for them.

    A unit that cannot be enqueued is logged at error and the others still start.
    Returns the units whose start failed.
    """
    failed: List[str] = []
    for unit in reversed(units):
        try:
            ctl.start_no_block(unit)
        except ServiceError as err:
            log.error("unit_start_failed", unit=unit, error=str(err))
            failed.append(unit)
            continue
        log.info("unit_start_queued", unit=unit)
    return tuple(failed)


def stop_clients(
    ctl: Systemctl, units: Sequence[str], timeout: float, log: BoundLogger
) -> Tuple[str, ...]:
    """Stop the active ones of ``units``, one at a time, in order.

    Returns exactly the units stopped (including those that went down with an earlier
    one), in the order they went down; ``start_clients`` with that tuple undoes it.
    On a failure the stopped units are started again and ServiceError is raised.
    """
    for unit in units:
        validate_unit(unit)
    stopped: List[str] = []
    current = ""
    try:
        was_running = [unit for unit in units if ctl.is_active(unit)]
        for unit in units:
            current = unit
            if unit not in was_running:
                log.debug("unit_skipped", unit=unit, outcome="not active")
                continue
            if unit in stopped:
                continue
            if not ctl.is_active(unit):
                # Went down with a unit stopped before it (Requires=, BindsTo=).
                stopped.append(unit)
                log.info("unit_stopped", unit=unit, outcome="stopped with a dependency")
                continue
            ctl.stop(unit, timeout)
            stopped.append(unit)
            log.info("unit_stopped", unit=unit)
    except ServiceError as err:
        restart = list(stopped)
        if current and current not in restart and current in units:
            restart.append(current)
        if current:
            log.error("unit_stop_failed", unit=current, error=str(err))
        else:
            log.error("unit_stop_failed", error=str(err))
        failed = start_clients(ctl, restart, log)
        text = str(err)
        again = [u for u in restart if u not in failed]
        if again:
            text += f"; started again: {', '.join(again)}"
        if failed:
            text += f"; could not start again: {', '.join(failed)} (start them by hand)"
        raise ServiceError(text) from None
    return tuple(stopped)


# --------------------------------------------------------------------------- one pass

SYSTEMD_RUNTIME = "/run/systemd/system"  # exists exactly when systemd is PID 1 (sd_booted)


def manages_units(ctl: Optional[Systemctl]) -> bool:
    """Client units can be managed when systemd runs (or a systemctl was named
    explicitly). Without systemd no unit can be running, so there is none to stop."""
    if ctl is None:
        return False
    return ctl.explicit or os.path.isdir(SYSTEMD_RUNTIME)


def read_note(path: str, clients: Optional[Sequence[str]], log: BoundLogger) -> Tuple[str, ...]:
    """The units of the note at ``path`` that may be started again: the note's trust
    checks (``statefile.read_stopped_units``) and, unless ``clients`` is None (reports),
    only units of the config's client list. What was not trusted is logged."""
    from migrestore import statefile

    units, problems = statefile.read_stopped_units(path, clients)
    for problem in problems:
        log.warning("stopped_units_untrusted", path=path, error=problem)
    return units


def _write_note(path: str, units: Tuple[str, ...], log: BoundLogger) -> None:
    """Record the note (none: remove it). A failure is logged, never raised: the restore
    does not depend on bookkeeping."""
    from migrestore import statefile

    problem = statefile.write_stopped_units(path, units)
    if problem:
        log.warning(
            "stopped_units_not_recorded",
            units=",".join(units),
            error=problem,
            outcome="restore goes on; a run killed before it starts them leaves them stopped",
        )


class Clients:
    """The client units of one pass: what it stopped, and what could not be started
    again. Made by ``clients_stopped``."""

    def __init__(
        self, ctl: Optional[Systemctl], note: str, clients: Sequence[str], log: BoundLogger
    ) -> None:
        self.ctl = ctl
        self.note = note
        self.log = log
        self.earlier = read_note(note, clients, log)  # units an earlier run left stopped
        self.stopped: Tuple[str, ...] = ()
        self.start_failed: Tuple[str, ...] = ()

    def stop(self, units: Sequence[str], timeout: float) -> None:
        """Stop the active ones of ``units`` (rule 2), the note written first."""
        if not units or self.ctl is None:
            return
        if not manages_units(self.ctl):
            self.log.warning(
                "clients_not_managed", outcome="systemd is not running: no client unit to stop"
            )
            return
        active = tuple(u for u in units if self.ctl.is_active(u))
        # Written before the first stop, so a run killed from here on leaves the note
        # (one that cannot be written is logged: the restore goes on).
        _write_note(self.note, tuple(dict.fromkeys(self.earlier + active)), self.log)
        # Until the stops return, every unit that was running counts as stopped: an
        # interrupt (Ctrl-C) in a stop leaves the unit stopped, as systemd finishes a stop
        # job whose systemctl was killed (issue 13 finding 1).
        self.stopped = active
        self.stopped = stop_clients(self.ctl, units, timeout, self.log)

    def start_again(self) -> None:
        again = tuple(dict.fromkeys(self.stopped + self.earlier))
        if self.ctl is None:
            return
        failed = start_clients(self.ctl, again, self.log) if again else ()
        self.start_failed = failed
        _write_note(self.note, tuple(u for u in again if u in failed), self.log)


@contextlib.contextmanager
def clients_stopped(
    ctl: Optional[Systemctl], state_path: str, clients: Sequence[str], log: BoundLogger
) -> Iterator[Clients]:
    """A pass's client units (rule 6): ``clients.stop(units, timeout)`` inside the block
    stops the active ones; leaving the block, however, starts exactly those again, plus
    the units an earlier run left stopped (of those, only ones in ``clients``, the
    config's list). ``ctl`` None: no unit is managed."""
    from migrestore import statefile

    managed = manages_units(ctl)
    pass_clients = Clients(ctl, statefile.note_path(state_path) if managed else "", clients, log)
    if pass_clients.earlier:
        log.warning(
            "units_left_stopped", units=",".join(pass_clients.earlier), outcome="starting them"
        )
    try:
        yield pass_clients
    finally:
        pass_clients.start_again()
