"""One convergence pass, shared by ``migrestore apply`` and the daemon.

The pass is one sequence, read top to bottom in ``converge``:

    observe -> decide (pure) -> [converged: stop here]
            -> with the client units stopped: change -> verify
            -> (the units it stopped are started again) -> hooks, CDI refresh

Rules:

1. Observe and decide once. ``look`` reads the geometry alone (no MIG device UUIDs nor
   processes) and decides from it; the device scan is read, and the decision made
   again, only when the plan would destroy an instance and processes matter (not
   ``force``). A caller that records the device scan anyway (``apply``) reads it in
   the one observation. ``decide`` is pure: it matches rules to GPUs and plans.
2. Nothing is touched when the plan is empty: no unit is stopped, no NVML change made.
3. An invalid or infeasible layout is rejected by the planner before any unit is
   stopped; its error names the rule's ``file:line`` (the planner attaches it).
4. Client units are stopped only when there is something to change, inside
   ``services.clients_stopped``, which starts exactly the units it stopped (and those an
   earlier run left stopped) again on every way out: success, error, Ctrl-C. An
   interrupt during the stops starts every unit that was running (a stop job systemd
   finishes though its systemctl was killed leaves one stopped); the note of them is
   rewritten only after their starts were queued, so a run killed before that leaves
   it for the next run (or the watching daemon's next tick, ``start_left_stopped``).
5. Post-apply hooks and the device node and CDI refresh (``migrestore.cdi``, unless
   ``cdi.refresh: never``) run only after a verified change; a refresh problem is a
   warning in the outcome (``cdi_problems``), never a failure of the pass.
6. The caller holds the GPU lock for the whole pass. This module does no file I/O.
7. One sick GPU does not stop the others (issue 12 item 3): the plan leaves a GPU NVML
   cannot read, or a declared GPU that is not listed, out (``Plan.unrestored``); the
   others are restored and verified; each such GPU gets one error line in the journal
   (index, PCI bus id, what failed, NVML error) and the pass's result is PARTIAL. A
   GPU that falls sick during the run is added to ``Plan.unrestored`` of the outcome
   (executor rule 9), with the same consequences.
8. One GPU that fails alone after the others were applied and verified (a layout its
   new GI does not offer, exit 78; a reboot needed, exit 77: executor rules 6 and 7)
   still gets the device node and CDI refresh for what the others made before its
   error is raised: containers then see the MIG devices that exist. Hooks do not run
   (they follow a successful, verified change only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Union

from migrestore import config as configmod
from migrestore import planner
from migrestore.errors import InfeasibleError, MigrestoreError, RebootNeeded
from migrestore.model import (
    CdiRefresh,
    Config,
    DestroyCi,
    DestroyGi,
    GpuSpec,
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
class Decision:
    """What a pass decided, and from what."""

    plan: Plan
    desired: Dict[str, Optional[GpuSpec]]
    observed: Tuple[GpuState, ...]
    # False: ``observed`` is the geometry alone (no MIG device UUIDs nor processes)
    devices_read: bool = True

    @property
    def converged(self) -> bool:
        return self.plan.converged

    @property
    def destroys(self) -> bool:
        return any(isinstance(a, (DestroyCi, DestroyGi)) for a in self.plan.actions)


def decide(
    cfg: Config, observed: Tuple[GpuState, ...], *, force: bool, devices_read: bool = True
) -> Decision:
    """Pure: match the config's rules to ``observed`` and plan.

    Raises:
        InfeasibleError: naming the rule's file:line; BusyError (unless ``force``).
    """
    desired = configmod.resolve(cfg, observed)
    plan = planner.plan(
        desired, observed, force=force, allow_reset=cfg.ampere_reset == ResetPolicy.ALLOW
    )
    return Decision(plan, dict(desired), observed, devices_read)


def look(nv: Nvml, cfg: Config, *, force: bool, devices: bool = False) -> Decision:
    """Observe and decide, once (rule 1). ``devices``: read the MIG device scan up
    front, for a caller that records it whatever the answer (``apply`` writes it to the
    state file before it exits), rather than reading the GPUs twice."""
    if devices:
        return decide(cfg, nv.observe(), force=force)
    decision = decide(cfg, nv.observe(devices=False), force=True, devices_read=False)
    if decision.converged or force or not decision.destroys:
        return decision
    # Only the processes on instances the plan destroys can change the answer.
    return decide(cfg, nv.observe(), force=force)


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
        """CONVERGED: nothing needed changing; APPLIED: changed and verified; PARTIAL:
        some GPUs could not be restored (sick or missing), the others are as declared."""
        if self.plan.unrestored:
            return RunResult.PARTIAL
        return RunResult.CONVERGED if self.plan.converged else RunResult.APPLIED

    def summary(self) -> str:
        """The one-line STATUS= text."""
        mig = [g for g in self.observed if g.mig_current]
        devices = sum(len(gi.cis) for g in mig for gi in g.instances)
        if self.plan.unrestored:
            count = len(self.plan.unrestored)
            text = f"partial: {count} GPU{'s' if count != 1 else ''} not restored: " + "; ".join(
                self.plan.unrestored
            )
            restored = len({a.gpu for a in self.plan.actions})
            text += f"; the others: {len(mig)} MIG GPUs, {devices} MIG devices" + (
                f" (restored {restored})" if restored else ""
            )
        elif self.plan.converged:
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
        unrestored=outcome.plan.unrestored if outcome is not None else (),
        problems=publish.assess(cfg, observed) if cfg is not None else None,
        config_sha256=cfg.sha256 or None if cfg is not None else None,
        drift=drift,
        nvml_error=getattr(error, "nvml_error", None),
    )


def left_stopped(state_path: str, log: Any) -> Tuple[str, ...]:
    """The client units earlier runs stopped and could not start again (the note
    ``services.clients_stopped`` keeps beside the state file), for reports: the note's
    trust checks apply, the clients list does not."""
    from migrestore import services, statefile

    return services.read_note(statefile.note_path(state_path), None, log)


def start_left_stopped(
    ctl: Optional[Systemctl], cfg: Config, state_path: str, log: Any
) -> Tuple[str, ...]:
    """Start the units an earlier run stopped and did not start again (it was killed or
    interrupted): the watching daemon's every tick, with nothing to change on the GPUs
    (rule 4). Returns the units whose start failed (they stay in the note)."""
    from migrestore import services

    with services.clients_stopped(ctl, state_path, tuple(cfg.clients), log) as clients:
        pass  # stops nothing; leaving the block starts what the note lists
    return clients.start_failed


def converge(
    nv: Nvml,
    cfg: Config,
    *,
    log: Any,
    ctl: Optional[Systemctl] = None,
    force: bool = False,
    status: Optional[Callable[[str], None]] = None,
    extend: Optional[Callable[[float], None]] = None,
    decision: Optional[Decision] = None,
    state_path: str = "",
    devices: bool = False,
) -> Outcome:
    """Bring the GPUs to ``cfg``. ``decision``: one the caller made already under the
    same lock (the watch's drift tick), used instead of observing again; ``devices``: as
    for ``look``. ``ctl`` None: no
    client units are managed (tests, or ``apply --no-clients``). Units an earlier run
    stopped and could not start again (it was killed, say) are started by this one.

    Raises:
        InfeasibleError, BusyError: before anything is touched.
        ActionFailed, VerifyError, ServiceError: after the stopped units were started again.
    """
    say = status or (lambda _text: None)
    more_time = extend or (lambda _seconds: None)
    started = time.monotonic()
    one_gpu_failed: Optional[Union[InfeasibleError, RebootNeeded]] = None
    # Only a pass that changes something needs the executor and hooks (rule 2: a
    # converged start stays light); services reads the note of an earlier run.
    from migrestore import services

    with services.clients_stopped(ctl, state_path, tuple(cfg.clients), log) as clients:
        if decision is None:
            decision = look(nv, cfg, force=force, devices=devices)  # observe, decide
        plan = decision.plan
        for label in plan.unmatched:
            log.info("gpu_unmatched", gpu=label, outcome="left as it is")
        report_unrestored(decision, log)
        if not plan.converged:
            from migrestore import executor

            for action in plan.actions:
                log.debug("planned", gpu=action.gpu_index, action=action.describe())
            if cfg.clients:
                say("stopping GPU clients")
                # systemd's start timeout must cover every bounded stop
                more_time(cfg.unit_timeout * len(cfg.clients) + 30)
                clients.stop(cfg.clients, cfg.unit_timeout)
            say(f"applying {len(plan.actions)} changes")
            resets = sum(1 for a in plan.actions if isinstance(a, Reset))
            more_time(APPLY_BUDGET + RESET_BUDGET * resets)
            try:
                result = executor.execute(  # change, then verify
                    nv,
                    plan,
                    decision.desired,
                    decision.observed,
                    log=log,
                    allow_reset=cfg.ampere_reset == ResetPolicy.ALLOW,
                    # read before an NVSwitch GPU's reset, never stopped (executor rule
                    # 8); read also when no client unit is managed (apply --no-clients)
                    fabric_manager=lambda: services.fabric_manager_state(
                        ctl if ctl is not None else services.Systemctl()
                    ),
                )
            except (InfeasibleError, RebootNeeded) as failed:
                if failed.others_changed <= 0:
                    raise
                one_gpu_failed = failed  # the others are applied and verified (rule 8)
    # Leaving the block started the stopped units again (rule 4).
    if one_gpu_failed is not None:
        _refresh_cdi(nv, cfg, log, say, more_time)
        raise one_gpu_failed
    if plan.converged:
        return Outcome(
            plan,
            decision.observed,
            start_failed=clients.start_failed,
            unmatched=plan.unmatched,
            notes=plan.notes,
            devices_read=decision.devices_read,
        )
    duration = time.monotonic() - started
    failures, cdi_problems = _post_apply(
        nv, cfg, plan, result.changes, state_path, log, say, more_time
    )
    if result.unrestored:  # GPUs that fell sick during the run (executor rule 9)
        plan = replace(plan, unrestored=plan.unrestored + result.unrestored)
    return Outcome(
        plan,
        result.observed,
        changes=result.changes,
        stopped=clients.stopped,
        start_failed=clients.start_failed,
        duration=duration,
        hook_failures=failures,
        unmatched=plan.unmatched,
        notes=plan.notes,
        cdi_problems=cdi_problems,
    )


def report_unrestored(decision: Decision, log: Any) -> None:
    """One journal line per GPU the pass cannot restore (rule 7): a sick GPU with its
    index, PCI bus id, what failed and the NVML error; a declared GPU not listed."""
    for gpu in decision.observed:
        if gpu.sick:
            ident = gpu.identity
            log.error(
                "gpu_sick",
                gpu=ident.index,
                pci_bus_id=ident.pci_bus_id or "unknown (no NVML handle)",
                uuid=ident.uuid or "unknown",
                failed=ident.failed,
                error=ident.error,
                outcome="not restored; the other GPUs are",
            )
    for line in decision.plan.unrestored:
        if " is declared but " in line:
            log.error("gpu_missing", outcome=line)


def _post_apply(
    nv: Nvml,
    cfg: Config,
    plan: Plan,
    changes: int,
    state_path: str,
    log: Any,
    say: Callable[[str], None],
    more_time: Callable[[float], None],
) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """Hooks, then the device node and CDI refresh, after a verified change (rule 5):
    the hook failures and the refresh problems."""
    failures: Tuple[str, ...] = ()
    if cfg.hooks:
        from migrestore import hooks

        say("running post-apply hooks")
        more_time(sum(h.timeout for h in cfg.hooks) + 30)
        changed = tuple(sorted({a.gpu for a in plan.actions}))
        env = hooks.result_environment(
            RunResult.APPLIED.value, f"{changes} NVML changes", state_path, cfg.path, changed
        )
        failures = tuple(hooks.run_hooks(cfg.hooks, log, env))
    return failures, _refresh_cdi(nv, cfg, log, say, more_time)


def _refresh_cdi(
    nv: Nvml, cfg: Config, log: Any, say: Callable[[str], None], more_time: Callable[[float], None]
) -> Tuple[str, ...]:
    """The device node and CDI refresh after a change (rule 5): its problems."""
    if cfg.cdi_refresh != CdiRefresh.AUTO:
        return ()
    from migrestore import cdi

    say("refreshing MIG device nodes and the CDI spec")
    more_time(6 * cfg.cdi_timeout + 30)  # at most six bounded programs (cdi rule 4)
    # a backend that does not say it is the real driver never runs the node's tools
    tools = cdi.Tools.for_node(simulated=getattr(nv.backend, "simulated", True))
    return tuple(cdi.refresh(log, tools, cfg.cdi_timeout))
