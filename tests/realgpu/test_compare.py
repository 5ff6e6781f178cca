"""The comparison the tier reports with names each differing field: GPU, profile,
field and both values, one line each (runs everywhere, on the simulator)."""

from __future__ import annotations

import copy
from pathlib import Path

from migrestore.simulator import models as simmodels
from tests.realgpu.support import diff_profiles, simulated_model, simulator_profiles


def test_a_mismatch_is_reported_by_field(tmp_path: Path) -> None:
    ref = simulator_profiles("h100-80gb-hbm3", True, [9], tmp_path)["profiles"]["profiles"]
    read = copy.deepcopy(ref)
    assert diff_profiles("GPU 0", read, ref, ("GPU", "simulator"), (9,)) == []
    by_name = {p["name"]: p for p in read}
    memory = by_name["1g.10gb"]["memory_mib"]
    by_name["1g.10gb"]["memory_mib"] = memory + 128
    by_name["3g.40gb"]["placements"] = [[4, 4]]
    three = by_name["3g.40gb"]
    assert three["id"] == 9 and three["compute"], "CI profiles read from the GI of 3g.40gb"
    three["compute"][0]["sms"] -= 2
    read.remove(by_name["7g.80gb"])
    lines = diff_profiles("GPU 0", read, ref, ("GPU", "simulator"), (9,))
    ci = three["compute"][0]
    assert sorted(lines) == sorted(
        [
            f"GPU 0: GI profile 1g.10gb (ID 19): memory_mib: GPU {memory + 128}, simulator {memory}",
            "GPU 0: GI profile 3g.40gb (ID 9): placements: GPU [[4,4]], simulator [[0,4],[4,4]]",
            f"GPU 0: GI profile 3g.40gb (ID 9): CI profile {ci['name']} (ID {ci['id']}): "
            f"sms: GPU {ci['sms']}, simulator {ci['sms'] + 2}",
            "GPU 0: GI profile 7g.80gb (ID 0): simulator has it, GPU does not",
        ]
    ), lines


def test_ci_profiles_of_gi_profiles_without_a_gi_are_not_compared(tmp_path: Path) -> None:
    # The reference reads every GI profile's CI profiles from a GI of it (migrestore reads
    # CI profiles only from GIs, never from a bundled table).
    ids = [p.id for p in simmodels.table("a30-24gb").profiles]
    ref = simulator_profiles("a30-24gb", True, ids, tmp_path)["profiles"]["profiles"]
    assert all(profile["compute"] for profile in ref)
    read = copy.deepcopy(ref)
    for profile in read:
        profile["compute"] = []
    assert diff_profiles("GPU 0", read, ref, ("GPU", "simulator"), ()) == []
    assert diff_profiles("GPU 0", read, ref, ("GPU", "simulator"), None) != []


def test_models_are_found_by_their_nvml_name() -> None:
    assert simulated_model("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert simulated_model("NVIDIA GeForce RTX 4090") is None
    # the simulator's models, not migrestore's bundled tables: a B200 is compared too
    assert simulated_model("NVIDIA B200") == "b200-180gb"
    assert not simmodels.get("b200-180gb").bundled
