"""The baseline: what NVIDIA mig-parted's ``apply`` does, written over pynvml.

This is not migrestore code and shares none of it: it re-implements mig-parted's
algorithm (v0.15.0, as described in the team's mig-parted-study.md §2.3-2.7) so that the
same simulated GPUs can be driven both ways and compared. What it does:

1. Mode first, for every GPU, and only when some GPU's current mode differs from the
   wanted one: a GPU whose MIG mode is on is cleared (every CI, then every GI destroyed),
   whatever its wanted mode; then ``SetMigMode`` is called on every GPU, the activation
   status ignored. When a change stays pending, every GPU is reset (Ampere; Hopper
   changes at once and needs none).
2. Then the layout, GPU after GPU in index order, only when some GPU's layout differs:
   a GPU whose multiset of MIG profile names (GIs without a CI are not counted) equals
   the wanted one is skipped; any other GPU is cleared and rebuilt. The wanted list is
   sorted largest first (slices, then compute slices, then memory) and its distinct
   orderings are tried one after another (recursive swaps, duplicates skipped); each
   attempt clears the GPU (one try), then creates each entry: the GI with
   ``nvmlDeviceCreateGpuInstance`` (no placement: the driver chooses), then one CI with
   ``nvmlGpuInstanceCreateComputeInstance``. An entry whose GI profile equals the
   previous entry's first tries to put its CI into the previous GI and creates a new GI
   when that is refused. Any refused creation fails the attempt; when every ordering
   failed the GPU is cleared and left empty.
3. Every manager operation (read a GPU's layout, clear it, set it, read or set its mode)
   opens and closes its own NVML session, as mig-parted's managers do.
4. The first GPU that fails ends the run.

``Stats`` counts what the run did: orderings tried, refused NVML calls (which cost
their full latency in the model), GPUs rebuilt.
"""

from __future__ import annotations

import ctypes
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

_NAME = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.(\d+)gb(.*)$")


class BaselineError(Exception):
    """The baseline could not apply the layout (as mig-parted would exit 1)."""


@dataclass(frozen=True)
class Wanted:
    """One GPU's wanted state in mig-parted's terms: a mode and a multiset of MIG
    profile names (``1g.10gb`` is a GI with its full CI, ``1c.3g.40gb`` one CI of a 3g
    GI)."""

    mig: bool
    devices: Tuple[str, ...] = ()


@dataclass
class Stats:
    orderings: int = 0  # layout attempts made
    refused: Dict[str, int] = field(default_factory=dict)  # NVML function -> refusals
    gpus_rebuilt: List[int] = field(default_factory=list)
    resets: int = 0

    def refuse(self, function: str) -> None:
        self.refused[function] = self.refused.get(function, 0) + 1


def _strip(raw: Any) -> str:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return text[4:] if text.startswith("MIG ") else text


def _sort_key(name: str) -> Tuple[int, int, int, str]:
    m = _NAME.match(name)
    if m is None:
        raise BaselineError(f"baseline: {name!r} is not a MIG profile name like 1g.10gb")
    g = int(m.group(2))
    c = int(m.group(1)) if m.group(1) else g
    return (-g, -c, -int(m.group(3)), m.group(4))


def gi_name(name: str) -> str:
    """The GI profile of a MIG profile name: ``1c.3g.40gb`` -> ``3g.40gb``."""
    m = _NAME.match(name)
    if m is None or not m.group(1):
        return name
    return name.split(".", 1)[1]


def orderings(items: Sequence[str]) -> Iterator[Tuple[str, ...]]:
    """The distinct orderings of ``items`` in recursive-swap order: the first is
    ``items`` itself; an item equal to one already tried at a position is skipped."""
    work = list(items)

    def walk(i: int) -> Iterator[Tuple[str, ...]]:
        if i >= len(work):
            yield tuple(work)
            return
        for j in range(i, len(work)):
            if work[j] in work[i:j]:
                continue
            work[i], work[j] = work[j], work[i]
            yield from walk(i + 1)
            work[i], work[j] = work[j], work[i]

    return walk(0)


