"""The ``Simulator``: simulated MIG GPUs, attached beneath pynvml.

Rules:

1. ``attach(pynvml, spec)`` builds a simulator and installs its fake library as
   ``pynvml.nvmlLib`` (clearing pynvml's function cache), so every pynvml call runs on
   it unchanged; ``detach(pynvml)`` undoes that. ``spec`` is ``MODEL[:COUNT],...``
   (fresh GPUs in this process) or the path of a state file made by
   ``migrestore-sim init`` (shared by processes, locked, reboot-aware).
2. The methods offer what NVML lacks (a GPU reset, and ``reset_tool``, the model of
   ``nvidia-smi --gpu-reset`` that the NVML layer calls as on hardware; a reboot) and what tests need
   (clients holding a GPU, processes on MIG devices, faults, latency, the count of
   changes). A refused operation raises ``migrestore.errors.NvmlError`` with the NVML
   error name, like the NVML layer does.
3. Every NVML call and every method is one transaction (``state``): the rules run on a
   consistent state, other processes see the result at once, and threads may share a
   simulator. Latency is slept after the transaction, outside every lock.
4. Faults are one-shot: "fail the Nth call of F with E" counts the calls of F from the
   moment it is set, in every process sharing the state, and the Nth call returns E
   without doing anything. ``gpu_reset`` names ``reset_gpu`` for this purpose.
5. ``change_count`` counts every successful state-changing call (mode, create, destroy,
   reset) whoever made it; ``changes()`` lists the last ones with their arguments.
6. A freeze is one-shot, like a fault: "freeze after N changes" makes the process whose
   change is the Nth from then stop itself with SIGSTOP right after the transaction
   (outside every lock), so a test kills or interrupts it at exactly that point, a
   condition it can wait for (the process is stopped) instead of a time window.
7. ``lose(gpu, error)`` models a GPU that fell off the bus (fakelib rule 6, engine
   rule 7); ``recover(gpu)`` or a reboot brings it back. Armed with ``after_changes``,
   it falls off at the transaction that makes the node's Nth change from then (like a
   freeze, whoever makes it): in the middle of a restore, as Xid 79 can strike during a
   reconfiguration.
8. The node around the GPUs (engine rule 8): ``passthrough(gpu, status)`` (the platform
   refuses its reset), ``fabric_manager(running)`` and the NVSwitch groups of the state;
   loaded kernel modules are directories in ``module_dir(spec)`` (beside a state file,
   as ``/sys/module`` on a real node; none for in-memory GPUs), the one truth both the
   reset model and migrestore's own check read.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import time
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, TypeVar, Union

from migrestore.errors import MigrestoreError, NvmlError
from migrestore.model import Placement
from migrestore.simulator import codes, engine, fakelib
from migrestore.simulator.codes import SimNvmlError
from migrestore.simulator.state import (
    PASSTHROUGH_STATUSES,
    Fault,
    FileStore,
    GpuRecord,
    MemoryStore,
    SimState,
    Txn,
    current_boot_id,
    to_json,
)

T = TypeVar("T")

GPU_RESET = "gpu_reset"  # the fault name of Simulator.reset_gpu
LOST_ERROR = "NVML_ERROR_GPU_IS_LOST"  # what a GPU that fell off the bus answers by default

GpuRef = Union[int, str]  # an index, or a GPU UUID


def is_state_path(spec: str) -> bool:
    """Whether a spec names a state file rather than ``MODEL[:COUNT],...``."""
    return os.sep in spec or spec.endswith(".json") or os.path.exists(spec)


def module_dir(spec: str) -> str:
    """The simulated node's ``/sys/module`` (rule 8): beside a state file; "" for
    in-memory GPUs (no module but the driver's own is loaded)."""
    if not is_state_path(spec):
        return ""
    return os.path.abspath(spec) + ".sys-module"


def module_loaded(spec: str, name: str) -> bool:
    """Whether kernel module ``name`` is loaded on the simulated node of ``spec``."""
    directory = module_dir(spec)
    return bool(directory) and os.path.isdir(os.path.join(directory, name))


class Simulator:
    """Simulated GPUs and the fake NVML library that answers for them (rule 1)."""

    def __init__(self, spec: str, sleep: Callable[[float], None] = time.sleep) -> None:
        """Raises:
        MigrestoreError: a bad spec (``models.UnknownSimModel`` for an unknown model,
            ``models.BadBranch`` for a bad driver branch).
        StateFileError: the state file is missing or malformed."""
        self.spec = spec
        self.tag = fakelib.new_tag()
        self.init_count = 0
        self.sleep = sleep
        self._store: Union[FileStore, MemoryStore]
        if is_state_path(spec):
            self._store = FileStore(spec, self._housekeeping)
        else:
            try:
                models = engine.parse_spec(spec)
            except ValueError as err:
                raise MigrestoreError(f"simulator spec: {err}") from None
            self._store = MemoryStore(engine.fresh_state(models), self._housekeeping)
        self.library = fakelib.FakeNvmlLibrary(self)

    def missing_symbols(self) -> FrozenSet[str]:
        """The NVML symbols the node's driver branch does not export."""
        with self._store.transaction() as txn:
            return engine.node_branch(txn.state).missing

    @property
    def path(self) -> Optional[str]:
        """The state file, or None for an in-memory simulator."""
        return self._store.path

    @property
    def store(self) -> Union[FileStore, MemoryStore]:
        return self._store

    def close(self) -> None:
        """Close the store; a session still open (NVML never shut down) ends with it."""
        if self.init_count:
            self.init_count = 0
            with contextlib.suppress(MigrestoreError), self._store.transaction() as txn:
                if os.getpid() in txn.state.sessions:
                    txn.state.sessions.remove(os.getpid())
                    txn.dirty = True
        self._store.close()

    # ------------------------------------------------------------------ plumbing

    def _housekeeping(self, txn: Txn, persistent: bool) -> None:
        state = txn.state
        if persistent:
            boot = current_boot_id()
            if boot and boot != state.boot_id:
                engine.reboot(state)
                state.boot_id = boot
                txn.dirty = True
        if engine.prune_dead(state):
            txn.dirty = True

    def _check_fault(self, txn: Txn, name: str) -> None:
        faults = txn.state.faults
        mine = [f for f in faults if f.function == name]
        if not mine:
            return
        for fault in mine:
            fault.seen += 1
        txn.dirty = True
        fired = [f for f in mine if f.seen >= f.nth]
        if fired:
            txn.state.faults = [f for f in faults if f not in fired]
            raise SimNvmlError(
                codes.parse_error_name(fired[0].error),
                f"fault injected on call {fired[0].nth} of {name}",
            )

    def _call(self, name: str, body: Callable[[Txn], None]) -> int:
        """One NVML call: faults, the rules, then latency outside the lock (rule 3)."""
        with self._store.transaction() as txn:
            before = txn.state.change_count
            try:
                self._check_fault(txn, name)
                body(txn)
                code = codes.SUCCESS
            except SimNvmlError as err:
                code = err.code
            latency = txn.state.latency_us
            delay = latency.get(name, latency.get("*", 0))
            freeze = _frozen_by(txn, before)
            _lost_by(txn, before)
        if freeze:
            _freeze()
        if delay:
            self.sleep(delay / 1_000_000)
        return code

    def _op(self, body: Callable[[Txn], T], what: Callable[[], str]) -> T:
        """One method call; a refused rule becomes ``NvmlError``."""
        failure: Optional[SimNvmlError] = None
        with self._store.transaction() as txn:
            before = txn.state.change_count
            try:
                result = body(txn)
            except SimNvmlError as err:
                failure = err
            freeze = _frozen_by(txn, before)
            _lost_by(txn, before)
        if freeze:
            _freeze()
        if failure is None:
            return result
        detail = f" ({failure.detail})" if failure.detail else ""
        raise NvmlError(codes.name_of(failure.code), what() + detail, failure.code)

    @staticmethod
    def _select(txn: Txn, gpu: GpuRef) -> GpuRecord:
        if isinstance(gpu, int) or (isinstance(gpu, str) and gpu.isdigit()):
            found = txn.state.gpu(int(gpu))
            if found is None:
                raise SimNvmlError(
                    codes.INVALID_ARGUMENT,
                    f"no GPU {gpu}; the simulator has {len(txn.state.gpus)}",
                )
            return found
        for record in txn.state.gpus:
            if record.uuid == gpu or record.pci_bus_id.lower() == str(gpu).lower():
                return record
        raise SimNvmlError(codes.NOT_FOUND, f"no simulated GPU has UUID or PCI bus id {gpu}")

    @staticmethod
    def _label(gpu: GpuRef) -> str:
        return f"simulated GPU {gpu}"

    # ------------------------------------------------------------------ inspection

    def state(self) -> SimState:
        """A copy of the whole state (after housekeeping)."""
        return self._op(lambda txn: copy.deepcopy(txn.state), lambda: "read the state")

    def snapshot(self) -> Dict[str, Any]:
        """The state as the JSON document a state file holds."""
        return self._op(lambda txn: to_json(copy.deepcopy(txn.state)), lambda: "read the state")

    @property
    def change_count(self) -> int:
        return self._op(lambda txn: txn.state.change_count, lambda: "read the change count")

    def changes(self) -> Tuple[Dict[str, Any], ...]:
        """The last changes (bounded), oldest first."""

        def body(txn: Txn) -> Tuple[Dict[str, Any], ...]:
            return tuple(
                {
                    "seq": c.seq,
                    "function": c.function,
                    "gpu": c.gpu,
                    "args": copy.deepcopy(c.args),
                    "pid": c.pid,
                    "via": c.via,
                }
                for c in txn.state.changes
            )

        return self._op(body, lambda: "read the changes")

    def function_names(self) -> Tuple[str, ...]:
        """The NVML functions the fake library answers, plus ``gpu_reset``."""
        return (*fakelib.SYMBOL_NAMES, GPU_RESET)

    # ------------------------------------------------------------------ GPU life

    def reset_tool(self, pci_bus_ids: str) -> None:
        """What ``nvidia-smi --gpu-reset -i <bus id>[,<bus id>...]`` does: refused with
        NVML_ERROR_IN_USE while this process still has NVML initialised (an open NVML
        client is a user of the GPU), else every GPU named is reset in one command
        (engine rule 8).

        Raises:
            NvmlError: as ``reset_gpu``, IN_USE as above, NOT_SUPPORTED on a passthrough
                GPU, IN_USE while nvidia_drm is loaded, UNKNOWN naming the NVSwitch peers
                to include while Fabric Manager is down.
        """
        if self.init_count:
            raise NvmlError(
                codes.name_of(codes.IN_USE),
                f"{self._label(pci_bus_ids)}: reset (this process has NVML initialised, "
                "which makes it a user of the GPU: shut NVML down first)",
                codes.IN_USE,
            )
        drm = module_loaded(self.spec, "nvidia_drm")

        def body(txn: Txn) -> None:
            records = [self._select(txn, bus) for bus in pci_bus_ids.split(",")]
            self._check_fault(txn, GPU_RESET)
            engine.reset_gpus(txn.state, records, engine.other_sessions(txn.state), drm)
            for record in records:
                engine.record_change(txn.state, GPU_RESET, record, {}, "simulator")
            txn.dirty = True

        self._op(body, lambda: f"{self._label(pci_bus_ids)}: reset")

    def reset_gpu(self, gpu: GpuRef) -> None:
        """Reset a GPU (``gpu``: an index, a UUID or a PCI bus id): the pending MIG mode
        takes effect and every instance is gone.

        Raises:
            NvmlError: NVML_ERROR_IN_USE while a client holds the GPU or a process runs
                on it, NVML_ERROR_NOT_SUPPORTED on a passthrough GPU.
        """

        def body(txn: Txn) -> None:
            record = self._select(txn, gpu)
            self._check_fault(txn, GPU_RESET)
            engine.reset_gpu(record, engine.other_sessions(txn.state))
            engine.record_change(txn.state, GPU_RESET, record, {}, "simulator")
            txn.dirty = True

        self._op(body, lambda: f"{self._label(gpu)}: reset")

    def passthrough(self, gpu: GpuRef, status: str = "NVML_ERROR_RESET_REQUIRED") -> None:
        """The platform refuses the GPU's reset (a VM's passthrough GPU): its reset answers
        NOT_SUPPORTED and an Ampere activation ``status`` (RESET_REQUIRED or
        NOT_SUPPORTED); ``status`` "" makes it resettable again.

        Raises:
            MigrestoreError: a status neither; NvmlError: no such GPU.
        """
        if status and status not in PASSTHROUGH_STATUSES:
            raise MigrestoreError(
                f"passthrough: status {status!r} is not one of {', '.join(PASSTHROUGH_STATUSES)}"
            )

        def body(txn: Txn) -> None:
            record = self._select(txn, gpu)
            record.passthrough = bool(status)
            if status:
                record.passthrough_status = status
            txn.dirty = True

        self._op(body, lambda: f"{self._label(gpu)}: passthrough")

    def fabric_manager(self, running: bool) -> None:
        """Fabric Manager starts or stops (what an NVSwitch node's resets depend on)."""

        def body(txn: Txn) -> None:
            txn.state.fabric_manager = running
            txn.dirty = True

        self._op(body, lambda: "fabric manager")

    def module_loaded(self, name: str) -> bool:
        """Whether kernel module ``name`` is loaded on the simulated node (rule 8)."""
        return module_loaded(self.spec, name)

    def load_module(self, name: str, loaded: bool = True) -> None:
        """Load (or unload) kernel module ``name`` on the simulated node (rule 8).

        Raises:
            MigrestoreError: in-memory GPUs (no node to load it on) or a bad name.
        """
        directory = module_dir(self.spec)
        if not directory:
            raise MigrestoreError("modules: in-memory simulated GPUs have no module directory")
        if not name or not name.replace("_", "").isalnum():
            raise MigrestoreError(f"modules: {name!r} is not a kernel module name")
        path = os.path.join(directory, name)
        if loaded:
            os.makedirs(path, exist_ok=True)
        elif os.path.isdir(path):
            os.rmdir(path)

    def reboot(self) -> None:
        """Apply reboot semantics now (as if the boot id changed)."""

        def body(txn: Txn) -> None:
            engine.reboot(txn.state)
            if self._store.path is not None:
                txn.state.boot_id = current_boot_id()
            txn.dirty = True

        self._op(body, lambda: "reboot")

    def lose(self, gpu: GpuRef, error: str = LOST_ERROR, after_changes: int = 0) -> None:
        """The GPU falls off the bus (Xid 79): it stays counted, but getting its handle
        and every call on its device, GI, CI and MIG device handles answer ``error``
        (an NVML error name, e.g. NVML_ERROR_GPU_IS_LOST, IRQ_ISSUE, UNKNOWN) until a
        reboot or ``recover``. ``after_changes`` > 0: armed, it falls off once that many
        more changes (on any GPU, by any process) have been made: in the middle of a
        restore (rule 7).

        Raises:
            MigrestoreError: unknown error name, a negative count; NvmlError: no such GPU.
        """
        try:
            code = codes.parse_error_name(error)
        except ValueError as err:
            raise MigrestoreError(f"lose: {err}") from None
        if after_changes < 0:
            raise MigrestoreError(f"lose: the change count must be 0 or more, not {after_changes}")

        def body(txn: Txn) -> None:
            record = self._select(txn, gpu)
            if after_changes:
                record.lose_at = txn.state.change_count + after_changes
                record.lose_error = codes.name_of(code)
            else:
                record.lost = codes.name_of(code)
            txn.dirty = True

        self._op(body, lambda: f"{self._label(gpu)}: lose")

    def recover(self, gpu: GpuRef) -> None:
        """A lost GPU is back on the bus, as after a host-side recovery: it answers again,
        with the mode it had pending and no instances, holders or processes.

        Raises:
            NvmlError: no such GPU.
        """

        def body(txn: Txn) -> None:
            record = self._select(txn, gpu)
            if record.lost:
                record.lost = ""
                record.mig_current = record.mig_pending
                record.gis = []
                record.holders = []
                txn.dirty = True

        self._op(body, lambda: f"{self._label(gpu)}: recover")

    # ------------------------------------------------------------------ clients

    def hold(self, gpu: GpuRef, pid: Optional[int] = None) -> int:
        """Register ``pid`` (default: this process) as a client holding the GPU open."""
        holder = os.getpid() if pid is None else pid

        def body(txn: Txn) -> int:
            record = self._select(txn, gpu)
            if not engine.pid_alive(holder):
                raise SimNvmlError(codes.INVALID_ARGUMENT, f"pid {holder} is not running")
            if holder not in record.holders:
                record.holders.append(holder)
                txn.dirty = True
            return holder

        return self._op(body, lambda: f"{self._label(gpu)}: hold by pid {holder}")

    def release(self, gpu: GpuRef, pid: Optional[int] = None) -> None:
        """Unregister a holder (no error if it is not registered)."""
        holder = os.getpid() if pid is None else pid

        def body(txn: Txn) -> None:
            record = self._select(txn, gpu)
            if holder in record.holders:
                record.holders.remove(holder)
                txn.dirty = True

        self._op(body, lambda: f"{self._label(gpu)}: release pid {holder}")

    def hold_instance(
        self, gpu: GpuRef, gi_id: int, ci_id: Optional[int] = None, pid: Optional[int] = None
    ) -> int:
        """Register ``pid`` (default: this process) as a hidden holder of GI ``gi_id`` (or
        of its CI ``ci_id``): no process query lists it, and the instance's destroy
        answers IN_USE while it runs (a leaked handle, DCGM)."""
        holder = os.getpid() if pid is None else pid

        def body(txn: Txn) -> int:
            record = self._select(txn, gpu)
            holders = self._instance_holders(record, gi_id, ci_id)
            if not engine.pid_alive(holder):
                raise SimNvmlError(codes.INVALID_ARGUMENT, f"pid {holder} is not running")
            if holder not in holders:
                holders.append(holder)
                txn.dirty = True
            return holder

        where = f"GI {gi_id}" + (f" CI {ci_id}" if ci_id is not None else "")
        return self._op(body, lambda: f"{self._label(gpu)}: hold {where} by pid {holder}")

    def release_instance(
        self, gpu: GpuRef, gi_id: int, ci_id: Optional[int] = None, pid: Optional[int] = None
    ) -> None:
        """Unregister a hidden holder (no error if it is not registered, or the instance
        is gone)."""
        holder = os.getpid() if pid is None else pid

        def body(txn: Txn) -> None:
            record = self._select(txn, gpu)
            try:
                holders = self._instance_holders(record, gi_id, ci_id)
            except SimNvmlError:
                return
            if holder in holders:
                holders.remove(holder)
                txn.dirty = True

        self._op(body, lambda: f"{self._label(gpu)}: release GI {gi_id} by pid {holder}")

    @staticmethod
    def _instance_holders(record: GpuRecord, gi_id: int, ci_id: Optional[int]) -> List[int]:
        gi = engine.find_gi(record, gi_id)
        if gi is None or not record.mig_current:
            raise SimNvmlError(codes.NOT_FOUND, f"no GI {gi_id}")
        if ci_id is None:
            return gi.holders
        ci = engine.find_ci(gi, ci_id)
        if ci is None:
            raise SimNvmlError(codes.NOT_FOUND, f"GI {gi_id} has no CI {ci_id}")
        return ci.holders

    def set_vgpu_host(self, gpu: GpuRef, enabled: bool = True) -> None:
        """Put a GPU in vGPU host mode (or take it out): process queries on its MIG
        device handles answer NOT_SUPPORTED, as on a vGPU host (engine rule 10)."""

        def body(txn: Txn) -> None:
            record = self._select(txn, gpu)
            if record.vgpu_host != enabled:
                record.vgpu_host = enabled
                txn.dirty = True

        self._op(body, lambda: f"{self._label(gpu)}: vGPU host mode {'on' if enabled else 'off'}")

    def run_process(
        self, gpu: GpuRef, gi_id: int, ci_id: Optional[int] = None, pid: Optional[int] = None
    ) -> Tuple[int, str]:
        """Register ``pid`` (default: this process) as running on a MIG device: the CI
        ``ci_id`` of GI ``gi_id`` (default: its lowest CI). Returns (CI ID, MIG UUID)."""
        runner = os.getpid() if pid is None else pid

        def body(txn: Txn) -> Tuple[int, str]:
            record = self._select(txn, gpu)
            gi = engine.find_gi(record, gi_id)
            if gi is None or not record.mig_current:
                raise SimNvmlError(codes.NOT_FOUND, f"no GI {gi_id}")
            cis = sorted(gi.cis, key=lambda c: c.id)
            ci = cis[0] if (ci_id is None and cis) else engine.find_ci(gi, ci_id or 0)
            if ci is None:
                raise SimNvmlError(
                    codes.NOT_FOUND,
                    f"GI {gi_id} has no CI {ci_id}"
                    if ci_id is not None
                    else f"GI {gi_id} has no CI",
                )
            if not engine.pid_alive(runner):
                raise SimNvmlError(codes.INVALID_ARGUMENT, f"pid {runner} is not running")
            if runner not in ci.pids:
                ci.pids.append(runner)
                txn.dirty = True
            return ci.id, ci.uuid

        where = f"GI {gi_id}" + (f" CI {ci_id}" if ci_id is not None else "")
        return self._op(body, lambda: f"{self._label(gpu)}: run pid {runner} on {where}")

    def stop_process(self, pid: Optional[int] = None) -> None:
        """Unregister a process from every MIG device it runs on."""
        runner = os.getpid() if pid is None else pid

        def body(txn: Txn) -> None:
            for record in txn.state.gpus:
                for gi in record.gis:
                    for ci in gi.cis:
                        if runner in ci.pids:
                            ci.pids.remove(runner)
                            txn.dirty = True

        self._op(body, lambda: f"stop pid {runner}")

    # ------------------------------------------------------------------ faults, latency

    def fail(self, function: str, nth: int, error: str) -> None:
        """Arm a one-shot fault: the ``nth`` call of ``function`` from now returns ``error``.

        Raises:
            MigrestoreError: unknown function or error name, or ``nth`` < 1.
        """
        if function not in self.function_names():
            raise MigrestoreError(
                f"fail: {function!r} is not an NVML function the simulator answers "
                "(see 'migrestore-sim fail --help' for the list)"
            )
        if nth < 1:
            raise MigrestoreError(f"fail: --nth must be 1 or more, not {nth}")
        try:
            code = codes.parse_error_name(error)
        except ValueError as err:
            raise MigrestoreError(f"fail: {err}") from None

        def body(txn: Txn) -> None:
            txn.state.faults.append(Fault(function, nth, codes.name_of(code)))
            txn.dirty = True

        self._op(body, lambda: f"arm a fault on {function}")

    def freeze_after(self, changes: int) -> None:
        """Arm a one-shot freeze (rule 6): the process that makes the ``changes``-th
        change from now stops itself (SIGSTOP) right after it, outside every lock.
        ``changes`` 0 disarms it."""
        if changes < 0:
            raise MigrestoreError(f"freeze: the change count must be 0 or more, not {changes}")

        def body(txn: Txn) -> None:
            txn.state.freeze_at = txn.state.change_count + changes if changes else 0
            txn.dirty = True

        self._op(body, lambda: "arm a freeze")

    def clear_faults(self) -> None:
        def body(txn: Txn) -> None:
            if txn.state.faults or txn.state.freeze_at:
                txn.state.faults = []
                txn.state.freeze_at = 0
                txn.dirty = True

        self._op(body, lambda: "clear faults")

    def latency(self, microseconds: int, function: str = "*") -> None:
        """Sleep ``microseconds`` after every call of ``function`` (``*``: every call
        without its own setting); 0 removes the setting."""
        if function != "*" and function not in fakelib.SYMBOL_NAMES:
            raise MigrestoreError(
                f"latency: {function!r} is not an NVML function the simulator answers"
            )
        if microseconds < 0:
            raise MigrestoreError(f"latency: microseconds must be >= 0, not {microseconds}")

        def body(txn: Txn) -> None:
            if microseconds:
                txn.state.latency_us[function] = microseconds
            else:
                txn.state.latency_us.pop(function, None)
            txn.dirty = True

        self._op(body, lambda: f"set the latency of {function}")

    # ------------------------------------------------------------------ geometry (drift)

    def set_mode(self, gpu: GpuRef, enabled: bool, via: str = "simulator") -> str:
        """``nvmlDeviceSetMigMode``; returns the activation status name."""

        def body(txn: Txn) -> str:
            record = self._select(txn, gpu)
            status = engine.set_mig_mode(
                record,
                int(enabled),
                engine.other_sessions(txn.state),
                txn.state,
                module_loaded(self.spec, "nvidia_drm"),
            )
            engine.record_change(
                txn.state,
                "nvmlDeviceSetMigMode",
                record,
                {"mode": int(enabled), "activation": codes.name_of(status)},
                via,
            )
            txn.dirty = True
            return codes.name_of(status)

        state = "on" if enabled else "off"
        return self._op(body, lambda: f"{self._label(gpu)}: set MIG mode {state}")

    def create_gi(
        self, gpu: GpuRef, profile: str, start: Optional[int] = None, via: str = "simulator"
    ) -> int:
        """Create a GI of the named profile (at ``start``, or the driver's default
        placement); returns its GI ID."""

        def body(txn: Txn) -> int:
            record = self._select(txn, gpu)
            table = engine.table_of(record)
            prof = table.profile(profile)
            if prof is None:
                names = ", ".join(p.name for p in table.profiles)
                raise SimNvmlError(
                    codes.INVALID_ARGUMENT, f"{table.name} has no GI profile {profile} ({names})"
                )
            placement: Optional[Placement] = None
            if start is not None:
                placement = _placement_at(prof.placements, start, prof.name)
            gi = engine.create_gi(txn.state, record, prof.id, placement)
            args: Dict[str, Any] = {"profile_id": prof.id, "profile": prof.name}
            function = "nvmlDeviceCreateGpuInstance"
            if placement is not None:
                function += "WithPlacement"
                args["placement"] = str(placement)
            args["result"] = {"gi_id": gi.id, "placement": f"{gi.start}:{gi.size}"}
            engine.record_change(txn.state, function, record, args, via)
            txn.dirty = True
            return gi.id

        at = f" at {start}" if start is not None else ""
        return self._op(body, lambda: f"{self._label(gpu)}: create GI {profile}{at}")

    def create_ci(
        self,
        gpu: GpuRef,
        gi_id: int,
        profile: Optional[str] = None,
        start: Optional[int] = None,
        via: str = "simulator",
    ) -> int:
        """Create a CI in GI ``gi_id`` (default profile: the one covering the GI);
        returns its CI ID."""

        def body(txn: Txn) -> int:
            record = self._select(txn, gpu)
            gi = engine.find_gi(record, gi_id)
            if gi is None or not record.mig_current:
                raise SimNvmlError(codes.NOT_FOUND, f"no GI {gi_id}")
            gi_prof = engine.gi_profile(engine.table_of(record), gi)
            chosen = gi_prof.default_ci() if profile is None else gi_prof.ci_profile(profile)
            if chosen is None:
                names = ", ".join(c.name for c in gi_prof.ci_profiles)
                raise SimNvmlError(
                    codes.NOT_SUPPORTED,
                    f"a {gi_prof.name} GI has no CI profile {profile} ({names})",
                )
            placement: Optional[Placement] = None
            if start is not None:
                placement = _placement_at(chosen.placements, start, chosen.name)
            ci = engine.create_ci(txn.state, record, gi, chosen.id, placement)
            args: Dict[str, Any] = {"gi_id": gi.id, "profile_id": chosen.id, "profile": chosen.name}
            function = "nvmlGpuInstanceCreateComputeInstance"
            if placement is not None:
                function += "WithPlacement"
                args["placement"] = str(placement)
            args["result"] = {"ci_id": ci.id, "placement": f"{ci.start}:{ci.size}", "uuid": ci.uuid}
            engine.record_change(txn.state, function, record, args, via)
            txn.dirty = True
            return ci.id

        return self._op(
            body, lambda: f"{self._label(gpu)}: create CI {profile or '(default)'} in GI {gi_id}"
        )

    def destroy_ci(self, gpu: GpuRef, gi_id: int, ci_id: int, via: str = "simulator") -> None:
        def body(txn: Txn) -> None:
            record = self._select(txn, gpu)
            gi = engine.find_gi(record, gi_id)
            ci = engine.find_ci(gi, ci_id) if gi is not None else None
            if gi is None or ci is None:
                raise SimNvmlError(codes.NOT_FOUND, f"no CI {ci_id} in GI {gi_id}")
            engine.destroy_ci(gi, ci)
            engine.record_change(
                txn.state,
                "nvmlComputeInstanceDestroy",
                record,
                {"gi_id": gi.id, "ci_id": ci.id, "profile_id": ci.profile_id},
                via,
            )
            txn.dirty = True

        self._op(body, lambda: f"{self._label(gpu)}: destroy CI {ci_id} in GI {gi_id}")

    def destroy_gi(self, gpu: GpuRef, gi_id: int, via: str = "simulator") -> None:
        def body(txn: Txn) -> None:
            record = self._select(txn, gpu)
            gi = engine.find_gi(record, gi_id)
            if gi is None:
                raise SimNvmlError(codes.NOT_FOUND, f"no GI {gi_id}")
            engine.destroy_gi(record, gi)
            engine.record_change(
                txn.state,
                "nvmlGpuInstanceDestroy",
                record,
                {"gi_id": gi.id, "profile_id": gi.profile_id, "placement": f"{gi.start}:{gi.size}"},
                via,
            )
            txn.dirty = True

        self._op(body, lambda: f"{self._label(gpu)}: destroy GI {gi_id}")


def _frozen_by(txn: Txn, before: int) -> bool:
    """Whether this transaction's change reached the armed freeze (and disarm it)."""
    state = txn.state
    if not state.freeze_at or state.change_count == before:
        return False
    if state.change_count < state.freeze_at:
        return False
    state.freeze_at = 0
    txn.dirty = True
    return True


def _lost_by(txn: Txn, before: int) -> None:
    """GPUs armed to fall off the bus at this transaction's change count do (rule 7)."""
    state = txn.state
    if state.change_count == before:
        return
    for gpu in state.gpus:
        if gpu.lose_at and state.change_count >= gpu.lose_at:
            gpu.lost, gpu.lose_at, gpu.lose_error = gpu.lose_error, 0, ""
            txn.dirty = True


def _freeze() -> None:
    # Every thread of the process stops; a test kills or continues it from outside.
    os.kill(os.getpid(), signal.SIGSTOP)


def _placement_at(placements: Tuple[Placement, ...], start: int, name: str) -> Placement:
    for p in placements:
        if p.start == start:
            return p
    starts = ", ".join(str(p.start) for p in placements)
    raise SimNvmlError(
        codes.INVALID_ARGUMENT, f"{name} cannot start at {start} (possible starts: {starts})"
    )


def attach(pynvml_module: Any, spec: str) -> Simulator:
    """Install a new simulator beneath ``pynvml_module`` (rule 1) and return it.

    Raises:
        MigrestoreError: a bad spec; StateFileError for a bad state file.
    """
    sim = Simulator(spec)
    pynvml_module.nvmlLib = sim.library
    _clear_cache(pynvml_module)
    return sim


def detach(pynvml_module: Any) -> None:
    """Remove the simulator from beneath ``pynvml_module`` (and close it)."""
    lib = getattr(pynvml_module, "nvmlLib", None)
    pynvml_module.nvmlLib = None
    _clear_cache(pynvml_module)
    if isinstance(lib, fakelib.FakeNvmlLibrary):
        lib._sim.close()


def _clear_cache(pynvml_module: Any) -> None:
    cache = getattr(pynvml_module, "_nvmlGetFunctionPointer_cache", None)
    if isinstance(cache, dict):
        cache.clear()
