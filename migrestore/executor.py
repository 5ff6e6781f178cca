"""Run a plan through the NVML layer, then verify by observing again.

Rules:

1. GPUs are independent: their action lists run in parallel, one thread per GPU. The
   log lines of a GPU are buffered and written in GPU order once every GPU is done, so
   the output is the same whatever the threads' timing.
2. One log line per action, with GPU, action, profile, placement and outcome.
3. Never retry blindly. A failed action stops its step of that GPU's list
   (``GpuPlan.steps``, planner rule 3: the destroys and the creations that need them);
   the GPU's other steps are independent of it and still run, so a destroy that fails
   IN_USE half-way (a holder no process query lists: DCGM, a leaked handle) leaves as
   much of the declared geometry as can be made. The error names the GPU, the action
   and the NVML error; one ``left`` line per failed GPU says what is left (the declared
   GIs in place, those not made, the instance that could not be destroyed). Whatever
   state is left, the next run plans from a fresh observation and converges.
4. A mode change is checked, never assumed: the activation status NVML returns is read,
   and the mode is read back after the change (and after a reset).
5. Success means the observed geometry equals the desired one: after the actions the
   GPUs are observed again and re-planned; anything left to do is a failure.
6. Deferred work (``Plan.deferred``: GI profiles a driver lists only once MIG is on, CI
   profiles read from the GIs just made) is planned after the plan ran, from a fresh
   observation, GPU by GPU, for at most ``ROUNDS`` rounds. A GPU whose layout turns out
   infeasible then (a CI layout its GI does not offer) fails alone with the planner's
   error (exit 78) and keeps what was made; the other GPUs still converge, and the error
   is raised after they did.
7. A GPU whose pending MIG mode change the platform will not activate fails alone with
   ``RebootNeeded`` (exit 77, the unit does not restart on it) and one ``reboot_needed``
   line (GPU index, PCI bus id, what refused, the NVML error, "reboot the node (or reset
   the GPU from the host)"); the other GPUs still converge and the error is raised
   after they did. It is: an Ampere activation status NOT_SUPPORTED or RESET_REQUIRED
   (no reset is tried: the platform said it cannot); a reset answering the same; any
   failed reset while the ``nvidia_drm`` module is loaded (named as the cause); a reset
   that needs NVSwitch peers the config does not let us reset (rule 8).
8. Before an Ampere reset, a GPU of the node's NVSwitch fabric (``Nvml.nvswitch_gpus``)
   is reset alone only while Fabric Manager is active (its unit, read, never stopped
   nor restarted). Otherwise every GPU of the fabric must be reset in one command
   (nvidia-smi(1)): when the config manages every one of them and allows resets, the
   GPU's list stops at its reset, one group reset runs after the round, and every GPU
   of the group is planned again from a fresh observation (the reset destroyed their
   instances); else the GPU fails naming its peers (rule 7).
9. A GPU that falls sick during the run (an action fails with an error of
   ``nvml.SICK``: GPU_IS_LOST, IRQ_ISSUE, UNKNOWN...; Xid 79 can strike during a
   reconfiguration) stops its own list only. After the run it is observed with the
   others: observed sick (nvml rule 10), it gets one ``gpu_sick`` line and one line of
   ``ExecResult.unrestored``, the others are verified and the pass is PARTIAL (issue 12
   item 3); still readable, its action's own error is raised, as for any failure.
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from migrestore import planner
from migrestore.errors import (
    ActionFailed,
    InfeasibleError,
    MigrestoreError,
    NvmlError,
    RebootNeeded,
    VerifyError,
)
from migrestore.model import (
    Action,
    CreateCi,
    CreateGi,
    DestroyCi,
    DestroyGi,
    GpuPlan,
    GpuSpec,
    GpuState,
    Plan,
    Reset,
    SetMode,
    assert_never,
)
from migrestore.nvml import SICK, Nvml

# Plan, run, observe rounds: mode first (drivers before R550), then the GIs, then their CIs.
ROUNDS = 4

NVML_SUCCESS = "NVML_SUCCESS"
NVML_IN_USE = "NVML_ERROR_IN_USE"
NVML_RESET_REQUIRED = "NVML_ERROR_RESET_REQUIRED"
NVML_NOT_SUPPORTED = "NVML_ERROR_NOT_SUPPORTED"
# what the platform answers when it will not reset the GPU (rule 7)
PLATFORM_REFUSES = frozenset({NVML_RESET_REQUIRED, NVML_NOT_SUPPORTED})

FABRIC_MANAGER_UNIT = "nvidia-fabricmanager.service"
# Fabric Manager's unit states in which it facilitates a single-GPU reset (rule 8)
FABRIC_MANAGER_UP = frozenset({"active", "reloading"})
DRM_MODULE = "nvidia_drm"

LogRecord = Tuple[str, str, Dict[str, Any]]  # (level, event, fields)


@dataclass(frozen=True)
class GpuOutcome:
    gpu: str
    gpu_index: int
    changes: int  # NVML calls that changed the GPU
    error: Optional[MigrestoreError]
    records: Tuple[LogRecord, ...]
    group_reset: bool = False  # stopped at its reset, which the group reset does (rule 8)


@dataclass(frozen=True)
class ExecResult:
    changes: int
    gpus_changed: Tuple[int, ...]  # indices of GPUs that had actions
    observed: Tuple[GpuState, ...]  # the geometry after the run, verified
    # GPUs that fell sick during the run (rule 9): one line each, the pass is PARTIAL
    unrestored: Tuple[str, ...] = ()


def _fields(action: Action) -> Dict[str, Any]:
    """The log fields of an action: GPU, then what the action names."""
    fields: Dict[str, Any] = {"gpu": action.gpu_index}
    if isinstance(action, SetMode):
        fields["mig"] = "on" if action.enabled else "off"
    elif isinstance(action, Reset):
        pass
    elif isinstance(action, (DestroyCi, DestroyGi, CreateGi, CreateCi)):
        fields["profile"] = action.profile
        fields["placement"] = str(action.placement)
        if isinstance(action, (DestroyCi, DestroyGi)):
            fields["gi"] = action.gi_id
        if isinstance(action, DestroyCi):
            fields["ci"] = action.ci_id
    else:
        assert_never(action)
    return fields


class _GroupReset(Exception):
    """Ends a GPU's list at its reset: the group reset after the round does it."""


