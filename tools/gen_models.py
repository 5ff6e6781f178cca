#!/usr/bin/env python3
"""Generate ``migrestore/data/models.json`` from the reference profile tables.

Rules:

1. The input is ``mig-profiles.json`` (the team's reference: per-model GI/CI profile
   tables with their sources); the output is the package data the simulator and the
   config validator load through ``migrestore.tables``. Run it again whenever the
   reference changes and commit both; the test suite checks that the committed file is
   what this script produces.
2. A value the reference gives is copied as it is; the reference's own ``inferred_fields``
   are carried over. A value the reference lacks is filled by one of the rules below and
   the field is named in the entry's ``inferred`` list, so a reader can always tell a
   measured value from a derived one. ``RULES`` holds the text of every rule; each
   model's ``notes`` say which picks were made for it.
3. Only the ten models below ship (``MODELS``); every other model of the reference is
   incomplete and left out.

Usage: ``python3 tools/gen_models.py [--reference PATH] [--out PATH] [--check]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REFERENCE = Path("/work/shared/reference/mig-profiles.json")
OUT = Path(__file__).resolve().parent.parent / "migrestore" / "data" / "models.json"

# NVML_DEVICE_ARCH_* (nvml.h).
ARCH_CODES = {"ampere": 7, "hopper": 9, "blackwell": 10}

# The last GPU-instance profile index driver 580 knows: the H100 probe answers
# INVALID_ARGUMENT from index 17 (NVML_GPU_INSTANCE_PROFILE_3_SLICE_GFX) on.
INVALID_FROM_INDEX = 17

# NVML_COMPUTE_INSTANCE_PROFILE_* index per compute-slice count; the CI profile ID equals it.
CI_INDEX_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}
CI_INDEX_1_SLICE_REV1 = 7
GI_INDEX_1_SLICE_REV2 = 9

# The CI profiles a GI offers, by the GI's compute-slice count: (slices, starts) of the
# partial CIs; the full CI (covering the GI, named like it) is added to each set.
CI_SETS: Dict[int, Tuple[Tuple[int, Tuple[int, ...]], ...]] = {
    7: ((1, (0, 1, 2, 3, 4, 5, 6)), (2, (0, 2, 4)), (3, (0, 4)), (4, (0,))),
    4: ((1, (0, 1, 2, 3)), (2, (0, 2))),
    3: ((1, (0, 1, 2)), (2, (0,))),
    2: ((1, (0, 1)),),
    1: (),
}

RULES = {
    "ci-set": (
        "CI profiles of a GI follow its compute-slice count n: n=7: 1c x7 at 0..6, 2c x3 at "
        "0,2,4, 3c x2 at 0,4, 4c x1 at 0, full; n=4: 1c x4, 2c x2 at 0,2, full; n=3: 1c x3 at "
        "0,1,2, 2c x1 at 0, full; n=2: 1c x2, full; n=1: full only. Partial CIs are named "
        "'<k>c.<GI name>', the full CI is named like the GI and is the default (the one "
        "'nvidia-smi mig -cgi ... -C' creates). CI entries the reference lists keep its values."
    ),
    "ci-id": (
        "CI profile ID = NVML_COMPUTE_INSTANCE_PROFILE_* index of its slice count "
        "(1->0, 2->1, 3->2, 4->3, 7->4); the full CI of a 1-slice REV2 GI (index 9: "
        "1g.20gb, 1g.24gb, ...) is ID 7 (1_SLICE_REV1), as reported on GH200 and listed "
        "in the reference for H100."
    ),
    "ci-sms": "CI SMs not read = GI SMs * k // n (k CI compute slices of n).",
    "ci-max": "CI instanceCount not read = the number of its placements.",
    "gi-memory": (
        "A GI memory size not read is the size of this model's profile with the same "
        "number of memory slices (every measured table has 1g.20gb = 2g.20gb and 3g = 4g); "
        "when no such profile was read, this model's 2-memory-slice profile is scaled by "
        "the H100 80GB HBM3 probe's ratio between the two slice counts (4 slices: "
        "40448/20096, 8 slices: 81152/20096) and rounded to a multiple of 128 MiB (all "
        "read sizes are)."
    ),
    "gi-sms-engines": (
        "SMs and copy/decoder/encoder/JPEG/OFA counts not read are taken from the "
        "same-family profile with the same compute and memory slices: Hopper from the "
        "H100 80GB HBM3 probe (every Hopper table read so far matches it row for row), "
        "the A100-80GB 1g.20gb engines from the A100-40GB 1g.10gb row."
    ),
    "not-supported": (
        "Profile indices 0..16 that the table does not list answer NOT_SUPPORTED and "
        "index 17 on answers INVALID_ARGUMENT, as the H100 80GB HBM3 probe on driver 580 "
        "measured (5, 6, 8, 10-16 NOT_SUPPORTED, 17 INVALID_ARGUMENT)."
    ),
    "memory-total": (
        "A total memory not read = the full-GPU (7g) profile's memory * 81559/81152 "
        "(the H100 80GB HBM3 probe's total over its 7g.80gb size), rounded to MiB."
    ),
}


class Pick:
    """What the reference does not settle for one model: which reference entry, which
    NVML name and PCI device ID, and why."""

    def __init__(
        self,
        key: str,
        reference_prefix: str,
        nvml_name: str,
        pci_device_id: Optional[str] = None,
        notes: Tuple[str, ...] = (),
    ) -> None:
        self.key = key
        self.reference_prefix = reference_prefix
        self.nvml_name = nvml_name
        self.pci_device_id = pci_device_id
        self.notes = notes


MODELS: Tuple[Pick, ...] = (
    Pick(
        "a100-sxm4-40gb",
        "A100-SXM4-40GB",
        "NVIDIA A100-SXM4-40GB",
        notes=("nvml_name: the current drivers' form (older drivers print 'A100-SXM4-40GB').",),
    ),
    Pick(
        "a100-80gb",
        "A100 80GB",
        "NVIDIA A100-SXM4-80GB",
        notes=(
            "nvml_name and pci_device_id: the SXM4 board (0x20B210DE); the PCIe board "
            "('NVIDIA A100 80GB PCIe', 0x20B510DE) shares the table.",
        ),
    ),
    Pick("a30-24gb", "A30 24GB", "NVIDIA A30"),
    Pick("h100-80gb-hbm3", "H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),
    Pick(
        "h100-pcie-80gb",
        "H100 PCIe 80GB",
        "NVIDIA H100 PCIe",
        "0x233110DE",
        notes=(
            "pci_device_id: 0x2331 is the H100 PCIe device ID (PCI ID database); it is in "
            "mig-parted's 80GB profile group; the reference did not read it.",
        ),
    ),
    Pick(
        "h100-nvl-94gb",
        "H100 NVL 94GB",
        "NVIDIA H100 NVL",
        notes=("pci_device_id: the first of mig-parted's 'H100 NVL, H800 NVL' pair.",),
    ),
    Pick(
        "h100-96gb",
        "H100 96GB",
        "NVIDIA GH200 480GB",
        "0x234210DE",
        notes=(
            "nvml_name: the H100 96GB of a GH200 superchip reports 'NVIDIA GH200 480GB' "
            "(the table's transcript is from a GH200 node).",
            "pci_device_id: the first ID of mig-parted's 96GB group; the Linux nvgrace-gpu "
            "VFIO table names 0x2342 'GH200 120GB' and 0x2345 'GH200 480GB', so a real "
            "board may report 0x2345.",
        ),
    ),
    Pick(
        "gh200-144gb",
        "GH200 144GB",
        "NVIDIA GH200 144G HBM3e",
        notes=("nvml_name: as the mig-parted/gpu-operator transcripts name the board.",),
    ),
    Pick(
        "h200-141gb",
        "H200 141GB",
        "NVIDIA H200",
        notes=("nvml_name and pci_device_id: the SXM board; H200 NVL shares the table.",),
    ),
    Pick(
        "rtx-pro-6000-blackwell",
        "RTX PRO 6000 Blackwell",
        "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        notes=(
            "nvml_name: the Server Edition, the data-center board of mig-parted's device "
            "ID 0x2BB510DE; the table was read on the Max-Q Workstation Edition, and a "
            "Server Edition reports the same 97887 MiB total.",
        ),
    ),
)

GI_FIELDS = ("sms", "copy_engines", "decoders", "encoders", "jpeg", "ofa")


def _find(reference: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    found = [m for m in reference["models"] if str(m["model"]).startswith(prefix)]
    if len(found) != 1:
        raise SystemExit(f"reference: {len(found)} models start with {prefix!r}; expected 1")
    return dict(found[0])


def _probe_row(probe: Dict[str, Any], compute: int, memory: int) -> Dict[str, Any]:
    """The H100 80GB HBM3 row with the same compute and memory slices (plain profiles)."""
    for gi in probe["gi_profiles"]:
        size = gi["placements"][0][1]
        if gi["slices"] == compute and size == memory and "+" not in gi["name"]:
            return dict(gi)
    raise SystemExit(f"probe table has no {compute}-compute/{memory}-memory-slice profile")


def _round128(value: float) -> int:
    return round(value / 128.0) * 128


def _memory_slices(gi: Dict[str, Any]) -> int:
    return int(gi["placements"][0][1])


def _fill_gi(
    gi: Dict[str, Any],
    model: Dict[str, Any],
    probe: Dict[str, Any],
    family: Dict[str, Any],
) -> Tuple[Dict[str, Any], List[str]]:
    """Copy a reference GI row and fill what it lacks; returns (row, filled fields)."""
    row = dict(gi)
    filled: List[str] = []
    mem_slices = _memory_slices(row)
    if row.get("memory_mib") is None:
        same = [
            g
            for g in model["gi_profiles"]
            if g is not gi and _memory_slices(g) == mem_slices and g.get("memory_mib")
        ]
        if same:
            row["memory_mib"] = int(same[0]["memory_mib"])
        else:
            two = [
                g for g in model["gi_profiles"] if _memory_slices(g) == 2 and g.get("memory_mib")
            ]
            if not two:
                raise SystemExit(f"{model['model']}: no 2-slice profile to scale from")
            ratio = _probe_row(probe, _compute_of(probe, mem_slices), mem_slices)["memory_mib"]
            base = _probe_row(probe, 2, 2)["memory_mib"]
            row["memory_mib"] = _round128(int(two[0]["memory_mib"]) * ratio / base)
        filled.append("memory_mib")
    for name in GI_FIELDS:
        if row.get(name) is None:
            source = family.get(name)
            if source is None:
                raise SystemExit(f"{model['model']} {row['name']}: no source for {name}")
            row[name] = int(source)
            filled.append(name)
    return row, filled


def _compute_of(probe: Dict[str, Any], mem_slices: int) -> int:
    """The compute slices of the probe's plain profile spanning ``mem_slices``."""
    rows = [
        g
        for g in probe["gi_profiles"]
        if g["placements"][0][1] == mem_slices and "+" not in g["name"] and g["index"] != 9
    ]
    return int(min(rows, key=lambda g: g["slices"])["slices"])


