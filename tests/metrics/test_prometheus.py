"""migrestore's metrics as Prometheus sees them: the real node_exporter (Debian's
prometheus-node-exporter) on loopback reads the textfile migrestore writes, on
simulated GPUs, after an apply, a drift the daemon restores and a failed pass; promtool
checks the file and the shipped alert rules."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest

from tests.integration.daemon_util import Node
from tests.metrics.prom import NodeExporter, key, parse, promtool

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "contrib" / "prometheus" / "migrestore-alerts.yml"

LAYOUT = """\
version: 1
clients: [nvidia-dcgm.service]
drift: {{policy: restore, interval: 1}}
metrics: {{textfile: {textfile}}}
gpus:
  - match: all
    mig: true
    instances:
      - {{profile: 3g.40gb, placement: {at}}}
      - {{profile: 1g.10gb, count: 2}}
"""


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Tuple[Node, NodeExporter, Path]]:
    node = Node(tmp_path, "h100-80gb-hbm3:2")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    exporter = NodeExporter(textdir)
    try:
        yield node, exporter, textdir / "migrestore.prom"
    finally:
        exporter.close()
        node.cleanup()


def gpu_key(node: Node, name: str, gpu: int, **extra: str) -> str:
    return key(name, gpu=str(gpu), uuid=node.show()["gpus"][gpu]["uuid"], **extra)


def check_file(path: Path) -> None:
    promtool("check", "metrics", stdin=path.read_text())


def test_node_exporter_serves_the_values_after_apply_drift_and_a_failed_pass(
    rig: Tuple[Node, NodeExporter, Path],
) -> None:
    node, exporter, textfile = rig
    node.write_config(LAYOUT.format(textfile=textfile, at=4))
    node.units.add("nvidia-dcgm.service")

    # 1. apply: the GPUs are restored, the client unit stopped and started again
    done = node.migrestore("apply")
    assert done.returncode == 0, done.stderr
    got = exporter.scrape()
    sha = hashlib.sha256(node.config.read_bytes()).hexdigest()
    assert got[key("migrestore_config_info", path=str(node.config), sha256=sha, selected="")] == 1
    assert got["migrestore_converged"] == 1
    assert got[key("migrestore_last_pass_result", result="applied")] == 1
    assert got[key("migrestore_last_pass_result", result="failed")] == 0
    assert got["migrestore_last_pass_duration_seconds"] > 0
    assert got["migrestore_units_stopped"] == 1
    assert got["migrestore_units_left_stopped"] == 0
    assert got[key("migrestore_passes_total", result="applied")] == 1
    assert got["migrestore_drift_events_total"] == 0
    for gpu in (0, 1):
        assert got[gpu_key(node, "migrestore_gpu_converged", gpu)] == 1
        assert got[gpu_key(node, "migrestore_gpu_mig_mode_current", gpu)] == 1
        assert got[gpu_key(node, "migrestore_gpu_mig_mode_pending", gpu)] == 1
        assert got[gpu_key(node, "migrestore_gpu_instances", gpu, profile="1g.10gb")] == 2
        assert got[gpu_key(node, "migrestore_gpu_instances", gpu, profile="3g.40gb")] == 1
    assert got["node_textfile_scrape_error"] == 0
    check_file(textfile)

    # 2. the daemon: a converged start, then a drift behind its back that it restores;
    #    the counters go on from apply's (they live in the state file)
    node.start_daemon()
    node.notify.wait_for("READY=1")
    exporter.wait_for(
        lambda m: m.get(key("migrestore_passes_total", result="converged")) == 1,
        "the daemon's pass",
    )
    first_check = exporter.scrape()["migrestore_last_check_timestamp_seconds"]
    gi = node.show()["gpus"][1]["gis"][0]
    node.sim(
        "destroy-ci",
        node.state,
        "--gpu",
        "1",
        "--gi",
        str(gi["id"]),
        "--ci",
        str(gi["cis"][0]["id"]),
    )
    got = exporter.wait_for(
        lambda m: (
            m.get("migrestore_drift_events_total") == 1
            and m.get(key("migrestore_passes_total", result="applied")) == 2
        ),
        "the drift restored",
    )
    assert got["migrestore_converged"] == 1
    assert got[key("migrestore_last_pass_result", result="applied")] == 1
    # watch ticks that find nothing to change still rewrite the file
    exporter.wait_for(
        lambda m: m["migrestore_last_check_timestamp_seconds"] > first_check, "a later tick"
    )
    check_file(textfile)
    code, err = node.stop_daemon()
    assert code == 0, err

    # 3. a failed pass: a new layout whose GI creation the driver refuses
    node.write_config(LAYOUT.format(textfile=textfile, at=0))
    node.sim(
        "fail",
        node.state,
        "--call",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "--nth",
        "1",
        "--error",
        "NVML_ERROR_INSUFFICIENT_RESOURCES",
    )
    done = node.migrestore("apply")
    assert done.returncode == 1
    assert "NVML_ERROR_INSUFFICIENT_RESOURCES" in done.stderr
    got = exporter.scrape()
    assert got["migrestore_converged"] == 0
    assert got[key("migrestore_last_pass_result", result="failed")] == 1
    assert got[key("migrestore_last_pass_result", result="applied")] == 0
    assert got[key("migrestore_passes_total", result="failed")] == 1
    assert got[key("migrestore_passes_total", result="applied")] == 2
    assert got[key("migrestore_nvml_errors_total", error="NVML_ERROR_INSUFFICIENT_RESOURCES")] == 1
    assert got["migrestore_drift_events_total"] == 1
    assert 0 in {got[gpu_key(node, "migrestore_gpu_converged", gpu)] for gpu in (0, 1)}
    assert got["migrestore_units_left_stopped"] == 0
    check_file(textfile)


def test_units_left_stopped_are_exported_by_name(rig: Tuple[Node, NodeExporter, Path]) -> None:
    node, exporter, textfile = rig
    node.write_config(LAYOUT.format(textfile=textfile, at=4))
    node.units.add("nvidia-dcgm.service")
    node.units.fail_start("nvidia-dcgm.service", "Job failed: dependency")
    done = node.migrestore("apply")
    got = exporter.scrape()
    assert got["migrestore_units_left_stopped"] == 1, done.stderr
    assert got[key("migrestore_unit_left_stopped", unit="nvidia-dcgm.service")] == 1
    check_file(textfile)


def test_a_metrics_file_that_cannot_be_written_never_fails_the_restore(tmp_path: Path) -> None:
    node = Node(tmp_path, "h100-80gb-hbm3:1")
    try:
        missing = tmp_path / "no-such-dir" / "migrestore.prom"
        node.write_config(LAYOUT.format(textfile=missing, at=4))
        done = node.migrestore("apply", "--no-clients")
        assert done.returncode == 0, done.stderr
        warnings = [line for line in done.stderr.splitlines() if "metrics not written" in line]
        assert len(warnings) == 1, done.stderr
        assert str(missing.parent) in warnings[0]
        assert node.migrestore("status", "--check").returncode == 0
    finally:
        node.cleanup()


def test_the_shipped_alert_rules_pass_promtool(tmp_path: Path) -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert "SUCCESS: 5 rules found" in out
    # and they fire when they should (promtool's rule unit tests)
    promtool("test", "rules", str(Path(__file__).with_name("alerts_test.yml")), cwd=tmp_path)


def test_the_rendered_file_parses_as_node_exporter_serves_it(
    rig: Tuple[Node, NodeExporter, Path],
) -> None:
    """Every sample of the file reaches the scrape unchanged, empty families included."""
    node, exporter, textfile = rig
    node.write_config(LAYOUT.format(textfile=textfile, at=4))
    assert node.migrestore("apply", "--no-clients").returncode == 0
    written: Dict[str, float] = parse(textfile.read_text())
    scraped = exporter.scrape()
    assert written and all(scraped.get(k) == v for k, v in written.items())
