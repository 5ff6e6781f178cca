"""The guard refuses every kind of mutating call, in this process, in the processes the
tier starts, and through nvidia-smi; read-only calls still work.

These tests run on the simulator everywhere (CI included) and, where a driver answers,
also against the real library's exported symbols and the real nvidia-smi, without ever
calling a mutating function of the driver: on real hardware a refused call is only
looked up, or called with a NULL handle after the guard is known to be in place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pynvml
import pytest

from migrestore import simulator
from tests.realgpu import guard as guardmod
from tests.realgpu.support import GuardEnv, Target, fd_links

# The kinds the tier must refuse by contract, and a name NVML does not have (yet) for each.
CONTRACT_KINDS = guardmod.KINDS[:9]


def _wrappers_of(kind: str) -> List[str]:
    return sorted(
        name
        for name, value in vars(pynvml).items()
        if name.startswith("nvml")
        and callable(value)
        and hasattr(value, "_realgpu_original")
        and guardmod.kind(name) == kind
    )


@pytest.fixture
def sim() -> Iterator[Any]:
    attached = simulator.attach(pynvml, "h100-80gb-hbm3:1")
    pynvml.nvmlInit()
    try:
        yield attached
    finally:
        pynvml.nvmlShutdown()
        simulator.detach(pynvml)


def test_guard_is_installed_for_the_tier(realgpu_guard: GuardEnv) -> None:
    active = guardmod.active()
    assert active is not None and active.log.path == realgpu_guard.log.path
    assert type(pynvml).__name__ == "_GuardedModule"
    assert pynvml._nvmlGetFunctionPointer.__name__ == "lookup"
    assert realgpu_guard.records(os.getpid(), "installed")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nvmlDeviceSetMigMode", "Set"),
        ("nvmlDeviceCreateGpuInstanceWithPlacement", "Create"),
        ("nvmlGpuInstanceDestroy", "Destroy"),
        ("nvmlDeviceResetGpuLockedClocks", "Reset"),
        ("nvmlDeviceClearEccErrorCounts", "Clear"),
        ("nvmlDeviceRegisterEvents", "Register"),
        ("nvmlDeviceModifyDrainState", "Modify"),
        ("nvmlDeviceRemoveGpu_v2", "Remove"),
        ("nvmlDeviceReadWritePRM_v1", "Write"),
        ("nvmlDeviceVgpuForceGspUnload", "Force"),
        ("nvmlDevicePowerSmoothingActivatePresetProfile", "Activate"),
        ("nvmlEventSetWait_v2", "Set"),
        ("nvmlDeviceGetMigMode", None),
        ("nvmlDeviceGetAutoBoostedClocksEnabled", None),
        ("nvmlDeviceGetGpuInstanceRemainingCapacity", None),
        ("nvmlDeviceGetRusdSettings_v1", None),
        ("nvmlDeviceIsMigDeviceHandle", None),
        ("nvmlInitWithFlags", None),
    ],
)
def test_kind_of_a_name(name: str, expected: Any) -> None:
    assert guardmod.kind(name) == expected


def test_symbols_without_a_read_word_are_refused_too() -> None:
    assert guardmod.symbol_refusal("nvmlDeviceGetMigMode") is None
    assert guardmod.symbol_refusal("nvmlShutdown") is None
    assert "not known to be read-only" in str(guardmod.symbol_refusal("nvmlDeviceOnSameBoard"))
    assert "set call" in str(guardmod.symbol_refusal("nvmlDeviceSetMigMode"))


@pytest.mark.parametrize("kind", CONTRACT_KINDS)
def test_each_contract_kind_is_refused_through_pynvml(
    kind: str, realgpu_guard: GuardEnv, sim: Any
) -> None:
    """Every pynvml wrapper of the kind, and one added after the guard was installed
    (a later nvidia-ml-py), raises before reaching the library; the simulator records
    no change."""
    future = f"nvmlDevice{kind}FutureGeometry"
    called: List[Any] = []

    def later(handle: Any) -> None:
        called.append(handle)  # what a new wrapper would do: reach the library

    setattr(pynvml, future, later)
    try:
        names = [*_wrappers_of(kind), future]
        assert future in names
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        for name in names:
            before = len(realgpu_guard.records(os.getpid(), "refused"))
            with pytest.raises(guardmod.MutationRefused, match=name):
                getattr(pynvml, name)(handle, 0, 0)
            assert len(realgpu_guard.records(os.getpid(), "refused")) == before + 1
        assert called == []
        assert sim.change_count == 0
    finally:
        delattr(pynvml, future)


@pytest.mark.parametrize("kind", CONTRACT_KINDS)
def test_each_contract_kind_is_refused_at_the_library(kind: str, sim: Any) -> None:
    """A symbol of the kind is refused at pynvml's lookup and on the library object,
    also one the guard's wrappers never saw."""
    for name in (f"nvmlDevice{kind}FutureGeometry", f"nvmlGpuInstance{kind}Thing_v2"):
        with pytest.raises(guardmod.MutationRefused):
            pynvml._nvmlGetFunctionPointer(name)
        with pytest.raises(guardmod.MutationRefused):
            getattr(pynvml.nvmlLib, name)
    assert sim.change_count == 0


