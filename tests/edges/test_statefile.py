"""statefile: the document built from observed GPUs, atomic writes, and read errors."""

from __future__ import annotations

import datetime
import json
import os
import stat
from pathlib import Path
from typing import Tuple

import pytest

from migrestore.errors import StateFileError
from migrestore.model import (
    ComputeInstance,
    GpuIdentity,
    GpuInstance,
    GpuState,
    Placement,
)
from migrestore.statefile import (
    DEFAULT_STATE,
    STATE_VERSION,
    build_state,
    default_path,
    read_state,
    write_state,
)

NOW = datetime.datetime(2026, 1, 31, 12, 0, 5, tzinfo=datetime.timezone.utc)


def h100(index: int, uuid: str, instances: Tuple[GpuInstance, ...] = ()) -> GpuState:
    return GpuState(
        identity=GpuIdentity(
            index=index,
            uuid=uuid,
            pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
            pci_device_id=0x233010DE,
            name="NVIDIA H100 80GB HBM3",
            architecture="hopper",
            mig_capable=True,
        ),
        mig_current=True,
        mig_pending=True,
        profiles=(),
        instances=instances,
    )


GPU0 = h100(
    0,
    "GPU-aaaa",
    (
        GpuInstance(
            gi_id=2,
            profile_id=9,
            profile="3g.40gb",
            placement=Placement(0, 4),
            cis=(
                ComputeInstance(
                    ci_id=0,
                    profile_id=2,
                    profile="3g.40gb",
                    placement=Placement(0, 3),
                    uuid="MIG-1111",
                    pids=(4242,),
                ),
            ),
        ),
        GpuInstance(gi_id=5, profile_id=19, profile="1g.10gb", placement=Placement(4, 1)),
    ),
)
GPU1 = h100(1, "GPU-bbbb")


def test_build_state_schema() -> None:
    state = build_state(
        "applied",
        "applied: GPU 0 changed\n(2 GIs)",
        (GPU0, GPU1),
        1.23456,
        now=NOW,
        config_path="/etc/migrestore.yaml",
        driver="580.95.05",
        stopped_units=("nvidia-dcgm.service",),
        unmatched=("2 (GPU-cccc)",),
        problems={"GPU-aaaa": None, "GPU-bbbb": "MIG mode pending a reset"},
        config_sha256="ab" * 32,
        nvml_error="NVML_ERROR_IN_USE",
    )
    assert state == {
        "version": 1,
        "time": "2026-01-31T12:00:05Z",
        "result": "applied",
        "message": "applied: GPU 0 changed (2 GIs)",
        "duration": 1.235,
        "config": "/etc/migrestore.yaml",
        "selected": None,
        "driver": "580.95.05",
        "config_sha256": "ab" * 32,
        "drift": False,
        "nvml_error": "NVML_ERROR_IN_USE",
        "units": {"stopped": ["nvidia-dcgm.service"], "start_failed": []},
        "hooks_failed": [],
        "unmatched": ["2 (GPU-cccc)"],
        "unrestored": [],
        "gpus": [
            {
                "index": 0,
                "uuid": "GPU-aaaa",
                "pci_bus_id": "00000000:18:00.0",
                "name": "NVIDIA H100 80GB HBM3",
                "architecture": "hopper",
                "mig": {"current": True, "pending": True},
                "converged": True,
                "problem": None,
                "error": None,
                "instances": [
                    {
                        "gi_id": 2,
                        "profile": "3g.40gb",
                        "profile_id": 9,
                        "placement": {"start": 0, "size": 4},
                        "compute": [
                            {
                                "ci_id": 0,
                                "profile": "3g.40gb",
                                "profile_id": 2,
                                "placement": {"start": 0, "size": 3},
                                "uuid": "MIG-1111",
                            }
                        ],
                    },
                    {
                        "gi_id": 5,
                        "profile": "1g.10gb",
                        "profile_id": 19,
                        "placement": {"start": 4, "size": 1},
                        "compute": [],
                    },
                ],
            },
            {
                "index": 1,
                "uuid": "GPU-bbbb",
                "pci_bus_id": "00000000:19:00.0",
                "name": "NVIDIA H100 80GB HBM3",
                "architecture": "hopper",
                "mig": {"current": True, "pending": True},
                "converged": False,
                "problem": "MIG mode pending a reset",
                "error": None,
                "instances": [],
            },
        ],
    }


