"""Rules -> GPUs: which rule's spec each observed GPU gets.

Rules:

1. The first rule whose every selector matches a GPU gives that GPU its spec; a GPU no
   rule matches is not in the result and is left alone.
2. ``all`` matches MIG-capable GPUs only; a rule without selectors matches every GPU.
3. Pure: observed GPUs in, specs out.
"""

from __future__ import annotations

import fnmatch
from typing import Dict, Sequence

from migrestore.config.fields import DEVICE_ID_RE, normalize_bus_id
from migrestore.model import Config, GpuIdentity, GpuSpec, GpuState, Rule, Selector


def _selector_matches(selector: Selector, gpu: GpuIdentity) -> bool:
    kind = selector.kind
    if kind == "all":
        return gpu.mig_capable
    if kind == "index":
        return any(v.strip().isdigit() and int(v) == gpu.index for v in selector.values)
    if kind == "uuid":
        return gpu.uuid.lower() in {v.lower() for v in selector.values}
    if kind == "pci-bus-id":
        observed = normalize_bus_id(gpu.pci_bus_id) or gpu.pci_bus_id.upper()
        return any((normalize_bus_id(v) or v.upper()) == observed for v in selector.values)
    if kind == "model":
        return any(fnmatch.fnmatchcase(gpu.name, v) for v in selector.values)
    if kind == "device-id":
        for value in selector.values:
            found = DEVICE_ID_RE.fullmatch(value.strip())
            if found is not None and int(found.group("hex"), 16) == gpu.pci_device_id:
                return True
        return False
    return False


def matches(rule: Rule, gpu: GpuIdentity) -> bool:
    """Whether ``gpu`` matches every selector of ``rule`` (a rule without selectors
    matches every GPU; ``all`` matches MIG-capable GPUs only)."""
    return all(_selector_matches(s, gpu) for s in rule.match)


def resolve(config: Config, observed: Sequence[GpuState]) -> Dict[str, GpuSpec]:
    """The spec of the first rule matching each GPU, keyed by GPU uuid. GPUs no rule
    matches are not in it (the planner reports them as left untouched)."""
    desired: Dict[str, GpuSpec] = {}
    for gpu in observed:
        for rule in config.rules:
            if matches(rule, gpu.identity):
                desired[gpu.uuid] = rule.spec
                break
    return desired