class _Resets:
    """What the resets of one ``execute`` share (rule 8): Fabric Manager's state and the
    NVSwitch fabric, each read once, and whether the config lets every GPU of the fabric
    be reset."""

    def __init__(
        self,
        nv: Nvml,
        desired: Mapping[str, Optional[GpuSpec]],
        observed: Sequence[GpuState],
        allow_reset: bool,
        fabric_manager: Optional[Callable[[], str]],
    ) -> None:
        self.nv = nv
        self.desired = desired
        self.allow_reset = allow_reset
        self.fabric_manager = fabric_manager
        self._lock = threading.Lock()
        self._fm: Optional[str] = None
        self.names = {g.uuid: f"GPU {g.identity.index} ({g.identity.pci_bus_id})" for g in observed}
        self.buses = {g.uuid: g.identity.pci_bus_id for g in observed}

    def name(self, uuid: str) -> str:
        """``GPU 3 (00000000:5D:00.0)``."""
        return self.names.get(uuid, uuid)

    def bus(self, uuid: str) -> str:
        return self.buses.get(uuid, "unknown")

    def fm_text(self) -> str:
        """How Fabric Manager's state reads in a message."""
        state = self.fm_state()
        return "in a state systemd cannot tell" if state == "unknown" else state

    def fm_state(self) -> str:
        """Fabric Manager's unit state, read once ("unknown" when it cannot be read)."""
        with self._lock:
            if self._fm is None:
                self._fm = self.fabric_manager() if self.fabric_manager else "unknown"
            return self._fm

    def group_of(self, uuid: str) -> Tuple[str, ...]:
        """The GPUs that must be reset with ``uuid`` in one command (itself included),
        or () when it may be reset alone."""
        members = self.nv.nvswitch_gpus()
        if uuid not in members or self.fm_state() in FABRIC_MANAGER_UP:
            return ()
        return members

    def may_reset_all(self, members: Sequence[str]) -> bool:
        return self.allow_reset and all(self.desired.get(u) is not None for u in members)

    def drm_loaded(self) -> bool:
        loaded = getattr(self.nv.backend, "module_loaded", None)
        return bool(loaded(DRM_MODULE)) if loaded is not None else False


