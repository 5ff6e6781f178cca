"""The simulator's own GPU models and driver branches.

Rules:

1. The simulated models are the simulator's data (``simulator/data/models.json``, made by
   ``tools/gen_models.py``), separate from migrestore's bundled tables
   (``migrestore/data/models.json``, ``migrestore.tables``). Some simulated models have no
   bundled table (``SimModel.bundled`` is false), so tests can prove that migrestore works
   on a GPU it has no knowledge of.
2. Every field keeps its provenance: read from hardware, documented by NVIDIA, or inferred
   by a rule named in the document's ``rules`` (``docs/SIMULATOR.md`` lists them).
3. A simulated GPU runs one driver branch (``BRANCHES``; default 580, or the model's first
   supported branch when that is later). What differs between branches is data here:
   the version strings, whether GI profile queries answer NOT_SUPPORTED while MIG is off,
   the GPU-instance profile count (indices from it answer INVALID_ARGUMENT) and the NVML
   symbols the branch's library does not export.
4. Unknown model names and branches are operator errors naming the valid ones.
5. A model's table is built the first time the model is asked for, not every model's at
   once: a state file of eight H100s builds one table of the 28 (a converged start of
   migrestore on the simulator pays for one).
6. A model's entry is parsed alone from the document's text, found by its key in the
   layout ``tools/gen_models.py`` renders (``tests/sim/test_sim_tables.py`` holds the
   file to it) and accepted only when it is an object whose ``name`` is the model's;
   otherwise, and for every question about all models (names, rules), the whole
   document is parsed. One entry is 1/28 of a 1 MB document: a converged start of
   migrestore on the simulator does not parse the other 27 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Optional, Tuple

from migrestore import tables
from migrestore.errors import MigrestoreError


@dataclass(frozen=True)
class Branch:
    """What one driver branch answers differently (docs/SIMULATOR.md, "Driver branches")."""

    number: int  # 535
    driver_version: str  # nvmlSystemGetDriverVersion
    nvml_version: str  # nvmlSystemGetNVMLVersion
    cuda_version: int  # nvmlSystemGetCudaDriverVersion
    profiles_need_mig: bool  # GI profile queries answer NOT_SUPPORTED while MIG is off
    gi_profile_count: int  # GetGpuInstanceProfileInfo(index >= this) -> INVALID_ARGUMENT
    missing: FrozenSet[str]  # C symbols this branch's libnvidia-ml.so does not export


# NVML symbols by the NVML version that added them (NVIDIA/go-nvml nvml.h history, as
# the team's real-nodes.md section 6 and go-nvml PR #40 give them).
_V_PROFILE_INFO = frozenset(
    {
        "nvmlDeviceGetGpuInstanceProfileInfoV",  # NVML 11.7 (R515)
        "nvmlDeviceGetGpuInstanceProfileInfoByIdV",  # same family; inferred
        "nvmlGpuInstanceGetComputeInstanceProfileInfoV",  # NVML 11.6 (go-nvml PR #40)
    }
)
_CI_PLACEMENT = frozenset({"nvmlGpuInstanceCreateComputeInstanceWithPlacement"})  # NVML 12.0

BRANCHES: Dict[int, Branch] = {
    b.number: b
    for b in (
        Branch(
            470, "470.256.02", "11.470.256.02", 11040, True, 17, _V_PROFILE_INFO | _CI_PLACEMENT
        ),
        Branch(515, "515.105.01", "11.515.105.01", 11070, True, 17, _CI_PLACEMENT),
        Branch(525, "525.147.05", "12.525.147.05", 12000, True, 17, frozenset()),
        Branch(535, "535.261.03", "12.535.261.03", 12020, True, 17, frozenset()),
        Branch(550, "550.163.01", "12.550.163.01", 12040, False, 17, frozenset()),
        Branch(570, "570.172.08", "12.570.172.08", 12080, False, 17, frozenset()),
        Branch(580, "580.159.04", "13.580.159.04", 13000, False, 17, frozenset()),
        Branch(595, "595.58.03", "13.595.58.03", 13020, False, 18, frozenset()),
    )
}
DEFAULT_BRANCH = 580


@dataclass(frozen=True)
class SimModel:
    """One simulated GPU model."""

    name: str
    table: tables.ModelTable  # what NVML answers (PCI device ID: the first variant)
    pci_device_ids: Tuple[int, ...]  # every board variant NVIDIA lists for this table
    pci_subsystem_id: int
    min_branch: int  # the first simulated branch that supports MIG on it
    bundled: bool  # migrestore ships a table of this name (migrestore/data/models.json)
    provenance: Dict[str, Any]  # field -> {"kind": ..., "source"|"rule": ...}
    notes: Tuple[str, ...]

    def default_branch(self) -> int:
        return max(DEFAULT_BRANCH, self.min_branch)


class UnknownSimModel(MigrestoreError):
    """A model the simulator has no table for."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"unknown GPU model {name!r} (known models: {', '.join(model_names())}; "
            "'migrestore-sim models' lists them)"
        )