def test_every_mutating_symbol_of_the_simulated_library_is_refused(sim: Any) -> None:
    lib = guardmod.unwrap(pynvml.nvmlLib)
    symbols = dir(lib)
    mutating = [s for s in symbols if guardmod.kind(s) is not None]
    assert {"nvmlDeviceSetMigMode", "nvmlGpuInstanceDestroy"} <= set(mutating)
    for name in mutating:
        with pytest.raises(guardmod.MutationRefused):
            pynvml._nvmlGetFunctionPointer(name)
        with pytest.raises(guardmod.MutationRefused):
            getattr(pynvml.nvmlLib, name)
    # the reads migrestore needs still answer under the guard
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetMigMode(handle) == [0, 0]
    with pytest.raises(guardmod.MutationRefused):
        pynvml.nvmlDeviceSetMigMode(handle, 1)
    assert sim.change_count == 0


def test_every_mutating_symbol_of_the_real_library_is_refused(target: Target) -> None:
    """On a real driver: every function libnvidia-ml.so exports whose name changes
    something is refused by name (looked up only, never called)."""
    if target.simulated:
        pytest.skip("simulated GPUs: no real libnvidia-ml.so to list")
    with target.nvml():
        path = guardmod.loaded_library_path()
        assert path, "libnvidia-ml.so is not mapped although NVML answered"
        exported = guardmod.exported_symbols(path)
        mutating = [s for s in exported if guardmod.kind(s) is not None]
        assert "nvmlDeviceSetMigMode" in mutating and "nvmlDeviceGetMigMode" in exported
        for name in mutating:
            with pytest.raises(guardmod.MutationRefused):
                pynvml._nvmlGetFunctionPointer(name)
            with pytest.raises(guardmod.MutationRefused):
                getattr(pynvml.nvmlLib, name)
        # a NULL handle: even an unguarded driver would answer INVALID_ARGUMENT
        assert guardmod.active() is not None
        with pytest.raises(guardmod.MutationRefused):
            pynvml.nvmlDeviceSetMigMode(None, 0)


