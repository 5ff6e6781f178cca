"""Observed geometry -> a native config (``migrestore export``), the reverse direction.

Rules:

1. One rule per distinct geometry, naming its GPUs by UUID (indexes can change), with
   explicit placements and CI layouts; MIG-off GPUs as ``mig: false``.
2. What the config cannot say is said in a comment: GPUs that are not MIG-capable (left
   out), a pending MIG mode change. A GI without a compute instance (a vGPU host's) is
   written ``compute: []``.
3. What it writes parses back to the same geometry (``parse(export(gpus))``).
4. Pure: text out, no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Dict, List, Sequence, Tuple

import yaml

from migrestore.config.yaml_strict import one_line
from migrestore.model import GpuInstance, GpuState


def _plain(text: str) -> str:
    """``text`` as a YAML scalar: plain when YAML reads it back as the same string."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+/-]*", text):
        try:
            if yaml.safe_load(text) == text:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(text)


def _ci_layout(gi: GpuInstance) -> Tuple[str, ...]:
    names = tuple(ci.profile for ci in sorted(gi.cis, key=lambda c: c.placement.start))
    if len(names) == 1 and names[0] == gi.profile:
        return ()
    return names


def _geometry(gpu: GpuState) -> Tuple[bool, Tuple[Tuple[str, int, Tuple[str, ...], int], ...]]:
    instances = tuple(
        (gi.profile, gi.placement.start, _ci_layout(gi), len(gi.cis))
        for gi in sorted(gpu.instances, key=lambda g: g.placement.start)
    )
    return gpu.mig_current, instances


def export(observed: Sequence[GpuState]) -> str:
    """The observed geometry as a native config: one rule per distinct geometry, naming
    its GPUs by UUID, with explicit placements and CI layouts; MIG-off GPUs as
    ``mig: false``. GPUs that are not MIG-capable are left out (and listed in a comment).
    A GI without any CI is written ``compute: []``."""
    groups: Dict[object, List[GpuState]] = {}
    left_out: List[GpuState] = []
    for gpu in observed:
        if not gpu.identity.mig_capable:
            left_out.append(gpu)
            continue
        groups.setdefault(_geometry(gpu), []).append(gpu)
    out = [
        "# migrestore config written by 'migrestore export' from the GPUs as they are.",
        "# Rules name GPUs by UUID, so they stay right when indexes change.",
        "version: 1",
    ]
    if not groups:
        out.append("gpus: []")
    else:
        out.append("gpus:")
    for gpus in groups.values():
        first = gpus[0]
        for gpu in gpus:
            out.append(
                f"  # GPU {gpu.index}: {one_line(gpu.identity.name)} ({gpu.identity.pci_bus_id})"
            )
            if gpu.mig_pending != gpu.mig_current:
                pending = "on" if gpu.mig_pending else "off"
                out.append(
                    f"  # GPU {gpu.index}: MIG mode change to {pending} is pending; exported as it is now"
                )
        uuids = [_plain(g.uuid) for g in gpus]
        match = uuids[0] if len(uuids) == 1 else "[" + ", ".join(uuids) + "]"
        out.append(f"  - match: {{uuid: {match}}}")
        out.append(f"    mig: {'true' if first.mig_current else 'false'}")
        if not first.mig_current:
            continue
        instances = sorted(first.instances, key=lambda g: g.placement.start)
        if not instances:
            out.append("    instances: []")
            continue
        out.append("    instances:")
        for gi in instances:
            fields = [f"profile: {_plain(gi.profile)}", f"placement: {gi.placement.start}"]
            layout = _ci_layout(gi)
            if not gi.cis:
                fields.append("compute: []")
            elif layout:
                fields.append("compute: [" + ", ".join(_plain(n) for n in layout) + "]")
            out.append("      - {" + ", ".join(fields) + "}")
    for gpu in left_out:
        out.append(
            f"# GPU {gpu.index} ({gpu.uuid}) {one_line(gpu.identity.name)}: not MIG-capable, left out"
        )
    return "\n".join(out) + "\n"
