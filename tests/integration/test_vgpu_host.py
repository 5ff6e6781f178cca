"""vGPU hosts (issue 12 item 6): per-MIG-device process queries answer NOT_SUPPORTED in
vGPU host mode (nvml.h, ``nvmlDeviceGetComputeRunningProcesses_v3``). Two simulated
H100s, GPU 0 in vGPU host mode (``migrestore-sim vgpu-host``): a geometry with GIs
without compute instances (``compute: []``) is declared, applied, shown, exported and
verified through the CLI; processes unknown are never zero processes: a destroy is
refused unless ``--force``, with the reason; the daemon's post-READY scan succeeds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from migrestore.errors import EXIT_FAILED, EXIT_OK
from tests.integration.cli_util import layout_of, run, sim, sim_show, write

LAYOUT = """\
version: 1
clients: []
gpus:
  - match: all
    mig: true
    instances:
      - {profile: 3g.40gb, placement: 0, compute: []}
      - {profile: 2g.20gb, placement: 4, compute: []}
      - {profile: 1g.10gb, placement: 6}
"""
LAYOUT_ON_GPU0 = [("3g.40gb", (0, 4)), ("2g.20gb", (4, 2)), ("1g.10gb", (6, 1))]
UNKNOWN = "NVML_ERROR_NOT_SUPPORTED"
# every GI with its default CI: what fails on a vGPU host without compute: [] too
WITH_CIS = LAYOUT.replace(", compute: []", "")


@pytest.fixture
def node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "h100-80gb-hbm3:2").code == 0
    on = sim(capsys, "vgpu-host", state, "--gpu", "0", "on")
    assert on.code == 0, on.err
    return state


def test_a_vgpu_host_geometry_is_declared_applied_exported_and_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(tmp_path / "vgpu.yaml", LAYOUT)
    applied = run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients")
    assert applied.code == EXIT_OK, applied.err  # verification reads the devices

    gpus = sim_show(capsys, node)["gpus"]
    assert [len(gi["cis"]) for gi in sorted(gpus[0]["gis"], key=lambda g: g["start"])] == [0, 0, 1]

    status = run(capsys, "--simulate", node, "-c", cfg, "status", "--json")
    assert status.code == EXIT_OK, status.err
    data = status.json()
    for index in (0, 1):
        assert layout_of(data, index) == LAYOUT_ON_GPU0
    gis0 = data["gpus"][0]["instances"]
    assert [gi["compute"] for gi in gis0[:2]] == [[], []]
    (ci,) = gis0[2]["compute"]
    assert ci["uuid"].startswith("MIG-") and ci["pids"] == [] and ci["pids_error"] == UNKNOWN
    (ci1,) = data["gpus"][1]["instances"][2]["compute"]
    assert ci1["pids_error"] is None  # GPU 1 is not a vGPU host: its processes are read
    text = run(capsys, "--simulate", node, "-c", cfg, "status")
    assert "unknown (NOT_SUPPORTED)" in text.out

    exported = run(capsys, "--simulate", node, "export")
    assert exported.code == EXIT_OK, exported.err
    # one rule for both GPUs (the same geometry), its two GIs without CIs as declared
    assert exported.out.count("compute: []") == 2, exported.out
    again = write(tmp_path / "exported.yaml", exported.out)
    planned = run(capsys, "--simulate", node, "-c", again, "plan")
    assert planned.code == EXIT_OK, planned.err
    assert "0 change(s) planned" in planned.out or "converged" in planned.out
    reapplied = run(capsys, "--simulate", node, "-c", again, "apply", "--no-clients")
    assert reapplied.code == EXIT_OK, reapplied.err
    with open(os.environ["MIGRESTORE_STATE"], encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["result"] == "converged"
    assert [g["converged"] for g in doc["gpus"]] == [True, True]


def test_processes_unknown_refuse_a_destroy_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(tmp_path / "cis.yaml", WITH_CIS)
    applied = run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients")
    assert applied.code == EXIT_OK, applied.err  # verified although processes are unknown
    # the 2g.20gb GI (with its CI, on a MIG device whose processes are unknown) would go
    split = WITH_CIS.replace("2g.20gb, placement: 4", "1g.10gb, count: 2, placement: [4, 5]")
    smaller = write(tmp_path / "split.yaml", split)
    changes = sim_show(capsys, node)["change_count"]
    refused = run(capsys, "--simulate", node, "-c", smaller, "apply", "--no-clients")
    assert refused.code == EXIT_FAILED, refused.err
    (line,) = [ln for ln in refused.err.splitlines() if "refusing to destroy" in ln]
    assert "GPU 0 (" in line and "2g.20gb at 4:2" in line, line
    assert f"processes cannot be read on a vGPU host ({UNKNOWN})" in line
    assert "--force" in line
    assert sim_show(capsys, node)["change_count"] == changes  # nothing touched

    forced = run(capsys, "--simulate", node, "-c", smaller, "apply", "--no-clients", "--force")
    assert forced.code == EXIT_OK, forced.err
    status = run(capsys, "--simulate", node, "status", "--json").json()
    assert layout_of(status, 0) == [
        ("3g.40gb", (0, 4)),
        ("1g.10gb", (4, 1)),
        ("1g.10gb", (5, 1)),
        ("1g.10gb", (6, 1)),
    ]


def test_the_daemon_on_a_converged_vgpu_host_is_ready_and_records_the_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(tmp_path / "cis.yaml", WITH_CIS)
    assert run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients").code == EXIT_OK
    # a converged start: READY, then the post-READY MIG device scan for the state file
    once = run(capsys, "--simulate", node, "-c", cfg, "daemon", "--once")
    assert once.code == EXIT_OK, once.err
    with open(os.environ["MIGRESTORE_STATE"], encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["result"] == "converged"
    cis = [ci for gi in doc["gpus"][0]["instances"] for ci in gi["compute"]]
    assert len(cis) == 3 and all(ci["uuid"].startswith("MIG-") for ci in cis)  # scanned


def test_a_gi_without_cis_on_a_vgpu_host_is_not_destroyed_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    """A VM may use a GI with no CI (no MIG device, so no process query to ask): on a
    GPU whose MIG devices answer NOT_SUPPORTED (a vGPU host), its processes are unknown
    too."""
    cfg = write(tmp_path / "vgpu.yaml", LAYOUT)
    assert run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients").code == EXIT_OK
    fewer = write(
        tmp_path / "fewer.yaml",
        LAYOUT.replace("      - {profile: 3g.40gb, placement: 0, compute: []}\n", ""),
    )
    refused = run(capsys, "--simulate", node, "-c", fewer, "apply", "--no-clients")
    assert refused.code == EXIT_FAILED, refused.err
    (line,) = [ln for ln in refused.err.splitlines() if "refusing to destroy" in ln]
    assert "GPU 0 (" in line and "3g.40gb at 0:4" in line and UNKNOWN in line, line
    forced = run(capsys, "--simulate", node, "-c", fewer, "apply", "--no-clients", "--force")
    assert forced.code == EXIT_OK, forced.err
    status = run(capsys, "--simulate", node, "status", "--json").json()
    assert layout_of(status, 0) == LAYOUT_ON_GPU0[1:] == layout_of(status, 1)


def test_a_vgpu_host_whose_gis_have_no_cis_refuses_their_destroy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    """Every GI without a CI: no MIG device exists to answer NOT_SUPPORTED, so only the
    GPU's virtualization mode (HOST_VGPU) says a VM may use the GIs unlisted."""
    only_gis = LAYOUT.replace("      - {profile: 1g.10gb, placement: 6}\n", "")
    cfg = write(tmp_path / "gis.yaml", only_gis)
    assert run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients").code == EXIT_OK
    fewer = write(
        tmp_path / "fewer.yaml",
        only_gis.replace("      - {profile: 3g.40gb, placement: 0, compute: []}\n", ""),
    )
    refused = run(capsys, "--simulate", node, "-c", fewer, "apply", "--no-clients")
    assert refused.code == EXIT_FAILED, refused.err
    lines = [ln for ln in refused.err.splitlines() if "refusing to destroy" in ln]
    assert len(lines) == 1, refused.err
    assert "GPU 0 (" in lines[0] and "3g.40gb at 0:4" in lines[0], lines[0]
    assert "HOST_VGPU" in lines[0], lines[0]
    # GPU 1 is no vGPU host: nothing there is refused, and nothing was changed on GPU 0
    status = run(capsys, "--simulate", node, "status", "--json").json()
    assert layout_of(status, 0) == LAYOUT_ON_GPU0[:2]
    forced = run(capsys, "--simulate", node, "-c", fewer, "apply", "--no-clients", "--force")
    assert forced.code == EXIT_OK, forced.err
    status = run(capsys, "--simulate", node, "status", "--json").json()
    assert layout_of(status, 0) == [("2g.20gb", (4, 2))]
