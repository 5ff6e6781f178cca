"""Rendering for people and scripts: ``status``, ``profiles``, ``plan`` and drift lines.

Rules:

1. Pure: observed state in, ``dict``/``str`` out; no I/O, no NVML.
2. The JSON forms are plain data (dicts, lists, str, int, bool) that ``json.dumps``
   accepts as they are; placements are ``[start, size]`` pairs; every GPU carries its
   index and UUID so scripts never rely on order.
3. The text forms are tables in nvidia-smi's vocabulary, with the placements nvidia-smi
   hides: GI and CI placements as ``start:size``, possible placements as nvidia-smi
   ``mig -lgipp`` prints them (``{0,1,2,3,4,5,6}:1``). A ``*`` marks the CI profile
   ``nvidia-smi mig -cci``/``-C`` creates by default.
4. A plan reads like a diff: ``-`` destroys, ``~`` mode changes and resets, ``+``
   creations, one action per line in the planner's order, then the no-op notes and the
   GPUs no rule matched, then one closing line. Each action kind has its own JSON
   fields (exhaustive over ``model.Action``, checked by mypy).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from migrestore.model import (
    Action,
    CiProfile,
    CreateCi,
    CreateGi,
    DestroyCi,
    DestroyGi,
    GiProfile,
    GpuState,
    Placement,
    Plan,
    Reset,
    SetMode,
    assert_never,
)

# --------------------------------------------------------------------------- helpers


def _pair(placement: Placement) -> List[int]:
    return [placement.start, placement.size]


def placements_text(placements: Sequence[Placement]) -> str:
    """``{0,1,2,3,4,5,6}:1`` as ``nvidia-smi mig -lgipp`` prints it; one group per size
    when the sizes differ; ``-`` when there is none."""
    if not placements:
        return "-"
    by_size: Dict[int, List[int]] = {}
    for p in sorted(placements, key=lambda p: (p.size, p.start)):
        by_size.setdefault(p.size, []).append(p.start)
    return " ".join(
        "{" + ",".join(str(s) for s in starts) + "}:" + str(size)
        for size, starts in by_size.items()
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> List[str]:
    """Columns padded to their widest cell; numbers (cells of digits) right-aligned."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str], numeric: Sequence[bool]) -> str:
        parts = [
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return (indent + "  ".join(parts)).rstrip()

    numeric = [
        bool(rows) and all(row[i].isdigit() or row[i] == "-" for row in rows)
        for i in range(len(header))
    ]
    out = [line(header, numeric)]
    out.extend(line(row, numeric) for row in rows)
    return out


def _mode(on: bool) -> str:
    return "enabled" if on else "disabled"


def _header(gpu: GpuState) -> str:
    ident = gpu.identity
    if ident.sick:
        uuid = ident.uuid or "UUID unreadable"
        bus = ident.pci_bus_id or "unknown (no NVML handle)"
        return (
            f"GPU {ident.index}: SICK ({uuid}) bus {bus}: {ident.failed}: {ident.error}; "
            "not restored"
        )
    text = f"GPU {ident.index}: {ident.name} ({ident.uuid}) bus {ident.pci_bus_id}"
    if not ident.mig_capable:
        return f"{text}, MIG not supported"
    return f"{text}, MIG {_mode(gpu.mig_current)} (pending: {_mode(gpu.mig_pending)})"


def _display_order(profiles: Sequence[GiProfile]) -> List[GiProfile]:
    """nvidia-smi's order: by compute slices, then memory, then profile index."""
    return sorted(profiles, key=lambda p: (p.slices, p.memory_mib, p.index))


# --------------------------------------------------------------------------- status


def status_json(observed: Sequence[GpuState], driver_version: str) -> Dict[str, Any]:
    """The observed geometry as data (``migrestore status --json``)."""
    gpus = []
    for gpu in observed:
        ident = gpu.identity
        gpus.append(
            {
                "index": ident.index,
                "uuid": ident.uuid,
                "pci_bus_id": ident.pci_bus_id,
                "pci_device_id": f"0x{ident.pci_device_id:08X}",
                "name": ident.name,
                "architecture": ident.architecture,
                # NVML reads its virtualization mode as a vGPU host's (nvml rule 11)
                "vgpu_host": ident.vgpu_host,
                "error": (
                    {"nvml_error": ident.error, "failed": ident.failed} if ident.sick else None
                ),
                "mig": {
                    "capable": ident.mig_capable,
                    "current": gpu.mig_current,
                    "pending": gpu.mig_pending,
                },
                "instances": [
                    {
                        "gi_id": gi.gi_id,
                        "profile": gi.profile,
                        "profile_id": gi.profile_id,
                        "placement": _pair(gi.placement),
                        "compute": [
                            {
                                "ci_id": ci.ci_id,
                                "profile": ci.profile,
                                "profile_id": ci.profile_id,
                                "placement": _pair(ci.placement),
                                "uuid": ci.uuid,
                                "pids": list(ci.pids),
                                # the NVML error when processes cannot be read (a vGPU
                                # host): pids is then unknown, not empty
                                "pids_error": ci.pids_error or None,
                            }
                            for ci in gi.cis
                        ],
                    }
                    for gi in gpu.instances
                ],
            }
        )
    return {"driver_version": driver_version, "gpus": gpus}


_STATUS_HEADER = (
    "GI ID",
    "Profile",
    "Placement",
    "CI ID",
    "CI profile",
    "CI placement",
    "MIG device UUID",
    "PIDs",
)


def status_text(observed: Sequence[GpuState]) -> str:
    """One block per GPU: a header line, then one row per CI (a GI without CIs gets a
    row of its own with ``-`` in the CI columns)."""
    if not observed:
        return "no GPUs found\n"
    blocks = []
    for gpu in observed:
        lines = [_header(gpu)]
        if gpu.identity.mig_capable and gpu.mig_current:
            rows: List[Tuple[str, ...]] = []
            for gi in gpu.instances:
                first = (str(gi.gi_id), gi.profile, str(gi.placement))
                if not gi.cis:
                    rows.append((*first, "-", "-", "-", "-", "-"))
                for ci in gi.cis:
                    pids = ",".join(str(p) for p in ci.pids) or "-"
                    if ci.pids_error:
                        pids = f"unknown ({ci.pids_error.replace('NVML_ERROR_', '')})"
                    ci_cells = (str(ci.ci_id), ci.profile, str(ci.placement), ci.uuid or "-", pids)
                    rows.append((*first, *ci_cells))
            if rows:
                lines.extend(_table(_STATUS_HEADER, rows))
            else:
                lines.append("  no GPU instances")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------------- profiles


def _ci_json(ci: CiProfile) -> Dict[str, Any]:
    return {
        "id": ci.id,
        "name": ci.name,
        "slices": ci.slices,
        "max": ci.max,
        "sms": ci.sms,
        "default": ci.default,
        "placements": [_pair(p) for p in ci.placements],
    }


def profiles_json(observed: Sequence[GpuState]) -> Dict[str, Any]:
    """Each GPU's GI profile table with the CI profiles of each GI profile
    (``migrestore profiles --json``)."""
    gpus = []
    for gpu in observed:
        gpus.append(
            {
                "index": gpu.identity.index,
                "uuid": gpu.identity.uuid,
                "name": gpu.identity.name,
                "mig_capable": gpu.identity.mig_capable,
                "profiles": [
                    {
                        "id": p.id,
                        "index": p.index,
                        "name": p.name,
                        "slices": p.slices,
                        "memory_mib": p.memory_mib,
                        "sms": p.sms,
                        "max": p.max,
                        "copy_engines": p.copy_engines,
                        "decoders": p.decoders,
                        "encoders": p.encoders,
                        "jpeg": p.jpeg,
                        "ofa": p.ofa,
                        "placements": [_pair(pl) for pl in p.placements],
                        "compute": [_ci_json(ci) for ci in p.ci_profiles],
                        # False: no GI of this profile exists, so its CI profiles could
                        # not be read from the GPU yet ("compute" is empty)
                        "compute_read": p.cis_read,
                    }
                    for p in gpu.profiles
                ],
            }
        )
    return {"gpus": gpus}


_GI_HEADER = (
    "Profile",
    "ID",
    "Index",
    "Max",
    "Memory MiB",
    "SMs",
    "CE",
    "DEC",
    "ENC",
    "JPG",
    "OFA",
    "Placements",
)
_CI_HEADER = ("GI profile", "CI profile", "ID", "Max", "SMs", "Placements")


def profiles_text(observed: Sequence[GpuState]) -> str:
    """Per GPU the GI profiles (like ``nvidia-smi mig -lgip`` with the ``-lgipp``
    placements) and the CI profiles of each GI profile (like ``-lcip``; CI placements
    count the GI's compute slices)."""
    if not observed:
        return "no GPUs found\n"
    blocks = []
    for gpu in observed:
        lines = [_header(gpu)]
        if not gpu.identity.mig_capable:
            blocks.append("\n".join(lines))
            continue
        if not gpu.profiles:
            if not gpu.mig_current:
                lines.append(
                    "  no GPU instance profiles reported (drivers before R550 list them "
                    "only with MIG mode on)"
                )
            else:
                lines.append("  no GPU instance profiles reported")
            blocks.append("\n".join(lines))
            continue
        ordered = _display_order(gpu.profiles)
        gi_rows = [
            (
                p.name,
                str(p.id),
                str(p.index),
                str(p.max),
                str(p.memory_mib),
                str(p.sms),
                str(p.copy_engines),
                str(p.decoders),
                str(p.encoders),
                str(p.jpeg),
                str(p.ofa),
                placements_text(p.placements),
            )
            for p in ordered
        ]
        lines.extend(_table(_GI_HEADER, gi_rows))
        ci_rows: List[Tuple[str, ...]] = []
        unread = [p.name for p in ordered if not p.cis_read]
        for p in ordered:
            for i, ci in enumerate(p.ci_profiles):
                ci_rows.append(
                    (
                        p.name if i == 0 else "",
                        ci.name + ("*" if ci.default else ""),
                        str(ci.id),
                        str(ci.max),
                        str(ci.sms),
                        placements_text(ci.placements),
                    )
                )
        if ci_rows:
            lines.append("")
            lines.append("  CI profiles read from the GPU's GIs:")
            lines.extend(_table(_CI_HEADER, ci_rows))
        if unread:
            lines.append("")
            lines.append(
                "  CI profiles not readable yet (no GI of the profile exists; they are read "
                "from a GI): " + ", ".join(unread)
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------------- plan


def _sign(action: Action) -> str:
    if isinstance(action, (DestroyCi, DestroyGi)):
        return "-"
    if isinstance(action, (SetMode, Reset)):
        return "~"
    if isinstance(action, (CreateGi, CreateCi)):
        return "+"
    assert_never(action)


def action_json(action: Action) -> Dict[str, Any]:
    """One action as data: GPU, kind, the kind's own fields, and its description."""
    item: Dict[str, Any] = {"gpu": action.gpu_index, "uuid": action.gpu, "action": action.kind}
    if isinstance(action, SetMode):
        item["enabled"] = action.enabled
    elif isinstance(action, Reset):
        item["if_pending"] = action.if_pending
    elif isinstance(action, (DestroyCi, DestroyGi, CreateGi, CreateCi)):
        item["profile"] = action.profile
        item["placement"] = _pair(action.placement)
        if isinstance(action, CreateCi):
            item["gi_start"] = action.gi_start
        if isinstance(action, (DestroyCi, DestroyGi)):
            item["gi_id"] = action.gi_id
        if isinstance(action, DestroyCi):
            item["ci_id"] = action.ci_id
    else:
        assert_never(action)
    item["description"] = action.describe()
    return item


def plan_json(plan: Plan) -> Dict[str, Any]:
    """``migrestore plan --json``."""
    return {
        "converged": plan.converged,
        "actions": [action_json(a) for a in plan.actions],
        "unmatched": list(plan.unmatched),
        "notes": list(plan.notes),
        # GPUs with work planned only after these actions ran (profiles a driver lists
        # once MIG is on; CI profiles read from the GIs about to be made)
        "deferred": list(plan.deferred),
        "unrestored": list(plan.unrestored),
    }


def plan_text(plan: Plan) -> str:
    """``migrestore plan`` and ``apply --dry-run``: a diff of the GPUs (rule 4)."""
    lines = [f"{_sign(a)} {a.describe()}" for a in plan.actions]
    lines.extend(f"  {note}" for note in plan.notes)
    lines.extend(f"  GPU {label}: no rule matches, left as it is" for label in plan.unmatched)
    lines.extend(f"! not restored: {line}" for line in plan.unrestored)
    if plan.converged:
        lines.append("nothing to do: the GPUs match the config")
    else:
        lines.append(f"{len(plan.actions)} change(s) planned")
        if plan.deferred:
            lines.append(
                "more is planned once they ran, from what the GPU then reports (see the notes)"
            )
    return "\n".join(lines) + "\n"


def drift_text(actions: Sequence[Action], shown: int = 3) -> str:
    """The drift a watch tick found, in one line: the first actions that would undo it."""
    text = "; ".join(a.describe() for a in actions[:shown])
    if len(actions) > shown:
        text += f" (+{len(actions) - shown} more)"
    return text