class _GpuRun:
    """Runs the actions of one GPU and records its log lines."""

    def __init__(self, nv: Nvml, gpu_plan: GpuPlan, observed: GpuState, resets: _Resets) -> None:
        self.nv = nv
        self.resets = resets
        self.index = observed.identity.index
        self.bus_id = observed.identity.pci_bus_id
        self.group = False
        self.plan = gpu_plan
        self.uuid = gpu_plan.gpu
        self.label = observed.label()
        self.records: List[LogRecord] = []
        self.changes = 0
        # GIs are named by placement start in the plan; IDs come from the driver.
        self.gi_ids: Dict[int, int] = {gi.placement.start: gi.gi_id for gi in observed.instances}
        self.want_mig = gpu_plan.spec.mig if gpu_plan.spec is not None else observed.mig_current

    def log(self, level: str, event: str, **fields: Any) -> None:
        self.records.append((level, event, fields))

    def fail(self, action: Action, nvml_error: str, detail: str = "") -> ActionFailed:
        fields = _fields(action)
        self.log("error", action.kind, outcome="failed", nvml_error=nvml_error, **fields)
        return ActionFailed(self.label, action.describe(), nvml_error, detail)

    def reboot_needed(self, refused: str, nvml_error: str, fix: str = "") -> RebootNeeded:
        """The GPU's one line and error of rule 7."""
        err = RebootNeeded(self.label, self.bus_id, refused, nvml_error, fix)
        self.log(
            "error",
            "reboot_needed",
            gpu=self.index,
            pci_bus_id=self.bus_id,
            refused=refused,
            nvml_error=nvml_error,
            outcome=err.fix,
        )
        return err

    def run(self) -> GpuOutcome:
        actions = self.plan.actions
        error: Optional[MigrestoreError] = None
        failed_steps: List[int] = []
        for i, action in enumerate(actions):
            step = self.plan.step_of(i)
            if step in failed_steps:
                continue  # rule 3: the rest of a failed step needs what failed
            following = actions[i + 1] if i + 1 < len(actions) else None
            if following is not None and self.plan.step_of(i + 1) != step:
                following = None
            try:
                self.step(action, following)
            except _GroupReset:
                # the list ends at its reset: the group reset after the round does it,
                # and a plan with a reset has no steps (the reset destroys everything)
                self.group = True
                break
            except MigrestoreError as exc:
                failed_steps.append(step)
                if error is None:
                    error = exc
                if not self.plan.steps:
                    break
        return GpuOutcome(
            self.uuid, self.plan.gpu_index, self.changes, error, tuple(self.records), self.group
        )

    def step(self, action: Action, following: Optional[Action]) -> None:
        if isinstance(action, SetMode):
            self.set_mode(action, following)
        elif isinstance(action, Reset):
            self.reset(action)
        elif isinstance(action, CreateGi):
            self.create_gi(action)
        elif isinstance(action, CreateCi):
            self.create_ci(action)
        elif isinstance(action, (DestroyCi, DestroyGi)):
            self.destroy(action)
        else:
            assert_never(action)

    def destroy(self, action: DestroyCi | DestroyGi) -> None:
        try:
            if isinstance(action, DestroyCi):
                self.nv.destroy_ci(self.uuid, action.gi_id, action.ci_id)
            else:
                self.nv.destroy_gi(self.uuid, action.gi_id)
                self.gi_ids.pop(action.placement.start, None)
        except NvmlError as exc:
            raise self.fail(action, exc.nvml_error) from exc
        self.changes += 1
        self.log("info", action.kind, outcome="ok", **_fields(action))

    def create_gi(self, action: CreateGi) -> None:
        try:
            gi = self.nv.create_gi(self.uuid, action.profile_id, action.placement)
        except NvmlError as exc:
            # A failed profile-table read before the create is named, not taken for it.
            raise self.fail(action, exc.nvml_error, _read_in(exc)) from exc
        self.changes += 1
        if gi.placement != action.placement:
            raise self.fail(action, "PLACEMENT_MISMATCH", f"the driver placed it at {gi.placement}")
        self.gi_ids[action.placement.start] = gi.gi_id
        self.log("info", action.kind, outcome="ok", **_fields(action), gi=gi.gi_id)

    def create_ci(self, action: CreateCi) -> None:
        gi_id = self.gi_ids.get(action.gi_start)
        if gi_id is None:
            raise self.fail(action, "NVML_ERROR_NOT_FOUND", "its GI does not exist")
        try:
            ci = self.nv.create_ci(self.uuid, gi_id, action.profile_id, action.placement)
        except NvmlError as exc:
            # A failed profile-table read before the create is named, not taken for it.
            raise self.fail(action, exc.nvml_error, _read_in(exc)) from exc
        self.changes += 1
        self.log("info", action.kind, outcome="ok", **_fields(action), gi=gi_id, ci=ci.ci_id)

    def set_mode(self, action: SetMode, following: Optional[Action]) -> None:
        enabled = action.enabled
        status = self.nv.set_mig_mode(self.uuid, enabled)
        self.changes += 1
        if status == NVML_SUCCESS:
            current, pending = self.nv.mig_mode(self.uuid)
            if current == enabled:
                self.log("info", action.kind, outcome="ok", **_fields(action))
                return
            if isinstance(following, Reset):
                self.log("info", action.kind, outcome="pending", **_fields(action))
                return
            raise self.fail(
                action,
                "MODE_NOT_ACTIVE",
                f"NVML accepted the change but the mode reads current={'on' if current else 'off'}, "
                f"pending={'on' if pending else 'off'}",
            )
        if status == NVML_IN_USE and isinstance(following, Reset):
            self.log("info", action.kind, outcome="pending", activation=status, **_fields(action))
            return
        if status == NVML_IN_USE:
            raise self.fail(
                action,
                status,
                "the GPU is in use by another client; stop it and run again",
            )
        if status in PLATFORM_REFUSES:
            # The platform cannot reset this GPU (a passthrough GPU in a VM): a reset of
            # ours would be refused too, or "succeed" without effect (rule 7).
            raise self.reboot_needed(
                f"MIG mode {'on' if enabled else 'off'} stays pending: the platform lets "
                "no reset activate it (e.g. a passthrough GPU in a VM)",
                status,
            )
        raise self.fail(action, status, "NVML did not activate the mode change")

    def reset(self, action: Reset) -> None:
        if action.if_pending:
            current, _pending = self.nv.mig_mode(self.uuid)
            if current == self.want_mig:
                self.log(
                    "info",
                    action.kind,
                    outcome="skipped",
                    reason="mode already active",
                    **_fields(action),
                )
                return
        group = self.resets.group_of(self.uuid)
        if group:
            self.reset_with_peers(action, group)
        try:
            self.nv.reset_gpu(self.uuid)
        except NvmlError as exc:
            raise self.reset_failed(action, exc) from exc
        self.changes += 1
        current, pending = self.nv.mig_mode(self.uuid)
        if current != self.want_mig:
            raise self.fail(
                action,
                "MODE_NOT_ACTIVE",
                f"after the reset the mode reads current={'on' if current else 'off'}, pending={'on' if pending else 'off'}",
            )
        # A reset destroys every instance: nothing is left to map.
        self.gi_ids.clear()
        self.log("info", action.kind, outcome="ok", **_fields(action))

    def reset_with_peers(self, action: Reset, group: Tuple[str, ...]) -> None:
        """Rule 8: this GPU cannot be reset alone. Raises _GroupReset (the group reset
        after the round does it) or RebootNeeded naming the peers."""
        fm = self.resets.fm_text()
        peers = [u for u in group if u != self.uuid]
        if self.resets.may_reset_all(group):
            self.log(
                "info",
                action.kind,
                outcome="deferred",
                reason=f"with its {len(peers)} NVSwitch peers in one command "
                f"(Fabric Manager is {fm})",
                **_fields(action),
            )
            raise _GroupReset()
        named = ", ".join(self.resets.name(u) for u in peers)
        unmanaged = [u for u in peers if self.resets.desired.get(u) is None]
        why = (
            "ampere-reset: never forbids resets"
            if not self.resets.allow_reset
            else "no rule of the config manages "
            + ", ".join(self.resets.name(u) for u in unmanaged)
        )
        raise self.reboot_needed(
            f"Fabric Manager ({FABRIC_MANAGER_UNIT}) is {fm}, so this GPU can be reset "
            f"only together with its NVLink peers {named}, and {why}",
            "FABRIC_MANAGER_NOT_RUNNING",
            f"start {FABRIC_MANAGER_UNIT} and run again, or reboot the node",
        )

    def reset_failed(self, action: Reset, exc: NvmlError) -> MigrestoreError:
        """The error of a failed reset: rule 7, or the action's failure."""
        if exc.nvml_error in PLATFORM_REFUSES:
            return self.reboot_needed(
                "the platform refused the GPU reset (e.g. a passthrough GPU in a VM)",
                exc.nvml_error,
            )
        if self.resets.drm_loaded():
            return self.reboot_needed(
                f"the GPU reset failed and the {DRM_MODULE} kernel module is loaded, "
                "which holds the GPU (mig-parted Known Issues)",
                exc.nvml_error,
                f"unload {DRM_MODULE} (modprobe -r {DRM_MODULE}) and run again, or reboot "
                "the node (the pending mode takes effect at boot)",
            )
        detail = ""
        if exc.nvml_error == NVML_IN_USE:
            detail = "a process still holds the GPU; stop it and run again"
        return self.fail(action, exc.nvml_error, detail)


