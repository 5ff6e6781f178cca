"""State files: shared by processes without losing updates, read only when changed,
rejected clearly when malformed; clients that die are pruned; threads are safe."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, List

import pynvml
import pytest

from migrestore import simulator
from migrestore.errors import MigrestoreError, StateFileError
from migrestore.simulator import cli
from migrestore.simulator.state import FileStore
from tests.sim.conftest import BootId
from tests.sim.support import create_ci, create_gi, device

ROOT = Path(__file__).resolve().parents[2]


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_changes_are_shared_through_the_file(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str]
) -> None:
    path = state_file("h100-80gb-hbm3")
    attach(path)
    dev = device()
    pynvml.nvmlDeviceSetMigMode(dev, 1)
    gi, gi_id, _, _ = create_gi(dev, 9, 4)
    create_ci(gi, 2)
    other = simulator.Simulator(path)
    try:
        gpu = other.state().gpus[0]
        assert (gpu.mig_current, [g.id for g in gpu.gis]) == (True, [gi_id])
        other.destroy_ci(0, gi_id, 0)
        other.destroy_gi(0, gi_id)
    finally:
        other.close()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceGetInfo(gi)  # destroyed by the other process
    assert json.loads(Path(path).read_text())["change_count"] == 5


def test_the_file_is_read_only_when_it_changed(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str]
) -> None:
    path = state_file("h100-80gb-hbm3:8")
    sim = attach(path)
    store = sim.store
    assert isinstance(store, FileStore)
    reads = store.reads
    for i in range(8):
        dev = device(i)
        pynvml.nvmlDeviceGetMigMode(dev)
        pynvml.nvmlDeviceGetName(dev)
        for index in range(18):
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, index)
    assert store.reads == reads  # 160 calls, no re-read
    pynvml.nvmlDeviceSetMigMode(device(0), 1)  # our own write is not re-read either
    pynvml.nvmlDeviceGetMigMode(device(0))
    assert store.reads == reads
    assert cli.main(["set-mode", path, "--gpu", "1", "on"]) == 0  # another writer
    assert pynvml.nvmlDeviceGetMigMode(device(1)) == [1, 1]
    assert store.reads == reads + 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected an object"),
        ('{"format": "other"}', "format"),
        ("__valid__without_gpus", "missing key 'gpus'"),
        ("__valid__bad_model", "unknown model 'h999'"),
        ("__valid__bad_type", "gpus[0].mig_current: expected bool"),
    ],
)
def test_malformed_state_files_are_named_errors(
    tmp_path: Path, state_file: Callable[..., str], content: str, problem: str
) -> None:
    path = Path(state_file("a30-24gb"))
    doc = json.loads(path.read_text())
    if content == "__valid__without_gpus":
        del doc["gpus"]
        content = json.dumps(doc)
    elif content == "__valid__bad_model":
        doc["gpus"][0]["model"] = "h999"
        content = json.dumps(doc)
    elif content == "__valid__bad_type":
        doc["gpus"][0]["mig_current"] = "yes"
        content = json.dumps(doc)
    path.write_text(content)
    before = pynvml.nvmlLib
    with pytest.raises(StateFileError) as err:
        simulator.attach(pynvml, str(path))
    text = str(err.value)
    assert str(path) in text and problem in text and "\n" not in text
    assert pynvml.nvmlLib is before  # nothing attached


def test_missing_state_file_and_bad_spec(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="migrestore-sim init"):
        simulator.Simulator(str(tmp_path / "none.json"))
    with pytest.raises(MigrestoreError, match="known models"):
        simulator.Simulator("h100")
    with pytest.raises(MigrestoreError, match="COUNT from 1 to 64"):
        simulator.Simulator("h100-80gb-hbm3:0")


def test_concurrent_processes_lose_no_update(state_file: Callable[..., str]) -> None:
    path = state_file("h100-80gb-hbm3:4")
    rounds = 12
    script = (
        "import sys, pynvml\n"
        "from migrestore import simulator\n"
        "sim = simulator.attach(pynvml, sys.argv[1])\n"
        "pynvml.nvmlInit()\n"
        "i = int(sys.argv[2])\n"
        "dev = pynvml.nvmlDeviceGetHandleByIndex(i)\n"
        "pynvml.nvmlDeviceSetMigMode(dev, 1)\n"
        "for n in range(int(sys.argv[3])):\n"
        "    gi = pynvml.nvmlDeviceCreateGpuInstance(dev, 19)\n"
        "    pynvml.nvmlGpuInstanceDestroy(gi)\n"
        "    sim.hold(0)\n"
        "    sim.release(0)\n"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, path, str(i), str(rounds)],
            env=_env(),
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    parsed = 0
    while any(w.poll() is None for w in workers):
        json.loads(Path(path).read_text())  # never a torn write
        parsed += 1
    for w in workers:
        _, err = w.communicate()
        assert w.returncode == 0, err.decode()
    doc = json.loads(Path(path).read_text())
    assert doc["change_count"] == 4 * (1 + 2 * rounds)
    assert [g["mig_current"] for g in doc["gpus"]] == [True] * 4
    assert all(g["gis"] == [] and g["holders"] == [] for g in doc["gpus"])
    assert parsed > 0


def test_threads_share_a_simulator(attach: Callable[[str], simulator.Simulator]) -> None:
    sim = attach("a100-80gb:4")
    errors: List[BaseException] = []

    def work(index: int) -> None:
        try:
            dev = device(index)
            pynvml.nvmlDeviceSetMigMode(dev, 1)
            for _ in range(20):
                gi = pynvml.nvmlDeviceCreateGpuInstance(dev, 14)
                ci = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 1)
                pynvml.nvmlComputeInstanceDestroy(ci)
                pynvml.nvmlGpuInstanceDestroy(gi)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sim.change_count == 4 * (1 + 4 * 20)


def test_dead_clients_are_pruned(
    attach: Callable[[str], simulator.Simulator], state_file: Callable[..., str], boot_id: BootId
) -> None:
    sim = attach(state_file("a100-80gb"))
    client = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sim.hold(0, client.pid)
    dev = device()
    assert pynvml.nvmlDeviceSetMigMode(dev, 1) == pynvml.NVML_ERROR_IN_USE
    client.kill()
    os.waitid(os.P_PID, client.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
    try:
        assert sim.state().gpus[0].holders == []
        sim.reset_gpu(0)
        assert pynvml.nvmlDeviceGetMigMode(dev) == [1, 1]
    finally:
        client.wait()
    with pytest.raises(MigrestoreError, match="not running"):
        sim.hold(0, client.pid)
