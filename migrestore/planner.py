"""The minimal planner: desired geometry + observed GPUs -> the ordered actions between them.

Rules:

1. Pure: the standard library, ``migrestore.model``, ``migrestore.errors`` and
   ``migrestore.placement`` only. No I/O, no logging, no clock, no randomness: the same
   input always gives the same plan.
2. Minimal: a GI whose profile, placement and CI layout match is kept untouched; a GI
   whose profile and placement match but whose CIs differ keeps the GI and only changes
   CIs; a GPU that already matches gets no action. The plan is empty exactly when every
   GPU with a desired layout is converged (``gpu_converged``).
3. Per GPU the actions are ordered: destroy CIs, destroy GIs, set MIG mode, reset, create
   GIs (ascending placement start), create CIs (by GI start, then CI start). GIs are named
   by placement start because the IDs of new GIs are only known once they exist.
   Without a mode change the actions are cut into independent steps
   (``GpuPlan.steps``; issue 12 item 8): a step is the destroys a set of creations
   needs (GIs whose memory slices overlap, GIs of one profile, every GI when a
   media-engine profile is involved; the CI changes of one kept GI) and those
   creations, in the order above. Steps without a destroy come first, then by lowest
   placement start. A destroy that fails (IN_USE from a holder no process query lists)
   stops its step only: no instance the config keeps is ever destroyed, and the other
   steps still make their part of the declared geometry.
4. Mode: Hopper and later change the mode at once (SET_MODE, never a reset); Ampere
   activates a change through a GPU reset, planned as RESET(if_pending=True) after
   SET_MODE so the executor resets only if the change stayed pending, or RESET(if_pending
   =False) when an earlier change is already pending. Disabling MIG destroys every
   instance first.
5. What cannot be planned yet is deferred, never guessed: a GPU whose driver lists GI
   profiles only with MIG mode on (an empty table while MIG is off, drivers before
   R550) gets its mode actions and nothing more; a GI whose profile's CI profiles are
   unread (no GI of it exists: CI profiles can only be read from a GI) is created
   without CIs. Such GPUs are in ``Plan.deferred`` with a note; the executor runs the
   plan, observes again and plans them once more.
6. All or nothing: an infeasible layout or a forbidden reset on any GPU raises
   ``InfeasibleError`` (its ``where`` is the ``file:line`` of the GPU's rule,
   ``GpuSpec.source``) and no plan is returned; an instance with running processes that
   would be destroyed raises ``BusyError`` unless ``force``, and so does one whose
   processes are unknown (``pids_error``: NOT_SUPPORTED on a vGPU host; then any
   instance of that GPU, a GI without CIs too, since a VM may use it unlisted; and any
   instance of a GPU whose virtualization mode reads HOST_VGPU, ``vgpu_host``, which a
   GPU whose every GI is without CIs needs: it has no MIG device to ask):
   unknown is never zero (issue 12 item 6). Infeasibility is reported
   before processes, so a config error is never masked by a busy GPU.
7. One sick GPU does not stop the others (issue 12 item 3): a GPU observed sick (NVML
   cannot read it, ``GpuState.sick``) gets no plan and one line in ``Plan.unrestored``
   (index, PCI bus id, what failed, the NVML error; the rule that declared it, when a
   healthy-looking spec was matched to it); a GPU ``desired`` declares that was not
   observed gets one line there too, never an error for the whole plan. Non-empty
   ``unrestored`` makes the run PARTIAL.
"""

# Python 3.9 spelling (typing.Dict/Tuple/Optional), as docs/ARCHITECTURE.md asks.

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from migrestore.errors import BusyError, InfeasibleError
from migrestore.model import (
    Action,
    ComputeInstance,
    CreateCi,
    CreateGi,
    DestroyCi,
    DestroyGi,
    GiProfile,
    GpuInstance,
    GpuPlan,
    GpuSpec,
    GpuState,
    InstanceSpec,
    Placement,
    Plan,
    Reset,
    SetMode,
    media_class,
)
from migrestore.placement import solve_cis, solve_gis

