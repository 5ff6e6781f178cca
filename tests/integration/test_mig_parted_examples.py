"""mig-parted's published example configs (the labels of mig-parted's examples/config.yaml
and the per-SKU all-balanced, in etc/examples/mig-parted-config.yaml) applied as they are,
with --select, on simulated nodes of the models they name."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest

from migrestore.errors import EXIT_OK
from tests.integration.cli_util import run, sim

EXAMPLE = str(Path(__file__).resolve().parents[2] / "etc" / "examples" / "mig-parted-config.yaml")

A100_LABELS: Dict[str, List[Dict[str, int]]] = {
    "all-1g.5gb": [{"1g.5gb": 7}] * 8,
    "all-2g.10gb": [{"2g.10gb": 3}] * 8,
    "all-3g.20gb": [{"3g.20gb": 2}] * 8,
    "all-balanced": [{"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}] * 8,
    "custom-config": [{}] * 4
    + [{"1g.5gb": 7}, {"2g.10gb": 3}, {"3g.20gb": 2}, {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}],
    "all-enabled": [{}] * 8,
    "all-disabled": [{}] * 8,
}


def counts(gpu: Dict[str, Any]) -> Dict[str, int]:
    return dict(Counter(gi["profile"] for gi in gpu["instances"]))


def test_every_label_applies_on_eight_a100_40gb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "a100-sxm4-40gb:8").code == 0
    for label, want in A100_LABELS.items():
        result = run(
            capsys, "--simulate", state, "-c", EXAMPLE, "--select", label, "apply", "--no-clients"
        )
        assert result.code == EXIT_OK, (label, result.err)
        status = run(capsys, "--simulate", state, "status", "--json").json()
        assert [counts(g) for g in status["gpus"]] == want, label
        mig_on = [g["mig"]["current"] for g in status["gpus"]]
        if label == "all-disabled":
            assert mig_on == [False] * 8
        elif label == "custom-config":
            assert mig_on == [False] * 4 + [True] * 4
        else:
            assert mig_on == [True] * 8
        plan = run(capsys, "--simulate", state, "-c", EXAMPLE, "--select", label, "plan", "--json")
        assert plan.json()["converged"] is True, label


def test_the_split_label_puts_three_compute_instances_in_one_gpu_instance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "a100-sxm4-40gb:1").code == 0
    result = run(
        capsys,
        "--simulate",
        state,
        "-c",
        EXAMPLE,
        "--select",
        "all-3g.20gb-split",
        "apply",
        "--no-clients",
    )
    assert result.code == EXIT_OK, result.err
    gpu = run(capsys, "--simulate", state, "status", "--json").json()["gpus"][0]
    compute = sorted(tuple(c["profile"] for c in gi["compute"]) for gi in gpu["instances"])
    assert compute == [("1c.3g.20gb",) * 3, ("3g.20gb",)]


def test_per_sku_all_balanced_on_a_mixed_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "a100-sxm4-40gb:2", "h100-80gb-hbm3:2").code == 0
    result = run(
        capsys,
        "--simulate",
        state,
        "-c",
        EXAMPLE,
        "--select",
        "all-balanced",
        "apply",
        "--no-clients",
    )
    assert result.code == EXIT_OK, result.err
    status = run(capsys, "--simulate", state, "status", "--json").json()
    assert [counts(g) for g in status["gpus"]] == [
        {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},
        {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},
        {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},
        {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},
    ]
