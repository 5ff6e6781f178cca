"""``migrestore-sim``: every verb, its errors and exit codes, and the client processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

from migrestore import simulator, tables
from migrestore.simulator import cli, models
from tests.sim.conftest import BootId

ROOT = Path(__file__).resolve().parents[2]

VERBS = (
    "models",
    "init",
    "show",
    "hold",
    "run",
    "fail",
    "clear-faults",
    "latency",
    "reboot",
    "reset",
    "set-mode",
    "create-gi",
    "create-ci",
    "destroy-ci",
    "destroy-gi",
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _sim_process(*argv: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "migrestore.simulator", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(capsys: pytest.CaptureFixture[str], verb: str) -> None:
    code, out, _ = run(capsys, verb, "--help")
    assert code == 0 and out.startswith(f"usage: migrestore-sim {verb}")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "create-gi", "x.json")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys)[0] == 2


def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    for name in models.model_names():
        assert f"{name}: " in out
    assert "[simulator only]" in out and "[bundled in migrestore]" in out
    assert "inferred (pci-subsystem-unknown)" in out
    code, out, _ = run(capsys, "models", "--json")
    document = json.loads(out)
    rows = {r["name"]: r for r in document["models"]}
    assert list(rows) == list(models.model_names())
    # Every bundled model is simulated; the simulator also has models migrestore lacks.
    assert {n for n, r in rows.items() if r["bundled"]} == set(tables.MODEL_NAMES)
    assert {"b200-180gb", "h20-96gb", "rtx-pro-4500-blackwell"} <= {
        n for n, r in rows.items() if not r["bundled"]
    }
    h100 = rows["h100-80gb-hbm3"]
    assert h100["nvml_name"] == "NVIDIA H100 80GB HBM3"
    assert h100["pci_device_ids"] == ["0x233010DE"]
    assert h100["pci_subsystem_id"] == "0x16C110DE"
    assert h100["provenance"]["nvml_name"]["kind"] == "hardware"
    assert rows["a100-pcie-40gb"]["pci_device_ids"] == ["0x20F110DE", "0x20B110DE"]
    # Every field of every model, GI and CI profile names its provenance; every rule a
    # field names is one the document defines.
    for row in rows.values():
        provs = [row["provenance"]]
        for gi in row["gi_profiles"]:
            provs.append(gi["provenance"])
            provs.extend(ci["provenance"] for ci in gi["ci_profiles"])
        for prov in provs:
            for value in prov.values():
                assert value["kind"] in ("hardware", "documented", "inferred"), value
                if value["kind"] == "inferred":
                    assert value["rule"] in document["rules"], value
                else:
                    assert value["source"], value


def test_init_show_and_drift_verbs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, boot_id: BootId
) -> None:
    path = str(tmp_path / "s.json")
    assert run(capsys, "init", path, "a100-sxm4-40gb", "h100-80gb-hbm3:2")[0] == 0
    code, _, err = run(capsys, "init", path, "a30-24gb")
    assert code == 1 and "--force" in err
    code, _, err = run(capsys, "init", path, "h100", "--force")
    assert code == 1 and "known models" in err
    code, _, err = run(capsys, "init", path, "h100-80gb-hbm3@999", "--force")
    assert code == 1 and "driver branch 999 is not simulated" in err
    steps: List[Tuple[List[str], str]] = [
        (["set-mode", path, "--gpu", "1", "on"], "activation NVML_SUCCESS"),
        (["create-gi", path, "--gpu", "1", "--profile", "3g.40gb"], "created GI 2"),
        (["create-gi", path, "--gpu", "1", "--profile", "1g.10gb", "--placement", "0"], "GI 7"),
        (["create-ci", path, "--gpu", "1", "--gi", "2"], "created CI 0 in GI 2"),
        (["create-ci", path, "--gpu", "1", "--gi", "7", "--profile", "1g.10gb"], "CI 0"),
    ]
    for argv, expected in steps:
        code, out, err = run(capsys, *argv)
        assert code == 0 and expected in out, err
    code, out, _ = run(capsys, "show", path)
    assert code == 0
    assert "GI 2 3g.40gb at 4:4" in out and "CI 0 3g.40gb at 0:3 MIG-" in out
    assert "MIG current=on pending=on" in out and "changes 5" in out
    code, out, _ = run(capsys, "show", path, "--json")
    doc = json.loads(out)
    assert doc["change_count"] == 5
    assert {c["via"] for c in doc["changes"]} == {"migrestore-sim"}
    refused = [
        (
            ["create-gi", path, "--gpu", "1", "--profile", "3g.40gb", "--placement", "4"],
            "NVML_ERROR_INSUFFICIENT_RESOURCES",
        ),
        (["create-gi", path, "--gpu", "0", "--profile", "3g.20gb"], "NVML_ERROR_NOT_SUPPORTED"),
        (
            ["create-gi", path, "--gpu", "1", "--profile", "3g.40gb", "--placement", "2"],
            "NVML_ERROR_INVALID_ARGUMENT",
        ),
        (["create-gi", path, "--gpu", "1", "--profile", "5g.50gb"], "NVML_ERROR_INVALID_ARGUMENT"),
        (["destroy-gi", path, "--gpu", "1", "--gi", "2"], "NVML_ERROR_IN_USE"),
        (["set-mode", path, "--gpu", "1", "off"], "NVML_ERROR_IN_USE"),
        (["destroy-ci", path, "--gpu", "1", "--gi", "2", "--ci", "3"], "NVML_ERROR_NOT_FOUND"),
        (["create-gi", path, "--gpu", "9", "--profile", "3g.40gb"], "NVML_ERROR_INVALID_ARGUMENT"),
    ]
    for argv, name in refused:
        code, out, err = run(capsys, *argv)
        assert code == 1 and name in err and err.count("\n") == 1, (argv, err)
    assert run(capsys, "destroy-ci", path, "--gpu", "1", "--gi", "2", "--ci", "0")[0] == 0
    assert run(capsys, "destroy-gi", path, "--gpu", "1", "--gi", "2")[0] == 0
    sim = simulator.Simulator(path)
    try:
        assert [g.id for g in sim.state().gpus[1].gis] == [7]
        assert sim.change_count == 7
    finally:
        sim.close()


def test_fail_latency_reboot_and_reset(
    capsys: pytest.CaptureFixture[str], state_file: Callable[..., str]
) -> None:
    path = state_file("a100-80gb")
    code, out, _ = run(capsys, "fail", path, "--call", "nvmlDeviceSetMigMode", "--error", "IN_USE")
    assert code == 0 and "NVML_ERROR_IN_USE" in out
    code, _, err = run(capsys, "fail", path, "--call", "nvmlFoo", "--error", "IN_USE")
    assert code == 1 and "not an NVML function" in err
    assert run(capsys, "latency", path, "--all", "--us", "50")[0] == 0
    assert run(capsys, "latency", path, "--call", "nvmlDeviceGetMigMode", "--us", "7")[0] == 0
    assert run(capsys, "latency", path, "--us", "7")[0] == 2
    code, out, _ = run(capsys, "show", path)
    assert "fault: call 1 of nvmlDeviceSetMigMode fails with NVML_ERROR_IN_USE" in out
    assert "latency: * 50 us" in out and "latency: nvmlDeviceGetMigMode 7 us" in out
    code, _, err = run(capsys, "set-mode", path, "--gpu", "0", "on")
    assert code == 0  # the fault is on the NVML call, not on the drift verb
    assert run(capsys, "clear-faults", path)[0] == 0
    code, out, _ = run(capsys, "show", path, "--json")
    assert json.loads(out)["faults"] == []
    assert run(capsys, "create-gi", path, "--gpu", "0", "--profile", "7g.80gb")[0] == 0
    assert run(capsys, "reset", path, "--gpu", "0")[0] == 0
    code, out, _ = run(capsys, "show", path, "--json")
    assert json.loads(out)["gpus"][0]["gis"] == []
    assert run(capsys, "create-gi", path, "--gpu", "0", "--profile", "7g.80gb")[0] == 0
    assert run(capsys, "reboot", path)[0] == 0
    code, out, _ = run(capsys, "show", path, "--json")
    gpu = json.loads(out)["gpus"][0]
    assert (gpu["mig_current"], gpu["gis"]) == (True, [])  # Ampere keeps its mode


def test_show_reports_a_bad_state_file_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{}")
    code, _, err = run(capsys, "show", str(path))
    assert code == 1 and str(path) in err and err.count("\n") == 1


def test_hold_until_terminated_or_killed(state_file: Callable[..., str]) -> None:
    path = state_file("a100-80gb")
    sim = simulator.Simulator(path)
    try:
        holder = _sim_process("hold", path, "--gpu", "0")
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("holding GPU 0 (GPU-") and f"pid {holder.pid}" in line
        assert sim.state().gpus[0].holders == [holder.pid]
        assert sim.set_mode(0, True) == "NVML_ERROR_IN_USE"
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=30) == 0
        assert sim.state().gpus[0].holders == []
        killed = _sim_process("hold", path, "--gpu", "0")
        assert killed.stdout is not None and killed.stdout.readline().startswith("holding")
        killed.kill()
        killed.wait(timeout=30)
        assert sim.state().gpus[0].holders == []  # pruned as dead
        sim.reset_gpu(0)
        assert sim.state().gpus[0].mig_current
    finally:
        sim.close()


def test_run_on_a_mig_device(state_file: Callable[..., str]) -> None:
    path = state_file("h100-80gb-hbm3")
    sim = simulator.Simulator(path)
    try:
        sim.set_mode(0, True)
        gi_id = sim.create_gi(0, "7g.80gb")
        sim.create_ci(0, gi_id)
        worker = _sim_process("run", path, "--gpu", "0", "--gi", str(gi_id))
        assert worker.stdout is not None
        line = worker.stdout.readline()
        assert f"GI {gi_id} CI 0 (MIG-" in line, line
        with pytest.raises(Exception, match="NVML_ERROR_IN_USE"):
            sim.destroy_ci(0, gi_id, 0)
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=30) == 0
        sim.destroy_ci(0, gi_id, 0)
        failed = _sim_process("run", path, "--gpu", "0", "--gi", str(gi_id))
        _, err = failed.communicate(timeout=30)
        assert failed.returncode == 1 and "NVML_ERROR_NOT_FOUND" in err
    finally:
        sim.close()