# Why processes are unknown on an instance of a GPU NVML reads as a vGPU host, when no
# process query answered NOT_SUPPORTED (a GI without CIs has no MIG device to ask).
VGPU_HOST_UNKNOWN = "virtualization mode HOST_VGPU: a VM may use it and NVML lists no process"


@dataclass(frozen=True)
class _GpuOutcome:
    """The plan of one GPU, or why it needs none."""

    actions: Tuple[Action, ...]
    note: str  # why nothing is done, when nothing is done
    busy: Optional[BusyError]  # the first instance with processes the plan would destroy
    deferred: Tuple[str, ...] = ()  # what is planned after this plan ran, and why
    steps: Tuple[int, ...] = ()  # GpuPlan.steps


def plan(
    desired: Mapping[str, Optional[GpuSpec]],
    observed: Sequence[GpuState],
    *,
    force: bool = False,
    allow_reset: bool = True,
) -> Plan:
    """The actions that turn ``observed`` into ``desired``.

    ``desired`` maps a GPU uuid to its spec; observed GPUs that are absent or mapped to
    None are left untouched and listed in ``Plan.unmatched`` by label. ``force`` allows
    destroying instances with running processes; ``allow_reset`` False (``ampere-reset:
    never``) forbids the GPU reset an Ampere mode change needs.

    Raises:
        InfeasibleError: a layout cannot exist on its GPU, a GPU is not MIG-capable or
            a needed reset is forbidden.
        BusyError: the plan would destroy an instance with running processes (not
            raised with ``force``).
    """
    gpus = sorted(observed, key=lambda g: (g.index, g.uuid))
    unrestored: List[str] = []
    for gpu in gpus:
        if gpu.sick:
            unrestored.append(f"{gpu.identity.describe_sick()}; left as it is")
    healthy = {g.uuid for g in gpus if not g.sick}
    for uuid in sorted(desired):
        declared = desired[uuid]
        if uuid not in healthy and declared is not None:
            where = f"{declared.source}: " if declared.source else ""
            unrestored.append(
                f"{where}GPU {uuid} is declared but NVML does not list it readable "
                "(check `nvidia-smi -L` and the kernel log for the GPU)"
            )

    plans: List[GpuPlan] = []
    unmatched: List[str] = []
    notes: List[str] = []
    deferred: List[str] = []
    busy: Optional[BusyError] = None
    for gpu in gpus:
        if gpu.sick:
            continue
        spec = desired.get(gpu.uuid)
        if spec is None:
            unmatched.append(gpu.label())
            plans.append(GpuPlan(gpu.uuid, gpu.index, ()))
            continue
        try:
            outcome = _plan_gpu(spec, gpu, force=force, allow_reset=allow_reset)
        except InfeasibleError as exc:
            # The rule that asked for the layout, so the operator knows what to edit.
            raise InfeasibleError(exc.gpu, exc.reason, exc.where or spec.source) from None
        if busy is None:
            busy = outcome.busy
        if outcome.note:
            notes.append(outcome.note)
        if outcome.deferred:
            deferred.append(gpu.uuid)
            notes.extend(outcome.deferred)
        plans.append(GpuPlan(gpu.uuid, gpu.index, outcome.actions, spec, outcome.steps))
    if busy is not None:
        raise busy
    return Plan(tuple(plans), tuple(unmatched), tuple(notes), tuple(deferred), tuple(unrestored))


def gpu_converged(spec: GpuSpec, gpu: GpuState) -> bool:
    """True when ``gpu`` already is ``spec``: the plan for it would be empty.

    An infeasible spec is never converged (the GPU cannot show it)."""
    try:
        outcome = _plan_gpu(spec, gpu, force=True, allow_reset=True)
    except InfeasibleError:
        return False
    return not outcome.actions and not outcome.deferred


# --------------------------------------------------------------------------- one GPU


