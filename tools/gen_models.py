#!/usr/bin/env python3
"""Generate the simulator's model tables and migrestore's bundled tables.

Rules:

1. Inputs: the team's reference tables ``mig-profiles.json`` and ``mig-profiles-newest.json``
   (per-model GI/CI profile tables with their sources) and the two real NVML probes (H100
   80GB HBM3 and H200, driver 580). Outputs: ``migrestore/simulator/data/models.json``
   (every simulated model, with the provenance of every field) and
   ``migrestore/data/models.json`` (the subset migrestore bundles, ``BUNDLED``, for
   ``validate --model`` and documentation). Both are committed; the test suite checks
   that they are what this script makes.
2. Provenance: every field of a model, of a GI profile and of a CI profile says where
   its value comes from: ``{"kind": "hardware", "source": ...}`` (read from a real GPU:
   a probe or an nvidia-smi transcript), ``{"kind": "documented", "source": ...}``
   (NVIDIA documentation or NVIDIA-maintained configs), or ``{"kind": "inferred",
   "rule": NAME}`` (derived by the rule ``RULES[NAME]``). Nothing is made more precise
   than its source: a value no source gives is filled only by a named rule.
3. A value a source gives is copied unchanged; the newest research replaces an older
   table only where it read the hardware (H200, A100 80GB) or where the older table had
   nothing (B200, GB200, B300, GB300, H20, RTX PRO 5000/4500).
4. ``--check`` exits 1 when a committed file differs from what the script makes.

Usage: ``python3 tools/gen_models.py [--reference DIR] [--check]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "reference"
ROOT = Path(__file__).resolve().parent.parent
SIM_OUT = ROOT / "migrestore" / "simulator" / "data" / "models.json"
BUNDLED_OUT = ROOT / "migrestore" / "data" / "models.json"

# NVML_DEVICE_ARCH_* (nvml.h).
ARCH_CODES = {"ampere": 7, "hopper": 9, "blackwell": 10}

# Driver 580's GI profile count: the probes answer INVALID_ARGUMENT from index 17
# (NVML_GPU_INSTANCE_PROFILE_3_SLICE_GFX, added in the CUDA 13.2.1 header) on.
INVALID_FROM_INDEX = 17

# NVML_COMPUTE_INSTANCE_PROFILE_* index per compute-slice count; the CI profile ID equals it.
CI_INDEX_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}
CI_INDEX_1_SLICE_REV1 = 7
GI_INDEX_1_SLICE_REV2 = 9

# The CI profiles a GI offers, by the GI's compute-slice count (rule ci-set).
CI_SETS: Dict[int, Tuple[Tuple[int, Tuple[int, ...]], ...]] = {
    7: ((1, (0, 1, 2, 3, 4, 5, 6)), (2, (0, 2, 4)), (3, (0, 4)), (4, (0,))),
    4: ((1, (0, 1, 2, 3)), (2, (0, 2))),
    3: ((1, (0, 1, 2)), (2, (0,))),
    2: ((1, (0, 1)),),
    1: (),
}

# Memory rules measured on the two probes (driver 580.159.04):
#   H100 80GB HBM3: total 81559, 8 slices 81152, 4 slices 40448, 2 slices 20096, 1 slice 9984
#   H200:           total 143771, 8 slices 143360, 4 slices 71424, 2 slices 33280, 1 slice 16384
TOTAL_OVER_FULL_MIB = 409  # H100 +407, H200 +411
FULL_PER_NAME_GB = 1024 * 0.9917  # H100 7g.80gb 81152/80/1024 = 0.9906, H200 140/141 = 0.9929
MEMORY_FRACTION = {8: 0.1187, 4: 0.2399, 2: 0.4983}  # span / profile memory slices -> share

GI_FIELDS = ("index", "id", "name", "slices", "memory_mib", "sms", "max", "placements")
ENGINE_FIELDS = ("copy_engines", "decoders", "encoders", "jpeg", "ofa")
CI_FIELDS = ("id", "name", "slices", "max", "sms", "placements", "default")

RULES = {
    "research": (
        "Inferred in the team's research notes (mig-profiles.json, mig-profiles-newest.json), "
        "which state the reasoning per row: profile indices from the nvml.h constant the "
        "profile name implies, placements from the Hopper/Ampere pattern of the same slice "
        "counts, instance counts from NVIDIA's configs."
    ),
    "third-party": (
        "A third-party value (a test fixture or a partial note), neither an NVIDIA document "
        "nor a hardware transcript; kept because nothing better exists."
    ),
    "same-table": (
        "A board NVIDIA's mig-parted config puts in the same profile rule as another model "
        "(names and counts) gets that model's whole table; nothing of it was read on this "
        "board."
    ),
    "name-convention": (
        "NVML name by the naming convention of the family ('NVIDIA <product>'); not seen "
        "in a transcript."
    ),
    "pci-subsystem-unknown": (
        "No transcript shows this board's PCI subsystem ID: the simulator reports NVIDIA's "
        "vendor ID with a zero subsystem device (0x000010DE), so a subsystem-ID device "
        "filter never matches it by accident."
    ),
    "min-branch": (
        "The first simulated driver branch at or above the minimum driver NVIDIA's MIG User "
        "Guide (v620, Deployment Considerations) gives for the GPU; boards the guide does "
        "not list take their family's (H800/GH200 as H100, A800 as A100)."
    ),
    "gi-memory-same-slices": (
        "A GI memory size not read = the size of this model's profile with the same number "
        "of memory slices that was read (every read table has 1g.20gb = 2g.20gb and 3g = 4g)."
    ),
    "gi-memory-full-from-total": (
        "The full-GPU profile's memory not read, total read: total - 409 MiB, rounded to a "
        "multiple of 256 MiB (exact on both probes: H100 81559 -> 81152, H200 143771 -> 143360)."
    ),
    "gi-memory-full-from-name": (
        "The full-GPU profile's memory with neither it nor the total read: the GB figure in "
        "its name x 1024 x 0.9917, rounded to 256 MiB (H100 7g.80gb: exact 81152; H200 "
        "7g.141gb: 143104, 256 MiB under the real 143360)."
    ),
    "gi-memory-fraction": (
        "Any other GI memory not read = the model's full-GPU profile x the share the two "
        "probes give for that many memory slices (mean of H100 and H200): half 0.4983 "
        "(exact on both), quarter 0.2399 (H100 -628 MiB, H200 +1112 MiB), eighth 0.1187 "
        "(H100 -352, H200 +640), rounded to 256 MiB. The 2- and 1-slice shares differ "
        "between the probes by 6-8%: such values are rough."
    ),
    "memory-total": (
        "Total memory not read: Hopper and Blackwell = the full-GPU profile + 409 MiB (H100 "
        "probe +407, H200 probe +411); Ampere = the nominal capacity in GiB (A100 80GB "
        "81920 and A30 24576 were read and are exactly 80 and 24 GiB)."
    ),
    "gi-sms-scale": (
        "GI SMs not read = the H100 probe's profile of the same compute and memory slices x "
        "(this model's 2-slice-profile SMs / the H100's 32), rounded down to an even number "
        "(SMs come in pairs). Where the model's 2-slice SMs were not read, its family's: "
        "B300 uses the B200's 36, GB300 the GB200's 38; the H20 scales by 78/132 (its "
        "public SM count over the H100's). B200: 3g 66, 4g 72, 7g 148."
    ),
    "gi-engines-family": (
        "Copy-engine/decoder/encoder/JPEG/OFA counts not read = the same-shape profile of "
        "the family's most complete table: Hopper the H100 probe, Blackwell data-center "
        "parts the B200 (whose 1- and 2-slice engines were read and whose 3g/4g/7g copy "
        "engines are documented: twice the H100's)."
    ),
    "gi-rtx-2way": (
        "RTX PRO 5000/4500 (two-way split in the MIG User Guide): 2 placement units; "
        "1-slice profiles at {0,1}:1, 2-slice ones at {0}:2; profile index from the nvml.h "
        "constant the name implies (1_SLICE, 1_SLICE_REV1 (+me), 1_SLICE_GFX, 1_SLICE_NO_ME, "
        "1_SLICE_ALL_ME, 2_SLICE, 2_SLICE_GFX); profile ID the RTX PRO 6000's for the same "
        "memory share and media variant (half: 5, +gfx 35, +me.all 64, -me 66; full: 0, +gfx "
        "32; +me has no half-share analog and takes the 6000's 1g +me ID 21); SMs the RTX "
        "PRO 6000 profile of the same compute slices (1g 46, 2g 94)."
    ),
    "ci-set": (
        "CI profiles of a GI follow its compute-slice count n: n=7: 1c x7 at 0..6, 2c x3 at "
        "0,2,4, 3c x2 at 0,4, 4c x1 at 0, full; n=4: 1c x4, 2c x2 at 0,2, full (no 3c, as "
        "read on A100); n=3: 1c x3 at 0,1,2, 2c x1 at 0, full; n=2: 1c x2, full; n=1: full "
        "only. Partial CIs are named '<k>c.<GI name>', the full CI is named like the GI and "
        "is the default. CI rows a source lists keep its values."
    ),
    "ci-id": (
        "CI profile ID = NVML_COMPUTE_INSTANCE_PROFILE_* index of its slice count "
        "(1->0, 2->1, 3->2, 4->3, 7->4); the full CI of a 1-slice REV2 GI (index 9: "
        "1g.20gb, 1g.24gb, ...) is ID 7 (1_SLICE_REV1), as reported on GH200."
    ),
    "ci-sms": "CI SMs not read = GI SMs * k // n (k CI compute slices of n).",
    "ci-max": "CI instanceCount not read = the number of its placements.",
    "ci-placements": "CI placements not read: the ci-set rule's starts, k compute slices each.",
    "not-supported": (
        "Profile indices below the driver's count that the table does not list answer "
        "NOT_SUPPORTED, the count itself and above INVALID_ARGUMENT (driver 580: 17, as both "
        "probes measured)."
    ),
}

# Where a source is a named reference entry: its text.
PROBE_H100 = "probes/h100-80gb-hbm3-driver580.json (real H100 80GB HBM3, driver 580.159.04)"
PROBE_H200 = "probes/h200-driver580.json (real H200, driver 580.159.04)"
GUIDE_V620 = (
    "NVIDIA MIG User Guide v620, Deployment Considerations (minimum driver per GPU), "
    "docs.nvidia.com/datacenter/tesla/mig-user-guide/620/deployment-considerations.html"
)
LSPCI_H100 = (
    "lspci -mm on an H100 80GB HBM3 VM: subsystem 'NVIDIA Corporation' 'Device 16c1' "
    "(third-party capture, code-index id 71435780848)"
)


def hw(source: str) -> Dict[str, str]:
    return {"kind": "hardware", "source": source}


def doc(source: str) -> Dict[str, str]:
    return {"kind": "documented", "source": source}


def inf(rule: str) -> Dict[str, str]:
    if rule not in RULES:
        raise SystemExit(f"unknown rule {rule!r}")
    return {"kind": "inferred", "rule": rule}


class Model:
    """One simulated model: where its table comes from and what the sources leave open."""

    def __init__(
        self,
        key: str,
        *,
        ref: Optional[str] = None,
        newest: Optional[str] = None,
        table_of: Optional[str] = None,
        nvml_name: Tuple[str, Dict[str, str]],
        pci: Tuple[List[str], Dict[str, str]],
        subsystem: Optional[Tuple[str, Dict[str, str]]] = None,
        memory: Optional[Tuple[int, Dict[str, str]]] = None,
        min_branch: int,
        bundled: bool = False,
        family: str = "",
        notes: Tuple[str, ...] = (),
        ci_from_newest: Optional[str] = None,
    ) -> None:
        self.key = key
        self.ref = ref  # prefix of the mig-profiles.json entry
        self.newest = newest  # prefix of the mig-profiles-newest.json entry (replaces GI rows)
        self.table_of = table_of  # another model's key: the same table (rule same-table)
        self.nvml_name = nvml_name
        self.pci = pci
        self.subsystem = subsystem
        self.memory = memory
        self.min_branch = min_branch
        self.bundled = bundled
        self.family = family  # donor for gi-sms-scale / gi-engines-family
        self.notes = notes
        self.ci_from_newest = ci_from_newest


def _src_ref(entry: Dict[str, Any]) -> str:
    return str(entry.get("source") or entry["model"])


MODELS: Tuple[Model, ...] = (
    Model(
        "a100-sxm4-40gb",
        ref="A100-SXM4-40GB",
        ci_from_newest="A100-SXM4-40GB / A100-PCIE-40GB",
        nvml_name=("NVIDIA A100-SXM4-40GB", doc("mig-profiles.json: NVML name of current drivers")),
        pci=(["0x20B010DE"], doc("go-nvml README / pci.ids: A100 SXM4 40GB")),
        min_branch=470,
        bundled=True,
    ),
    Model(
        "a100-pcie-40gb",
        table_of="a100-sxm4-40gb",
        nvml_name=(
            "NVIDIA A100-PCIE-40GB",
            hw("nvidia-smi transcript (A100-PCIE-40GB, 510.47.03)"),
        ),
        pci=(
            ["0x20F110DE", "0x20B110DE"],
            doc("pci.ids / go-nvml README: 0x20F1 A100 PCIe 40GB; 0x20B1 in the same 40GB group"),
        ),
        min_branch=470,
    ),
    Model(
        "a100-80gb",
        ref="A100 80GB",
        newest="A100 80GB",
        nvml_name=("NVIDIA A100-SXM4-80GB", hw("nvidia-smi on A100-SXM4-80GB, driver 550.54.14")),
        pci=(["0x20B210DE"], doc("go-nvml README: A100 SXM4 80GB")),
        min_branch=470,
        bundled=True,
    ),
    Model(
        "a100-pcie-80gb",
        table_of="a100-80gb",
        nvml_name=("NVIDIA A100 80GB PCIe", hw("nvidia-smi on A100 80GB PCIe (mig-profiles.json)")),
        pci=(["0x20B510DE"], doc("go-nvml README: A100 PCIe 80GB")),
        min_branch=470,
    ),
    Model(
        "a30-24gb",
        ref="A30 24GB",
        nvml_name=("NVIDIA A30", hw("nvidia-smi on NVIDIA A30, driver 535.183.01")),
        pci=(["0x20B710DE"], hw("mig-parted#157 log: GPU 1: 0x20B710DE")),
        min_branch=470,
        bundled=True,
    ),
    Model(
        "h100-80gb-hbm3",
        ref="H100 80GB HBM3",
        nvml_name=("NVIDIA H100 80GB HBM3", hw(PROBE_H100)),
        pci=(["0x233010DE"], doc("go-nvml README / pci.ids: GH100 [H100 SXM5 80GB]")),
        subsystem=("0x16C110DE", hw(LSPCI_H100)),
        min_branch=525,
        bundled=True,
    ),
    Model(
        "h100-pcie-80gb",
        ref="H100 PCIe 80GB",
        nvml_name=("NVIDIA H100 PCIe", hw("nvidia-smi mig -lgip on 'NVIDIA H100 PCIe', 570.169")),
        pci=(["0x233110DE"], doc("pci.ids: GH100 [H100 PCIe]; mig-parted 80GB group")),
        min_branch=525,
        bundled=True,
    ),
    Model(
        "h100-nvl-94gb",
        ref="H100 NVL 94GB",
        nvml_name=("NVIDIA H100 NVL", hw("nvidia-smi on 'NVIDIA H100 NVL', driver 560.35.03")),
        pci=(["0x232110DE"], doc("pci.ids: 0x2321 'H100L 94GB' = H100 NVL (mig-profiles-newest)")),
        min_branch=525,
        bundled=True,
    ),
    Model(
        "h100-96gb",
        ref="H100 96GB",
        nvml_name=(
            "NVIDIA GH200 480GB",
            inf("third-party"),
        ),
        pci=(
            ["0x234210DE", "0x233D10DE", "0x20B610DE"],
            doc("pci.ids: 0x2342 GH200 120GB/480GB, 0x233D H100 96GB, 0x20B6 PG506-232; one rule"),
        ),
        min_branch=535,
        bundled=True,
        notes=(
            "nvml_name: OpenCL device name 'NVIDIA GH200 480GB' (driver 555.42.06), third-party.",
        ),
    ),
    Model(
        "gh200-144gb",
        ref="GH200 144GB",
        nvml_name=("NVIDIA GH200 144G HBM3e", inf("name-convention")),
        pci=(["0x234810DE"], doc("pci.ids: GH100 [GH200 144G HBM3e]")),
        min_branch=535,
        bundled=True,
    ),
    Model(
        "h200-141gb",
        ref="H200 141GB",
        newest="H200 141GB",
        nvml_name=("NVIDIA H200", hw(PROBE_H200)),
        pci=(["0x233510DE"], hw(PROBE_H200 + ": nvidia-smi -q Device Id 0x233510DE")),
        memory=(143771, hw(PROBE_H200)),
        min_branch=550,
        bundled=True,
    ),
    Model(
        "h200-nvl-141gb",
        table_of="h200-141gb",
        nvml_name=("NVIDIA H200 NVL", inf("name-convention")),
        pci=(["0x233B10DE"], doc("pci.ids: GH100 [H200 NVL]; one rule with H200 in mig-parted")),
        min_branch=550,
    ),
    Model(
        "h20-96gb",
        newest="H20 96GB",
        nvml_name=("NVIDIA H20", inf("name-convention")),
        pci=(
            ["0x232910DE"],
            doc("pci.ids: GH100 [H20]; NVIDIA's config 'H100-96GB, PG506-96GB, GH200, H20' rule"),
        ),
        min_branch=535,
        family="h20",
        notes=(
            "Only the profile names and counts are documented; every size, SM and engine "
            "count is inferred. 0x2328 (H20B) and 0x232C (H20 HBM3e) exist but are in no "
            "NVIDIA MIG config.",
        ),
    ),
    Model(
        "h800-80gb",
        table_of="h100-80gb-hbm3",
        nvml_name=("NVIDIA H800", inf("name-convention")),
        pci=(["0x232410DE"], doc("mig-parted commit e850be75 'Add H800 with PCI ID 232410DE'")),
        min_branch=525,
    ),
    Model(
        "h800-pcie-80gb",
        table_of="h100-pcie-80gb",
        nvml_name=("NVIDIA H800 PCIe", inf("name-convention")),
        pci=(["0x232210DE"], doc("pci.ids: GH100 [H800 PCIe]")),
        min_branch=525,
    ),
    Model(
        "h800-nvl-94gb",
        table_of="h100-nvl-94gb",
        nvml_name=("NVIDIA H800 NVL", inf("name-convention")),
        pci=(["0x233A10DE"], doc("pci.ids: GH100 [H800L 94GB]; H100 NVL rule in NVIDIA's config")),
        min_branch=525,
    ),
    Model(
        "a800-sxm4-80gb",
        table_of="a100-80gb",
        nvml_name=("NVIDIA A800-SXM4-80GB", inf("name-convention")),
        pci=(["0x20F310DE"], doc("pci.ids: A800-SXM4-80GB; NVIDIA's 80GB rule")),
        min_branch=470,
    ),
    Model(
        "a800-pcie-80gb",
        table_of="a100-80gb",
        nvml_name=("NVIDIA A800 80GB PCIe", hw("nvidia-smi, driver 580.119.02 (HAMi#1903)")),
        pci=(["0x20F510DE"], doc("pci.ids: A800 80GB PCIe; NVIDIA's 80GB rule")),
        memory=(81920, hw("nvidia-smi, driver 580.119.02 (HAMi#1903): 81920MiB")),
        min_branch=470,
    ),
    Model(
        "a800-pcie-40gb",
        table_of="a100-sxm4-40gb",
        nvml_name=("NVIDIA A800 40GB PCIe", inf("name-convention")),
        pci=(["0x20F610DE"], doc("pci.ids: A800 40GB PCIe; NVIDIA's 40GB rule")),
        min_branch=470,
    ),
    Model(
        "b200-180gb",
        newest="B200 180GB",
        nvml_name=("NVIDIA B200", hw("nvidia-smi on 8x NVIDIA B200 (gpu-operator#2155)")),
        pci=(["0x290110DE"], doc("pci.ids GB100 [B200]; NVIDIA's B200 device-filter")),
        memory=(183359, hw("nvidia-smi '183359MiB' with MIG enabled (gpu-operator#2155)")),
        min_branch=570,
        family="b200",
    ),
    Model(
        "gb200-186gb",
        newest="GB200",
        nvml_name=("NVIDIA GB200", inf("third-party")),
        pci=(["0x294110DE"], doc("pci.ids GB100 [HGX GB200]; NVIDIA's GB200 device-filter")),
        min_branch=570,
        family="gb200",
        notes=("Production board names (mig-parted#227); the pre-production board used 1g.24gb.",),
    ),
    Model(
        "b300-288gb",
        newest="B300",
        nvml_name=("NVIDIA B300 SXM6 AC", inf("third-party")),
        pci=(["0x318210DE"], doc("NVIDIA's B300 device-filter (gpu-operator e4653c87)")),
        min_branch=580,
        family="b300",
    ),
    Model(
        "gb300-288gb",
        newest="GB300",
        nvml_name=("NVIDIA GB300", doc("NVIDIA 'MIG on DGX Station' playbook (GB300)")),
        pci=(["0x31C210DE"], doc("NVIDIA's GB300 device-filter (gpu-operator 7031fcc5)")),
        min_branch=595,
        family="gb300",
    ),
    Model(
        "rtx-pro-6000-blackwell",
        ref="RTX PRO 6000 Blackwell",
        nvml_name=("NVIDIA RTX PRO 6000 Blackwell Server Edition", inf("name-convention")),
        pci=(["0x2BB510DE"], doc("pci.ids: Server Edition; NVIDIA's RTX PRO 6000 device-filter")),
        min_branch=580,
        bundled=True,
        notes=(
            "The table was read on a Max-Q Workstation board (driver 580.105.08); a Server "
            "Edition transcript prints 23.12/46.50 GiB for 1g/2g where this one has "
            "23.62/47.38 (driver-dependent, mig-profiles-newest).",
        ),
    ),
    Model(
        "rtx-pro-6000-blackwell-ws",
        table_of="rtx-pro-6000-blackwell",
        nvml_name=("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", inf("name-convention")),
        pci=(["0x2BB110DE"], doc("pci.ids: RTX PRO 6000 Blackwell Workstation Edition")),
        min_branch=580,
    ),
    Model(
        "rtx-pro-6000-blackwell-maxq",
        table_of="rtx-pro-6000-blackwell",
        nvml_name=(
            "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition",
            hw("nvidia-smi mig -lgip on the Max-Q board, driver 580.105.08"),
        ),
        pci=(["0x2BB410DE"], doc("pci.ids: RTX PRO 6000 Blackwell Max-Q Workstation Edition")),
        min_branch=580,
    ),
    Model(
        "rtx-pro-5000-blackwell",
        newest="RTX PRO 5000",
        nvml_name=("NVIDIA RTX PRO 5000 Blackwell", inf("name-convention")),
        pci=(["0x2BB310DE"], doc("pci.ids: GB202GL [RTX PRO 5000 Blackwell]")),
        min_branch=580,
        family="rtx",
        notes=("The newest MIG User Guide's two-way table (it replaced the v580 four-way one).",),
    ),
    Model(
        "rtx-pro-4500-blackwell",
        newest="RTX PRO 4500",
        nvml_name=("NVIDIA RTX PRO 4500 Blackwell", inf("name-convention")),
        pci=(["0x2C3110DE"], doc("pci.ids: GB203GL [RTX PRO 4500 Blackwell]")),
        min_branch=580,
        family="rtx",
    ),
)

BUNDLED = tuple(m.key for m in MODELS if m.bundled)


# --------------------------------------------------------------------------- helpers


def _find(doc_: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    found = [m for m in doc_["models"] if str(m["model"]).startswith(prefix)]
    if len(found) != 1:
        raise SystemExit(f"reference: {len(found)} models start with {prefix!r}; expected 1")
    return copy.deepcopy(found[0])


def _round256(value: float) -> int:
    return int(round(value / 256.0)) * 256


def _mem_slices(row: Dict[str, Any]) -> int:
    return int(row["placements"][0][1])


def _name_gb(name: str) -> int:
    match = re.match(r"^\d+g\.(\d+)gb", name)
    if not match:
        raise SystemExit(f"profile name {name!r} has no GB figure")
    return int(match.group(1))


def _kind_of(entry: Dict[str, Any], row: Dict[str, Any]) -> Dict[str, str]:
    """Provenance of a value a reference row gives (not inferred by it)."""
    confidence = str(row.get("confidence") or entry.get("confidence") or "")
    source = str(row.get("source") or _src_ref(entry))
    if confidence in ("documented", "names-only", "names-and-counts-only") or confidence.startswith(
        "documented"
    ):
        return doc(source)
    if confidence == "third-party-unverified":
        return inf("third-party")
    lowered = source.lower()
    if (
        (
            lowered.startswith("nvidia mig user guide")
            or "config-default.yaml" in lowered
            or "configmap" in lowered
            or "docs.nvidia.com" in lowered
        )
        and "transcript" not in lowered
        and "nvidia-smi" not in lowered
    ):
        return doc(source)
    return hw(source)


def _probe_rows(probe: Dict[str, Any]) -> List[Dict[str, Any]]:
    out = []
    for row in probe["devices"][0]["gi_profiles"]:
        if row["err"] is not None:
            continue
        out.append(
            {
                "index": row["profile"],
                "id": row["id"],
                "name": row["name"][4:],
                "slices": row["sliceCount"],
                "memory_mib": row["memorySizeMB"],
                "sms": row["multiprocessorCount"],
                "max": row["instanceCount"],
                "placements": row["placements"],
                "copy_engines": row["copyEngineCount"],
                "decoders": row["decoderCount"],
                "encoders": row["encoderCount"],
                "jpeg": row["jpegCount"],
                "ofa": row["ofaCount"],
            }
        )
    return out


def _shape_row(rows: List[Dict[str, Any]], row: Dict[str, Any]) -> Dict[str, Any]:
    """The row of ``rows`` with the same compute slices, memory slices and media variant."""
    suffix = row["name"].split("gb", 1)[1] if "gb" in row["name"] else ""
    for cand in rows:
        cand_suffix = cand["name"].split("gb", 1)[1] if "gb" in cand["name"] else ""
        if (
            cand["slices"] == row["slices"]
            and _mem_slices(cand) == _mem_slices(row)
            and cand_suffix == suffix
        ):
            return cand
    raise SystemExit(f"no row shaped like {row['name']}")


# --------------------------------------------------------------------------- GI rows


RTX_INDEX = {"": 0, "+me": 7, "+gfx": 10, "-me": 13, "+me.all": 15}
RTX_INDEX_2 = {"": 1, "+gfx": 11}
RTX_ID_HALF = {"": 5, "+gfx": 35, "+me.all": 64, "-me": 66, "+me": 21}
RTX_ID_FULL = {"": 0, "+gfx": 32}


def _variant(name: str) -> str:
    return name.split("gb", 1)[1]


def _rtx_fill(row: Dict[str, Any], prov: Dict[str, Any]) -> None:
    """Rule gi-rtx-2way for the two-way RTX PRO 5000/4500 tables."""
    variant = _variant(row["name"])
    full = row["slices"] == 2
    filled = {
        "index": (RTX_INDEX_2 if full else RTX_INDEX)[variant],
        "id": (RTX_ID_FULL if full else RTX_ID_HALF)[variant],
        "placements": [[0, 2]] if full else [[0, 1], [1, 1]],
        "sms": 94 if full else 46,
    }
    for key, value in filled.items():
        if row.get(key) is None or key in ("index", "id", "placements"):
            row[key] = value
            prov[key] = inf("gi-rtx-2way")


def _gi_rows(
    model: Model,
    entry: Dict[str, Any],
    rows: List[Dict[str, Any]],
    total: Optional[int],
    span: int,
    h100: List[Dict[str, Any]],
    donors: Dict[str, List[Dict[str, Any]]],
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Fill the GI rows of one model; returns (rows, provenance per row)."""
    out: List[Dict[str, Any]] = []
    provs: List[Dict[str, Any]] = []
    for raw in rows:
        row = {k: raw.get(k) for k in (*GI_FIELDS, *ENGINE_FIELDS)}
        row["ci_profiles"] = raw.get("ci_profiles") or []
        prov: Dict[str, Any] = {}
        research = set(raw.get("inferred_fields") or [])
        if "engines" in research:
            research.discard("engines")
            research.update(ENGINE_FIELDS)
        for key in (*GI_FIELDS, *ENGINE_FIELDS):
            if row.get(key) is None:
                continue
            if key in research:
                third = (raw.get("field_sources") or {}).get(key, {})
                rule = (
                    "third-party"
                    if third.get("confidence") == "third-party-unverified"
                    else "research"
                )
                prov[key] = inf(rule)
            else:
                prov[key] = _kind_of(entry, raw)
        if model.family == "rtx":
            _rtx_fill(row, prov)
        out.append(row)
        provs.append(prov)
    # Memory (rules gi-memory-*), read values first.
    full_slices = max(_mem_slices(r) for r in out)
    read = {
        _mem_slices(r): r["memory_mib"]
        for r in out
        if r.get("memory_mib") is not None
        and provs[out.index(r)]["memory_mib"]["kind"] != "inferred"
    }
    full_rows = [i for i, r in enumerate(out) if _mem_slices(r) == full_slices]
    full_mem = read.get(full_slices)
    if full_mem is None:
        if total is not None:
            full_mem, rule = _round256(total - TOTAL_OVER_FULL_MIB), "gi-memory-full-from-total"
        else:
            full_mem = _round256(_name_gb(out[full_rows[0]]["name"]) * FULL_PER_NAME_GB)
            rule = "gi-memory-full-from-name"
        for i in full_rows:
            if out[i].get("memory_mib") is None:
                out[i]["memory_mib"] = full_mem
                provs[i]["memory_mib"] = inf(rule)
    for i, row in enumerate(out):
        if row.get("memory_mib") is not None:
            continue
        slices = _mem_slices(row)
        if slices in read:
            row["memory_mib"] = read[slices]
            provs[i]["memory_mib"] = inf("gi-memory-same-slices")
        else:
            share = MEMORY_FRACTION[span // slices]
            row["memory_mib"] = _round256(full_mem * share)
            provs[i]["memory_mib"] = inf("gi-memory-fraction")
    # SMs and engines (rules gi-sms-scale, gi-engines-family).
    for i, row in enumerate(out):
        if row.get("sms") is None:
            base = _shape_row(h100, row)["sms"]
            factor = _sms_factor(model, out, donors)
            row["sms"] = int(base * factor) // 2 * 2
            provs[i]["sms"] = inf("gi-sms-scale")
        donor_rows = donors.get("b200") if model.family in ("gb200", "b300", "gb300") else h100
        for key in ENGINE_FIELDS:
            if row.get(key) is None:
                assert donor_rows is not None
                row[key] = int(_shape_row(donor_rows, row)[key])
                provs[i][key] = inf("gi-engines-family")
    for i, row in enumerate(out):
        for key in (*GI_FIELDS, *ENGINE_FIELDS):
            if row.get(key) is None or key not in provs[i]:
                raise SystemExit(f"{model.key} {row['name']}: {key} has no value or provenance")
    return out, provs


def _sms_factor(
    model: Model, rows: List[Dict[str, Any]], donors: Dict[str, List[Dict[str, Any]]]
) -> float:
    if model.family == "h20":
        return 78 / 132
    donor = {"b300": "b200", "gb300": "gb200"}.get(model.family, model.family)
    source = rows if donor == model.family else donors[donor]
    for row in source:
        if row["slices"] == 2 and _mem_slices(row) == 2 and "+" not in row["name"]:
            if row.get("sms") is not None:
                return float(row["sms"]) / 32.0
    raise SystemExit(f"{model.key}: no 2-slice SM count to scale by")


# --------------------------------------------------------------------------- CI rows


def _ci_rows(gi: Dict[str, Any], entry: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The CI profiles of one GI: rule ci-set, merged with the CI rows a source lists."""
    n = int(gi["slices"])
    gi_sms = int(gi["sms"])
    listed = {int(ci["id"]): ci for ci in gi.get("ci_profiles") or [] if ci.get("id") is not None}
    rows: List[Dict[str, Any]] = []
    full_id = CI_INDEX_BY_SLICES[n]
    if n == 1 and gi["index"] == GI_INDEX_1_SLICE_REV2:
        full_id = CI_INDEX_1_SLICE_REV1
    shapes = [(CI_INDEX_BY_SLICES[k], k, starts, f"{k}c.{gi['name']}") for k, starts in CI_SETS[n]]
    shapes.append((full_id, n, (0,), str(gi["name"])))
    for ci_id, k, starts, name in shapes:
        ref = listed.pop(ci_id, None)
        prov: Dict[str, Any] = {}
        if ref is None:
            ref = {}
            given: Dict[str, Dict[str, str]] = {}
            for key in ("id", "name", "slices", "default"):
                prov[key] = inf("ci-set") if key != "id" else inf("ci-id")
        else:
            research = set(ref.get("inferred_fields") or [])
            source = _kind_of(entry, ref) if ref.get("source") else _kind_of(entry, gi)
            given = {}
            for key in ("id", "name", "slices", "max", "sms", "placements"):
                if ref.get(key) is not None:
                    given[key] = inf("research") if key in research else source
            prov.update(given)
            prov["name"] = given.get("name", inf("ci-set"))
            prov["slices"] = given.get("slices", inf("ci-set"))
            prov["id"] = given.get("id", inf("ci-id"))
            prov["default"] = source if ref.get("default_for_gi") is not None else inf("ci-set")
        placements = ref.get("placements")
        if placements is None:
            placements = [[s, k] for s in starts]
            prov["placements"] = inf("ci-placements")
        sms = ref.get("sms")
        if sms is None:
            sms = gi_sms * k // n
            prov["sms"] = inf("ci-sms")
        ci_max = ref.get("max")
        if ci_max is None:
            ci_max = len(placements)
            prov["max"] = inf("ci-max")
        if ref.get("name", name) != name:
            raise SystemExit(f"{gi['name']}: CI {ci_id} named {ref['name']!r}, rule says {name!r}")
        rows.append(
            {
                "id": ci_id,
                "name": name,
                "slices": k,
                "max": int(ci_max),
                "sms": int(sms),
                "placements": [[int(s), int(z)] for s, z in placements],
                "default": ci_id == full_id,
                "provenance": {key: prov[key] for key in CI_FIELDS},
            }
        )
    if listed:
        raise SystemExit(f"{gi['name']}: CI IDs {sorted(listed)} fit no rule shape")
    rows.sort(key=lambda r: int(r["id"]))
    return rows


# --------------------------------------------------------------------------- models


def _architecture(entry: Dict[str, Any]) -> str:
    word = str(entry["architecture"]).split()[0].lower()
    if word not in ARCH_CODES:
        raise SystemExit(f"{entry['model']}: unknown architecture {entry['architecture']!r}")
    return word


def _entry_for(
    model: Model, reference: Dict[str, Any], newest: Dict[str, Any]
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The reference entry a model's table comes from and its GI rows."""
    if model.newest is not None:
        entry = _find(newest, model.newest)
        base = _find(reference, model.ref) if model.ref else entry
        for key in ("architecture", "slices", "memory_mib"):
            if entry.get(key) is None and base.get(key) is not None:
                entry[key] = base[key]
        rows = entry["gi_profiles"]
        if model.ref:
            # Profiles the newest table lacks but the older one read (none today) stay.
            names = {r["name"] for r in rows}
            rows = rows + [r for r in base["gi_profiles"] if r["name"] not in names]
        return entry, rows
    assert model.ref is not None
    entry = _find(reference, model.ref)
    rows = entry["gi_profiles"]
    if model.ci_from_newest:
        extra = {r["name"]: r for r in _find(newest, model.ci_from_newest)["gi_profiles"]}
        for row in rows:
            more = extra.get(row["name"])
            if more and more.get("ci_profiles"):
                have = {c.get("id") for c in row.get("ci_profiles") or []}
                for ci in more["ci_profiles"]:
                    if ci.get("id") is not None and ci["id"] not in have:
                        ci = dict(ci)
                        ci.setdefault("source", more.get("source"))
                        row.setdefault("ci_profiles", []).append(ci)
    return entry, rows


def build(reference_dir: Path = REFERENCE_DIR) -> Dict[str, Any]:
    """The simulator's models.json document."""
    reference = json.loads((reference_dir / "mig-profiles.json").read_text(encoding="utf-8"))
    newest = json.loads((reference_dir / "mig-profiles-newest.json").read_text(encoding="utf-8"))
    h100 = _probe_rows(
        json.loads((reference_dir / "probes" / "h100-80gb-hbm3-driver580.json").read_text())
    )
    built: Dict[str, Dict[str, Any]] = {}
    donors: Dict[str, List[Dict[str, Any]]] = {}
    for model in MODELS:
        if model.table_of is not None:
            built[model.key] = _alias(model, built[model.table_of])
            continue
        entry, rows = _entry_for(model, reference, newest)
        arch = _architecture(entry)
        slices = entry["slices"]
        if model.family == "rtx":
            span, compute = 2, 2
        else:
            span = int(slices.get("placement_units", slices["memory"]))
            compute = int(slices["compute"])
        total: Optional[int] = None
        total_prov: Optional[Dict[str, str]] = None
        if model.memory is not None:
            total, total_prov = model.memory
        elif entry.get("memory_mib") is not None:
            total = int(entry["memory_mib"])
            total_prov = hw(str(entry.get("memory_mib_source") or _src_ref(entry)))
        gis, provs = _gi_rows(model, entry, rows, total, span, h100, donors)
        if model.family:
            donors[model.family] = gis
        if total is None:
            full = max(gis, key=lambda g: int(g["memory_mib"]))
            if arch == "ampere":
                total = _name_gb(full["name"]) * 1024
            else:
                total = int(full["memory_mib"]) + TOTAL_OVER_FULL_MIB
            total_prov = inf("memory-total")
        assert total_prov is not None
        gi_out = []
        for row, prov in zip(gis, provs):
            row_out = {key: row[key] for key in (*GI_FIELDS, *ENGINE_FIELDS)}
            row_out["placements"] = [[int(s), int(z)] for s, z in row["placements"]]
            row_out["provenance"] = {key: prov[key] for key in (*GI_FIELDS, *ENGINE_FIELDS)}
            row_out["ci_profiles"] = _ci_rows(row, entry)
            gi_out.append(row_out)
        gi_out.sort(key=lambda r: int(r["index"]))
        indices = {int(g["index"]) for g in gi_out}
        subsystem, sub_prov = model.subsystem or ("0x000010DE", inf("pci-subsystem-unknown"))
        built[model.key] = {
            "name": model.key,
            "reference_model": entry["model"],
            "nvml_name": model.nvml_name[0],
            "pci_device_ids": list(model.pci[0]),
            "pci_subsystem_id": subsystem,
            "architecture": arch,
            "arch_code": ARCH_CODES[arch],
            "memory_mib": int(total),
            "memory_slices": span,
            "compute_slices": compute,
            "min_branch": model.min_branch,
            "not_supported_indices": [i for i in range(INVALID_FROM_INDEX) if i not in indices],
            "invalid_from_index": INVALID_FROM_INDEX,
            "provenance": {
                "nvml_name": model.nvml_name[1],
                "pci_device_ids": model.pci[1],
                "pci_subsystem_id": sub_prov,
                "memory_mib": total_prov,
                "architecture": _kind_of(entry, {}),
                "slices": inf("gi-rtx-2way") if model.family == "rtx" else _kind_of(entry, {}),
                "min_branch": inf("min-branch"),
                "not_supported_indices": inf("not-supported"),
            },
            "notes": list(model.notes),
            "gi_profiles": gi_out,
        }
    return {
        "_about": (
            "The simulator's model tables, generated by tools/gen_models.py from the team's "
            "mig-profiles.json, mig-profiles-newest.json and the H100/H200 probes; do not "
            "edit. Every field's 'provenance' says whether it was read from hardware, "
            "documented by NVIDIA, or inferred by a named rule ('rules')."
        ),
        "rules": RULES,
        "models": built,
    }


def _alias(model: Model, other: Dict[str, Any]) -> Dict[str, Any]:
    """Rule same-table: another board that NVIDIA's config treats as ``other``."""
    entry = copy.deepcopy(other)
    entry["name"] = model.key
    entry["nvml_name"] = model.nvml_name[0]
    entry["pci_device_ids"] = list(model.pci[0])
    subsystem, sub_prov = model.subsystem or ("0x000010DE", inf("pci-subsystem-unknown"))
    entry["pci_subsystem_id"] = subsystem
    entry["min_branch"] = model.min_branch
    same = inf("same-table")
    prov = entry["provenance"]
    prov.update(
        {
            "nvml_name": model.nvml_name[1],
            "pci_device_ids": model.pci[1],
            "pci_subsystem_id": sub_prov,
            "memory_mib": same,
            "min_branch": inf("min-branch"),
        }
    )
    if model.memory is not None:
        entry["memory_mib"], prov["memory_mib"] = model.memory
    for gi in entry["gi_profiles"]:
        gi["provenance"] = {key: same for key in gi["provenance"]}
        for ci in gi["ci_profiles"]:
            ci["provenance"] = {key: same for key in ci["provenance"]}
    entry["notes"] = [f"The {other['name']} table (rule same-table).", *model.notes]
    return entry


def inferred_fields(provenance: Dict[str, Any]) -> List[str]:
    return sorted(k for k, v in provenance.items() if v["kind"] == "inferred")


def bundled(sim: Dict[str, Any]) -> Dict[str, Any]:
    """migrestore's bundled document: the ``BUNDLED`` models in the shape
    ``migrestore.tables`` reads (one PCI device ID, ``inferred`` lists)."""
    models: Dict[str, Any] = {}
    for key in BUNDLED:
        row = sim["models"][key]
        gis = []
        for gi in row["gi_profiles"]:
            out = {k: v for k, v in gi.items() if k not in ("provenance", "ci_profiles")}
            out["inferred"] = inferred_fields(gi["provenance"])
            out["ci_profiles"] = [
                {
                    **{k: v for k, v in ci.items() if k != "provenance"},
                    "inferred": inferred_fields(ci["provenance"]),
                }
                for ci in gi["ci_profiles"]
            ]
            gis.append(out)
        models[key] = {
            "reference_model": row["reference_model"],
            "nvml_name": row["nvml_name"],
            "pci_device_id": row["pci_device_ids"][0],
            "architecture": row["architecture"],
            "arch_code": row["arch_code"],
            "memory_mib": row["memory_mib"],
            "memory_slices": row["memory_slices"],
            "compute_slices": row["compute_slices"],
            "not_supported_indices": row["not_supported_indices"],
            "invalid_from_index": row["invalid_from_index"],
            "inferred": inferred_fields(row["provenance"]),
            "notes": row["notes"],
            "gi_profiles": gis,
        }
    return {
        "_about": (
            "migrestore's bundled MIG tables (validate --model, --simulate, documentation), "
            "generated by tools/gen_models.py; do not edit. On a machine with GPUs the live "
            "GPU is the authority. Fields in an entry's 'inferred' list were not read from "
            "hardware or documented; 'rules' says how they were filled."
        ),
        "rules": sim["rules"],
        "models": models,
    }


def render(document: Dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=False) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE_DIR)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if an output file is not up to date"
    )
    args = parser.parse_args(argv)
    sim = build(args.reference)
    outputs = ((SIM_OUT, render(sim)), (BUNDLED_OUT, render(bundled(sim))))
    if args.check:
        stale = [p for p, text in outputs if not p.exists() or p.read_text("utf-8") != text]
        for path in stale:
            print(f"{path} is out of date: run tools/gen_models.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {SIM_OUT} ({len(sim['models'])} models) and {BUNDLED_OUT} ({len(BUNDLED)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
