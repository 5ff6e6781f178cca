"""cdi: systemd's EnvironmentFile syntax (pure), fixed paths, bounded programs, and
problems that are warnings; with small scripts written to tmp dirs. The whole refresh
after a pass on simulated GPUs: tests/integration/test_cdi_refresh.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from migrestore import cdi
from migrestore.cdi import CLEAN_PATH, Tools, parse_env_file, refresh
from migrestore.proc import Untrusted, read_trusted

from .conftest import Journal


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


# --------------------------------------------------------------------------- env file


def test_env_file_comments_blanks_and_quotes_as_systemd_reads_them() -> None:
    text = (
        "# NVIDIA's comment with a quote\n"
        "; another\n"
        "\n"
        "  A = plain value  \n"
        'B="double \\"quoted\\" \\$HOME \\n kept"\n'
        "C='single $HOME \\n'\n"
        "D='a'\"b\"c\n"
        "E=\n"
        "F=x\\\n"
        "y\n"
        'G="two\n'
        'lines"\n'
        "A=later wins\n"
    )
    env, bad = parse_env_file(text)
    assert env == {
        "A": "later wins",
        "B": 'double "quoted" $HOME \\n kept',
        "C": "single $HOME \\n",
        "D": "abc",
        "E": "",
        "F": "xy",
        "G": "two\nlines",
    }
    assert bad == ()


def test_env_file_lines_systemd_ignores_are_reported_by_number() -> None:
    env, bad = parse_env_file("OK=1\nno equals sign\n1BAD=2\nBAD-NAME=3\n# x \\\nSKIPPED=1\nLAST")
    assert env == {"OK": "1"}
    assert bad == (2, 3, 4, 7)


def test_env_file_is_never_expanded_nor_executed() -> None:
    env, _ = parse_env_file("A=$(touch /tmp/x) `id` ${HOME}\n")
    assert env == {"A": "$(touch /tmp/x) `id` ${HOME}"}


def test_read_trusted_refuses_a_file_others_can_write(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text("A=1\n")
    path.chmod(0o644)
    assert read_trusted(str(path)) == "A=1\n"
    path.chmod(0o646)
    with pytest.raises(Untrusted, match="writable by others"):
        read_trusted(str(path))


def test_read_trusted_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.env"
    path.write_text("A=" + "x" * 100 + "\n")
    path.chmod(0o644)
    with pytest.raises(Untrusted, match="larger than 50 bytes"):
        read_trusted(str(path), limit=50)


# --------------------------------------------------------------------------- programs


def test_the_default_tools_are_fixed_absolute_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("MIGRESTORE_NVIDIA_SMI", "MIGRESTORE_NVIDIA_CTK", "MIGRESTORE_CDI_ENV"):
        monkeypatch.delenv(key, raising=False)
    tools = Tools.for_node(simulated=False)
    assert (tools.nvidia_smi, tools.nvidia_ctk, tools.env_file) == (
        "/usr/bin/nvidia-smi",
        "/usr/bin/nvidia-ctk",
        "/etc/nvidia-container-toolkit/nvidia-cdi-refresh.env",
    )


def test_simulated_gpus_never_run_the_nodes_tools(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("MIGRESTORE_NVIDIA_SMI", "MIGRESTORE_NVIDIA_CTK", "MIGRESTORE_SYSTEMCTL"):
        monkeypatch.delenv(key, raising=False)
    tools = Tools.for_node(simulated=True)
    assert (tools.nvidia_smi, tools.nvidia_ctk, tools.systemctl) == (None, None, None)
    assert refresh(journal.log, tools) == ()
    assert journal.lines() == [
        '<7>cdi_refresh_skipped outcome="simulated GPUs: the node\'s CDI spec is kept"'
    ]


def test_tools_found_first_on_path_never_run(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = tmp_path / "ran"
    for name in ("nvidia-smi", "nvidia-ctk", "systemctl"):
        script(tmp_path / name, f'echo {name} >> "{ran}"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:{CLEAN_PATH}")
    if os.path.exists(cdi.NVIDIA_CTK) or os.path.exists(cdi.NVIDIA_SMI):
        pytest.skip("the NVIDIA tools are installed here")
    tools = Tools(env_file=str(tmp_path / "absent.env"))
    assert refresh(journal.log, tools) == ()
    assert not ran.exists()
    assert journal.lines() == [
        '<6>cdi_step_skipped outcome="not installed" program=/usr/bin/nvidia-smi '
        'step="device nodes"',
        '<6>cdi_step_skipped outcome="not installed" program=/usr/bin/nvidia-ctk '
        'step="CDI refresh"',
    ]


def test_a_hanging_program_is_killed_and_the_budget_bounds_the_whole_refresh(
    tmp_path: Path, journal: Journal
) -> None:
    ran = tmp_path / "ctk-ran"
    smi = script(tmp_path / "nvidia-smi", "exec sleep 300\n")
    ctk = script(tmp_path / "nvidia-ctk", f'touch "{ran}"\n')
    tools = Tools(nvidia_smi=smi, nvidia_ctk=ctk, env_file=str(tmp_path / "absent.env"))
    problems = refresh(journal.log, tools, timeout=0.5)
    assert len(problems) == 3
    assert problems[0].startswith(f"device nodes: {smi} -L timed out after 0.")
    assert problems[0].endswith(" s and was killed")
    assert problems[1:] == (
        f"control device nodes: {ctk} system create-device-nodes --control-devices not run: "
        "cdi.timeout was used up by the steps before",
        f"CDI refresh: {ctk} cdi generate not run: cdi.timeout was used up by the steps before",
    )
    assert not ran.exists()
    warnings = [line for line in journal.lines() if line.startswith("<4>")]
    assert len(warnings) == 3
    assert all(line.startswith("<4>cdi_refresh_failed error=") for line in warnings)