class _Builder:
    """Collects the actions of one GPU in their five buckets."""

    def __init__(self, gpu: GpuState, force: bool) -> None:
        self.gpu = gpu
        self.force = force
        self.label = gpu.label()
        self.destroy_cis: List[Tuple[Tuple[int, int], DestroyCi]] = []
        self.destroy_gis: List[Tuple[int, DestroyGi]] = []
        self.mode: List[Action] = []
        self.create_gis: List[Tuple[int, CreateGi]] = []
        self.create_cis: List[Tuple[Tuple[int, int], CreateCi]] = []
        self.busy: Optional[BusyError] = None
        self.deferred: List[str] = []
        # the NVML error of a MIG device of this GPU whose processes cannot be read: the
        # GPU is a vGPU host and no instance of it has known processes (rule 6)
        self.vgpu_host = next(
            (ci.pids_error for gi in gpu.instances for ci in gi.cis if ci.pids_error), ""
        )

    def defer(self, why: str) -> None:
        self.deferred.append(f"GPU {self.gpu.index}: {why}")

    def set_mode(self, enabled: bool) -> None:
        self.mode.append(SetMode(self.gpu.uuid, self.gpu.index, enabled))

    def reset(self, if_pending: bool) -> None:
        self.mode.append(Reset(self.gpu.uuid, self.gpu.index, if_pending))

    def _refuse(self, instance: str, pids: Tuple[int, ...], unknown: str) -> None:
        if not pids and not unknown:
            # a GPU some MIG device of which answers NOT_SUPPORTED, or that NVML reads
            # as a vGPU host, is one: a VM may use any of its instances (a GI without
            # CIs too) unlisted
            unknown = self.vgpu_host or (VGPU_HOST_UNKNOWN if self.gpu.identity.vgpu_host else "")
        if (pids or unknown) and not self.force and self.busy is None:
            self.busy = BusyError(self.label, instance, pids, unknown)

    def destroy_ci(self, gi: GpuInstance, ci: ComputeInstance) -> None:
        self._refuse(
            f"CI {ci.ci_id} ({ci.profile} at {ci.placement}) in {gi.describe()}",
            ci.pids,
            ci.pids_error,
        )
        act = DestroyCi(
            self.gpu.uuid,
            self.gpu.index,
            profile=ci.profile,
            profile_id=ci.profile_id,
            placement=ci.placement,
            gi_start=gi.placement.start,
            gi_id=gi.gi_id,
            ci_id=ci.ci_id,
        )
        self.destroy_cis.append(((gi.placement.start, ci.placement.start), act))

    def destroy_gi(self, gi: GpuInstance) -> None:
        self._refuse(gi.describe(), gi.pids, gi.pids_error)
        for ci in gi.cis:
            self.destroy_ci(gi, ci)
        act = DestroyGi(
            self.gpu.uuid,
            self.gpu.index,
            profile=gi.profile,
            profile_id=gi.profile_id,
            placement=gi.placement,
            gi_id=gi.gi_id,
        )
        self.destroy_gis.append((gi.placement.start, act))

    def create_gi(self, profile: GiProfile, placement: Placement) -> None:
        act = CreateGi(
            self.gpu.uuid,
            self.gpu.index,
            profile=profile.name,
            profile_id=profile.id,
            placement=placement,
        )
        self.create_gis.append((placement.start, act))

    def create_ci(self, gi_start: int, name: str, profile_id: int, placement: Placement) -> None:
        act = CreateCi(
            self.gpu.uuid,
            self.gpu.index,
            profile=name,
            profile_id=profile_id,
            placement=placement,
            gi_start=gi_start,
        )
        self.create_cis.append(((gi_start, placement.start), act))

    def actions(self) -> Tuple[Action, ...]:
        return tuple(a for a, _ in self.stepped())

    def stepped(self) -> List[Tuple[Action, int]]:
        """The actions in order with their step (rule 3)."""
        destroy_cis = [a for _, a in sorted(self.destroy_cis, key=lambda x: x[0])]
        destroy_gis = [a for _, a in sorted(self.destroy_gis, key=lambda x: x[0])]
        create_gis = [a for _, a in sorted(self.create_gis, key=lambda x: x[0])]
        create_cis = [a for _, a in sorted(self.create_cis, key=lambda x: x[0])]
        if self.mode:
            ordered: List[Action] = [*destroy_cis, *destroy_gis, *self.mode]
            ordered += [*create_gis, *create_cis]
            return [(a, 0) for a in ordered]
        # Union-find over the GIs by placement start ("d" destroyed, "c" created).
        parent: Dict[Tuple[str, int], Tuple[str, int]] = {}

        def find(x: Tuple[str, int]) -> Tuple[str, int]:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def union(x: Tuple[str, int], y: Tuple[str, int]) -> None:
            parent[find(x)] = find(y)

        gone = [(("d", a.placement.start), a.profile, a.placement) for a in destroy_gis]
        made = [(("c", a.placement.start), a.profile, a.placement) for a in create_gis]
        media = any(media_class(p) in ("all", "me") for _, p, _ in gone + made)
        for key, _, _ in gone + made:
            find(key)
        for dkey, dprofile, dplace in gone:
            for ckey, cprofile, cplace in made:
                if media or dprofile == cprofile or dplace.overlaps(cplace):
                    union(dkey, ckey)

        def key_of(action: Action) -> Tuple[str, int]:
            if isinstance(action, DestroyGi):
                return find(("d", action.placement.start))
            if isinstance(action, CreateGi):
                return find(("c", action.placement.start))
            if isinstance(action, DestroyCi):
                gi = ("d", action.gi_start)
                return find(gi) if gi in parent else ("k", action.gi_start)
            if isinstance(action, CreateCi):
                gi = ("c", action.gi_start)
                return find(gi) if gi in parent else ("k", action.gi_start)
            raise AssertionError(f"not a GI or CI action: {action!r}")

        ordered = [*destroy_cis, *destroy_gis, *create_gis, *create_cis]
        groups: Dict[Tuple[str, int], List[Action]] = {}
        for action in ordered:
            groups.setdefault(key_of(action), []).append(action)

        def order(group: List[Action]) -> Tuple[bool, int]:
            destroys = any(isinstance(a, (DestroyCi, DestroyGi)) for a in group)
            starts = [
                a.gi_start if isinstance(a, (DestroyCi, CreateCi)) else a.placement.start
                for a in group
                if not isinstance(a, (SetMode, Reset))
            ]
            return destroys, min(starts)

        out: List[Tuple[Action, int]] = []
        for step, group in enumerate(sorted(groups.values(), key=order)):
            out.extend((a, step) for a in group)
        return out


