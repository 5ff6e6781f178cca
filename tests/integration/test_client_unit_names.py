"""A client unit name is judged once, by one rule: `validate`, `apply` and the daemon
refuse the same bad names as config errors (exit 78, which systemd does not restart),
with the same message, before any GPU is touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from migrestore.errors import EXIT_CONFIG, EXIT_OK

ROOT = Path(__file__).resolve().parents[2]

BAD = [
    ("dcgm@.service", "is a template with no instance"),
    ("a@b@c.service", "has more than one '@'"),
    ("@dcgm.service", "has no name before the type"),
    ("dcgm", "does not end in a unit type"),
]


def _migrestore(config: Path, *command: str) -> subprocess.CompletedProcess[str]:
    argv: List[str] = [
        sys.executable,
        "-m",
        "migrestore",
        "--simulate",
        "h100-80gb-hbm3:1",
        "-c",
        str(config),
        "--log-format",
        "json",
        *command,
    ]
    return subprocess.run(
        argv, cwd=str(ROOT), capture_output=True, text=True, timeout=120, check=False
    )


def _config(tmp_path: Path, unit: str) -> Path:
    path = tmp_path / "migrestore.yaml"
    path.write_text(
        "version: 1\n"
        f"clients: [{json.dumps(unit)}]\n"
        "gpus:\n  - match: all\n    mig: true\n    instances: [{profile: 7g.80gb}]\n"
    )
    path.chmod(0o644)
    return path


def _cli_message(result: subprocess.CompletedProcess[str]) -> str:
    prefix = "migrestore: error: "
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, result.stderr
    return lines[0][len(prefix) :]


def _daemon_message(result: subprocess.CompletedProcess[str]) -> str:
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    invalid = [e for e in events if e.get("event") == "config_invalid"]
    assert len(invalid) == 1, result.stderr
    return str(invalid[0]["error"])


@pytest.mark.parametrize(("unit", "problem"), BAD, ids=[b[0] for b in BAD])
def test_validate_apply_and_daemon_refuse_the_same_unit_name_alike(
    tmp_path: Path, unit: str, problem: str
) -> None:
    config = _config(tmp_path, unit)
    validate = _migrestore(config, "validate")
    apply = _migrestore(config, "apply")
    daemon = _migrestore(config, "daemon", "--once")
    assert (validate.returncode, apply.returncode, daemon.returncode) == (EXIT_CONFIG,) * 3
    message = _cli_message(validate)
    assert message.startswith(
        f"{config}:2: clients[0]: {unit!r} is not a systemd unit name: it {problem}"
    )
    assert _cli_message(apply) == message
    assert _daemon_message(daemon) == message


def test_an_automount_client_is_a_valid_unit(tmp_path: Path) -> None:
    config = _config(tmp_path, "proc-sys-fs-binfmt_misc.automount")
    result = _migrestore(config, "validate")
    assert result.returncode == EXIT_OK, result.stderr
