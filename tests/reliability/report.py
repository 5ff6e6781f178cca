"""The tables of docs/RELIABILITY.md, from what the tests publish.

    MIGRESTORE_RELIABILITY_OUT=/tmp/rel python3 -m pytest tests/reliability
    python3 -m tests.reliability.report /tmp/rel

Rules: it reads only the JSON files the tests write (``matrix.publish``) and prints
Markdown; nothing is measured here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

from tests.reliability.matrix import Record, render, successes
from tests.reliability.scenarios import ERRORS


def load(directory: Path, prefix: str) -> List[Dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob(f"{prefix}*.json"))]


def fault_matrix(directory: Path) -> str:
    payloads = load(directory, "fault_matrix-")
    if not payloads:
        return "no fault matrix results\n"
    records = [Record(**r) for p in payloads for r in p["records"]]
    reached = [r for r in records if r.reached]
    lines = [
        f"Mode: {'every call position' if all(p['full'] for p in payloads) else 'sampled positions'}.",
        "",
        "| scenario | NVML calls fault-free | runs | passed | not reached |",
        "|---|---|---|---|---|",
    ]
    for p in payloads:
        mine = [Record(**r) for r in p["records"]]
        runs = [r for r in mine if r.reached]
        lines.append(
            f"| {p['scenario']} | {sum(p['calls'].values())} | {len(runs)} | "
            f"{sum(r.passed for r in runs)} | {len(mine) - len(runs)} |"
        )
    lines += [
        "",
        "Runs passed / runs, by scenario and injected error:",
        "",
        render(records, ERRORS),
    ]
    lines += [
        "",
        f"All: {sum(r.passed for r in reached)} / {len(reached)} runs passed; "
        f"clean successes: {successes(records) or 'none'}.",
    ]
    failed = [r for r in reached if not r.passed]
    for r in failed[:30]:
        lines.append(
            f"- FAILED {r.scenario}: {r.error} on call {r.nth} of {r.function}: {r.problems}"
        )
    return "\n".join(lines) + "\n"


def crashes(directory: Path) -> str:
    payloads = load(directory, "crash-")
    if not payloads:
        return "no crash results\n"
    lines = ["| scenario | NVML changes | kills | passed |", "|---|---|---|---|"]
    total = [0, 0]
    for p in payloads:
        records = [Record(**r) for r in p["records"]]
        passed = sum(r.passed for r in records)
        total[0] += len(records)
        total[1] += passed
        lines.append(f"| {p['scenario']} | {p['changes']} | {len(records)} | {passed} |")
    lines.append(f"| all | | {total[0]} | {total[1]} |")
    return "\n".join(lines) + "\n"


def load_run(directory: Path) -> str:
    out = []
    for p in load(directory, "watch-load"):
        rss = p["rss_kib"]
        out.append(
            f"{p['ticks']} ticks; RSS {rss[0]} KiB at the first, {rss[-1]} KiB at the last; "
            f"growth after warm-up {p['growth_mib']:.2f} MiB; slope {p['slope_kib']:.2f} KiB/tick"
        )
    for p in load(directory, "concurrency"):
        out.append(f"change log by process: {p['runs']} ({p['change_count']} changes)")
    return "\n".join(out) + "\n"


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python3 -m tests.reliability.report DIR\n")
        return 2
    directory = Path(argv[0])
    sys.stdout.write("## Fault matrix\n\n" + fault_matrix(directory))
    sys.stdout.write("\n## Crash consistency\n\n" + crashes(directory))
    sys.stdout.write("\n## Concurrency and load\n\n" + load_run(directory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
