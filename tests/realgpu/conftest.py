"""The realgpu tier (``pytest -m realgpu``): read-only checks on this machine's GPUs.

Rules:

1. Every test of this folder carries the ``realgpu`` marker.
2. The guard (tests/realgpu/guard.py) is installed by an autouse fixture before the
   tier's first test and stays for the whole tier: pynvml in this process, ``nvidia-smi``
   on PATH, and the environment that guards every process the tier starts. It is removed
   after the tier's last test, so tiers that run later in the same pytest session keep a
   simulator they can change. Every test checks that the guard is active and fails
   otherwise: the tier never runs without it.
3. The hardware checks run on the GPUs NVML reports; without a driver they are skipped
   with one line saying why. ``MIGRESTORE_REALGPU_SIMULATE=SPEC`` (``MODEL[:COUNT],...``
   or a ``migrestore-sim`` state file, copied) runs them on simulated GPUs instead.
   The guard tests and the comparison's own tests need no GPU and always run.
4. ``MIGRESTORE_REALGPU_TIMINGS=PATH``: the wall times the tier measured are written
   there as JSON after its last test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, List, Optional

import pynvml
import pytest

from tests.realgpu import guard as guardmod
from tests.realgpu.support import ENV_SIMULATE, GuardEnv, Target, Timings

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.realgpu)


@pytest.fixture(scope="package", autouse=True)
def realgpu_guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardEnv]:
    """Rule 2: the guard, for the whole tier."""
    base = tmp_path_factory.mktemp("realgpu-guard")
    log_path = str(base / "guard.log")
    real = guardmod.real_nvidia_smi()
    bin_dir = base / "bin"
    wrapper = guardmod.write_smi_wrapper(bin_dir, real, log_path)
    old_path = os.environ.get("PATH", os.defpath)
    installed = guardmod.install(log_path)
    os.environ["PATH"] = os.pathsep.join([str(bin_dir), old_path])
    try:
        yield GuardEnv(bin_dir=bin_dir, log=installed.log, real_smi=real, wrapper=wrapper)
    finally:
        os.environ["PATH"] = old_path
        guardmod.uninstall()


@pytest.fixture(autouse=True)
def _guard_required(realgpu_guard: GuardEnv) -> None:
    """Rule 2: no test of the tier runs unguarded."""
    if guardmod.active() is None:
        pytest.fail("the realgpu guard is not installed: the tier refuses to run without it")
    assert shutil.which("nvidia-smi") == str(realgpu_guard.wrapper)


def _nvml_answers() -> Optional[str]:
    """None when NVML initialises and lists a GPU here, else why not (one line)."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        from migrestore.nvml import error_name

        return (
            f"no NVIDIA driver on this machine (nvmlInit: {error_name(int(err.value))}); "
            f"set {ENV_SIMULATE}=SPEC to run the tier on simulated GPUs"
        )
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        return "NVML answers but lists no GPU"
    return None


@pytest.fixture(scope="package")
def timings() -> Iterator[Timings]:
    recorded = Timings()
    yield recorded
    recorded.write()


@pytest.fixture(scope="package")
def target(
    realgpu_guard: GuardEnv, tmp_path_factory: pytest.TempPathFactory, timings: Timings
) -> Target:
    """Rule 3: the GPUs the hardware checks run on, or a skip saying why not."""
    tmp = tmp_path_factory.mktemp("realgpu")
    spec = os.environ.get(ENV_SIMULATE)
    if spec:
        from migrestore.simulator import cli as simcli

        state = tmp / "gpus.json"
        if os.sep in spec or spec.endswith(".json") or os.path.exists(spec):
            shutil.copyfile(spec, state)
        else:
            assert simcli.main(["init", str(state), *spec.split(",")]) == 0
        chosen = Target("simulate", tmp, realgpu_guard, str(state))
    else:
        reason = _nvml_answers()
        if reason is not None:
            pytest.skip(reason)
        chosen = Target("real", tmp, realgpu_guard, None)
    doc = chosen.direct()
    timings.facts.update(
        {
            "mode": chosen.mode,
            "simulate": spec or None,
            "driver_version": doc["driver_version"],
            "gpus": [
                {"name": g["name"], "mig": g["mig"], "instances": len(g["instances"])}
                for g in doc["gpus"]
            ],
        }
    )
    return chosen
