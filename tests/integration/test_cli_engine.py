"""The command line end to end on simulated GPUs: status, profiles, plan, apply,
validate, export, exit codes, and minimal change on an 8-GPU node."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from migrestore import cli, tables
from migrestore.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE
from tests.integration.cli_util import layout_of, run, sim, sim_show, write

MIXED = """\
version: 1
clients: []
gpus:
  - match: all
    mig: true
    instances:
      - profile: 3g.40gb
        placement: 4
        compute: [1c.3g.40gb, 1c.3g.40gb, 1c.3g.40gb]
      - {profile: 2g.20gb, placement: 0}
      - {profile: 1g.10gb, count: 2}
"""


def changes(capsys: pytest.CaptureFixture[str], state: str) -> int:
    value = sim_show(capsys, state)["change_count"]
    assert isinstance(value, int)
    return value


@pytest.fixture
def node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "h100-80gb-hbm3:8").code == 0
    return state


def test_status_and_profiles_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    text = run(capsys, "--simulate", "h100-80gb-hbm3:2", "status")
    assert text.code == EXIT_OK
    assert "NVIDIA H100 80GB HBM3" in text.out
    data = run(capsys, "--simulate", "h100-80gb-hbm3:2", "status", "--json").json()
    assert [g["index"] for g in data["gpus"]] == [0, 1]
    for gpu in data["gpus"]:
        for key in ("uuid", "pci_bus_id", "name", "mig", "instances"):
            assert key in gpu
        assert gpu["mig"]["current"] is False and gpu["mig"]["pending"] is False
    profiles = run(capsys, "--simulate", "h100-80gb-hbm3:2", "profiles", "--json").json()
    names = [p["name"] for p in profiles["gpus"][0]["profiles"]]
    assert {"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"} == set(
        names
    )
    for p in profiles["gpus"][0]["profiles"]:
        for key in ("id", "name", "slices", "memory_mib", "max", "placements"):
            assert key in p
    assert "3g.40gb" in run(capsys, "--simulate", "h100-80gb-hbm3:2", "profiles").out


def test_simulate_after_the_subcommand_and_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(capsys, "status", "--simulate", "a30-24gb:1").code == EXIT_OK
    monkeypatch.setenv("MIGRESTORE_SIMULATE", "a30-24gb:3")
    data = run(capsys, "status", "--json").json()
    assert len(data["gpus"]) == 3


def test_no_driver_exits_69(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "status")
    assert result.code == EXIT_UNAVAILABLE
    assert "driver" in result.err.lower()


def test_apply_plan_converge_and_rerun_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(tmp_path / "mixed.yaml", MIXED)
    plan = run(capsys, "--simulate", node, "-c", cfg, "plan", "--json").json()
    assert plan["converged"] is False
    # Cold GPUs: the CI profiles are read from the GIs once they exist, so the CIs are
    # planned after the GIs are made (never from a bundled table).
    assert {a["action"] for a in plan["actions"]} == {"set_mode", "create_gi"}
    assert len(plan["deferred"]) == 8
    assert any("planned once the GI exists" in n for n in plan["notes"])
    assert run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients").code == EXIT_OK
    status = run(capsys, "--simulate", node, "status", "--json").json()
    for index in range(8):
        assert layout_of(status, index) == [
            ("2g.20gb", (0, 2)),
            ("1g.10gb", (2, 1)),
            ("1g.10gb", (3, 1)),
            ("3g.40gb", (4, 4)),
        ]
        gi3 = status["gpus"][index]["instances"][-1]
        assert [c["profile"] for c in gi3["compute"]] == ["1c.3g.40gb"] * 3
    before = changes(capsys, node)
    again = run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients")
    assert again.code == EXIT_OK
    assert changes(capsys, node) == before
    assert run(capsys, "--simulate", node, "-c", cfg, "plan", "--json").json()["converged"] is True


def test_one_changed_instance_on_one_gpu_of_eight_touches_only_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(tmp_path / "mixed.yaml", MIXED)
    assert run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients").code == EXIT_OK
    before = changes(capsys, node)
    status = run(capsys, "--simulate", node, "status", "--json").json()
    uuid3 = status["gpus"][3]["uuid"]
    edited = MIXED.replace(
        "  - match: all\n",
        f"  - match: {{uuid: {uuid3}}}\n"
        "    mig: true\n"
        "    instances:\n"
        "      - profile: 3g.40gb\n"
        "        placement: 4\n"
        "        compute: [1c.3g.40gb, 1c.3g.40gb, 1c.3g.40gb]\n"
        "      - {profile: 2g.20gb, placement: 0}\n"
        "      - {profile: 1g.10gb, placement: 2}\n"
        "      - {profile: 1g.10gb+me, placement: 3}\n"
        "  - match: all\n",
    )
    cfg2 = write(tmp_path / "edited.yaml", edited)
    plan = run(capsys, "--simulate", node, "-c", cfg2, "plan", "--json").json()
    assert {a["gpu"] for a in plan["actions"]} == {3}
    # No 1g.10gb+me GI exists yet, so its CI is planned once the GI does (CI profiles
    # are read from the GI): the apply below still makes the four changes.
    assert [a["action"] for a in plan["actions"]] == ["destroy_ci", "destroy_gi", "create_gi"]
    assert plan["deferred"] == [uuid3]
    assert run(capsys, "--simulate", node, "-c", cfg2, "apply", "--no-clients").code == EXIT_OK
    assert changes(capsys, node) == before + 4
    after = run(capsys, "--simulate", node, "status", "--json").json()
    for index in range(8):
        if index != 3:
            assert after["gpus"][index] == status["gpus"][index]
    assert layout_of(after, 3)[2] == ("1g.10gb+me", (3, 1))


def test_infeasible_config_exits_78_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(
        tmp_path / "bad.yaml",
        "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n    instances:\n"
        "      - {profile: 4g.40gb}\n      - {profile: 3g.40gb, count: 2}\n",
    )
    result = run(capsys, "--simulate", node, "-c", cfg, "apply", "--no-clients")
    assert result.code == EXIT_CONFIG
    assert "nothing was changed" in result.err
    assert changes(capsys, node) == 0


def test_invalid_config_exits_78_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(
        tmp_path / "typo.yaml",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n    instances:\n      - {profile: 3g.41gb}\n",
    )
    result = run(capsys, "--simulate", node, "-c", cfg, "apply")
    assert result.code == EXIT_CONFIG
    assert f"{cfg}:6" in result.err
    assert changes(capsys, node) == 0


def test_validate_against_a_model_table_without_gpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "mixed.yaml", MIXED)
    ok = run(capsys, "-c", cfg, "validate", "--model", "h100-80gb-hbm3")
    assert ok.code == EXIT_OK, ok.err
    bad = write(
        tmp_path / "bad.yaml",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n    instances:\n"
        "      - {profile: 3g.40gb, count: 3}\n",
    )
    assert run(capsys, "-c", bad, "validate", "--model", "h100-80gb-hbm3").code == EXIT_CONFIG
    assert run(capsys, "-c", cfg, "validate", "--model", "no-such-gpu").code != EXIT_OK


def test_dry_run_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str
) -> None:
    cfg = write(tmp_path / "mixed.yaml", MIXED)
    result = run(capsys, "--simulate", node, "-c", cfg, "apply", "--dry-run")
    assert result.code == EXIT_OK
    assert "create GI 3g.40gb at 4:4" in result.out
    assert changes(capsys, node) == 0


@pytest.mark.parametrize("model", tables.MODEL_NAMES)
def test_export_round_trips(model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Apply the largest mixed layout, export it, and the export plans to nothing."""
    from tests.integration.layouts import feasible_multisets

    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, f"{model}:2").code == 0
    table = tables.model(model)
    layout = max(sorted(feasible_multisets(table.profiles)), key=lambda m: (len(set(m)), len(m)))
    lines = [
        "version: 1",
        "clients: []",
        "gpus:",
        "  - match: {index: 0}",
        "    mig: true",
        "    instances:",
    ]
    lines += [f"      - {{profile: {name}}}" for name in layout]
    cfg = write(tmp_path / "layout.yaml", "\n".join(lines) + "\n")
    assert run(capsys, "--simulate", state, "-c", cfg, "apply", "--no-clients").code == EXIT_OK
    exported = run(capsys, "--simulate", state, "export")
    assert exported.code == EXIT_OK
    out = write(tmp_path / "exported.yaml", exported.out)
    before = changes(capsys, state)
    plan = run(capsys, "--simulate", state, "-c", out, "plan", "--json").json()
    assert plan["converged"] is True, plan
    assert run(capsys, "--simulate", state, "-c", out, "apply", "--no-clients").code == EXIT_OK
    assert changes(capsys, state) == before


def test_the_collector_is_paused_while_a_command_runs_and_restored_after(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """cli rule 4: start-up objects live to the end, so collections would only scan
    them; ``main`` gives the collector back as it found it."""
    seen = []

    def probe(_args: object) -> int:
        seen.append(gc.isenabled())
        return EXIT_OK

    monkeypatch.setitem(cli.COMMANDS, "profiles", probe)
    assert gc.isenabled()
    assert cli.main(["profiles"]) == EXIT_OK
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        assert cli.main(["profiles"]) == EXIT_OK
        assert not gc.isenabled()
    finally:
        gc.enable()
    # a real command, the same way
    assert run(capsys, "--simulate", "h100-80gb-hbm3:1", "status").code == EXIT_OK
    assert gc.isenabled()
