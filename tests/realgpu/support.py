"""What the realgpu tier runs on: the machine's GPUs (or, opted in, simulated ones), the
guarded environment of every process it starts, a second reader that asks pynvml
directly, the profile-table comparison, and the timings file.

Rules:

1. Every process the tier starts runs under the guard (tests/realgpu/guard.py): its
   environment activates the guard, and ``Target.run``/``Target.start`` check the guard
   log for that pid's ``installed`` line and for no ``refused`` line.
2. Lock and last-result files live in the tier's own directory, never /run: the tier
   never touches a running migrestore service's files. ``systemctl`` is a stand-in that
   records its arguments and fails, so any unit call is visible and changes nothing.
3. The direct reader uses pynvml's own wrappers only, none of migrestore's NVML code,
   so an agreement between the two is evidence and not a tautology.
4. Differences are reported by field: GPU, profile, field, both values, one per line.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pynvml

from tests.realgpu import guard as guardmod

ENV_SIMULATE = "MIGRESTORE_REALGPU_SIMULATE"
ENV_TIMINGS = "MIGRESTORE_REALGPU_TIMINGS"

GI_FIELDS = (
    "index",
    "name",
    "slices",
    "memory_mib",
    "sms",
    "max",
    "copy_engines",
    "decoders",
    "encoders",
    "jpeg",
    "ofa",
    "placements",
)
CI_FIELDS = ("name", "slices", "max", "sms", "placements", "default")
CI_READ_FIELDS = ("name", "slices", "max", "sms", "placements")  # what NVML itself answers

SYSTEMCTL_STANDIN = """#!/bin/sh
# realgpu tier: records every call and changes nothing
printf '%s\\n' "$*" >> {log}
echo "systemctl stand-in of the realgpu tier: no unit is touched" >&2
exit 1
"""


@dataclass
class Run:
    argv: List[str]
    pid: int
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        assert self.returncode == 0, f"{self.argv} exited {self.returncode}: {self.stderr}"
        return json.loads(self.stdout)


@dataclass
class GuardEnv:
    """The guard as the tier installed it."""

    bin_dir: Path
    log: guardmod.GuardLog
    real_smi: Optional[str]
    wrapper: Path

    def records(self, pid: Optional[int] = None, event: Optional[str] = None) -> List[Any]:
        return [
            r
            for r in self.log.records()
            if (pid is None or r.get("pid") == pid) and (event is None or r.get("event") == event)
        ]

    def check_process(self, pid: int, what: str) -> None:
        """Rule 1: the process was guarded and the guard refused nothing in it."""
        assert self.records(pid, "installed"), f"{what} (pid {pid}) ran without the guard"
        refused = self.records(pid, "refused")
        assert not refused, f"{what} (pid {pid}) attempted a mutating call: {refused}"


@dataclass
class Timings:
    """Wall times (seconds) by name, written to $MIGRESTORE_REALGPU_TIMINGS at the end."""

    values: Dict[str, List[float]] = field(default_factory=dict)
    facts: Dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.values.setdefault(name, []).append(round(seconds, 4))

    def write(self) -> Optional[str]:
        path = os.environ.get(ENV_TIMINGS)
        if not path:
            return None
        doc = {
            "format": "migrestore-realgpu-timings/1",
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.facts,
            "seconds": self.values,
        }
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
        return path


class Target:
    """The GPUs the tier checks: ``real`` (NVML answered) or ``simulate`` (a simulator
    state file, opted in with $MIGRESTORE_REALGPU_SIMULATE)."""

    def __init__(self, mode: str, tmp: Path, guard: GuardEnv, state: Optional[str]) -> None:
        self.mode = mode
        self.tmp = tmp
        self.guard = guard
        self.state = state
        self.systemctl_log = tmp / "systemctl.calls"
        standin = tmp / "systemctl"
        standin.write_text(SYSTEMCTL_STANDIN.format(log=_sh_quote(str(self.systemctl_log))))
        standin.chmod(0o755)
        base = {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "MIGRESTORE_SIMULATE",
                "MIGRESTORE_CONFIG",
                "NOTIFY_SOCKET",
                "WATCHDOG_USEC",
                "WATCHDOG_PID",
                "JOURNAL_STREAM",
                "LISTEN_FDS",
            )
        }
        base.update(
            {
                "MIGRESTORE_LOCK": str(tmp / "migrestore.lock"),
                "MIGRESTORE_STATE": str(tmp / "run" / "state.json"),
                "MIGRESTORE_SYSTEMCTL": str(standin),
            }
        )
        assert guard.log.path is not None
        self.env = guardmod.subprocess_env(base, guard.bin_dir, guard.log.path)

    # ------------------------------------------------------------------ processes

    @property
    def simulated(self) -> bool:
        return self.mode == "simulate"

    def argv(self, *args: str) -> List[str]:
        prefix = ["--simulate", self.state] if self.state else []
        return [sys.executable, "-m", "migrestore", *prefix, *args]

    def run(self, *args: str, timeout: float = 300.0) -> Run:
        argv = self.argv(*args)
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        seconds = time.monotonic() - started
        self.guard.check_process(proc.pid, "migrestore " + " ".join(args))
        return Run(argv, proc.pid, proc.returncode, out, err, seconds)

    def systemctl_calls(self) -> List[str]:
        if not self.systemctl_log.exists():
            return []
        return self.systemctl_log.read_text().splitlines()

    def changes(self) -> Optional[int]:
        """The simulator's count of state changes (None on real GPUs, where the guard
        log is the witness)."""
        if self.state is None:
            return None
        done = subprocess.run(
            [sys.executable, "-m", "migrestore.simulator", "show", self.state, "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        count = json.loads(done.stdout)["change_count"]
        assert isinstance(count, int)
        return count

    def session_files(self) -> Tuple[str, ...]:
        """Paths whose open file descriptor means an NVML session: the driver's device
        nodes, or the simulator's state file and its lock."""
        if self.state is not None:
            return (os.path.realpath(self.state), os.path.realpath(self.state) + ".lock")
        return ("/dev/nvidia",)

    # ------------------------------------------------------------------ direct reads

    @contextlib.contextmanager
    def nvml(self) -> Iterator[None]:
        """pynvml in this process, on the same GPUs the subprocesses see."""
        if self.state is not None:
            from migrestore import simulator

            simulator.attach(pynvml, self.state)
            try:
                pynvml.nvmlInit()
                try:
                    yield
                finally:
                    pynvml.nvmlShutdown()
            finally:
                simulator.detach(pynvml)
            return
        pynvml.nvmlInit()
        try:
            yield
        finally:
            pynvml.nvmlShutdown()

    def direct(self) -> Dict[str, Any]:
        with self.nvml():
            return read_direct()


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------- direct reads


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _strip(name: Any) -> str:
    text = _text(name)
    return text[4:] if text.startswith("MIG ") else text