def _emit(log: Any, records: Sequence[LogRecord]) -> None:
    for level, event, fields in records:
        getattr(log, level)(event, **fields)


def execute(
    nv: Nvml,
    plan: Plan,
    desired: Mapping[str, Optional[GpuSpec]],
    observed: Sequence[GpuState],
    *,
    log: Any,
    allow_reset: bool = True,
    parallel: bool = True,
    fabric_manager: Optional[Callable[[], str]] = None,
) -> ExecResult:
    """Run ``plan`` (made from ``observed``) and verify the result against ``desired``.
    ``fabric_manager`` reads Fabric Manager's unit state (rule 8; None: unknown).

    Raises:
        ActionFailed: an action failed (the first failing GPU by index is reported; the
            other GPUs ran to their end).
        VerifyError: every action succeeded but the GPUs do not show the desired geometry.
        InfeasibleError, RebootNeeded: one GPU could not be restored (rules 6, 7) and
            every other GPU was, and verified.
    """
    changes = 0
    changed: List[int] = []
    infeasible: List[InfeasibleError] = []
    reboot: Dict[str, Tuple[int, RebootNeeded]] = {}
    fell: Dict[str, GpuOutcome] = {}  # GPUs whose action failed with a SICK error (rule 9)
    resets = _Resets(nv, desired, observed, allow_reset, fabric_manager)
    for round_no in range(ROUNDS):
        outcomes = _run_round(nv, plan, observed, log, parallel, resets)
        changes += sum(o.changes for o in outcomes)
        changed.extend(o.gpu_index for o in outcomes if o.gpu_index not in changed)
        for o in outcomes:
            if isinstance(o.error, RebootNeeded):
                reboot[o.gpu] = (o.gpu_index, o.error)
            elif o.error is not None and getattr(o.error, "nvml_error", "") in SICK:
                fell[o.gpu] = o  # rule 9: sick now, or a plain failure: verification says
        failed = [
            o for o in outcomes if o.error is not None and o.gpu not in reboot and o.gpu not in fell
        ]
        if failed:
            first = failed[0].error
            assert first is not None
            lefts = _report_left(nv, failed, desired, log)
            if len(failed) > 1:
                others = ", ".join(str(o.gpu_index) for o in failed[1:])
                log.error("other_gpus_failed", gpus=others)
            if isinstance(first, ActionFailed):
                first.failed_gpus = tuple(o.gpu for o in failed)
                first.held = tuple(o.gpu for o in failed if _held(o.error))
                first.left = lefts
                if any(lefts):  # the state file and status say what is left
                    first.message += "; left: " + "; ".join(t for t in lefts if t)
            raise first
        again = list(plan.deferred)
        if any(o.group_reset for o in outcomes):
            changes += _group_reset(nv, resets, log)
            # the reset destroyed every instance of the group: plan each GPU again
            again.extend(u for u in nv.nvswitch_gpus() if u not in again)
        again = [u for u in again if u not in reboot and u not in fell]
        if not again or round_no == ROUNDS - 1:
            break
        observed = nv.observe()
        plan, failures = _replan(again, desired, observed, allow_reset)
        for failure in failures:
            log.error("infeasible", gpu=failure.gpu, error=str(failure))
        infeasible.extend(failures)
    after = nv.observe()
    unrestored = _fell_sick(fell, after, log)
    failed_gpus = {f.gpu for f in infeasible}
    check_desired = {
        uuid: spec
        for uuid, spec in desired.items()
        if uuid not in reboot
        and uuid not in fell
        and not any(uuid == g.uuid and g.label() in failed_gpus for g in after)
    }
    check = planner.plan(check_desired, after, force=True, allow_reset=allow_reset)
    if not check.converged:
        left = check.actions
        if not left:
            raise VerifyError(f"after applying, work is still deferred: {check.notes[-1]}")
        raise VerifyError(
            f"after applying, GPU {left[0].gpu_index} is not as declared: "
            f"{len(left)} action(s) still needed, first: {left[0].describe()}"
        )
    if infeasible:
        infeasible[0].others_changed = changes
        raise infeasible[0]
    if reboot:
        ordered = sorted(reboot.values(), key=lambda pair: pair[0])
        if len(ordered) > 1:
            others = ", ".join(str(index) for index, _ in ordered[1:])
            log.error("other_gpus_need_a_reboot", gpus=others)
        first_reboot = ordered[0][1]
        first_reboot.failed_gpus = tuple(sorted(reboot, key=lambda u: reboot[u][0]))
        first_reboot.left = ("",) * len(first_reboot.failed_gpus)
        first_reboot.others_changed = changes
        raise first_reboot
    return ExecResult(changes, tuple(sorted(changed)), tuple(after), unrestored)