def _plan_gpu(spec: GpuSpec, gpu: GpuState, *, force: bool, allow_reset: bool) -> _GpuOutcome:
    b = _Builder(gpu, force)
    if spec.mig:
        _plan_enabled(b, spec, gpu, allow_reset)
    else:
        _plan_disabled(b, gpu, allow_reset)
    stepped = b.stepped()
    actions = tuple(a for a, _ in stepped)
    steps = tuple(step for _, step in stepped)
    note = ""
    if not actions and not b.deferred:
        if spec.mig:
            n = len(gpu.instances)
            note = f"GPU {gpu.index}: converged ({n} instance{'' if n == 1 else 's'})"
        else:
            note = f"GPU {gpu.index}: converged (MIG off)"
    if len(set(steps)) <= 1:
        steps = ()
    return _GpuOutcome(actions, note, b.busy, tuple(b.deferred), steps)


def _forbidden_reset(gpu: GpuState, what: str, fix: str) -> InfeasibleError:
    return InfeasibleError(
        gpu.label(),
        f"{what} on this Ampere GPU needs a GPU reset, which `ampere-reset: never` forbids; {fix}",
    )


def _plan_disabled(b: _Builder, gpu: GpuState, allow_reset: bool) -> None:
    ampere = gpu.identity.resets_for_mode
    if not gpu.mig_current:
        if gpu.mig_pending:
            # An earlier enable is pending: cancel it, so the next reset keeps MIG off.
            b.set_mode(False)
        return
    for gi in gpu.instances:
        b.destroy_gi(gi)
    if gpu.mig_pending or not ampere:
        b.set_mode(False)
        if ampere:
            if not allow_reset:
                raise _forbidden_reset(
                    gpu,
                    "disabling MIG mode",
                    f"run `nvidia-smi -i {gpu.index} -mig 0` and reboot: the reboot applies it",
                )
            b.reset(True)
        return
    # Ampere, current on and pending off: a disable is already pending.
    if not allow_reset:
        raise _forbidden_reset(gpu, "the pending MIG disable", "a reboot will apply it")
    b.reset(False)