def _code(err: pynvml.NVMLError) -> int:
    return int(err.value)


def _placements(query: Any, struct: Any, owner: Any, profile_id: int) -> List[List[int]]:
    count = ctypes.c_uint(0)
    query(owner, profile_id, None, ctypes.byref(count))
    if not count.value:
        return []
    buf = (struct * count.value)()
    query(owner, profile_id, buf, ctypes.byref(count))
    return sorted([int(buf[i].start), int(buf[i].size)] for i in range(count.value))


def _gi_profiles(handle: Any) -> List[Dict[str, Any]]:
    out = []
    for index in range(64):
        try:
            info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, index)
        except pynvml.NVMLError as err:
            if _code(err) == pynvml.NVML_ERROR_NOT_SUPPORTED:
                continue
            if _code(err) == pynvml.NVML_ERROR_INVALID_ARGUMENT:
                break
            raise
        out.append(
            {
                "id": int(info.id),
                "index": index,
                "name": _strip(info.name),
                "slices": int(info.sliceCount),
                "memory_mib": int(info.memorySizeMB),
                "sms": int(info.multiprocessorCount),
                "max": int(info.instanceCount),
                "copy_engines": int(info.copyEngineCount),
                "decoders": int(info.decoderCount),
                "encoders": int(info.encoderCount),
                "jpeg": int(info.jpegCount),
                "ofa": int(info.ofaCount),
                "placements": _placements(
                    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements,
                    pynvml.c_nvmlGpuInstancePlacement_t,
                    handle,
                    int(info.id),
                ),
            }
        )
    return out