def _fell_sick(
    fell: Mapping[str, GpuOutcome], after: Sequence[GpuState], log: Any
) -> Tuple[str, ...]:
    """Rule 9: each GPU whose action failed with a SICK error is observed after the run;
    sick, it is one ``gpu_sick`` line and one line of the pass's unrestored GPUs; still
    readable, its action's own error is raised (the other GPUs ran to their end)."""
    lines: List[str] = []
    by_index = {g.identity.index: g for g in after}
    for outcome in sorted(fell.values(), key=lambda o: o.gpu_index):
        gpu = by_index.get(outcome.gpu_index)
        assert outcome.error is not None
        if gpu is None or not gpu.sick:
            raise outcome.error
        ident = gpu.identity
        log.error(
            "gpu_sick",
            gpu=ident.index,
            pci_bus_id=ident.pci_bus_id or "unknown (no NVML handle)",
            uuid=ident.uuid or outcome.gpu,
            failed=ident.failed,
            error=ident.error,
            outcome="fell sick during the restore; not restored; the other GPUs are",
        )
        lines.append(f"{ident.describe_sick()}; fell sick during the restore, left as it is")
    return tuple(lines)


def _group_reset(nv: Nvml, resets: _Resets, log: Any) -> int:
    """One reset of every GPU of the NVSwitch fabric, in one command (rule 8); returns
    the changes made."""
    members = nv.nvswitch_gpus()
    names = ", ".join(resets.name(u) for u in members)
    buses = ",".join(resets.bus(u) for u in members)
    label = ", ".join(resets.name(u).replace("GPU ", "", 1) for u in members)
    fm = resets.fm_state()
    try:
        nv.reset_gpus(members)
    except NvmlError as exc:
        log.error(
            "group_reset",
            gpus=names,
            fabric_manager=fm,
            outcome="failed",
            nvml_error=exc.nvml_error,
        )
        failure: Union[RebootNeeded, ActionFailed]
        if exc.nvml_error in PLATFORM_REFUSES:
            failure = RebootNeeded(
                label, buses, "the platform refused the GPU reset", exc.nvml_error
            )
        elif resets.drm_loaded():
            failure = RebootNeeded(
                label,
                buses,
                f"the GPU reset failed and the {DRM_MODULE} kernel module is loaded, "
                "which holds the GPUs",
                exc.nvml_error,
                f"unload {DRM_MODULE} (modprobe -r {DRM_MODULE}) and run again, or reboot "
                "the node (the pending mode takes effect at boot)",
            )
        else:
            failure = ActionFailed(
                label, "reset the NVSwitch group together", exc.nvml_error, str(exc)
            )
        # every GPU of the group is left as it was (the daemon backs them off)
        failure.failed_gpus = tuple(members)
        failure.left = ("",) * len(members)
        raise failure from exc
    log.info("group_reset", gpus=names, fabric_manager=fm, outcome="ok")
    return len(members)


