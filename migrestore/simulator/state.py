"""The simulator's state: simulated GPUs, their MIG geometry, clients, faults, latency.

Rules:

1. One ``SimState`` holds everything a simulated node has: per GPU its identity, MIG mode
   (current and pending), GIs with their CIs, the pids holding it and the pids running
   on each MIG device, the driver branch it runs, whether the platform lets it be reset
   (``passthrough``, with the activation status it answers) and the NVSwitch fabric its
   NVLinks go to (``nvlink_group``); whether Fabric Manager runs; the pids with an NVML
   session open (``sessions``, one entry per process: a process with NVML initialised is
   a client of every GPU); plus the armed faults, per-call latency and the log of
   changes. It is plain data; the MIG rules that change it live in ``engine``. State
   files written before branches (or sessions...) were stored still load: a GPU without
   ``branch`` runs the branch of the file's ``driver_version``; no ``sessions`` means
   none, no ``nvlink_group`` no NVSwitch, no ``fabric_manager`` a running one.
2. Two stores give transactions over it. ``MemoryStore`` keeps a fresh state in the
   process. ``FileStore`` keeps it in a JSON file shared by processes: every transaction
   holds an exclusive ``flock`` on the sidecar ``<file>.lock``, re-reads the file only
   when it was replaced or edited (device, inode, size, mtime; the store keeps the file
   it read open, so its inode cannot be reused while compared), and writes a changed
   state atomically (``migrestore.atomic``: temporary file, fsync, ``os.replace``,
   fsync of the directory).
   A thread lock makes both stores safe for threads.
3. A state file that cannot be read or does not have the documented shape raises
   ``StateFileError`` naming the file and what is wrong (the kind of a bad value, never
   the value: the file may not be ours), never a traceback.
4. Each transaction first does the housekeeping the caller passes (pruning dead pids,
   applying a reboot when the boot id changed) so no caller ever sees a stale client.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple

from migrestore import atomic
from migrestore.errors import MigrestoreError, StateFileError
from migrestore.simulator import codes, models

FORMAT = "migrestore-sim/1"
DRIVER_VERSION = models.BRANCHES[models.DEFAULT_BRANCH].driver_version  # the probes' driver
CHANGE_LOG_SIZE = 64
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
BOOT_ID_ENV = "MIGRESTORE_SIM_BOOT_ID_FILE"
# what an Ampere activation may answer on a passthrough GPU (GpuRecord.passthrough_status)
PASSTHROUGH_STATUSES = ("NVML_ERROR_RESET_REQUIRED", "NVML_ERROR_NOT_SUPPORTED")


@dataclass
class CiRecord:
    serial: int  # unique in the state, never reused: handles name it
    id: int  # CI ID inside its GI
    profile_id: int
    start: int  # compute slices inside the GI
    size: int
    uuid: str  # "MIG-..."
    pids: List[int] = field(default_factory=list)
    # hidden holders (a leaked handle, DCGM): pids no process query lists, yet the
    # destroy answers IN_USE while one runs
    holders: List[int] = field(default_factory=list)


@dataclass
class GiRecord:
    serial: int
    id: int  # GI ID (swizzId table, optionally permuted)
    profile_id: int
    start: int  # memory slices (placement units)
    size: int
    cis: List[CiRecord] = field(default_factory=list)
    holders: List[int] = field(default_factory=list)  # hidden holders, as CiRecord's


@dataclass
class GpuRecord:
    index: int
    model: str  # simulator model name (simulator.models)
    uuid: str
    pci_bus_id: str
    passthrough: bool = False  # no GPU reset possible (a VM's passthrough GPU)
    # what an Ampere MIG activation answers on a passthrough GPU: nvml.h says
    # RESET_REQUIRED, NVIDIA's MIG guide transcript shows NOT_SUPPORTED
    passthrough_status: str = "NVML_ERROR_RESET_REQUIRED"
    # the NVSwitch fabric the GPU's NVLinks go to (0: none; DGX A100: every GPU in 1)
    nvlink_group: int = 0
    gi_id_map: Optional[List[int]] = None  # swizzId -> GI ID, when permuted
    mig_current: bool = False
    mig_pending: bool = False
    holders: List[int] = field(default_factory=list)  # pids holding the GPU open
    gis: List[GiRecord] = field(default_factory=list)
    branch: int = models.DEFAULT_BRANCH  # the driver branch (simulator.models.BRANCHES)
    # fell off the bus: the NVML error name every call on it answers ("" while healthy)
    lost: str = ""
    # armed: the GPU falls off the bus with this error once the node's change count
    # reaches ``lose_at`` (0: not armed), in the middle of whatever changes it
    lose_at: int = 0
    lose_error: str = ""
    # vGPU host mode (SR-IOV, MIG-backed vGPU): process queries on a MIG device handle
    # answer NOT_SUPPORTED (nvml.h, nvmlDeviceGetComputeRunningProcesses_v3)
    vgpu_host: bool = False


@dataclass
class Fault:
    function: str  # C symbol, e.g. "nvmlDeviceCreateGpuInstanceWithPlacement"
    nth: int  # fail the nth call counted from when the fault was set
    error: str  # "NVML_ERROR_IN_USE"
    seen: int = 0


@dataclass
class Change:
    seq: int
    function: str
    gpu: int
    args: Dict[str, Any]
    pid: int
    via: str  # "nvml" (the fake library), "simulator" (Python API), "migrestore-sim"


@dataclass
class SimState:
    gpus: List[GpuRecord]
    boot_id: str = ""
    next_serial: int = 1
    mig_uuid_counter: int = 0
    change_count: int = 0
    changes: List[Change] = field(default_factory=list)
    faults: List[Fault] = field(default_factory=list)
    latency_us: Dict[str, int] = field(default_factory=dict)
    # one-shot: the process whose change makes change_count reach this stops itself
    freeze_at: int = 0
    driver_version: str = DRIVER_VERSION
    sessions: List[int] = field(default_factory=list)  # pids with NVML initialised
    # whether Fabric Manager runs (matters on NVSwitch nodes: rule 5 of engine)
    fabric_manager: bool = True

    def gpu(self, index: int) -> Optional[GpuRecord]:
        if 0 <= index < len(self.gpus):
            return self.gpus[index]
        return None

    def take_serial(self) -> int:
        serial = self.next_serial
        self.next_serial += 1
        return serial


class Txn:
    """One transaction: the state, and whether it must be written back."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self.dirty = False