def test_build_state_time_is_utc() -> None:
    cet = datetime.timezone(datetime.timedelta(hours=1))
    state = build_state(
        "converged", "ok", (), 0, now=datetime.datetime(2026, 1, 31, 13, tzinfo=cet)
    )
    assert state["time"] == "2026-01-31T12:00:00Z"
    assert build_state("converged", "ok", (), 0)["time"].endswith("Z")


def test_build_state_refuses_unknown_results_and_naive_times() -> None:
    with pytest.raises(ValueError, match="'done' is not one of converged, applied, failed, drift"):
        build_state("done", "x", (), 0)
    with pytest.raises(ValueError, match="aware datetime"):
        build_state("failed", "x", (), 0, now=datetime.datetime(2026, 1, 1))


def test_default_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRESTORE_STATE", raising=False)
    assert default_path() == DEFAULT_STATE == "/run/migrestore/state.json"
    monkeypatch.setenv("MIGRESTORE_STATE", "/tmp/x.json")
    assert default_path() == "/tmp/x.json"


def test_write_then_read_round_trip_with_modes(tmp_path: Path) -> None:
    path = tmp_path / "run" / "migrestore" / "state.json"
    state = build_state("applied", "applied", (GPU0,), 2.0, now=NOW)
    old = os.umask(0o077)
    try:
        write_state(str(path), state)
    finally:
        os.umask(old)
    assert read_state(str(path)) == state
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o755
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_write_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_state(str(path), build_state("applied", "first", (), 1, now=NOW))
    write_state(str(path), build_state("drift", "second", (), 1, now=NOW))
    assert read_state(str(path))["message"] == "second"  # type: ignore[index]
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_uses_the_environment_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env-state.json"
    monkeypatch.setenv("MIGRESTORE_STATE", str(path))
    write_state(None, build_state("converged", "ok", (), 0, now=NOW))
    assert read_state()["result"] == "converged"  # type: ignore[index]


def test_write_failure_is_a_state_file_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateFileError) as info:
        write_state(str(blocker / "state.json"), {"version": 1})
    assert str(info.value).startswith(f"state file {blocker / 'state.json'}: cannot write: ")
    assert str(info.value).endswith("(run as root, or set MIGRESTORE_STATE to a writable path)")


def test_unencodable_data_is_a_bug_not_a_state_file_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_state(str(tmp_path / "s.json"), {"version": 1, "x": object()})
    assert list(tmp_path.iterdir()) == []


def test_read_missing_is_none(tmp_path: Path) -> None:
    assert read_state(str(tmp_path / "absent.json")) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"version": 1,\n "result": }', ":2:12: not valid JSON: Expecting value"),
        ("[1, 2]", ": not a JSON object"),
        ('{"result": "applied"}', ": no integer 'version'"),
        ('{"version": true}', ": no integer 'version'"),
    ],
)
def test_read_malformed_names_the_file_and_the_fix(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(StateFileError) as info:
        read_state(str(path))
    assert str(info.value) == (
        f"state file {path}{message} (delete it; migrestore writes it again on its next run)"
    )


def test_read_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": STATE_VERSION + 1}))
    with pytest.raises(StateFileError) as info:
        read_state(str(path))
    assert str(info.value) == (
        f"state file {path}: version 2 was written by a newer migrestore "
        "(this one reads version 1; upgrade it)"
    )


def test_read_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"version": 1, "m": "\xff"}')
    with pytest.raises(StateFileError, match=r"not UTF-8 text \(byte 21\)"):
        read_state(str(path))


def test_read_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="not a regular file"):
        read_state(str(tmp_path))