def _ci_profiles(gi: Any) -> List[Dict[str, Any]]:
    out = []
    for index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT + 1):
        try:
            info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, index, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
            )
        except pynvml.NVMLError as err:
            if _code(err) == pynvml.NVML_ERROR_NOT_SUPPORTED:
                continue
            if _code(err) == pynvml.NVML_ERROR_INVALID_ARGUMENT:
                break
            raise
        out.append(
            {
                "id": int(info.id),
                "name": _strip(info.name),
                "slices": int(info.sliceCount),
                "max": int(info.instanceCount),
                "sms": int(info.multiprocessorCount),
                "placements": _placements(
                    pynvml.nvmlGpuInstanceGetComputeInstancePossiblePlacements,
                    pynvml.c_nvmlComputeInstancePlacement_t,
                    gi,
                    int(info.id),
                ),
            }
        )
    return out


def _handles(query: Any, struct: Any, owner: Any, profile_id: int, cap: int) -> List[Any]:
    if cap <= 0:
        return []
    buf = (struct * cap)()
    count = ctypes.c_uint(cap)
    query(owner, profile_id, buf, ctypes.byref(count))
    return [buf[i] for i in range(min(count.value, cap))]


def read_direct() -> Dict[str, Any]:
    """Every GPU as pynvml reports it (rule 3), in the shape of ``status --json`` (less
    the processes, which come and go on a shared GPU) plus the profile table and the CI
    profiles read from existing GIs."""
    gpus = []
    for index in range(int(pynvml.nvmlDeviceGetCount())):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pci = pynvml.nvmlDeviceGetPciInfo(handle)
        gpu: Dict[str, Any] = {
            "index": index,
            "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
            "pci_bus_id": _text(pci.busId),
            "pci_device_id": f"0x{int(pci.pciDeviceId):08X}",
            "name": _text(pynvml.nvmlDeviceGetName(handle)),
        }
        try:
            current, pending = pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError as err:
            if _code(err) != pynvml.NVML_ERROR_NOT_SUPPORTED:
                raise
            gpu["mig"] = {"capable": False, "current": False, "pending": False}
            gpu["instances"], gpu["profiles"], gpu["ci_profiles"] = [], [], {}
            gpus.append(gpu)
            continue
        gpu["mig"] = {"capable": True, "current": bool(current), "pending": bool(pending)}
        profiles = _gi_profiles(handle)
        gpu["profiles"] = profiles
        instances: List[Dict[str, Any]] = []
        ci_profiles: Dict[int, List[Dict[str, Any]]] = {}
        if current:
            uuids = _mig_uuids(handle)
            for profile in profiles:
                gis = _handles(
                    pynvml.nvmlDeviceGetGpuInstances,
                    pynvml.c_nvmlGpuInstance_t,
                    handle,
                    profile["id"],
                    profile["max"],
                )
                for gi in gis:
                    info = pynvml.nvmlGpuInstanceGetInfo(gi)
                    cips = ci_profiles.setdefault(profile["id"], _ci_profiles(gi))
                    cis = []
                    for cip in cips:
                        for ci in _handles(
                            pynvml.nvmlGpuInstanceGetComputeInstances,
                            pynvml.c_nvmlComputeInstance_t,
                            gi,
                            cip["id"],
                            cip["max"],
                        ):
                            ci_info = pynvml.nvmlComputeInstanceGetInfo(ci)
                            cis.append(
                                {
                                    "ci_id": int(ci_info.id),
                                    "profile_id": int(ci_info.profileId),
                                    "placement": [
                                        int(ci_info.placement.start),
                                        int(ci_info.placement.size),
                                    ],
                                    "uuid": uuids.get((int(info.id), int(ci_info.id)), ""),
                                }
                            )
                    instances.append(
                        {
                            "gi_id": int(info.id),
                            "profile_id": int(info.profileId),
                            "placement": [int(info.placement.start), int(info.placement.size)],
                            "compute": sorted(cis, key=lambda c: c["placement"]),
                        }
                    )
        gpu["instances"] = sorted(instances, key=lambda g: g["placement"])
        gpu["ci_profiles"] = ci_profiles
        gpus.append(gpu)
    return {"driver_version": _text(pynvml.nvmlSystemGetDriverVersion()), "gpus": gpus}