@pytest.mark.parametrize("kind", CONTRACT_KINDS)
def test_each_contract_kind_is_refused_on_the_target(
    kind: str, target: Target, realgpu_guard: GuardEnv
) -> None:
    """On the GPUs the tier checks (real when a driver answers): every symbol of the
    kind the library exports, and a later one, is refused at the lookup and on the
    library object; every pynvml wrapper of the kind is the guard's stub (checked before
    it is called) and refuses a call. Reads still answer."""
    changes = target.changes()
    with target.nvml():
        if target.simulated:
            symbols = dir(guardmod.unwrap(pynvml.nvmlLib))
        else:
            path = guardmod.loaded_library_path()
            assert path, "libnvidia-ml.so is not mapped although NVML answered"
            symbols = guardmod.exported_symbols(path)
        of_kind = [s for s in symbols if guardmod.kind(s) == kind]
        for name in [*of_kind, f"nvmlDevice{kind}FutureGeometry"]:
            with pytest.raises(guardmod.MutationRefused):
                pynvml._nvmlGetFunctionPointer(name)
            with pytest.raises(guardmod.MutationRefused):
                getattr(pynvml.nvmlLib, name)
        assert pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
        for name in _wrappers_of(kind):
            stub = getattr(pynvml, name)
            assert hasattr(stub, "_realgpu_original"), f"{name} is not the guard's stub"
            with pytest.raises(guardmod.MutationRefused):
                stub(None, 0, 0)  # a NULL handle, should anything ever get through
    assert target.changes() == changes


def test_the_simulators_detach_still_closes_its_state(tmp_path: Path) -> None:
    """The guarded library object passes for the fake it wraps, so detach closes it."""
    state = tmp_path / "gpus.json"
    from migrestore.simulator import cli as simcli

    assert simcli.main(["init", str(state), "a30-24gb"]) == 0
    attached = simulator.attach(pynvml, str(state))
    assert type(pynvml.nvmlLib).__name__ == "_GuardedLibrary"
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    simulator.detach(pynvml)
    assert pynvml.nvmlLib is None
    assert attached is not None
    assert str(state) not in fd_links(os.getpid())


# --------------------------------------------------------------------------- processes


def _sim_state(tmp_path: Path, *models: str) -> str:
    from migrestore.simulator import cli as simcli

    state = str(tmp_path / "gpus.json")
    assert simcli.main(["init", state, *models]) == 0
    return state