def _plan_enabled(b: _Builder, spec: GpuSpec, gpu: GpuState, allow_reset: bool) -> None:
    ident = gpu.identity
    if not ident.mig_capable:
        raise InfeasibleError(
            gpu.label(),
            f"{ident.name} is not MIG-capable but its rule sets mig: true; "
            "match it with a rule that sets mig: false or exclude it",
        )
    ampere = ident.resets_for_mode
    current: Tuple[GpuInstance, ...] = ()
    if gpu.mig_current:
        current = gpu.instances
        if not gpu.mig_pending:
            # A disable is pending (Ampere): re-enabling cancels it, no reset needed.
            b.set_mode(True)
    elif gpu.mig_pending and ampere:
        if not allow_reset:
            raise _forbidden_reset(gpu, "the pending MIG enable", "a reboot will apply it")
        b.reset(False)
    else:
        b.set_mode(True)
        if ampere:
            if not allow_reset:
                raise _forbidden_reset(
                    gpu,
                    "enabling MIG mode",
                    f"run `nvidia-smi -i {gpu.index} -mig 1` and reboot: the reboot applies it",
                )
            b.reset(True)

    label = gpu.label()
    if spec.instances and not gpu.profiles and not gpu.mig_current:
        # The driver lists GI profiles only with MIG mode on (before R550).
        b.defer(
            "the driver lists MIG profiles only with MIG mode on; "
            "its GPU instances are planned once MIG is on"
        )
        return
    profiles = {p.name: p for p in gpu.profiles}
    assignments = solve_gis(label, gpu.profiles, current, spec.instances)
    kept_ids = {id(kept) for _, _, kept in assignments if kept is not None}
    for gi in current:
        if id(gi) not in kept_ids:
            b.destroy_gi(gi)
    for wanted, placement, kept in assignments:
        profile = profiles[wanted.profile]  # solve_gis placed only profiles of this GPU
        if not profile.cis_read:
            # No GI of this profile exists, so its CI profiles are unread (a kept GI has
            # them read): make the GI, plan its CIs from what it offers.
            if kept is None:
                b.create_gi(profile, placement)
            b.defer(
                f"the compute instances of the {profile.name} GI at {placement} are planned "
                "once the GI exists (CI profiles are read from the GI)"
            )
            continue
        names = _ci_names(label, profile, wanted)
        if kept is None:
            b.create_gi(profile, placement)
            cis = solve_cis(label, profile, (), names)
            old: Tuple[ComputeInstance, ...] = ()
        else:
            cis = solve_cis(label, profile, kept.cis, names)
            old = kept.cis
        ci_profiles = {c.name: c for c in profile.ci_profiles}
        kept_cis = {id(ci) for _, _, ci in cis if ci is not None}
        if kept is not None:
            for ci in old:
                if id(ci) not in kept_cis:
                    b.destroy_ci(kept, ci)
        for name, ci_placement, kept_ci in cis:
            if kept_ci is not None:
                continue
            b.create_ci(placement.start, name, ci_profiles[name].id, ci_placement)


def _ci_names(label: str, profile: GiProfile, wanted: InstanceSpec) -> Tuple[str, ...]:
    if wanted.no_compute:
        return ()  # compute: [] (a vGPU host's GI): no CI at all
    if wanted.compute:
        return wanted.compute
    default = profile.default_ci()
    if default is None:
        raise InfeasibleError(
            label,
            f"{profile.name}: this GPU's profile table names no default compute instance; "
            "list the CIs under compute",
        )
    return (default.name,)
