"""Rendering: observed GPUs (JSON fields and serialisability, text rows), plans and drift."""

from __future__ import annotations

import json
from typing import Tuple

from migrestore import render
from migrestore.model import (
    Action,
    CiProfile,
    ComputeInstance,
    CreateCi,
    CreateGi,
    DestroyCi,
    DestroyGi,
    GiProfile,
    GpuIdentity,
    GpuInstance,
    GpuPlan,
    GpuState,
    Placement,
    Plan,
    Reset,
    SetMode,
)

UUID0 = "GPU-a2df41b2-0ba1-1d44-e4c4-79338246060e"
UUID1 = "GPU-11111111-2222-3333-4444-555555555555"
MIG_A = "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"
MIG_B = "MIG-0e6a1f2b-0000-5de3-91c7-000000000001"

CI_1C = CiProfile(0, "1c.3g.40gb", 1, 3, 16, (Placement(0, 1), Placement(1, 1), Placement(2, 1)))
CI_3G = CiProfile(2, "3g.40gb", 3, 1, 60, (Placement(0, 3),), default=True)
P_1G = GiProfile(0, 19, "1g.10gb", 1, 9984, 16, 7, tuple(Placement(i, 1) for i in range(7)))
P_1G_ME = GiProfile(7, 20, "1g.10gb+me", 1, 9984, 16, 1, tuple(Placement(i, 1) for i in range(7)))
P_3G = GiProfile(
    2, 9, "3g.40gb", 3, 40448, 60, 2, (Placement(0, 4), Placement(4, 4)), (CI_1C, CI_3G), 3, 3
)


def _identity(index: int, uuid: str, capable: bool = True) -> GpuIdentity:
    return GpuIdentity(
        index=index,
        uuid=uuid,
        pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
        pci_device_id=0x233010DE,
        name="NVIDIA H100 80GB HBM3",
        architecture="hopper",
        mig_capable=capable,
    )


def _observed() -> Tuple[GpuState, ...]:
    gis = (
        GpuInstance(
            2,
            9,
            "3g.40gb",
            Placement(0, 4),
            (
                ComputeInstance(0, 0, "1c.3g.40gb", Placement(0, 1), MIG_A, (4242, 4243)),
                ComputeInstance(1, 0, "1c.3g.40gb", Placement(1, 1), MIG_B),
            ),
        ),
        GpuInstance(13, 19, "1g.10gb", Placement(6, 1)),
    )
    gpu0 = GpuState(_identity(0, UUID0), True, True, (P_3G, P_1G, P_1G_ME), gis)
    gpu1 = GpuState(_identity(1, UUID1), False, True, (P_3G, P_1G, P_1G_ME), ())
    return (gpu0, gpu1)


