"""Feasibility of a config against a model's table, with no GPU at all.

Rules:

1. Pure (tables are package data); every rule that could match a GPU of the model is
   checked with the same solver the planner uses, so ``validate --model`` and ``apply``
   agree.
2. The table is given by the caller (``backend.model_table``): migrestore's bundled one
   when it ships the model, else the simulator's (every model the simulator knows, some
   values inferred by rules ``docs/SIMULATOR.md`` lists), and the output says which. On
   a machine with GPUs neither is used: the GPU is the authority.
"""

from __future__ import annotations

import fnmatch
from typing import List

from migrestore import placement, tables
from migrestore.config import check_rule, parse_device_filter
from migrestore.errors import InfeasibleError
from migrestore.model import Config, Rule, Selector


def _may_match(selector: Selector, table: tables.ModelTable) -> bool:
    """Whether a selector can match some GPU of this model (index/uuid/bus id: yes)."""
    if selector.kind == "model":
        return any(fnmatch.fnmatchcase(table.nvml_name, v) for v in selector.values)
    if selector.kind == "device-id":
        # The subsystem id of a model is not in its table: a filter naming one may match.
        return any(
            (found := parse_device_filter(v.strip())) is not None
            and found[0] == table.pci_device_id
            for v in selector.values
        )
    return True


def _rule_applies(rule: Rule, table: tables.ModelTable) -> bool:
    return all(_may_match(s, table) for s in rule.match)


def against_model(cfg: Config, model_name: str, table: tables.ModelTable, kind: str) -> List[str]:
    """Check every rule that can match ``model_name`` (whose table is ``table``, ``kind``
    saying which, rule 2); return one line per rule.

    Raises:
        InfeasibleError: a rule's layout cannot exist on this model.
    """
    lines: List[str] = []
    gpu = f"{model_name} ({kind})"
    for number, rule in enumerate(cfg.rules):
        where = f"rule {number + 1}" + (f" (line {rule.line})" if rule.line else "")
        if not _rule_applies(rule, table):
            lines.append(f"{where}: does not match {table.nvml_name}; skipped")
            continue
        spec = rule.spec
        if not spec.mig:
            lines.append(f"{where}: MIG off")
            continue
        source = spec.source or (f"{cfg.path}:{rule.line}" if rule.line else cfg.path)
        check_rule(cfg, rule, table.profiles, f"model {model_name} ({kind})")
        try:
            solved = placement.solve_gis(gpu, table.profiles, (), spec.instances)
        except InfeasibleError as exc:
            raise InfeasibleError(gpu, exc.reason, source) from None
        for inst, where_gi, _kept in solved:
            if inst.compute:
                prof = next(p for p in table.profiles if p.name == inst.profile)
                try:
                    placement.solve_cis(gpu, prof, (), inst.compute)
                except InfeasibleError as exc:
                    raise InfeasibleError(
                        gpu, f"{inst.profile} at {where_gi}: {exc.reason}", source
                    ) from None
        layout = ", ".join(f"{inst.profile}@{where_gi}" for inst, where_gi, _ in solved)
        lines.append(f"{where}: feasible: {layout or 'MIG on, no instances'}")
    return lines