def _family_row(
    gi: Dict[str, Any], arch: str, probe: Dict[str, Any], a100_40: Dict[str, Any]
) -> Dict[str, Any]:
    """Where missing SMs/engines come from (rule gi-sms-engines)."""
    if arch == "hopper":
        return _probe_row(probe, int(gi["slices"]), _memory_slices(gi))
    if arch == "ampere":
        for row in a100_40["gi_profiles"]:
            if row["index"] == gi["index"]:
                return dict(row)
    return {}


def _ci_rows(gi: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The CI profiles of one GI: rule ci-set, merged with the reference's CI rows."""
    n = int(gi["slices"])
    gi_sms = int(gi["sms"])
    listed = {int(ci["id"]): ci for ci in gi.get("ci_profiles") or []}
    rows: List[Dict[str, Any]] = []
    sets = [(k, starts) for k, starts in CI_SETS[n]]
    full_id = CI_INDEX_BY_SLICES[n]
    if n == 1 and gi["index"] == GI_INDEX_1_SLICE_REV2:
        full_id = CI_INDEX_1_SLICE_REV1
    shapes = [(CI_INDEX_BY_SLICES[k], k, starts, f"{k}c.{gi['name']}") for k, starts in sets]
    shapes.append((full_id, n, (0,), str(gi["name"])))
    for ci_id, k, starts, name in shapes:
        ref = listed.pop(ci_id, None)
        inferred: List[str] = []
        if ref is None:
            inferred = ["presence", "max", "sms", "placements"]
            ref = {}
        else:
            inferred = list(ref.get("inferred_fields") or [])
        placements = ref.get("placements")
        if placements is None:
            placements = [[s, k] for s in starts]
            if "placements" not in inferred:
                inferred.append("placements")
        sms = ref.get("sms")
        if sms is None:
            sms = gi_sms * k // n
            if "sms" not in inferred:
                inferred.append("sms")
        ci_max = ref.get("max")
        if ci_max is None:
            ci_max = len(placements)
            if "max" not in inferred:
                inferred.append("max")
        if ref.get("name", name) != name:
            raise SystemExit(f"{gi['name']}: CI {ci_id} named {ref['name']!r}, rule says {name!r}")
        if ref and int(ref["slices"]) != k:
            raise SystemExit(f"{gi['name']}: CI {ci_id} has {ref['slices']} slices, rule says {k}")
        rows.append(
            {
                "id": ci_id,
                "name": name,
                "slices": k,
                "max": int(ci_max),
                "sms": int(sms),
                "placements": [[int(s), int(z)] for s, z in placements],
                "default": ci_id == full_id,
                "inferred": sorted(set(inferred)),
            }
        )
    if listed:
        raise SystemExit(f"{gi['name']}: reference CI IDs {sorted(listed)} fit no rule shape")
    rows.sort(key=lambda r: int(r["id"]))
    return rows


def _gi_rows(
    model: Dict[str, Any], arch: str, probe: Dict[str, Any], a100_40: Dict[str, Any]
) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    for gi in model["gi_profiles"]:
        family = _family_row(gi, arch, probe, a100_40)
        row, filled = _fill_gi(gi, model, probe, family)
        inferred = set(gi.get("inferred_fields") or []) | set(filled)
        if "engines" in inferred:
            # The reference's shorthand for the five engine counts.
            inferred.discard("engines")
            inferred.update(GI_FIELDS[1:])
        rows.append(
            {
                "index": int(row["index"]),
                "id": int(row["id"]),
                "name": str(row["name"]),
                "slices": int(row["slices"]),
                "memory_mib": int(row["memory_mib"]),
                "sms": int(row["sms"]),
                "max": int(row["max"]),
                "placements": [[int(s), int(z)] for s, z in row["placements"]],
                "copy_engines": int(row["copy_engines"]),
                "decoders": int(row["decoders"]),
                "encoders": int(row["encoders"]),
                "jpeg": int(row["jpeg"]),
                "ofa": int(row["ofa"]),
                "inferred": sorted(inferred),
                "ci_profiles": _ci_rows(row),
            }
        )
    rows.sort(key=lambda r: int(r["index"]))
    return rows


def _architecture(model: Dict[str, Any]) -> str:
    word = str(model["architecture"]).split()[0].lower()
    if word not in ARCH_CODES:
        raise SystemExit(f"{model['model']}: unknown architecture {model['architecture']!r}")
    return word


def build(reference: Dict[str, Any]) -> Dict[str, Any]:
    """The models.json document for ``reference`` (the parsed mig-profiles.json)."""
    probe = _find(reference, "H100 80GB HBM3")
    a100_40 = _find(reference, "A100-SXM4-40GB")
    out: Dict[str, Any] = {}
    for pick in MODELS:
        model = _find(reference, pick.reference_prefix)
        arch = _architecture(model)
        inferred: List[str] = []
        notes = list(pick.notes)
        if pick.pci_device_id is not None:
            pci = pick.pci_device_id
            inferred.append("pci_device_id")
        else:
            pci = str(model["pci_device_ids"][0])
        if pick.nvml_name != model.get("nvml_name"):
            inferred.append("nvml_name")
        slices = model["slices"]
        memory_slices = int(slices.get("placement_units", slices["memory"]))
        gis = _gi_rows(model, arch, probe, a100_40)
        memory_mib = model.get("memory_mib")
        if memory_mib is None:
            full = max(gis, key=lambda g: int(g["memory_mib"]))
            memory_mib = round(int(full["memory_mib"]) * 81559 / 81152)
            inferred.append("memory_mib")
        indices = {int(g["index"]) for g in gis}
        not_supported = [i for i in range(INVALID_FROM_INDEX) if i not in indices]
        stated = model.get("unsupported_profile_indices")
        if stated is not None and (
            stated["NOT_SUPPORTED"] != not_supported
            or stated["INVALID_ARGUMENT"] != [INVALID_FROM_INDEX]
        ):
            raise SystemExit(f"{model['model']}: stated unsupported indices differ from the rule")
        out[pick.key] = {
            "reference_model": model["model"],
            "nvml_name": pick.nvml_name,
            "pci_device_id": pci,
            "architecture": arch,
            "arch_code": ARCH_CODES[arch],
            "memory_mib": int(memory_mib),
            "memory_slices": memory_slices,
            "compute_slices": int(slices["compute"]),
            "not_supported_indices": not_supported,
            "invalid_from_index": INVALID_FROM_INDEX,
            "inferred": sorted(inferred),
            "notes": notes,
            "gi_profiles": gis,
        }
    return {
        "_about": (
            "Generated by tools/gen_models.py from the team's mig-profiles.json; do not edit. "
            "Fields named in an entry's 'inferred' list were not read from hardware; "
            "'rules' says how missing ones were filled."
        ),
        "rules": RULES,
        "models": out,
    }


def render(document: Dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=False) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the output file is not up to date"
    )
    args = parser.parse_args(argv)
    with args.reference.open(encoding="utf-8") as handle:
        reference = json.load(handle)
    text = render(build(reference))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run tools/gen_models.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(build(reference)['models'])} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