def test_status_json_fields_and_serialisable() -> None:
    data = render.status_json(_observed(), "580.159.04")
    assert json.loads(json.dumps(data)) == data
    assert data["driver_version"] == "580.159.04"
    gpu0, gpu1 = data["gpus"]
    assert gpu0["index"] == 0
    assert gpu0["uuid"] == UUID0
    assert gpu0["pci_bus_id"] == "00000000:18:00.0"
    assert gpu0["pci_device_id"] == "0x233010DE"
    assert gpu0["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu0["architecture"] == "hopper"
    assert gpu0["mig"] == {"capable": True, "current": True, "pending": True}
    assert gpu0["instances"] == [
        {
            "gi_id": 2,
            "profile": "3g.40gb",
            "profile_id": 9,
            "placement": [0, 4],
            "compute": [
                {
                    "ci_id": 0,
                    "profile": "1c.3g.40gb",
                    "profile_id": 0,
                    "placement": [0, 1],
                    "uuid": MIG_A,
                    "pids": [4242, 4243],
                    "pids_error": None,
                },
                {
                    "ci_id": 1,
                    "profile": "1c.3g.40gb",
                    "profile_id": 0,
                    "placement": [1, 1],
                    "uuid": MIG_B,
                    "pids": [],
                    "pids_error": None,
                },
            ],
        },
        {"gi_id": 13, "profile": "1g.10gb", "profile_id": 19, "placement": [6, 1], "compute": []},
    ]
    assert gpu1["mig"] == {"capable": True, "current": False, "pending": True}
    assert gpu1["instances"] == []


def test_status_text_rows() -> None:
    text = render.status_text(_observed())
    lines = text.splitlines()
    assert lines[0] == (
        f"GPU 0: NVIDIA H100 80GB HBM3 ({UUID0}) bus 00000000:18:00.0, "
        "MIG enabled (pending: enabled)"
    )
    header = lines[1].split()
    assert header[:2] == ["GI", "ID"]
    assert "MIG device UUID" in lines[1]
    rows = [line.split() for line in lines[2:5]]
    assert rows[0] == ["2", "3g.40gb", "0:4", "0", "1c.3g.40gb", "0:1", MIG_A, "4242,4243"]
    assert rows[1] == ["2", "3g.40gb", "0:4", "1", "1c.3g.40gb", "1:1", MIG_B, "-"]
    assert rows[2] == ["13", "1g.10gb", "6:1", "-", "-", "-", "-", "-"]
    # MIG off: the header line only, with the pending mode
    assert (
        f"GPU 1: NVIDIA H100 80GB HBM3 ({UUID1}) bus 00000000:19:00.0, "
        "MIG disabled (pending: enabled)"
    ) in lines
    assert text.endswith("\n")


def test_status_text_empty_and_not_capable() -> None:
    plain = GpuState(_identity(0, UUID0, capable=False), False, False, (), ())
    empty = GpuState(_identity(1, UUID1), True, True, (P_1G,), ())
    text = render.status_text((plain, empty))
    assert f"GPU 0: NVIDIA H100 80GB HBM3 ({UUID0}) bus 00000000:18:00.0, MIG not supported" in text
    assert "  no GPU instances" in text.splitlines()
    assert render.status_text(()) == "no GPUs found\n"


def test_profiles_json_fields_and_serialisable() -> None:
    data = render.profiles_json(_observed()[:1])
    assert json.loads(json.dumps(data)) == data
    (gpu,) = data["gpus"]
    assert (gpu["index"], gpu["name"]) == (0, "NVIDIA H100 80GB HBM3")
    by_name = {p["name"]: p for p in gpu["profiles"]}
    three = by_name["3g.40gb"]
    assert {k: three[k] for k in ("id", "index", "slices", "memory_mib", "sms", "max")} == {
        "id": 9,
        "index": 2,
        "slices": 3,
        "memory_mib": 40448,
        "sms": 60,
        "max": 2,
    }
    assert three["placements"] == [[0, 4], [4, 4]]
    assert three["compute"] == [
        {
            "id": 0,
            "name": "1c.3g.40gb",
            "slices": 1,
            "max": 3,
            "sms": 16,
            "default": False,
            "placements": [[0, 1], [1, 1], [2, 1]],
        },
        {
            "id": 2,
            "name": "3g.40gb",
            "slices": 3,
            "max": 1,
            "sms": 60,
            "default": True,
            "placements": [[0, 3]],
        },
    ]
    assert by_name["1g.10gb"]["compute"] == []


def test_profiles_text_rows() -> None:
    text = render.profiles_text(_observed()[:1])
    rows = [line.split() for line in text.splitlines()]
    assert [
        "1g.10gb",
        "19",
        "0",
        "7",
        "9984",
        "16",
        "0",
        "0",
        "0",
        "0",
        "0",
        "{0,1,2,3,4,5,6}:1",
    ] in rows
    assert ["3g.40gb", "9", "2", "2", "40448", "60", "3", "3", "0", "0", "0", "{0,4}:4"] in rows
    # nvidia-smi's order: 1g before 1g+me (same size, lower index) before 3g
    names = [r[0] for r in rows if r and r[0] in ("1g.10gb", "1g.10gb+me", "3g.40gb")]
    assert names[:3] == ["1g.10gb", "1g.10gb+me", "3g.40gb"]
    # CI profiles, the default marked with *
    assert ["3g.40gb", "1c.3g.40gb", "0", "3", "16", "{0,1,2}:1"] in rows
    assert ["3g.40gb*", "2", "1", "60", "{0}:3"] in rows


def test_placements_text() -> None:
    assert render.placements_text(()) == "-"
    assert render.placements_text((Placement(4, 4), Placement(0, 4))) == "{0,4}:4"
    mixed = (Placement(0, 2), Placement(4, 3), Placement(2, 2))
    assert render.placements_text(mixed) == "{0,2}:2 {4}:3"


# --------------------------------------------------------------------------- plan


def _one_of_each() -> Tuple[Action, ...]:
    return (
        DestroyCi(UUID0, 0, "1c.3g.40gb", 0, Placement(1, 1), gi_start=4, gi_id=2, ci_id=1),
        DestroyGi(UUID0, 0, "1g.10gb", 19, Placement(0, 1), gi_id=7),
        SetMode(UUID0, 0, enabled=True),
        Reset(UUID0, 0, if_pending=True),
        CreateGi(UUID0, 0, "3g.40gb", 9, Placement(0, 4)),
        CreateCi(UUID0, 0, "3g.40gb", 2, Placement(0, 3), gi_start=0),
    )


def test_plan_text_is_a_diff_with_notes_and_unmatched_gpus() -> None:
    plan = Plan(
        (GpuPlan(UUID0, 0, _one_of_each()), GpuPlan(UUID1, 1, ())),
        unmatched=(f"1 ({UUID1})",),
        notes=("GPU 2: converged (MIG off)",),
    )
    assert render.plan_text(plan) == (
        "- GPU 0: destroy CI 1 (1c.3g.40gb at 1:1) in GI 2\n"
        "- GPU 0: destroy GI 7 (1g.10gb at 0:1)\n"
        "~ GPU 0: enable MIG mode\n"
        "~ GPU 0: reset the GPU if the mode change stays pending\n"
        "+ GPU 0: create GI 3g.40gb at 0:4\n"
        "+ GPU 0: create CI 3g.40gb at 0:3 in the GI at slice 0\n"
        "  GPU 2: converged (MIG off)\n"
        f"  GPU 1 ({UUID1}): no rule matches, left as it is\n"
        "6 change(s) planned\n"
    )
    assert render.plan_text(Plan(())) == "nothing to do: the GPUs match the config\n"


def test_plan_json_gives_each_kind_exactly_its_fields() -> None:
    data = render.plan_json(Plan((GpuPlan(UUID0, 0, _one_of_each()),)))
    json.dumps(data)
    assert data["converged"] is False
    keys = [sorted(set(a) - {"gpu", "uuid", "action", "description"}) for a in data["actions"]]
    assert [a["action"] for a in data["actions"]] == [
        "destroy_ci",
        "destroy_gi",
        "set_mode",
        "reset",
        "create_gi",
        "create_ci",
    ]
    assert keys == [
        ["ci_id", "gi_id", "placement", "profile"],
        ["gi_id", "placement", "profile"],
        ["enabled"],
        ["if_pending"],
        ["placement", "profile"],
        ["gi_start", "placement", "profile"],
    ]
    assert data["actions"][0]["placement"] == [1, 1]


def test_drift_text_shows_three_actions_and_counts_the_rest() -> None:
    actions = _one_of_each()
    assert render.drift_text(actions[:2]) == (
        "GPU 0: destroy CI 1 (1c.3g.40gb at 1:1) in GI 2; GPU 0: destroy GI 7 (1g.10gb at 0:1)"
    )
    assert render.drift_text(actions).endswith("GPU 0: enable MIG mode (+3 more)")