def left_text(gpu: GpuState, spec: Optional[GpuSpec], error: MigrestoreError) -> str:
    """What a failed GPU is left with (rule 3): the declared GIs in place, those not
    made, and what failed."""
    if spec is None or not spec.mig:
        return f"GPU {gpu.index}: {error}"
    try:
        rest = planner.plan({gpu.uuid: spec}, [gpu], force=True)
    except MigrestoreError:
        return f"GPU {gpu.index}: {error}"
    wanted = len(spec.instances)
    missing = [a for a in rest.actions if isinstance(a, CreateGi)]
    extra = [a for a in rest.actions if isinstance(a, DestroyGi)]
    cis = sum(1 for a in rest.actions if isinstance(a, (CreateCi, DestroyCi)))
    text = f"GPU {gpu.index}: {wanted - len(missing)} of {wanted} declared GPU instances in place"
    if missing:
        text += "; not made: " + ", ".join(f"{a.profile} at {a.placement}" for a in missing)
    if extra:
        text += "; still there: " + ", ".join(
            f"GI {a.gi_id} ({a.profile} at {a.placement})" for a in extra
        )
    if cis:
        text += f"; {cis} compute-instance change(s) left"
    return text


def _held(error: Optional[MigrestoreError]) -> bool:
    """A destroy that answered IN_USE: something holds the instance (rule 3)."""
    return (
        isinstance(error, ActionFailed)
        and error.nvml_error == NVML_IN_USE
        and error.action.split(": ", 1)[-1].startswith("destroy ")
    )


