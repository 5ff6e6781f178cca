"""Hand-built observed GPUs for the config tests.

GPU identities are written here by hand; the profile tables (placements, CI profiles)
come from the bundled model tables, which is data, not code under test.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from migrestore import tables
from migrestore.model import (
    ComputeInstance,
    GpuIdentity,
    GpuInstance,
    GpuState,
    InstanceSpec,
    Placement,
)

# (GI profile, placement start, CI profile names or None for the default CI)
Layout = Sequence[Tuple[str, int, Optional[Sequence[str]]]]


def identity(
    model: str,
    index: int,
    *,
    uuid: Optional[str] = None,
    bus: Optional[str] = None,
    mig_capable: bool = True,
) -> GpuIdentity:
    table = tables.model(model)
    return GpuIdentity(
        index=index,
        uuid=uuid or f"GPU-{index:08x}-1111-2222-3333-{sum(map(ord, model)):012d}",
        pci_bus_id=bus or f"00000000:{0x18 + index:02X}:00.0",
        pci_device_id=table.pci_device_id,
        name=table.nvml_name,
        architecture=table.architecture,
        mig_capable=mig_capable,
    )


def _cis(model: str, gi_profile: str, names: Sequence[str]) -> Tuple[ComputeInstance, ...]:
    profile = tables.model(model).profile(gi_profile)
    assert profile is not None, gi_profile
    used = 0
    out = []
    for ci_id, name in enumerate(names):
        ci = profile.ci_profile(name)
        assert ci is not None, name
        where = next(p for p in ci.placements if not (p.mask() & used))
        used |= where.mask()
        out.append(ComputeInstance(ci_id, ci.id, name, where, f"MIG-{ci_id:04d}"))
    return tuple(out)


def gpu(
    model: str,
    index: int,
    layout: Layout = (),
    *,
    mig: bool = True,
    pending: Optional[bool] = None,
    uuid: Optional[str] = None,
    bus: Optional[str] = None,
    mig_capable: bool = True,
    empty_gis: Sequence[int] = (),
) -> GpuState:
    """A GPU of ``model`` with GIs at the given starts (``empty_gis``: starts of GIs
    that have no CI)."""
    table = tables.model(model)
    instances = []
    for gi_id, (name, start, compute) in enumerate(layout, 1):
        profile = table.profile(name)
        assert profile is not None, name
        where = next(p for p in profile.placements if p.start == start)
        if start in empty_gis:
            cis: Tuple[ComputeInstance, ...] = ()
        else:
            names = list(compute) if compute else [name]
            cis = _cis(model, name, names)
        instances.append(
            GpuInstance(gi_id, profile.id, name, Placement(where.start, where.size), cis)
        )
    instances.sort(key=lambda g: g.placement.start)
    return GpuState(
        identity=identity(model, index, uuid=uuid, bus=bus, mig_capable=mig_capable),
        mig_current=mig,
        mig_pending=mig if pending is None else pending,
        profiles=table.profiles if mig_capable else (),
        instances=tuple(instances),
    )


def specs_of(state: GpuState) -> Tuple[InstanceSpec, ...]:
    """The observed geometry as the InstanceSpecs a config must resolve to."""
    out = []
    for gi in sorted(state.instances, key=lambda g: g.placement.start):
        names = tuple(ci.profile for ci in sorted(gi.cis, key=lambda c: c.placement.start))
        compute = () if names in ((), (gi.profile,)) else names
        out.append(InstanceSpec(gi.profile, gi.placement.start, compute))
    return tuple(out)
