"""Rules -> GPUs: which rule's spec each observed GPU gets, checked against what that GPU
offers.

Rules:

1. The first rule whose every selector matches a GPU gives that GPU its spec; a GPU no
   rule matches is not in the result and is left alone.
2. ``all`` matches MIG-capable GPUs only; a rule without selectors matches every GPU.
   A device filter matches as mig-parted matches it: the PCI device id, and the
   subsystem id too when the filter names one; a filter it cannot read matches nothing.
3. The profile names of the rule a GPU gets are checked against the profile table that
   GPU reports (not the bundled tables): a GI profile it does not offer, a CI profile
   its GI profile does not offer, more instances than it allows, or explicit placements
   it cannot hold are a ``ConfigError`` (exit 78) naming the rule's file:line, the GPU
   and what it offers. A GPU that reports no profile table (MIG off on a driver that
   cannot list profiles then) is left to the planner.
4. mig-parted files keep mig-parted's meaning where it would fail: a GPU matched by
   entries that disagree on ``mig-enabled``, or by an earlier entry whose layout this
   GPU cannot hold (mig-parted applies every matching entry in turn), is refused.
5. Pure: observed GPUs in, specs out.
6. A sick GPU (``GpuState.sick``: NVML cannot read it) matches no rule: what a rule
   would select it by cannot be read. A GPU a rule declares by UUID that no readable
   GPU has is kept in the result under that UUID, so the planner reports it as
   declared and missing (never dropped silently).
"""

from __future__ import annotations

import fnmatch
from typing import Dict, List, Optional, Sequence, Tuple

from migrestore.config.fields import device_filter_matches, known_profile_names, normalize_bus_id
from migrestore.errors import ConfigError
from migrestore.model import (
    Config,
    GiProfile,
    GpuIdentity,
    GpuSpec,
    GpuState,
    InstanceSpec,
    Rule,
    Selector,
)


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
        return any(
            device_filter_matches(v.strip(), gpu.pci_device_id, gpu.pci_subsystem_id)
            for v in selector.values
        )
    return False


def matches(rule: Rule, gpu: GpuIdentity) -> bool:
    """Whether ``gpu`` matches every selector of ``rule`` (a rule without selectors
    matches every GPU; ``all`` matches MIG-capable GPUs only)."""
    return all(_selector_matches(s, gpu) for s in rule.match)


def _where(config: Config, rule: Rule) -> Tuple[str, Optional[int]]:
    """The file and line of a rule (a referenced mig-parted file names itself)."""
    source = rule.spec.source
    if source:
        path, _, line = source.rpartition(":")
        if path and line.isdigit():
            return path, int(line)
    return config.path, rule.line


def _slices(start: int, size: int) -> str:
    return f"slice {start}" if size == 1 else f"slices {start}-{start + size - 1}"


def _names(profiles: Sequence[str]) -> str:
    return ", ".join(profiles) if profiles else "none"


def layout_problem(
    instances: Sequence[InstanceSpec], profiles: Sequence[GiProfile]
) -> Optional[Tuple[InstanceSpec, str, str]]:
    """Why ``instances`` cannot exist on a GPU with the profile table ``profiles``:
    (the instance, the problem, the fix), or None. Names, CI names, counts and explicit
    placements only; whether a free layout fits is the placement solver's question."""
    table: Dict[str, GiProfile] = {p.name: p for p in profiles}
    counts: Dict[str, int] = {}
    taken: List[Tuple[InstanceSpec, int, int]] = []
    for inst in instances:
        profile = table.get(inst.profile)
        if profile is None:
            offered = [p.name for p in profiles]
            return (
                inst,
                f"offers no GPU instance profile {inst.profile!r}",
                f"it offers: {_names(offered)}",
            )
        ci_offered = [ci.name for ci in profile.ci_profiles]
        for ci in inst.compute:
            if ci_offered and ci not in ci_offered:
                return (
                    inst,
                    f"offers no compute-instance profile {ci!r} in a {profile.name} GI",
                    f"a {profile.name} GI offers: {_names(ci_offered)}",
                )
        counts[profile.name] = counts.get(profile.name, 0) + 1
        if profile.max and counts[profile.name] > profile.max:
            return (
                inst,
                f"holds at most {profile.max} instances of {profile.name}, "
                f"the rule wants {counts[profile.name]}",
                "lower the count",
            )
        start = inst.placement
        if start is None:
            continue
        sizes = {p.start: p.size for p in profile.placements}
        if start not in sizes:
            valid = ", ".join(str(s) for s in sorted(sizes)) or "none"
            return (
                inst,
                f"cannot start {profile.name} at slice {start}",
                f"valid starts: {valid}",
            )
        size = sizes[start]
        for other, other_start, other_size in taken:
            if other_start < start + size and start < other_start + other_size:
                return (
                    inst,
                    f"cannot hold {profile.name} at {start} ({_slices(start, size)}): it "
                    f"overlaps {other.profile} at {other_start} "
                    f"({_slices(other_start, other_size)}) of {other.key or 'the same rule'}",
                    "choose starts that do not overlap, or omit placement to let migrestore choose",
                )
        taken.append((inst, start, size))
    return None


