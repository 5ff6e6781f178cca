"""One sick GPU does not stop the others (issue 12 item 3): 8 simulated H100s with GPU 3
fallen off the bus. ``apply`` restores the seven others, ends PARTIAL (exit 75), says
so in the state file, ``status`` (text, --json, --check) and the metrics; a declared GPU
that is not listed is reported, not dropped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from migrestore import metrics
from migrestore.errors import EXIT_OK, EXIT_PARTIAL
from tests.integration.cli_util import layout_of, run, sim, write

LAYOUT = """\
version: 1
clients: []
gpus:
  - match: all
    mig: true
    instances:
      - {profile: 3g.40gb, placement: 4}
      - {profile: 2g.20gb, placement: 0}
"""
RESTORED = [("2g.20gb", (0, 2)), ("3g.40gb", (4, 4))]
LOST = "NVML_ERROR_GPU_IS_LOST"


@pytest.fixture
def node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "h100-80gb-hbm3:8").code == 0
    assert sim(capsys, "lose", state, "--gpu", "3").code == 0
    return state


def state_file() -> dict:  # type: ignore[type-arg]
    with open(os.environ["MIGRESTORE_STATE"], encoding="utf-8") as f:
        data: dict = json.load(f)  # type: ignore[type-arg]
    return data


def test_seven_restored_one_lost_ends_partial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(tmp_path / "node.yaml", LAYOUT)
    applied = run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients")
    assert applied.code == EXIT_PARTIAL == 75, applied.err
    # the journal line of the sick GPU: index, bus id (none without a handle), error
    sick_lines = [line for line in applied.err.splitlines() if "gpu_sick" in line]
    assert len(sick_lines) == 1, applied.err
    assert "gpu=3" in sick_lines[0] and LOST in sick_lines[0]
    assert "pci_bus_id=" in sick_lines[0]

    status = run(capsys, "--simulate", node, "status", "--json")
    assert status.code == EXIT_OK
    data = status.json()
    assert len(data["gpus"]) == 8
    for index in (0, 1, 2, 4, 5, 6, 7):
        assert layout_of(data, index) == RESTORED
        assert data["gpus"][index]["error"] is None
    gpu3 = data["gpus"][3]
    assert gpu3["error"] == {"nvml_error": LOST, "failed": "get its handle"}
    assert gpu3["uuid"] == "" and gpu3["pci_bus_id"] == "" and gpu3["instances"] == []
    assert data["last_result"]["result"] == "partial"

    text = run(capsys, "--simulate", node, "status")
    assert "GPU 3: SICK" in text.out and LOST in text.out
    assert "last result: partial" in text.out and "GPU 3" in text.out.split("last result")[1]

    doc = state_file()
    assert doc["result"] == "partial"
    assert len(doc["unrestored"]) == 1 and doc["unrestored"][0].startswith("GPU 3 ")
    assert LOST in doc["unrestored"][0] and LOST in doc["message"]
    assert doc["gpus"][3]["error"]["nvml_error"] == LOST
    assert doc["gpus"][3]["converged"] is False
    assert [g["converged"] for i, g in enumerate(doc["gpus"]) if i != 3] == [True] * 7

    check = run(capsys, "--simulate", node, "-c", cfg, "status", "--check")
    assert check.code == 1 and check.out.startswith("PROBLEM: partial"), check.out
    assert "GPU 3" in check.out

    prom = metrics.render(doc)
    assert 'migrestore_last_pass_result{result="partial"} 1' in prom
    assert "migrestore_gpus_unrestored 1" in prom
    assert 'migrestore_gpu_sick{gpu="3"' in prom and f'error="{LOST}"' in prom


def test_a_rerun_stays_partial_and_changes_nothing_then_recovery_restores_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(tmp_path / "node.yaml", LAYOUT)
    assert run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients").code == 75
    before = json.loads(sim(capsys, "show", node, "--json").out)["change_count"]
    again = run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients")
    assert again.code == EXIT_PARTIAL
    assert json.loads(sim(capsys, "show", node, "--json").out)["change_count"] == before
    assert sim(capsys, "recover", node, "--gpu", "3").code == 0
    back = run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients")
    assert back.code == EXIT_OK, back.err
    data = run(capsys, "--simulate", node, "status", "--json").json()
    assert [layout_of(data, i) for i in range(8)] == [RESTORED] * 8
    assert state_file()["result"] == "applied" and state_file()["unrestored"] == []


def test_other_errors_and_a_plan_name_the_sick_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "a30-24gb:2").code == 0
    assert sim(capsys, "lose", state, "--gpu", "0", "--error", "IRQ_ISSUE").code == 0
    cfg = write(
        tmp_path / "node.yaml",
        "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n"
        "    instances:\n      - {profile: 4g.24gb}\n",
    )
    plan = run(capsys, "--simulate", state, "-c", cfg, "plan")
    assert plan.code == EXIT_OK
    assert "! not restored: GPU 0 (bus id unknown): get its handle: NVML_ERROR_IRQ_ISSUE" in (
        plan.out
    )
    applied = run(capsys, "--simulate", state, "-c", cfg, "apply", "--no-clients")
    assert applied.code == EXIT_PARTIAL
    data = run(capsys, "--simulate", state, "status", "--json").json()
    assert layout_of(data, 1) == [("4g.24gb", (0, 4))]


def test_a_declared_gpu_that_is_missing_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "h100-80gb-hbm3:2").code == 0
    gone = "GPU-00000000-1111-2222-3333-444444444444"
    cfg = write(
        tmp_path / "node.yaml",
        "version: 1\nclients: []\ngpus:\n"
        f"  - match: {{uuid: {gone}}}\n    mig: true\n    instances:\n"
        "      - {profile: 7g.80gb}\n"
        "  - match: all\n    mig: true\n    instances:\n      - {profile: 7g.80gb}\n",
    )
    applied = run(capsys, "--simulate", state, "-c", cfg, "apply", "--no-clients")
    assert applied.code == EXIT_PARTIAL, applied.err
    assert "gpu_missing" in applied.err and gone in applied.err
    doc = state_file()
    assert doc["result"] == "partial"
    assert doc["unrestored"] == [
        f"{cfg}:4: GPU {gone} is declared but NVML does not list it readable "
        "(check `nvidia-smi -L` and the kernel log for the GPU)"
    ]
    data = run(capsys, "--simulate", state, "status", "--json").json()
    assert [layout_of(data, i) for i in range(2)] == [[("7g.80gb", (0, 8))]] * 2


def test_a_gpu_lost_during_the_restore_ends_partial_and_the_others_are_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Xid 79 in the middle of a restore: GPU 3 falls off the bus right after the node's
    first change (whichever GPU made it), so its own actions fail GPU_IS_LOST."""
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "h100-80gb-hbm3:8").code == 0
    assert sim(capsys, "lose", state, "--gpu", "3", "--after-changes", "1").code == 0
    cfg = write(tmp_path / "node.yaml", LAYOUT)
    applied = run(capsys, "--simulate", state, "-c", cfg, "apply", "--no-clients")
    assert applied.code == EXIT_PARTIAL, applied.err
    sick_lines = [line for line in applied.err.splitlines() if "gpu_sick" in line]
    assert len(sick_lines) == 1, applied.err
    assert "gpu=3" in sick_lines[0] and LOST in sick_lines[0]
    assert "during the restore" in sick_lines[0]
    data = run(capsys, "--simulate", state, "status", "--json").json()
    for index in (0, 1, 2, 4, 5, 6, 7):
        assert layout_of(data, index) == RESTORED
    assert data["gpus"][3]["error"]["nvml_error"] == LOST
    doc = state_file()
    assert doc["result"] == "partial"
    assert len(doc["unrestored"]) == 1 and doc["unrestored"][0].startswith("GPU 3 ")