class BadBranch(MigrestoreError):
    """A driver branch the simulator does not model, or too old for the model."""


def data_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "models.json")


@functools.lru_cache(maxsize=1)
def _text() -> str:
    with open(data_path(), encoding="utf-8") as handle:
        return handle.read()


@functools.lru_cache(maxsize=1)
def document() -> Dict[str, Any]:
    """The parsed simulator models.json (with ``rules``)."""
    data: Dict[str, Any] = json.loads(_text())
    return data


_DECODER = json.JSONDecoder()


@functools.cache
def _row(name: str) -> Optional[Dict[str, Any]]:
    """The document's entry of model ``name``, None when there is none (rule 6)."""
    if document.cache_info().currsize == 0:
        text = _text()
        key = "\n  " + json.dumps(name) + ": {"  # a key of "models", in render's layout
        at = text.find(key)
        if at >= 0:
            try:
                row, _ = _DECODER.raw_decode(text, at + len(key) - 1)
            except ValueError:
                row = None
            if isinstance(row, dict) and row.get("name") == name:
                return row
    found: Optional[Dict[str, Any]] = document()["models"].get(name)
    return found


@functools.cache
def _build(name: str) -> SimModel:
    """One model's ``SimModel``, built the first time it is asked for (rule 5)."""
    row = _row(name)
    assert row is not None, name
    return SimModel(
        name=name,
        table=tables.table_from_json(name, row),
        pci_device_ids=tuple(int(p, 16) for p in row["pci_device_ids"]),
        pci_subsystem_id=int(row["pci_subsystem_id"], 16),
        min_branch=int(row["min_branch"]),
        bundled=name in tables.MODEL_NAMES,
        provenance=dict(row["provenance"]),
        notes=tuple(row.get("notes") or ()),
    )


def model_names() -> Tuple[str, ...]:
    return tuple(document()["models"])


def known(name: str) -> bool:
    """Whether the simulator has a model of this name (rule 6: without parsing every
    model's entry)."""
    return _row(name) is not None


def all_models() -> Dict[str, SimModel]:
    return {name: _build(name) for name in model_names()}


def get(name: str) -> SimModel:
    """Raises:
    UnknownSimModel: no simulated model has this name."""
    if not known(name):
        raise UnknownSimModel(name)
    return _build(name)


def table(name: str) -> tables.ModelTable:
    return get(name).table


def branch(number: int) -> Branch:
    """Raises:
    BadBranch: a branch the simulator does not model."""
    found = BRANCHES.get(number)
    if found is None:
        raise BadBranch(
            f"driver branch {number} is not simulated (branches: "
            + ", ".join(str(b) for b in sorted(BRANCHES))
            + ")"
        )
    return found


def check_branch(model: SimModel, number: int) -> Branch:
    """The branch, if it supports MIG on ``model``.

    Raises:
        BadBranch: unknown branch, or older than NVIDIA's minimum driver for the model.
    """
    found = branch(number)
    if number < model.min_branch:
        raise BadBranch(
            f"{model.name} needs driver branch {model.min_branch} or later for MIG "
            f"(NVIDIA MIG User Guide minimum drivers); @{number} is too old"
        )
    return found


def branch_of_version(version: str) -> int:
    """The branch of a driver version string ("580.159.04" -> 580): state files written
    before branches were stored carry only the version."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else DEFAULT_BRANCH