def _report_left(
    nv: Nvml,
    failed: Sequence[GpuOutcome],
    desired: Mapping[str, Optional[GpuSpec]],
    log: Any,
) -> Tuple[str, ...]:
    """One ``left`` error line per failed GPU, from a fresh read of it (rule 3); the
    texts in the order of ``failed`` ("" for a GPU that could not be read again)."""
    lines: List[str] = []
    for outcome in failed:
        assert outcome.error is not None
        try:
            gpu = nv.observe_gpu(outcome.gpu)
        except MigrestoreError:
            lines.append("")  # the failure itself is reported; the read adds nothing
            continue
        text = left_text(gpu, desired.get(outcome.gpu), outcome.error)
        fields: Dict[str, Any] = {"gpu": outcome.gpu_index}
        if isinstance(outcome.error, ActionFailed):
            fields["failed"] = outcome.error.action
            fields["nvml_error"] = outcome.error.nvml_error
        log.error("left", outcome=text, **fields)
        lines.append(text)
    return tuple(lines)


def _run_round(
    nv: Nvml,
    plan: Plan,
    observed: Sequence[GpuState],
    log: Any,
    parallel: bool,
    resets: _Resets,
) -> List[GpuOutcome]:
    by_uuid = {g.uuid: g for g in observed}
    work = [g for g in plan.gpus if g.actions]
    runs = [_GpuRun(nv, g, by_uuid[g.gpu], resets) for g in work]
    if parallel and len(runs) > 1:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(runs)) as pool:
            outcomes = list(pool.map(lambda r: r.run(), runs))
    else:
        outcomes = [r.run() for r in runs]
    outcomes.sort(key=lambda o: o.gpu_index)
    for outcome in outcomes:
        _emit(log, outcome.records)
    return outcomes


def _replan(
    uuids: Sequence[str],
    desired: Mapping[str, Optional[GpuSpec]],
    observed: Sequence[GpuState],
    allow_reset: bool,
) -> Tuple[Plan, List[InfeasibleError]]:
    """The next round for the deferred GPUs, planned one GPU at a time (rule 6)."""
    gpu_plans: List[GpuPlan] = []
    deferred: List[str] = []
    notes: List[str] = []
    failures: List[InfeasibleError] = []
    by_uuid = {g.uuid: g for g in observed}
    for uuid in uuids:
        gpu = by_uuid.get(uuid)
        if gpu is None:
            continue
        try:
            one = planner.plan(
                {uuid: desired.get(uuid)}, [gpu], force=True, allow_reset=allow_reset
            )
        except InfeasibleError as err:
            spec = desired.get(uuid)
            where = err.where or (spec.source if spec is not None else "")
            left = "the GPU instances made so far are kept; the other GPUs were still applied"
            failures.append(InfeasibleError(err.gpu, err.reason, where, left))
            continue
        gpu_plans.extend(one.gpus)
        deferred.extend(one.deferred)
        notes.extend(one.notes)
    return Plan(tuple(gpu_plans), (), tuple(notes), tuple(deferred)), failures


def _read_in(exc: NvmlError) -> str:
    """The NVML read that failed inside an action (``what`` names the call), or "" when
    the change itself failed (``NvmlError.change``)."""
    return "" if exc.change else f"while: {exc.what}"
