"""The shipped Node Problem Detector monitor and Kubernetes manifest hold together:
NPD's own validation rules (custom plugin, rule timeouts within the global one, every
permanent rule's condition declared), the plugin contract (the rule's command is
`migrestore status --check`, whose line fits max_output_length), and one taint key
wherever the manifest names it. NPD itself is not packaged for Debian, so it is not run
here; the command it runs is (tests/metrics/test_check.py, and below)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List

import yaml

from tests.integration.daemon_util import Node

ROOT = Path(__file__).resolve().parents[2]
NPD = ROOT / "contrib" / "node-problem-detector"


def seconds(text: str) -> float:
    found = re.fullmatch(r"(\d+)(ms|s|m)", text)
    assert found, text
    return int(found.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[found.group(2)]


def check_monitor(monitor: Dict[str, Any]) -> None:
    assert monitor["plugin"] == "custom"
    glob = monitor["pluginConfig"]
    # NPD reports every condition False before the first probe unless told not to;
    # False is "healthy" for a problem condition and would lift the taint too early
    assert glob["skip_initial_status"] is True
    assert glob["max_output_length"] >= 80
    declared = {c["type"] for c in monitor["conditions"]}
    for rule in monitor["rules"]:
        assert seconds(rule["timeout"]) <= seconds(glob["timeout"])
        assert rule["type"] == "permanent" and rule["condition"] in declared


def manifest() -> List[Dict[str, Any]]:
    return list(yaml.safe_load_all((NPD / "npd-migrestore.yaml").read_text()))


def test_host_monitor_runs_status_check() -> None:
    monitor = json.loads((NPD / "migrestore-monitor.json").read_text())
    check_monitor(monitor)
    (rule,) = monitor["rules"]
    assert rule["path"] == "/usr/bin/migrestore" and rule["args"] == ["status", "--check"]


def test_kubernetes_manifest_is_the_same_monitor_through_the_host_root() -> None:
    docs = {d["kind"]: d for d in manifest()}
    config = docs["ConfigMap"]["data"]
    monitor = json.loads(config["migrestore-monitor.json"])
    check_monitor(monitor)
    host = json.loads((NPD / "migrestore-monitor.json").read_text())
    (rule,) = monitor["rules"]
    (host_rule,) = host["rules"]
    assert rule["path"] == "/config/check-migrestore.sh"
    assert {k: v for k, v in rule.items() if k not in ("path", "args")} == {
        k: v for k, v in host_rule.items() if k not in ("path", "args")
    }
    assert {k: v for k, v in monitor.items() if k != "rules"} == {
        k: v for k, v in host.items() if k != "rules"
    }
    script = config["check-migrestore.sh"]
    assert script.rstrip().endswith("exec chroot /host /usr/bin/migrestore status --check")
    # the DaemonSet runs that monitor, tolerates the taint the rule manages, mounts /host
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--config.custom-plugin-monitor=/config/migrestore-monitor.json" in container["command"]
    rule_spec = docs["NodeReadinessRule"]["spec"]
    taint = rule_spec["taint"]["key"]
    assert taint.startswith("readiness.k8s.io/")  # the Node Readiness Controller's prefix
    assert taint in {t["key"] for t in pod["tolerations"]}
    # a problem condition: healthy is False; Unknown (exit 2) keeps the taint
    assert rule_spec["conditions"] == [
        {"type": monitor["conditions"][0]["type"], "requiredStatus": "False"}
    ]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["host"] == "/host"


def test_the_monitor_command_keeps_the_plugin_contract(tmp_path: Path) -> None:
    """The rule's args, run against a simulated node: exit 0/1/2 and a line NPD keeps."""
    monitor = json.loads((NPD / "migrestore-monitor.json").read_text())
    (rule,) = monitor["rules"]
    node = Node(tmp_path, "h100-80gb-hbm3:1")
    try:
        node.write_config("version: 1\nclients: []\ngpus:\n  - {match: all, mig: true}\n")
        seen = []
        for step in ("before any run", "after apply"):
            done = node.migrestore(*rule["args"])
            assert done.returncode in (0, 1, 2), step
            assert len(done.stdout.rstrip("\n")) <= monitor["pluginConfig"]["max_output_length"]
            seen.append(done.returncode)
            node.migrestore("apply")
        assert seen == [2, 0]
    finally:
        node.cleanup()