def _changes(state: str) -> int:
    from migrestore.simulator import cli as simcli

    done = subprocess.run(
        [sys.executable, "-m", "migrestore.simulator", "show", state, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(guardmod.ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert simcli  # the in-process CLI made the file; the subprocess reads it
    value = json.loads(done.stdout)["change_count"]
    assert isinstance(value, int)
    return value


def _guarded_env(realgpu_guard: GuardEnv, tmp_path: Path) -> Dict[str, str]:
    assert realgpu_guard.log.path is not None
    base = {**os.environ}
    base.pop("MIGRESTORE_SIMULATE", None)
    base.update(
        {
            "MIGRESTORE_LOCK": str(tmp_path / "lock"),
            "MIGRESTORE_STATE": str(tmp_path / "state.json"),
        }
    )
    return guardmod.subprocess_env(base, realgpu_guard.bin_dir, realgpu_guard.log.path)


def test_migrestore_apply_in_a_guarded_process_changes_nothing(
    realgpu_guard: GuardEnv, tmp_path: Path
) -> None:
    """Always on the simulator: ``migrestore apply`` (not a dry run) of a config that
    needs changes, started the way the tier starts migrestore: its first change is
    refused, the process fails, the GPUs are as they were."""
    state = _sim_state(tmp_path, "h100-80gb-hbm3:1")
    config = tmp_path / "migrestore.yaml"
    config.write_text(
        "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n"
        "    instances: [{profile: 3g.40gb, placement: 0}]\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrestore", "--simulate", state, "-c", str(config), "apply"],
        env=_guarded_env(realgpu_guard, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "MutationRefused" in err and "nvmlDeviceSetMigMode" in err
    assert realgpu_guard.records(proc.pid, "installed")
    refused = realgpu_guard.records(proc.pid, "refused")
    assert [r["function"] for r in refused] == ["nvmlDeviceSetMigMode"]
    assert _changes(state) == 0


def test_a_reset_through_nvidia_smi_is_refused_in_a_guarded_process(
    realgpu_guard: GuardEnv, tmp_path: Path
) -> None:
    """migrestore's own reset path (``nvidia-smi --gpu-reset``), and the tool by an
    absolute path, are refused before the tool starts."""
    code = (
        "from migrestore.backend import run_reset_tool\n"
        "import subprocess\n"
        "for call in (lambda: run_reset_tool('00000000:18:00.0', 'GPU 0'),\n"
        "             lambda: subprocess.run(['/usr/bin/nvidia-smi', '-i', '0', '-mig', '1'])):\n"
        "    try:\n"
        "        call()\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=_guarded_env(realgpu_guard, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("MutationRefused") for line in lines), out
    assert "--gpu-reset resets a GPU" in lines[0]
    assert "-mig sets MIG mode" in lines[1]
    assert [r["layer"] for r in realgpu_guard.records(proc.pid, "refused")] == [
        "subprocess",
        "subprocess",
    ]


def test_a_guarded_process_that_cannot_load_the_guard_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = {**os.environ, guardmod.ENV_ACTIVE: "1", "PYTHONPATH": str(guardmod.SHIM)}
    done = subprocess.run(
        [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 70
    assert "refusing to run it unguarded" in done.stderr
    assert not marker.exists()


def test_a_guarded_process_refuses_every_contract_kind(
    realgpu_guard: GuardEnv, tmp_path: Path
) -> None:
    """In a process the tier starts, one wrapper per kind (or a later one) is refused."""
    code = (
        "import pynvml, sys\n"
        "from tests.realgpu.guard import kind as kind_of\n"
        "assert type(pynvml).__name__ == '_GuardedModule', 'not guarded'\n"
        "for kind in sys.argv[1:]:\n"
        "    name = next((n for n in dir(pynvml) if kind_of(n) == kind\n"
        "                 and hasattr(getattr(pynvml, n), '_realgpu_original')), None)\n"
        "    if name is None:\n"
        "        name = f'nvmlDevice{kind}Later'\n"
        "        setattr(pynvml, name, lambda *a: print('REACHED', name))\n"
        "    try:\n"
        "        getattr(pynvml, name)(None, 0)\n"
        "    except Exception as exc:\n"
        "        print(kind, type(exc).__name__)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *CONTRACT_KINDS],
        env=_guarded_env(realgpu_guard, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"{kind} MutationRefused" for kind in CONTRACT_KINDS]
    assert len(realgpu_guard.records(proc.pid, "refused")) == len(CONTRACT_KINDS)


# --------------------------------------------------------------------------- nvidia-smi

MUTATING_CALLS = [
    ["-r"],
    ["--gpu-reset", "-i", "0"],
    ["-i", "0", "-mig", "1"],
    ["--multi-instance-gpu", "0"],
    ["mig", "-cgi", "9,19", "-C"],
    ["mig", "--create-gpu-instance", "9"],
    ["mig", "-dgi"],
    ["mig", "--destroy-gpu-instance", "-gi", "1"],
    ["mig", "-cci"],
    ["mig", "--create-compute-instance", "0"],
    ["mig", "-dci"],
    ["mig", "--destroy-compute-instance"],
    ["-pm", "1"],
    ["--persistence-mode=0"],
    ["-pl", "300"],
    ["--power-limit", "300"],
    ["-c", "EXCLUSIVE_PROCESS"],
    ["--compute-mode", "0"],
    ["-e", "0"],
    ["--ecc-config=1"],
    ["-p", "0"],
    ["-ac", "1593,1410"],
    ["--applications-clocks", "1593,1410"],
    ["-rac"],
    ["--reset-applications-clocks"],
    ["-lgc", "1000,1400"],
    ["--lock-gpu-clocks", "1000"],
    ["-rgc"],
    ["--reset-gpu-clocks"],
    ["-lmc", "1000"],
    ["-rmc"],
    ["-am", "1"],
    ["-caa"],
    ["-vm", "3"],
    ["--gom", "COMPUTE"],
    ["-cc", "1"],
    ["nvlink", "-r", "0"],
    ["nvlink", "--setcontrol", "0bz"],
    ["drain", "-p", "0000:18:00.0", "-m", "1"],
    ["-q", "-f", "/etc/passwd"],
    ["--some-option-of-a-later-driver"],
]
READ_ONLY_CALLS = [
    [],
    ["-L"],
    ["-q"],
    ["-q", "-x"],
    ["-q", "-d", "MEMORY,COMPUTE", "-i", "0"],
    ["--query-gpu=name,mig.mode.current", "--format=csv,noheader"],
    ["--query-compute-apps=pid,used_memory", "--format=csv"],
    ["mig", "-lgip"],
    ["mig", "-lgipp", "-i", "0"],
    ["mig", "-lgi"],
    ["mig", "-lci", "-gi", "1"],
    ["mig", "-lcip"],
    ["topo", "-m"],
    ["nvlink", "-s"],
    ["--help"],
]


@pytest.fixture
def fake_real_smi(tmp_path: Path, realgpu_guard: GuardEnv) -> Iterator[Any]:
    """A wrapper in front of a stand-in 'real' nvidia-smi that records its argv, so the
    pass-through is checked on machines without a driver too."""
    record = tmp_path / "real-calls"
    real = tmp_path / "real" / "nvidia-smi"
    real.parent.mkdir()
    real.write_text(
        f'#!/bin/sh\n{{ echo "$#"; for a in "$@"; do echo "$a"; done; }} >> \'{record}\'\n'
    )
    real.chmod(0o755)
    assert realgpu_guard.log.path is not None
    wrapper = guardmod.write_smi_wrapper(tmp_path / "bin", str(real), realgpu_guard.log.path)

    def run(args: List[str]) -> Any:
        # through sh: this process's own Popen guard would refuse the call before the
        # wrapper could show that it refuses it too
        done = subprocess.run(
            ["/bin/sh", str(wrapper), *args], capture_output=True, text=True, timeout=60
        )
        calls = record.read_text().splitlines() if record.exists() else []
        return done, calls

    yield run


@pytest.mark.parametrize("args", MUTATING_CALLS, ids=lambda a: " ".join(a) or "-")
def test_nvidia_smi_refuses_mutating_options(args: List[str], fake_real_smi: Any) -> None:
    done, calls = fake_real_smi(args)
    assert done.returncode == 4
    assert done.stderr.startswith("nvidia-smi (realgpu guard): refused")
    assert calls == []


@pytest.mark.parametrize("args", READ_ONLY_CALLS, ids=lambda a: " ".join(a) or "-")
def test_nvidia_smi_passes_read_only_calls(args: List[str], fake_real_smi: Any) -> None:
    done, calls = fake_real_smi(args)
    assert done.returncode == 0, done.stderr
    assert calls == [str(len(args)), *args]


def test_nvidia_smi_on_path_is_the_wrapper_and_reads_like_the_real_one(
    realgpu_guard: GuardEnv, tmp_path: Path
) -> None:
    env = _guarded_env(realgpu_guard, tmp_path)
    done = subprocess.run(
        ["/bin/sh", "-c", "nvidia-smi -i 0 -mig 1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4 and "-mig sets MIG mode" in done.stderr
    if realgpu_guard.real_smi is None:
        pytest.skip("no real nvidia-smi on this machine: the pass-through is checked on a stand-in")
    real = subprocess.run(
        [realgpu_guard.real_smi, "-L"], capture_output=True, text=True, timeout=60
    )
    through = subprocess.run(
        ["/bin/sh", "-c", "nvidia-smi -L"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (through.returncode, through.stdout) == (real.returncode, real.stdout)