Housekeeping = Callable[[Txn, bool], None]  # (txn, persistent)


# --------------------------------------------------------------------------- boot id


_REAL_BOOT_ID: List[str] = []  # the kernel's, read once: no process outlives its boot


def current_boot_id() -> str:
    """This boot's id (``MIGRESTORE_SIM_BOOT_ID_FILE`` overrides the /proc file, and is
    read at every call: a test's simulated reboot may come at any time), or "" when it
    cannot be read (then reboots are not detected)."""
    override = os.environ.get(BOOT_ID_ENV)
    if not override and _REAL_BOOT_ID:
        return _REAL_BOOT_ID[0]
    try:
        raw = _read_all(override or BOOT_ID_FILE)
    except OSError:
        return ""
    # as a text file would read it: ASCII with replacement, universal newlines
    text = raw.decode("ascii", "replace").replace("\r\n", "\n").replace("\r", "\n")
    boot = text.strip()
    if not override:
        _REAL_BOOT_ID.append(boot)
    return boot


def _read_all(path: str) -> bytes:
    """The whole file, through the descriptor alone: it runs before every simulated call
    (rule 4), where a text file object costs three times as much."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: List[bytes] = []
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- JSON


def to_json(state: SimState) -> Dict[str, Any]:
    return {
        "format": FORMAT,
        "driver_version": state.driver_version,
        "boot_id": state.boot_id,
        "next_serial": state.next_serial,
        "mig_uuid_counter": state.mig_uuid_counter,
        "change_count": state.change_count,
        "changes": [
            {
                "seq": c.seq,
                "function": c.function,
                "gpu": c.gpu,
                "args": c.args,
                "pid": c.pid,
                "via": c.via,
            }
            for c in state.changes
        ],
        "faults": [
            {"function": f.function, "nth": f.nth, "error": f.error, "seen": f.seen}
            for f in state.faults
        ],
        "latency_us": dict(sorted(state.latency_us.items())),
        "freeze_at": state.freeze_at,
        "sessions": list(state.sessions),
        "fabric_manager": state.fabric_manager,
        "gpus": [_gpu_json(g) for g in state.gpus],
    }


def _gpu_json(gpu: GpuRecord) -> Dict[str, Any]:
    return {
        "index": gpu.index,
        "model": gpu.model,
        "branch": gpu.branch,
        "uuid": gpu.uuid,
        "pci_bus_id": gpu.pci_bus_id,
        "passthrough": gpu.passthrough,
        "passthrough_status": gpu.passthrough_status,
        "nvlink_group": gpu.nvlink_group,
        "gi_id_map": gpu.gi_id_map,
        "mig_current": gpu.mig_current,
        "mig_pending": gpu.mig_pending,
        "holders": list(gpu.holders),
        "lost": gpu.lost,
        **({"lose_at": gpu.lose_at, "lose_error": gpu.lose_error} if gpu.lose_at else {}),
        "vgpu_host": gpu.vgpu_host,
        "gis": [
            {
                "serial": gi.serial,
                "id": gi.id,
                "profile_id": gi.profile_id,
                "start": gi.start,
                "size": gi.size,
                "holders": list(gi.holders),
                "cis": [
                    {
                        "serial": ci.serial,
                        "id": ci.id,
                        "profile_id": ci.profile_id,
                        "start": ci.start,
                        "size": ci.size,
                        "uuid": ci.uuid,
                        "pids": list(ci.pids),
                        "holders": list(ci.holders),
                    }
                    for ci in gi.cis
                ],
            }
            for gi in gpu.gis
        ],
    }


def _kind(value: Any) -> str:
    """What a bad value is, without the value: the file may not be ours (a path given to
    --simulate by mistake), and its content does not belong in an error."""
    return f"a JSON {type(value).__name__}" if value is not None else "null"


class _Reader:
    """Typed access to parsed JSON that reports the path of a bad value."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, at: str, problem: str) -> StateFileError:
        return StateFileError(
            f"{self.where}: {at}: {problem} (not a migrestore-sim state file, or damaged; "
            "recreate it with 'migrestore-sim init')"
        )

    def obj(self, value: Any, at: str) -> Dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(at, f"expected an object, found {type(value).__name__}")
        return value

    def get(self, obj: Dict[str, Any], key: str, kind: type, at: str) -> Any:
        if key not in obj:
            raise self.fail(at, f"missing key {key!r}")
        value = obj[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.fail(f"{at}.{key}", f"expected an integer, found {_kind(value)}")
        if kind is not int and not isinstance(value, kind):
            raise self.fail(f"{at}.{key}", f"expected {kind.__name__}, found {_kind(value)}")
        return value

    def ints(self, obj: Dict[str, Any], key: str, at: str) -> List[int]:
        values = self.get(obj, key, list, at)
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.fail(f"{at}.{key}[{i}]", f"expected an integer, found {_kind(v)}")
        return [int(v) for v in values]


def from_json(data: Any, where: str) -> SimState:
    """Parse a state document.

    Raises:
        StateFileError: the document does not have the shape ``to_json`` writes.
    """
    r = _Reader(where)
    top = r.obj(data, "top level")
    fmt = r.get(top, "format", str, "top level")
    if fmt != FORMAT:
        raise r.fail("format", f"expected {FORMAT!r}, found another value (not shown)")
    driver_version = r.get(top, "driver_version", str, "top level")
    gpus: List[GpuRecord] = []
    for i, raw in enumerate(r.get(top, "gpus", list, "top level")):
        gpus.append(_gpu_from(r, r.obj(raw, f"gpus[{i}]"), f"gpus[{i}]", i, driver_version))
    changes = []
    for i, raw in enumerate(r.get(top, "changes", list, "top level")):
        at = f"changes[{i}]"
        c = r.obj(raw, at)
        changes.append(
            Change(
                seq=r.get(c, "seq", int, at),
                function=r.get(c, "function", str, at),
                gpu=r.get(c, "gpu", int, at),
                args=r.get(c, "args", dict, at),
                pid=r.get(c, "pid", int, at),
                via=r.get(c, "via", str, at),
            )
        )
    faults = []
    for i, raw in enumerate(r.get(top, "faults", list, "top level")):
        at = f"faults[{i}]"
        f = r.obj(raw, at)
        faults.append(
            Fault(
                function=r.get(f, "function", str, at),
                nth=r.get(f, "nth", int, at),
                error=r.get(f, "error", str, at),
                seen=r.get(f, "seen", int, at),
            )
        )
    latency: Dict[str, int] = {}
    for key, value in r.get(top, "latency_us", dict, "top level").items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise r.fail(f"latency_us.{key}", f"expected microseconds >= 0, found {value!r}")
        latency[str(key)] = value
    freeze_at = top.get("freeze_at", 0)  # absent in files written before it existed
    if isinstance(freeze_at, bool) or not isinstance(freeze_at, int) or freeze_at < 0:
        raise r.fail("freeze_at", f"expected a change count >= 0, found {freeze_at!r}")
    sessions = top.get("sessions", [])  # absent in files written before it existed
    if not isinstance(sessions, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in sessions
    ):
        raise r.fail("sessions", f"expected a list of pids, found {sessions!r}")
    fabric_manager = top.get("fabric_manager", True)  # absent in older files
    if not isinstance(fabric_manager, bool):
        raise r.fail("fabric_manager", f"expected true or false, found {_kind(fabric_manager)}")
    return SimState(
        gpus=gpus,
        fabric_manager=fabric_manager,
        sessions=list(sessions),
        boot_id=r.get(top, "boot_id", str, "top level"),
        next_serial=r.get(top, "next_serial", int, "top level"),
        mig_uuid_counter=r.get(top, "mig_uuid_counter", int, "top level"),
        change_count=r.get(top, "change_count", int, "top level"),
        changes=changes,
        faults=faults,
        latency_us=latency,
        freeze_at=freeze_at,
        driver_version=driver_version,
    )


def _gpu_from(
    r: _Reader, g: Dict[str, Any], at: str, position: int, driver_version: str
) -> GpuRecord:
    index = r.get(g, "index", int, at)
    if index != position:
        raise r.fail(f"{at}.index", f"GPU at position {position} says index {index}")
    model = r.get(g, "model", str, at)
    if not models.known(model):
        raise r.fail(
            f"{at}.model",
            f"unknown model {model!r} (known: {', '.join(models.model_names())})",
        )
    if "branch" in g:
        branch = r.get(g, "branch", int, at)
    else:
        branch = models.branch_of_version(driver_version)
    try:
        models.branch(branch)
    except MigrestoreError as err:
        raise r.fail(f"{at}.branch", str(err)) from None
    id_map = g.get("gi_id_map")
    if id_map is not None:
        id_map = r.ints(g, "gi_id_map", at)
    gis = []
    for j, raw in enumerate(r.get(g, "gis", list, at)):
        gat = f"{at}.gis[{j}]"
        gi = r.obj(raw, gat)
        cis = []
        for k, craw in enumerate(r.get(gi, "cis", list, gat)):
            cat = f"{gat}.cis[{k}]"
            ci = r.obj(craw, cat)
            cis.append(
                CiRecord(
                    serial=r.get(ci, "serial", int, cat),
                    id=r.get(ci, "id", int, cat),
                    profile_id=r.get(ci, "profile_id", int, cat),
                    start=r.get(ci, "start", int, cat),
                    size=r.get(ci, "size", int, cat),
                    uuid=r.get(ci, "uuid", str, cat),
                    pids=r.ints(ci, "pids", cat),
                    holders=r.ints(ci, "holders", cat) if "holders" in ci else [],
                )
            )
        gis.append(
            GiRecord(
                serial=r.get(gi, "serial", int, gat),
                id=r.get(gi, "id", int, gat),
                profile_id=r.get(gi, "profile_id", int, gat),
                start=r.get(gi, "start", int, gat),
                size=r.get(gi, "size", int, gat),
                cis=cis,
                holders=r.ints(gi, "holders", gat) if "holders" in gi else [],
            )
        )
    return GpuRecord(
        index=index,
        model=model,
        uuid=r.get(g, "uuid", str, at),
        pci_bus_id=r.get(g, "pci_bus_id", str, at),
        passthrough=r.get(g, "passthrough", bool, at),
        gi_id_map=id_map,
        mig_current=r.get(g, "mig_current", bool, at),
        mig_pending=r.get(g, "mig_pending", bool, at),
        holders=r.ints(g, "holders", at),
        gis=gis,
        branch=branch,
        lost=_lost_from(r, g, at),
        lose_at=r.get(g, "lose_at", int, at) if "lose_at" in g else 0,
        lose_error=_lost_from(r, {"lost": g["lose_error"]}, f"{at}.lose_error")
        if "lose_error" in g
        else "",
        passthrough_status=_status_from(r, g, at),
        nvlink_group=_group_from(r, g, at),
        vgpu_host=r.get(g, "vgpu_host", bool, at) if "vgpu_host" in g else False,
    )


def _status_from(r: _Reader, g: Dict[str, Any], at: str) -> str:
    """A passthrough GPU's activation status; absent in files written before it existed."""
    if "passthrough_status" not in g:
        return "NVML_ERROR_RESET_REQUIRED"
    status = r.get(g, "passthrough_status", str, at)
    if status not in PASSTHROUGH_STATUSES:
        raise r.fail(
            f"{at}.passthrough_status", f"expected one of {', '.join(PASSTHROUGH_STATUSES)}"
        )
    return str(status)


def _group_from(r: _Reader, g: Dict[str, Any], at: str) -> int:
    """The GPU's NVSwitch fabric (0: none); absent in files written before it existed."""
    if "nvlink_group" not in g:
        return 0
    group = r.get(g, "nvlink_group", int, at)
    if group < 0:
        raise r.fail(f"{at}.nvlink_group", "expected 0 (no NVSwitch) or a group number")
    return int(group)


def _lost_from(r: _Reader, g: Dict[str, Any], at: str) -> str:
    """The error a lost GPU answers; absent in files written before it existed."""
    if "lost" not in g:
        return ""
    lost = r.get(g, "lost", str, at)
    if lost:
        try:
            codes.parse_error_name(lost)
        except ValueError:
            raise r.fail(f"{at}.lost", "not an NVML error name") from None
    return str(lost)


def dumps(state: SimState) -> str:
    return json.dumps(to_json(state), indent=1) + "\n"


def is_state_document(head: bytes) -> bool:
    """Whether bytes read from a path are a simulator state file (its ``format``)."""
    try:
        data = json.loads(head.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def parse_text(text: str, where: str) -> SimState:
    """Parse a state file's text.

    Raises:
        StateFileError: not JSON, or not a state document.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        # RecursionError: nested deeper than the parser's recursion limit
        reason = err if isinstance(err, ValueError) else "nested too deeply"
        raise StateFileError(
            f"{where}: not valid JSON ({reason}); recreate it with 'migrestore-sim init'"
        ) from None
    return from_json(data, where)


# --------------------------------------------------------------------------- stores


class MemoryStore:
    """A state that lives in this process only (``attach(pynvml, "h100-80gb-hbm3:2")``)."""

    path: Optional[str] = None

    def __init__(self, state: SimState, housekeeping: Housekeeping) -> None:
        self._state = state
        self._housekeeping = housekeeping
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        with self._lock:
            txn = Txn(self._state)
            self._housekeeping(txn, False)
            yield txn

    def close(self) -> None:
        """Nothing to release."""


class FileStore:
    """A state kept in a JSON file shared by processes (rule 2)."""

    def __init__(self, path: str, housekeeping: Housekeeping) -> None:
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self.reads = 0  # how often the file was parsed (tests check the cache)
        self.writes = 0
        self._housekeeping = housekeeping
        self._lock = threading.RLock()
        self._state: Optional[SimState] = None
        self._fingerprint: Optional[Tuple[int, int, int, int]] = None
        self._held: Optional[IO[bytes]] = None
        self._lock_fd: Optional[int] = None
        self._lock_pid = 0
        # Nothing is created (not even the .lock beside it) before the file is known to be
        # a simulator state file: ``--simulate /etc/passwd`` must not make /etc/passwd.lock.
        try:
            head = atomic.read_regular(self.path)
        except FileNotFoundError:
            raise StateFileError(
                f"{self.path}: no such simulator state file "
                "(create it with 'migrestore-sim init STATE MODEL[:COUNT]')"
            ) from None
        except OSError as err:
            raise StateFileError(
                f"{self.path}: not a simulator state file ({err.strerror or err}); "
                "create one with 'migrestore-sim init STATE MODEL[:COUNT]'"
            ) from None
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            raise StateFileError(
                f"{self.path}: not UTF-8 text; recreate it with 'migrestore-sim init'"
            ) from None
        parse_text(text, self.path)  # the same named errors as every later read
        with self.transaction():
            pass

    # -- locking

    def _lock_file(self) -> int:
        if self._lock_fd is None or self._lock_pid != os.getpid():
            # After fork the inherited descriptor shares the parent's lock: open our own.
            try:
                self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise StateFileError(
                    f"{self.lock_path}: cannot open the state file's lock ({err.strerror}); "
                    "the directory must be writable"
                ) from None
            self._lock_pid = os.getpid()
        return self._lock_fd

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        with self._lock:
            fd = self._lock_file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                txn = Txn(self._current())
                try:
                    self._housekeeping(txn, True)
                    yield txn
                except BaseException:
                    # An unexpected error may have left the state half changed: forget it,
                    # the next transaction reads the file again.
                    self._forget()
                    raise
                if txn.dirty:
                    self._write(txn.state)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    # -- reading

    def _current(self) -> SimState:
        try:
            st = os.stat(self.path)
        except OSError as err:
            raise StateFileError(
                f"{self.path}: cannot read the state file ({err.strerror})"
            ) from None
        fingerprint = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._state is not None and fingerprint == self._fingerprint:
            return self._state
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - kept open on purpose (rule 2)
        except OSError as err:
            raise StateFileError(
                f"{self.path}: cannot read the state file ({err.strerror})"
            ) from None
        try:
            raw = handle.read()
            st = os.fstat(handle.fileno())
        except OSError as err:
            handle.close()
            raise StateFileError(
                f"{self.path}: cannot read the state file ({err.strerror})"
            ) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            handle.close()
            raise StateFileError(
                f"{self.path}: not UTF-8 text; recreate it with 'migrestore-sim init'"
            ) from None
        try:
            state = parse_text(text, self.path)
        except StateFileError:
            handle.close()
            raise
        self.reads += 1
        self._hold(handle, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        self._state = state
        return state

    def _hold(self, handle: IO[bytes], fingerprint: Tuple[int, int, int, int]) -> None:
        if self._held is not None:
            self._held.close()
        self._held = handle
        self._fingerprint = fingerprint

    def _forget(self) -> None:
        self._state = None
        self._fingerprint = None

    # -- writing

    def _write(self, state: SimState) -> None:
        try:
            atomic.write_bytes(
                self.path,
                dumps(state).encode("utf-8"),
                what="simulator state file",
                fix="free space there or make it writable",
                mode=None,
                ours=is_state_document,
            )
            handle = open(self.path, "rb")  # noqa: SIM115 - kept open on purpose (rule 2)
        except StateFileError:
            self._forget()
            raise
        except OSError as err:
            self._forget()
            raise StateFileError(
                f"{self.path}: cannot read the state file back ({err.strerror})"
            ) from None
        st = os.fstat(handle.fileno())
        self.writes += 1
        self._hold(handle, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        self._state = state

    def close(self) -> None:
        with self._lock:
            if self._held is not None:
                self._held.close()
                self._held = None
            if self._lock_fd is not None and self._lock_pid == os.getpid():
                os.close(self._lock_fd)
            self._lock_fd = None
            self._forget()


def write_new(path: str, state: SimState, overwrite: bool = False) -> None:
    """Create a state file (``migrestore-sim init``), atomically, under the file's lock.

    Raises:
        StateFileError: it exists and ``overwrite`` is false, or it cannot be written.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise StateFileError(f"{path}: exists already (pass --force to replace it)")
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise StateFileError(f"{lock_path}: cannot create the lock file ({err.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        atomic.write_bytes(
            path,
            dumps(state).encode("utf-8"),
            what="simulator state file",
            fix="choose a writable path",
            mode=None,
        )
    finally:
        os.close(fd)