class MigParted:
    """mig-parted's apply over ``nvml`` (the pynvml module, with the simulator beneath
    it). ``reset(index)`` resets a GPU when a mode change stays pending."""

    def __init__(self, nvml: Any, reset: Optional[Callable[[int], None]] = None) -> None:
        self.nv = nvml
        self.reset = reset
        self.stats = Stats()
        self._ci_index: Dict[Tuple[int, str], int] = {}

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _session(self) -> Iterator[None]:
        self.nv.nvmlInit()
        try:
            yield
        finally:
            self.nv.nvmlShutdown()

    def _device(self, index: int) -> Any:
        return self.nv.nvmlDeviceGetHandleByIndex(index)

    def _code(self, err: Exception) -> int:
        return int(getattr(err, "value", -1))

    def _skip(self, err: Exception) -> bool:
        return self._code(err) in (
            self.nv.NVML_ERROR_NOT_SUPPORTED,
            self.nv.NVML_ERROR_INVALID_ARGUMENT,
        )

    # ------------------------------------------------------------------ mode manager

    def _mode(self, index: int) -> Optional[Tuple[bool, bool]]:
        """(current, pending), or None for a GPU without MIG."""
        with self._session():
            try:
                current, pending = self.nv.nvmlDeviceGetMigMode(self._device(index))
            except self.nv.NVMLError as err:
                if self._code(err) == self.nv.NVML_ERROR_NOT_SUPPORTED:
                    return None
                raise
        return bool(current), bool(pending)

    def _set_mode(self, index: int, enabled: bool) -> None:
        mode = self.nv.NVML_DEVICE_MIG_ENABLE if enabled else self.nv.NVML_DEVICE_MIG_DISABLE
        with self._session():
            self.nv.nvmlDeviceSetMigMode(self._device(index), mode)  # status ignored

    # ------------------------------------------------------------------ config manager

    def _walk_gis(self, handle: Any) -> Iterator[Tuple[Any, Any]]:
        """(GI profile info, GI handle) for every GI, by profile index."""
        for p in range(self.nv.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                info = self.nv.nvmlDeviceGetGpuInstanceProfileInfo(handle, p)
            except self.nv.NVMLError as err:
                if self._skip(err):
                    continue
                raise
            size = max(int(info.instanceCount), 1)
            buf = (self.nv.c_nvmlGpuInstance_t * size)()
            count = ctypes.c_uint(size)
            self.nv.nvmlDeviceGetGpuInstances(handle, info.id, buf, ctypes.byref(count))
            for i in range(min(count.value, size)):
                yield info, buf[i]

    def _walk_cis(self, gi: Any) -> Iterator[Tuple[Any, Any]]:
        """(CI profile info, CI handle) for every CI of ``gi``."""
        for j in range(self.nv.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            for k in range(self.nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT):
                try:
                    info = self.nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, j, k)
                except self.nv.NVMLError as err:
                    if self._skip(err):
                        continue
                    raise
                size = max(int(info.instanceCount), 1)
                buf = (self.nv.c_nvmlComputeInstance_t * size)()
                count = ctypes.c_uint(size)
                self.nv.nvmlGpuInstanceGetComputeInstances(gi, info.id, buf, ctypes.byref(count))
                for i in range(min(count.value, size)):
                    yield info, buf[i]

    def _assert_enabled(self, handle: Any, index: int) -> None:
        current, _pending = self.nv.nvmlDeviceGetMigMode(handle)
        if not current:
            raise BaselineError(f"baseline: GPU {index}: MIG mode is not enabled")

    def get_config(self, index: int) -> Counter[str]:
        """The GPU's layout as a multiset of MIG profile names."""
        found: Counter[str] = Counter()
        with self._session():
            handle = self._device(index)
            self._assert_enabled(handle, index)
            for gi_info, gi in self._walk_gis(handle):
                gi_profile = _strip(gi_info.name)
                for ci_info, _ci in self._walk_cis(gi):
                    if int(ci_info.sliceCount) == int(gi_info.sliceCount):
                        found[gi_profile] += 1
                    else:
                        found[f"{int(ci_info.sliceCount)}c.{gi_profile}"] += 1
        return found

    def clear_config(self, index: int) -> None:
        with self._session():
            handle = self._device(index)
            self._assert_enabled(handle, index)
            for _gi_info, gi in list(self._walk_gis(handle)):
                for _ci_info, ci in list(self._walk_cis(gi)):
                    self.nv.nvmlComputeInstanceDestroy(ci)
                self.nv.nvmlGpuInstanceDestroy(gi)

    def _gi_indices(self, handle: Any) -> Dict[str, int]:
        """GI profile name -> profile index on this device."""
        names: Dict[str, int] = {}
        for p in range(self.nv.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                info = self.nv.nvmlDeviceGetGpuInstanceProfileInfo(handle, p)
            except self.nv.NVMLError as err:
                if self._skip(err):
                    continue
                raise
            names[_strip(info.name)] = p
        return names

    def _ci_profile(self, gi: Any, gi_profile_id: int, name: str) -> Any:
        """The CI profile info named ``name`` in ``gi`` (its index is found once per GI
        profile and kept, like a static profile constant)."""
        key = (gi_profile_id, name)
        known = self._ci_index.get(key)
        candidates = (
            [known]
            if known is not None
            else list(range(self.nv.NVML_COMPUTE_INSTANCE_PROFILE_COUNT))
        )
        for j in candidates:
            try:
                info = self.nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    gi, j, self.nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
                )
            except self.nv.NVMLError as err:
                if self._skip(err):
                    continue
                raise
            if _strip(info.name) == name:
                self._ci_index[key] = j
                return info
        raise BaselineError(f"baseline: no CI profile {name} in a GI of profile {gi_profile_id}")

    def _attempt(self, index: int, order: Sequence[str]) -> None:
        if sum(self.get_config(index).values()):
            self.clear_config(index)
            if sum(self.get_config(index).values()):
                raise BaselineError("exceeded maximum attempts to clear the MIG config")
        with self._session():
            handle = self._device(index)
            indices = self._gi_indices(handle)
            last: Optional[int] = None
            gi: Any = None
            for name in order:
                gi_profile = gi_name(name)
                p = indices.get(gi_profile)
                if p is None:
                    raise BaselineError(f"baseline: GPU {index} has no GI profile {gi_profile}")
                gi_info = self.nv.nvmlDeviceGetGpuInstanceProfileInfo(handle, p)
                reuse = gi is not None and last == p
                last = p
                while True:
                    if not reuse:
                        try:
                            gi = self.nv.nvmlDeviceCreateGpuInstance(handle, gi_info.id)
                        except self.nv.NVMLError as err:
                            self.stats.refuse("nvmlDeviceCreateGpuInstance")
                            raise BaselineError(f"creating GI {gi_profile}: {err}") from err
                    try:
                        ci_info = self._ci_profile(gi, int(gi_info.id), name)
                        self.nv.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id)
                    except (self.nv.NVMLError, BaselineError) as err:
                        if isinstance(err, self.nv.NVMLError):
                            self.stats.refuse("nvmlGpuInstanceCreateComputeInstance")
                        if reuse:
                            reuse = False
                            continue
                        raise BaselineError(f"creating CI {name}: {err}") from err
                    break

    def set_config(self, index: int, wanted: Sequence[str]) -> None:
        flat = sorted(wanted, key=_sort_key)
        last_error: Optional[Exception] = None
        for order in orderings(flat):
            self.stats.orderings += 1
            try:
                self._attempt(index, order)
                return
            except BaselineError as err:
                last_error = err
        self.clear_config(index)
        raise BaselineError(f"GPU {index}: every ordering failed, last: {last_error}")

    # ------------------------------------------------------------------ apply

    def apply(self, wanted: Mapping[int, Wanted]) -> None:
        """Bring every GPU in ``wanted`` (by index) to its state, as mig-parted does."""
        gpus = sorted(wanted)
        modes = {i: self._mode(i) for i in gpus}
        for i in gpus:
            if modes[i] is None and wanted[i].mig:
                raise BaselineError(f"GPU {i} is not MIG capable")
        if any(m is not None and m[0] != wanted[i].mig for i, m in modes.items()):
            pending = False
            for i in gpus:
                mode = self._mode(i)
                if mode is None:
                    continue
                if mode[0]:
                    self.clear_config(i)
                self._set_mode(i, wanted[i].mig)
                after = self._mode(i)
                pending = pending or (after is not None and after[0] != after[1])
            if pending:
                if self.reset is None:
                    raise BaselineError("a mode change is pending and no GPU reset is possible")
                for i in gpus:
                    self.reset(i)
                    self.stats.resets += 1
        todo = [i for i in gpus if wanted[i].mig]
        current = {i: self.get_config(i) for i in todo}
        if all(current[i] == Counter(wanted[i].devices) for i in todo):
            return
        for i in todo:
            if self.get_config(i) == Counter(wanted[i].devices):
                continue
            self.stats.gpus_rebuilt.append(i)
            self.set_config(i, wanted[i].devices)


def all_gpus(count: int, state: Wanted) -> Dict[int, Wanted]:
    return {i: state for i in range(count)}


__all__ = ["BaselineError", "MigParted", "Stats", "Wanted", "all_gpus", "gi_name", "orderings"]