def check_rule(config: Config, rule: Rule, profiles: Sequence[GiProfile], what: str) -> None:
    """Raise a ConfigError when ``rule``'s layout cannot exist on a GPU (``what`` names
    it) with the profile table ``profiles``. An empty table is not checked."""
    if not rule.spec.mig or not profiles:
        return
    found = layout_problem(rule.spec.instances, profiles)
    if found is None:
        return
    inst, problem, fix = found
    path, line = _where(config, rule)
    raise ConfigError(path, inst.line or line, inst.key, f"{what} {problem}", fix)


def _describe(gpu: GpuState) -> str:
    return f"GPU {gpu.label()} ({gpu.identity.name})"


def resolve(config: Config, observed: Sequence[GpuState]) -> Dict[str, GpuSpec]:
    """The spec of the first rule matching each GPU, keyed by GPU uuid, each checked
    against what that GPU offers (rules 3 and 4). GPUs no rule matches are not in it
    (the planner reports them as left untouched).

    Raises:
        ConfigError: a rule asks a GPU for what it does not offer (exit 78).
    """
    desired: Dict[str, GpuSpec] = {}
    mig_parted = config.selected is not None
    for gpu in observed:
        if gpu.sick:
            continue
        matched = [rule for rule in config.rules if matches(rule, gpu.identity)]
        if not matched:
            continue
        winner = matched[0]
        check_rule(config, winner, gpu.profiles, _describe(gpu))
        if mig_parted:
            for earlier in matched[1:]:
                if earlier.spec.mig != winner.spec.mig:
                    path, line = _where(config, earlier)
                    raise ConfigError(
                        path,
                        line,
                        "",
                        f"{_describe(gpu)} is matched by entries that disagree on mig-enabled "
                        f"(this one and line {winner.line}); mig-parted fails on this GPU",
                        "make the entries' devices or device-filter disjoint",
                    )
                check_rule(config, earlier, gpu.profiles, _describe(gpu))
        desired[gpu.uuid] = winner.spec
    readable = {gpu.uuid.lower() for gpu in observed if not gpu.sick}
    for rule in config.rules:
        for selector in rule.match:
            if selector.kind != "uuid":
                continue
            for uuid in selector.values:
                if uuid.lower() not in readable and uuid not in desired:
                    desired[uuid] = _sourced(config, rule)
    return desired


def _sourced(config: Config, rule: Rule) -> GpuSpec:
    """The rule's spec with its ``file:line`` as the source, for the planner's line."""
    if rule.spec.source:
        return rule.spec
    path, line = _where(config, rule)
    where = f"{path}:{line}" if line is not None else path
    return GpuSpec(rule.spec.mig, rule.spec.instances, where)


def unknown_profile_names(config: Config) -> Tuple[str, ...]:
    """The profile names of ``config`` that no bundled table lists: where no GPU is
    present to answer, ``validate`` warns about them (a newer GPU may offer them)."""
    known = known_profile_names()
    out: List[str] = []
    for rule in config.rules:
        for inst in rule.spec.instances:
            for name in (inst.profile, *inst.compute):
                if name not in known and name not in out:
                    out.append(name)
    return tuple(out)
