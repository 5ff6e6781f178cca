"""One convergence pass: observe, plan, stop clients, apply, verify, restart clients.

Shared by ``migrestore apply`` and the daemon, so both behave the same way.

Rules:

1. Nothing is touched when the plan is empty: no unit is stopped, no NVML change made.
2. An invalid or infeasible layout is rejected by the planner before any unit is stopped.
3. Client units are stopped only when there is something to change, and exactly the
   units that were stopped are started again (``--no-block``), on success and on every
   failure path. An interrupt during the stops starts every unit that was running (a
   stop job systemd finishes though its systemctl was killed leaves one stopped); the
   note of them is rewritten only after their starts were queued, so a run killed
   before that leaves it for the next run (or the watching daemon's next tick).
4. Post-apply hooks and the device node and CDI refresh (``migrestore.cdi``, unless
   ``cdi.refresh: never``) run only after a verified change; a refresh problem is a
   warning in the outcome (``cdi_problems``), never a failure of the pass.
5. The caller holds the GPU lock for the whole pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from migrestore import config as configmod
from migrestore import planner
from migrestore.errors import InfeasibleError, MigrestoreError
from migrestore.model import (
    CdiRefresh,
    Config,
    GpuState,
    Plan,
    Reset,
    ResetPolicy,
    RunResult,
)
from migrestore.nvml import Nvml

if TYPE_CHECKING:
    from migrestore.services import Systemctl

APPLY_BUDGET = 120.0  # seconds asked of systemd for the NVML changes of one pass
RESET_BUDGET = 60.0  # and for each GPU reset on top


@dataclass(frozen=True)
class Outcome:
    """What a pass did."""

    plan: Plan
    observed: Tuple[GpuState, ...]  # the geometry after the pass
    changes: int = 0
    stopped: Tuple[str, ...] = ()
    start_failed: Tuple[str, ...] = ()  # stopped units whose start could not be queued
    duration: float = 0.0
    hook_failures: Tuple[str, ...] = ()
    unmatched: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = field(default=())
    # False: ``observed`` is the geometry alone (no MIG device UUIDs nor processes):
    # a converged pass decides from that and leaves the device scan to the caller.
    devices_read: bool = True
    # device nodes / CDI spec refresh problems (migrestore.cdi): warnings, never a failure
    cdi_problems: Tuple[str, ...] = ()

    @property
    def converged_before(self) -> bool:
        return self.plan.converged

    @property
    def result(self) -> RunResult:
        """CONVERGED: nothing needed changing; APPLIED: changed and verified."""
        return RunResult.CONVERGED if self.plan.converged else RunResult.APPLIED

    def summary(self) -> str:
        """The one-line STATUS= text."""
        mig = [g for g in self.observed if g.mig_current]
        devices = sum(len(gi.cis) for g in mig for gi in g.instances)
        if self.plan.converged:
            text = f"converged: {len(mig)} MIG GPUs, {devices} MIG devices"
        else:
            gpus = len({a.gpu for a in self.plan.actions})
            text = (
                f"restored {gpus} GPU{'s' if gpus != 1 else ''}, {devices} MIG devices "
                f"in {self.duration:.1f}s"
            )
        if self.unmatched:
            text += f"; {len(self.unmatched)} GPU(s) not in the config, left as they are"
        if self.start_failed:
            text += f"; could not start again: {', '.join(self.start_failed)}"
        if self.hook_failures:
            text += f"; {len(self.hook_failures)} hook(s) failed"
        if self.cdi_problems:
            text += "; CDI refresh failed (see the journal), the MIG geometry is kept"
        return text


SYSTEMD_RUNTIME = "/run/systemd/system"  # exists exactly when systemd is PID 1 (sd_booted)


def manages_units(ctl: Optional[Systemctl]) -> bool:
    """Client units can be managed when systemd runs (or a systemctl was named
    explicitly). Without systemd no unit can be running, so there is none to stop."""
    if ctl is None:
        return False
    return ctl.explicit or os.path.isdir(SYSTEMD_RUNTIME)


def driver_of(nv: Optional[Nvml]) -> Optional[str]:
    """The driver version for the state file, or None when it cannot be read."""
    if nv is None:
        return None
    try:
        return nv.driver_version()
    except MigrestoreError:
        return None


def state_document(
    result: RunResult,
    message: str,
    observed: Tuple[GpuState, ...],
    *,
    cfg: Optional[Config] = None,
    outcome: Optional[Outcome] = None,
    driver: Optional[str] = None,
    drift: bool = False,
    error: Optional[BaseException] = None,
) -> Dict[str, Any]:
    """The state file's content for a pass (or a failure, ``outcome`` None, ``error``
    what failed it); ``drift``: the pass restored a drift the watch found."""
    from migrestore import publish, statefile

    return statefile.build_state(
        result,
        message,
        observed,
        outcome.duration if outcome is not None else 0.0,
        config_path=cfg.path if cfg is not None else None,
        selected=cfg.selected if cfg is not None else None,
        driver=driver,
        stopped_units=outcome.stopped if outcome is not None else (),
        start_failed=outcome.start_failed if outcome is not None else (),
        hooks_failed=outcome.hook_failures + outcome.cdi_problems if outcome is not None else (),
        unmatched=outcome.unmatched if outcome is not None else (),
        problems=publish.assess(cfg, observed) if cfg is not None else None,
        config_sha256=cfg.sha256 or None if cfg is not None else None,
        drift=drift,
        nvml_error=getattr(error, "nvml_error", None),
    )


def left_stopped(state_path: str, log: Any) -> Tuple[str, ...]:
    """The client units earlier runs stopped and could not start again (rule 3's note),
    for reports: the note's trust checks apply, the clients list does not."""
    return _read_pending(_pending_file(state_path), None, log)


def make_plan(
    cfg: Config, observed: Tuple[GpuState, ...], *, force: bool
) -> Tuple[Plan, Dict[str, Any]]:
    desired = configmod.resolve(cfg, observed)
    try:
        plan = planner.plan(
            desired, observed, force=force, allow_reset=cfg.ampere_reset == ResetPolicy.ALLOW
        )
    except InfeasibleError as exc:
        if exc.where:
            raise
        # Name the rule that asked for the layout, so the operator knows what to edit.
        where = cfg.path
        for gpu in observed:
            spec = desired.get(gpu.uuid)
            if spec is not None and exc.gpu in (gpu.label(), str(gpu.index), gpu.uuid):
                where = spec.source or cfg.path
        raise InfeasibleError(exc.gpu, exc.reason, where) from None
    return plan, dict(desired)


def _pending_file(state_path: str) -> str:
    """Where the units stopped and not yet started again are recorded (rule 3)."""
    from migrestore import statefile

    return statefile.note_path(state_path)


def _read_pending(path: str, clients: Optional[Tuple[str, ...]], log: Any) -> Tuple[str, ...]:
    from migrestore import statefile

    units, problems = statefile.read_stopped_units(path, clients)
    for problem in problems:
        log.warning("stopped_units_untrusted", path=path, error=problem)
    return units


def _write_pending(path: str, units: Tuple[str, ...], log: Any) -> None:
    """Record the note; a failure is logged, never raised: the restore goes on."""
    from migrestore import statefile

    problem = statefile.write_stopped_units(path, units)
    if problem:
        log.warning(
            "stopped_units_not_recorded",
            units=",".join(units),
            error=problem,
            outcome="restore goes on; a run killed before it starts them leaves them stopped",
        )


def _restart(
    ctl: Optional[Systemctl], units: Tuple[str, ...], pending_path: str, log: Any
) -> Tuple[str, ...]:
    """Start ``units`` again (--no-block); forget those whose start was queued."""
    if ctl is None:
        return ()
    from migrestore import services

    failed = services.start_clients(ctl, units, log) if units else ()
    _write_pending(pending_path, tuple(u for u in units if u in failed), log)
    return failed


def start_left_stopped(
    ctl: Optional[Systemctl], cfg: Config, state_path: str, log: Any
) -> Tuple[str, ...]:
    """Start the units an earlier run stopped and did not start again (it was killed or
    interrupted): the watching daemon's every tick, with nothing to change on the GPUs
    (rule 3). Returns the units whose start failed (they stay in the note)."""
    if not manages_units(ctl):
        return ()
    path = _pending_file(state_path)
    units = _read_pending(path, tuple(cfg.clients), log)
    if not units:
        return ()
    log.warning("units_left_stopped", units=",".join(units), outcome="starting them")
    return _restart(ctl, units, path, log)


def converge(
    nv: Nvml,
    cfg: Config,
    *,
    log: Any,
    ctl: Optional[Systemctl] = None,
    force: bool = False,
    status: Optional[Callable[[str], None]] = None,
    extend: Optional[Callable[[float], None]] = None,
    observed: Optional[Tuple[GpuState, ...]] = None,
    state_path: str = "",
) -> Outcome:
    """Bring the GPUs to ``cfg``. ``ctl`` None: no client units are managed (tests, or
    ``apply --no-clients``). Units an earlier run stopped and could not start again
    (it was killed, say) are started by this one.

    Raises:
        InfeasibleError, BusyError: before anything is touched.
        ActionFailed, VerifyError, ServiceError: after the stopped units were started again.
    """
    say = status or (lambda _text: None)
    more_time = extend or (lambda _seconds: None)
    started = time.monotonic()
    pending_path = _pending_file(state_path) if manages_units(ctl) else ""
    left_stopped = _read_pending(pending_path, tuple(cfg.clients), log)
    if left_stopped:
        log.warning("units_left_stopped", units=",".join(left_stopped), outcome="starting them")
    if observed is None:
        # Whether anything must change is a question about the geometry alone; the
        # MIG device scan (UUIDs, processes) is read only when something must.
        light = nv.observe(devices=False)
        plan, desired = make_plan(cfg, light, force=True)
        if plan.converged:
            for label in plan.unmatched:
                log.info("gpu_unmatched", gpu=label, outcome="left as it is")
            failed = _restart(ctl, left_stopped, pending_path, log)
            return Outcome(
                plan,
                light,
                start_failed=failed,
                unmatched=plan.unmatched,
                notes=plan.notes,
                devices_read=False,
            )
        observed = nv.observe()
    before = observed
    try:
        plan, desired = make_plan(cfg, before, force=force)
    except MigrestoreError:
        _restart(ctl, left_stopped, pending_path, log)
        raise
    for label in plan.unmatched:
        log.info("gpu_unmatched", gpu=label, outcome="left as it is")
    if plan.converged:
        failed = _restart(ctl, left_stopped, pending_path, log)
        return Outcome(
            plan, before, start_failed=failed, unmatched=plan.unmatched, notes=plan.notes
        )

    # Only a pass that changes something needs these (a converged start stays light).
    from migrestore import executor, hooks, services

    for action in plan.actions:
        log.debug("planned", gpu=action.gpu_index, action=action.describe())
    stopped: Tuple[str, ...] = ()
    start_failed: Tuple[str, ...] = ()
    try:
        if cfg.clients and manages_units(ctl):
            assert ctl is not None
            say("stopping GPU clients")
            # systemd's start timeout must cover every bounded stop
            more_time(cfg.unit_timeout * len(cfg.clients) + 30)
            active = tuple(u for u in cfg.clients if ctl.is_active(u))
            # written before the first stop: a run killed from here on leaves the note
            _write_pending(pending_path, tuple(dict.fromkeys(left_stopped + active)), log)
            # Until the stops return, every unit that was running counts as stopped: an
            # interrupt (Ctrl-C) in a stop leaves the unit stopped, as systemd finishes a
            # stop job whose systemctl was killed (issue 13 finding 1).
            stopped = active
            stopped = services.stop_clients(ctl, cfg.clients, cfg.unit_timeout, log)
        elif cfg.clients and ctl is not None:
            log.warning(
                "clients_not_managed", outcome="systemd is not running: no client unit to stop"
            )
        say(f"applying {len(plan.actions)} changes")
        resets = sum(1 for a in plan.actions if isinstance(a, Reset))
        more_time(APPLY_BUDGET + RESET_BUDGET * resets)
        result = executor.execute(
            nv,
            plan,
            desired,
            before,
            log=log,
            allow_reset=cfg.ampere_reset == ResetPolicy.ALLOW,
        )
    finally:
        # On success, on every error and on an interrupt (Ctrl-C): exactly the units
        # stopped, plus those an earlier run left stopped, are started again.
        again = tuple(dict.fromkeys(stopped + left_stopped))
        start_failed = _restart(ctl, again, pending_path, log)
    duration = time.monotonic() - started
    failures: Tuple[str, ...] = ()
    if cfg.hooks:
        say("running post-apply hooks")
        more_time(sum(h.timeout for h in cfg.hooks) + 30)
        changed = tuple(sorted({a.gpu for a in plan.actions}))
        env = hooks.result_environment(
            RunResult.APPLIED.value, f"{result.changes} NVML changes", state_path, cfg.path, changed
        )
        failures = tuple(hooks.run_hooks(cfg.hooks, log, env))
    cdi_problems: Tuple[str, ...] = ()
    if cfg.cdi_refresh == CdiRefresh.AUTO:
        from migrestore import cdi

        say("refreshing MIG device nodes and the CDI spec")
        more_time(cfg.cdi_timeout + 30)  # the whole refresh is bounded (cdi rule 4)
        # a backend that does not say it is the real driver never runs the node's tools
        tools = cdi.Tools.for_node(simulated=getattr(nv.backend, "simulated", True))
        cdi_problems = cdi.refresh(log, tools, cfg.cdi_timeout)
    return Outcome(
        plan,
        result.observed,
        changes=result.changes,
        stopped=stopped,
        start_failed=start_failed,
        duration=duration,
        hook_failures=failures,
        unmatched=plan.unmatched,
        notes=plan.notes,
        cdi_problems=cdi_problems,
    )