def _mig_uuids(handle: Any) -> Dict[Tuple[int, int], str]:
    found: Dict[Tuple[int, int], str] = {}
    for index in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
        except pynvml.NVMLError as err:
            if _code(err) in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_INVALID_ARGUMENT):
                continue
            raise
        key = (
            int(pynvml.nvmlDeviceGetGpuInstanceId(mig)),
            int(pynvml.nvmlDeviceGetComputeInstanceId(mig)),
        )
        found[key] = _text(pynvml.nvmlDeviceGetUUID(mig))
    return found


def geometry(doc: Dict[str, Any]) -> List[Any]:
    """What must not change while the tier runs: per GPU, modes and instances."""
    return [
        (
            g["uuid"],
            g["mig"],
            [
                (
                    gi["gi_id"],
                    gi["profile_id"],
                    gi["placement"],
                    [
                        (ci["ci_id"], ci["profile_id"], ci["placement"], ci["uuid"])
                        for ci in gi["compute"]
                    ],
                )
                for gi in g["instances"]
            ],
        )
        for g in doc["gpus"]
    ]


# --------------------------------------------------------------------------- differences


def _value(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def diff_fields(
    where: str,
    mine: Dict[str, Any],
    theirs: Dict[str, Any],
    fields: Tuple[str, ...],
    names: Tuple[str, str],
) -> List[str]:
    """One line per field that differs (rule 4)."""
    return [
        f"{where}: {name}: {names[0]} {_value(mine.get(name))}, {names[1]} {_value(theirs.get(name))}"
        for name in fields
        if mine.get(name) != theirs.get(name)
    ]


def diff_profiles(
    label: str,
    mine: List[Dict[str, Any]],
    theirs: List[Dict[str, Any]],
    names: Tuple[str, str],
    ci_of: Optional[Tuple[int, ...]] = None,
    ci_fields: Tuple[str, ...] = CI_FIELDS,
) -> List[str]:
    """GI profile tables compared by profile ID and field; the CI profiles of the GI
    profiles in ``ci_of`` (all when None) compared by CI profile ID and field."""
    lines: List[str] = []
    by_id = {p["id"]: p for p in theirs}
    seen = set()
    for p in mine:
        where = f"{label}: GI profile {p['name']} (ID {p['id']})"
        other = by_id.get(p["id"])
        if other is None:
            lines.append(f"{where}: {names[0]} has it, {names[1]} does not")
            continue
        seen.add(p["id"])
        lines += diff_fields(where, p, other, GI_FIELDS, names)
        if ci_of is not None and p["id"] not in ci_of:
            continue
        ci_by_id = {c["id"]: c for c in other.get("compute", [])}
        ci_seen = set()
        for c in p.get("compute", []):
            cwhere = f"{where}: CI profile {c['name']} (ID {c['id']})"
            oc = ci_by_id.get(c["id"])
            if oc is None:
                lines.append(f"{cwhere}: {names[0]} has it, {names[1]} does not")
                continue
            ci_seen.add(c["id"])
            lines += diff_fields(cwhere, c, oc, ci_fields, names)
        for cid, oc in ci_by_id.items():
            if cid not in ci_seen:
                lines.append(
                    f"{where}: CI profile {oc['name']} (ID {cid}): {names[1]} has it, {names[0]} does not"
                )
    for pid, other in by_id.items():
        if pid not in seen:
            lines.append(
                f"{label}: GI profile {other['name']} (ID {pid}): {names[1]} has it, {names[0]} does not"
            )
    return lines


def simulated_model(name: str) -> Optional[str]:
    """The simulated model whose NVML name is ``name``, or None: the simulator's own
    models (``migrestore.simulator.models``), including those migrestore bundles no
    table of, so a real GPU of any simulated model is compared with the simulator."""
    from migrestore.simulator import models as simmodels

    for model, found in simmodels.all_models().items():
        if found.table.nvml_name == name:
            return model
    return None


def simulator_profiles(
    model: str, mig_on: bool, gi_profiles: List[int], tmp: Path
) -> Dict[str, Any]:
    """What migrestore reads from a simulated GPU of ``model`` in the same MIG mode: the
    ``profiles --json`` entry, with the CI profiles of each GI profile ID in
    ``gi_profiles`` read from a GI of that profile (as on the real GPU, where they are
    read from the GIs that exist), and the ``status --json`` entry."""
    from migrestore import backend, render, simulator
    from migrestore.nvml import Nvml
    from migrestore.simulator import cli as simcli

    tmp.mkdir(parents=True, exist_ok=True)
    state = str(tmp / f"reference-{model}.json")
    with contextlib.redirect_stdout(sys.stderr):
        assert simcli.main(["init", state, model, "--force"]) == 0

    def observe() -> Any:
        with Nvml(backend.choose(state)) as nv:
            return nv.observe()

    def with_sim(action: Any) -> Any:
        sim = simulator.attach(pynvml, state)
        try:
            return action(sim)
        finally:
            simulator.detach(pynvml)

    if mig_on:
        with_sim(lambda sim: sim.set_mode(0, True))
    observed = observe()
    doc = render.profiles_json(observed)["gpus"][0]
    names = {p["id"]: p["name"] for p in doc["profiles"]}
    for profile_id in gi_profiles:
        if profile_id not in names:
            continue
        gi_id = with_sim(lambda sim, name=names[profile_id]: sim.create_gi(0, name))
        read = render.profiles_json(observe())["gpus"][0]
        with_sim(lambda sim, gi=gi_id: sim.destroy_gi(0, gi))
        for mine, fresh in zip(doc["profiles"], read["profiles"]):
            if mine["id"] == profile_id:
                mine["compute"] = fresh["compute"]
    return {"profiles": doc, "status": render.status_json(observed, "")["gpus"][0]}


def fd_links(pid: int) -> List[str]:
    """What the open file descriptors of ``pid`` point to (``/proc/PID/fd``)."""
    links = []
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        with contextlib.suppress(FileNotFoundError):
            links.append(os.readlink(f"{base}/{fd}"))
    return links


def wait_until(check: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def which_real_smi() -> Optional[str]:
    return guardmod.real_nvidia_smi()


__all__ = ["GuardEnv", "Run", "Target", "Timings"]


# --------------------------------------------------------------------------- configs

TIER_SETTINGS = "clients: []\n"


def matching_config(export_text: str, status: Dict[str, Any]) -> Tuple[str, List[str]]:
    """The exported config, to which every GPU should already be converged, and the
    notes on what it leaves out: nothing since a GI without compute instances is
    exported as ``compute: []`` (issue 12 item 6). ``status`` is kept for callers."""
    del status
    return export_text + TIER_SETTINGS, []


def differing_config(status: Dict[str, Any], profiles: Dict[str, Any]) -> Optional[str]:
    """A config every MIG-capable GPU differs from: MIG off where it is on; MIG on with
    one GI of the smallest profile where it is off. None without a MIG-capable GPU."""
    import yaml

    tables = {g["uuid"]: g["profiles"] for g in profiles["gpus"]}
    rules: List[Dict[str, Any]] = []
    for gpu in status["gpus"]:
        if not gpu["mig"]["capable"]:
            continue
        rule: Dict[str, Any] = {"match": {"uuid": gpu["uuid"]}}
        if gpu["mig"]["current"]:
            rule["mig"] = False
        else:
            usable = [p for p in tables.get(gpu["uuid"], []) if p["placements"]]
            if not usable:
                continue
            smallest = min(usable, key=lambda p: (p["slices"], p["memory_mib"], p["id"]))
            rule["mig"] = True
            rule["instances"] = [{"profile": smallest["name"]}]
        rules.append(rule)
    if not rules:
        return None
    return yaml.safe_dump({"version": 1, "gpus": rules}, sort_keys=False) + TIER_SETTINGS


def select_syscall() -> str:
    """The number /proc/PID/syscall shows for a thread blocked in Python's
    ``select.select`` here (the daemon's idle wait), learnt from a thread of our own."""
    import select
    import threading

    read_fd, write_fd = os.pipe()
    ready = threading.Event()

    def wait() -> None:
        ready.set()
        select.select([read_fd], [], [], 60.0)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    ready.wait(10)
    tid = thread.native_id
    try:
        line = wait_until(
            lambda: _first_word(f"/proc/self/task/{tid}/syscall"),
            30,
            "a thread blocked in select()",
        )
    finally:
        os.write(write_fd, b"x")
        thread.join(30)
        os.close(read_fd)
        os.close(write_fd)
    return str(line)


def _first_word(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as handle:
            word = handle.read().split(" ", 1)[0].strip()
    except OSError:
        return None
    return word if word.isdigit() else None


def syscall_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/syscall", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""
