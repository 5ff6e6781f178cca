"""What pynvml reads through the simulator equals what a real H100 80GB HBM3 and a real H200
(driver 580, MIG disabled) answered to the same calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict

import pynvml
import pytest

from migrestore import simulator
from tests.sim.support import gi_handles, gi_placements, remaining

PROBE_DIR = Path(__file__).resolve().parents[1] / "data" / "reference" / "probes"
PROBES = {
    "h100-80gb-hbm3": PROBE_DIR / "h100-80gb-hbm3-driver580.json",
    "h200-141gb": PROBE_DIR / "h200-driver580.json",
}


def _probe(model: str) -> Dict[str, Any]:
    path = PROBES[model]
    with path.open(encoding="utf-8") as handle:
        data: Dict[str, Any] = json.load(handle)
    return data


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize("model", sorted(PROBES))
def test_pynvml_reads_the_probe_through_the_simulator(
    attach: Callable[[str], simulator.Simulator], model: str
) -> None:
    probe = _probe(model)
    real = probe["devices"][0]
    attach(model)
    assert pynvml.nvmlSystemGetDriverVersion() == probe["driver"]
    assert pynvml.nvmlSystemGetNVMLVersion() == probe["nvml_version"]
    assert pynvml.nvmlDeviceGetCount() == probe["count"]
    dev = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetName(dev) == real["name"]
    assert pynvml.nvmlDeviceGetArchitecture(dev) == real["arch"]
    assert pynvml.nvmlDeviceGetMigMode(dev) == real["mig_mode"]
    assert pynvml.nvmlDeviceGetMemoryInfo(dev).total == real["mem_total"]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(dev) == real["max_mig_devices"]
    assert pynvml.nvmlDeviceGetPersistenceMode(dev) == real["persistence"]
    for row in real["gi_profiles"]:
        index = row["profile"]
        if row["err"] is not None:
            with pytest.raises(pynvml.NVMLError) as err:
                pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, index)
            assert f"{type(err.value).__name__}: {err.value}" == row["err"]
            continue
        info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, index)
        for field in (
            "id",
            "isP2pSupported",
            "sliceCount",
            "instanceCount",
            "multiprocessorCount",
            "copyEngineCount",
            "decoderCount",
            "encoderCount",
            "jpegCount",
            "ofaCount",
            "memorySizeMB",
        ):
            assert getattr(info, field) == row[field], (index, field)
        assert _text(info.name) == row["name"]
        by_id = pynvml.nvmlDeviceGetGpuInstanceProfileInfoById(dev, row["id"])
        assert _text(by_id.name) == row["name_v"]
        assert [list(p) for p in gi_placements(dev, row["id"])] == row["placements"]
        assert remaining(dev, row["id"]) == row["remaining"]
        assert len(gi_handles(dev, row["id"])) == row["gis"]
