"""migrestore's own config format (``version: 1``): text nodes -> ``Config``.

Rules:

1. The first rule that matches a GPU wins, and GPUs no rule matches are left alone.
2. Every key is known, typed and bounded; an error names file, line, key path and fix
   (through ``yaml_strict``).
3. Client unit names obey ``units.unit_name_problem``, the rule ``services`` applies
   before a name reaches systemctl, so a name ``validate`` accepts is one ``apply`` and
   the daemon can use. ``migrestore.service`` and ``nvidia-fabricmanager.service``
   are never clients (Fabric Manager is what lets an NVSwitch GPU be reset alone).
4. A config either lists ``gpus`` rules or references a mig-parted file
   (``mig-parted.file``), which is read through the reader ``files.load`` passes in.
5. Pure: no I/O of its own.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import yaml

from migrestore.config.fields import (
    MAX_COUNT,
    MAX_INDEX,
    MAX_SECONDS,
    MAX_SLICE,
    UUID_RE,
    Wanted,
    check_placements_unique,
    gi_profile,
    normalize_bus_id,
    read_device_id,
    split_profile,
)
from migrestore.config.migparted import MIG_PARTED_VERSION, referenced_mig_parted
from migrestore.config.yaml_strict import (
    FLOAT,
    INT,
    STR,
    Doc,
    Entries,
    Reader,
    at_index,
    check_keys,
    kind_of,
    node_line,
    read_bool,
    read_choice,
    read_int,
    read_mapping,
    read_one_or_list,
    read_scalar,
    read_seconds,
    read_seq,
    read_str,
    sub_key,
)
from migrestore.model import (
    DEFAULT_CLIENTS,
    DRIFT_IGNORE,
    DRIFT_RESTORE,
    DRIFT_WARN,
    RESET_ALLOW,
    RESET_NEVER,
    CdiRefresh,
    Config,
    DriftPolicy,
    GpuSpec,
    Hook,
    InstanceSpec,
    ResetPolicy,
    Rule,
    Selector,
)
from migrestore.units import unit_name_problem

NATIVE_VERSION = 1
SELECTOR_KINDS = ("index", "uuid", "pci-bus-id", "model", "device-id")


def _selector_value(doc: Doc, kind: str, node: yaml.Node, key: str) -> str:
    if kind == "index":
        return str(read_int(doc, node, key, 0, MAX_INDEX))
    if kind == "device-id":
        return read_device_id(doc, node, key)
    if kind == "pci-bus-id":
        # An unquoted 0000:18:00.0 reads as a YAML 1.1 base-60 number: use the text.
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (STR, INT, FLOAT):
            doc.fail(node, key, f"expected a PCI bus id, got {kind_of(node)}")
        text = str(node.value)
        bus = normalize_bus_id(text)
        if bus is None:
            doc.fail(
                node,
                key,
                f"{text!r} is not a PCI bus id",
                'write it as nvidia-smi prints it, e.g. "00000000:18:00.0"',
            )
        return bus
    if kind == "uuid":
        text = read_str(doc, node, key, "a GPU UUID")
        if text.startswith("MIG-"):
            doc.fail(
                node,
                key,
                f"{text!r} is a MIG device UUID",
                "select the GPU by its GPU-... UUID, as nvidia-smi -L prints it",
            )
        if not UUID_RE.fullmatch(text):
            doc.fail(node, key, f"{text!r} is not a GPU UUID", "copy it from nvidia-smi -L")
        return text
    return read_str(doc, node, key, "a model name or glob")


def _match(doc: Doc, node: yaml.Node, key: str) -> Tuple[Selector, ...]:
    fix = 'write "match: all", or a mapping such as match: {model: "NVIDIA H100*"}'
    if isinstance(node, yaml.ScalarNode):
        if node.tag == STR and node.value == "all":
            return (Selector("all"),)
        doc.fail(node, key, f"expected 'all' or a mapping of selectors, got {kind_of(node)}", fix)
    entries = read_mapping(doc, node, key, "'all' or a mapping of selectors")
    if not entries:
        doc.fail(node, key, "an empty match", fix)
    check_keys(doc, node, entries, key, SELECTOR_KINDS)
    selectors: List[Selector] = []
    for kind, (_knode, vnode) in entries.items():
        values: List[str] = []
        for item, item_key in read_one_or_list(doc, vnode, sub_key(key, kind)):
            value = _selector_value(doc, kind, item, item_key)
            if value not in values:
                values.append(value)
        selectors.append(Selector(kind, tuple(values)))
    return tuple(selectors)


def _compute(doc: Doc, node: yaml.Node, key: str, gi: str) -> Optional[Tuple[str, ...]]:
    """The CI profile names; None for ``compute: []`` (a GI without compute instances)."""
    items = read_seq(doc, node, key, "a list of compute-instance profiles")
    if not items:
        return None
    names: List[str] = []
    used = 0
    gi_slices = 0
    for i, item in enumerate(items):
        item_key = at_index(key, i)
        name = read_str(doc, item, item_key, "a compute-instance profile name")
        split = split_profile(name)
        if split is None:
            doc.fail(item, item_key, f"{name!r} is not a profile name", f"e.g. 1c.{gi} or {gi}")
        if split.gi != gi:
            fix = f"write {split.ci_slices}c.{gi}" if split.ci_slices < split.gi_slices else ""
            doc.fail(item, item_key, f"{name!r} is not a compute-instance profile of {gi}", fix)
        gi_slices = split.gi_slices
        used += split.ci_slices
        if used > gi_slices:
            doc.fail(
                item,
                item_key,
                f"the compute instances need {used} compute slices, a {gi} GI has {gi_slices}",
                "remove compute instances or use smaller ones",
            )
        names.append(split.ci)
    if len(names) == 1 and names[0] == gi:
        return ()  # the default: one CI covering the GI
    return tuple(names)


def _instances(doc: Doc, node: yaml.Node, key: str) -> List[Wanted]:
    out: List[Wanted] = []
    for j, entry in enumerate(read_seq(doc, node, key, "a list of instances")):
        ekey = at_index(key, j)
        entries = read_mapping(doc, entry, ekey, "an instance mapping such as {profile: 1g.10gb}")
        check_keys(
            doc,
            entry,
            entries,
            ekey,
            ("profile", "count", "placement", "compute"),
            ("profile",),
            {"profile": "add 'profile:', e.g. profile: 1g.10gb"},
        )
        profile = gi_profile(doc, entries["profile"][1], sub_key(ekey, "profile"))
        count: Optional[int] = None
        if "count" in entries:
            count = read_int(
                doc,
                entries["count"][1],
                sub_key(ekey, "count"),
                1,
                MAX_COUNT,
                low_fix="remove the entry to have none",
            )
        starts: List[Optional[int]] = []
        placement_node: Optional[yaml.Node] = None
        if "placement" in entries:
            placement_node = entries["placement"][1]
            pkey = sub_key(ekey, "placement")
            fix = "a start slice, or a list of start slices when count > 1"
            if isinstance(placement_node, yaml.SequenceNode):
                items = read_seq(doc, placement_node, pkey)
                if not items:
                    doc.fail(placement_node, pkey, "an empty list", fix)
                for i, item in enumerate(items):
                    start = read_int(doc, item, at_index(pkey, i), 0, MAX_SLICE, fix)
                    if start in starts:
                        doc.fail(
                            item,
                            at_index(pkey, i),
                            f"placement {start} is given twice for {profile}",
                            "each instance needs its own start slice",
                        )
                    starts.append(start)
                if count is None:
                    count = len(starts)
                elif count != len(starts):
                    doc.fail(
                        placement_node,
                        pkey,
                        f"{len(starts)} start slices for count {count}",
                        "give one start per instance",
                    )
            else:
                start = read_int(doc, placement_node, pkey, 0, MAX_SLICE, fix)
                if count is not None and count > 1:
                    doc.fail(
                        placement_node,
                        pkey,
                        f"one start slice for count {count}",
                        f"give a list of {count} starts, e.g. [0, 1]",
                    )
                starts.append(start)
        if count is None:
            count = 1
        if not starts:
            starts = [None] * count
        compute: Optional[Tuple[str, ...]] = ()
        if "compute" in entries:
            compute = _compute(doc, entries["compute"][1], sub_key(ekey, "compute"), profile)
        for where in starts:
            out.append(
                Wanted(
                    InstanceSpec(
                        profile=profile,
                        placement=where,
                        compute=compute or (),
                        no_compute=compute is None,
                        line=node_line(entry),
                        key=ekey,
                    ),
                    entry,
                    ekey,
                    placement_node,
                )
            )
    return out


# The whole device node and CDI refresh runs in a pass, which the watching daemon does not
# interrupt with watchdog pings: keep it well inside the unit's WatchdogSec=5min.
CDI_TIMEOUT_MAX = 240.0

TOP_KEYS = (
    "version",
    "clients",
    "client-timeout",
    "driver-wait",
    "ampere-reset",
    "drift",
    "hooks",
    "metrics",
    "cdi",
    "gpus",
    "mig-parted",
)
_HOOK_POINTS = ("post-apply",)


def _clients(doc: Doc, node: yaml.Node, key: str) -> Tuple[str, ...]:
    units: List[str] = []
    for i, item in enumerate(read_seq(doc, node, key, "a list of systemd units")):
        item_key = at_index(key, i)
        unit = read_str(doc, item, item_key, "a systemd unit name")
        bad = unit_name_problem(unit)
        if bad is not None:
            doc.fail(
                item, item_key, f"{unit!r} is not a systemd unit name: it {bad.problem}", bad.fix
            )
        if unit == "migrestore.service":
            doc.fail(item, item_key, "migrestore cannot stop itself", "remove it from clients")
        if unit == "nvidia-fabricmanager.service":
            doc.fail(
                item,
                item_key,
                "Fabric Manager is never stopped: without it an Ampere NVSwitch GPU cannot "
                "be reset alone (nvidia-smi(1))",
                "remove it from clients",
            )
        if unit in units:
            doc.fail(item, item_key, f"{unit} is listed twice", "remove one")
        units.append(unit)
    return tuple(units)


def _hook(doc: Doc, node: yaml.Node, key: str) -> Hook:
    entries = read_mapping(doc, node, key, "a hook mapping such as {argv: [/usr/bin/true]}")
    check_keys(doc, node, entries, key, ("argv", "timeout"), ("argv",))
    argv_node = entries["argv"][1]
    argv_key = sub_key(key, "argv")
    items = read_seq(doc, argv_node, argv_key, "a list: the program and its arguments")
    if not items:
        doc.fail(argv_node, argv_key, "an empty argv", "give the program's absolute path first")
    argv: List[str] = []
    for i, item in enumerate(items):
        item_key = at_index(argv_key, i)
        if not isinstance(item, yaml.ScalarNode) or item.tag != STR:
            doc.fail(item, item_key, f"expected a string, got {kind_of(item)}", "quote it")
        argv.append(str(item.value))
    if not argv[0].startswith("/"):
        doc.fail(
            items[0],
            at_index(argv_key, 0),
            f"{argv[0]!r} is not an absolute path",
            "hooks run with no shell and no PATH: write e.g. /usr/local/bin/regen-gres",
        )
    timeout = 60.0
    if "timeout" in entries:
        timeout = read_seconds(doc, entries["timeout"][1], sub_key(key, "timeout"), 1.0, 3600.0)
    return Hook(argv=tuple(argv), timeout=timeout, line=node_line(node))


def _hooks(doc: Doc, node: yaml.Node, key: str) -> Tuple[Hook, ...]:
    entries = read_mapping(doc, node, key)
    check_keys(doc, node, entries, key, _HOOK_POINTS)
    hooks: List[Hook] = []
    for point, (_knode, vnode) in entries.items():
        pkey = sub_key(key, point)
        for i, item in enumerate(read_seq(doc, vnode, pkey, "a list of hooks")):
            hooks.append(_hook(doc, item, at_index(pkey, i)))
    return tuple(hooks)


def _metrics(doc: Doc, node: yaml.Node, key: str) -> Optional[str]:
    """``metrics.textfile``: an absolute path ending in ``.prom``, or null (off);
    ``""`` when the key is absent (the default path)."""
    entries = read_mapping(doc, node, key, "a mapping such as {textfile: null}")
    check_keys(doc, node, entries, key, ("textfile",))
    if "textfile" not in entries:
        return ""
    vnode = entries["textfile"][1]
    vkey = sub_key(key, "textfile")
    value = read_scalar(doc, vnode, vkey)
    if value is None:
        return None
    fix = "write an absolute path ending in .prom, or null to write no metrics"
    if not isinstance(value, str) or not value:
        doc.fail(vnode, vkey, f"expected a file path or null, got {kind_of(vnode)}", fix)
    if not os.path.isabs(value) or not value.endswith(".prom"):
        doc.fail(vnode, vkey, f"{value!r} is not an absolute path ending in .prom", fix)
    return value


def _rule(doc: Doc, node: yaml.Node, key: str) -> Rule:
    entries = read_mapping(doc, node, key, "a rule mapping with match and mig")
    check_keys(
        doc,
        node,
        entries,
        key,
        ("match", "mig", "instances"),
        ("match", "mig"),
        {
            "match": "add 'match: all', or a mapping of selectors",
            "mig": "add 'mig: true' or 'mig: false'",
        },
    )
    selectors = _match(doc, entries["match"][1], sub_key(key, "match"))
    mig = read_bool(doc, entries["mig"][1], sub_key(key, "mig"))
    wanted: List[Wanted] = []
    if "instances" in entries:
        knode, vnode = entries["instances"]
        ikey = sub_key(key, "instances")
        if not mig:
            doc.fail(
                knode,
                ikey,
                "a rule with mig: false cannot list instances",
                "remove instances, or set mig: true",
            )
        wanted = _instances(doc, vnode, ikey)
        check_placements_unique(doc, wanted)
    line = node_line(node)
    spec = GpuSpec(
        mig=mig,
        instances=tuple(w.spec for w in wanted),
        source=f"{doc.path}:{line}",
    )
    return Rule(match=selectors, spec=spec, line=line)


def native_config(
    doc: Doc,
    root: yaml.Node,
    entries: Entries,
    select: Optional[str],
    reader: Optional[Reader],
) -> Config:
    check_keys(
        doc,
        root,
        entries,
        "",
        TOP_KEYS,
        ("version",),
        {"version": "start the file with 'version: 1'"},
    )
    vnode = entries["version"][1]
    version = read_scalar(doc, vnode, "version")
    if not isinstance(version, int) or isinstance(version, bool) or version != NATIVE_VERSION:
        fix = "write 'version: 1'"
        if version == MIG_PARTED_VERSION:
            fix = "mig-parted files say version: v1 and need 'mig-configs:'; migrestore's own format says 'version: 1'"
        doc.fail(vnode, "version", f"unsupported version {version!r}", fix)

    def get(name: str) -> Optional[yaml.Node]:
        return entries[name][1] if name in entries else None

    clients = DEFAULT_CLIENTS
    node = get("clients")
    if node is not None:
        clients = _clients(doc, node, "clients")
    unit_timeout = 90.0
    node = get("client-timeout")
    if node is not None:
        unit_timeout = read_seconds(doc, node, "client-timeout", 1.0, 3600.0)
    driver_wait = 120.0
    node = get("driver-wait")
    if node is not None:
        driver_wait = read_seconds(doc, node, "driver-wait", 0.0, 3600.0)
    ampere_reset: str = RESET_ALLOW
    node = get("ampere-reset")
    if node is not None:
        ampere_reset = read_choice(doc, node, "ampere-reset", (RESET_ALLOW, RESET_NEVER))
    drift_policy: str = DRIFT_RESTORE
    drift_interval = 60.0
    node = get("drift")
    if node is not None:
        drift = read_mapping(doc, node, "drift")
        check_keys(doc, node, drift, "drift", ("policy", "interval"))
        if "policy" in drift:
            drift_policy = read_choice(
                doc, drift["policy"][1], "drift.policy", (DRIFT_RESTORE, DRIFT_WARN, DRIFT_IGNORE)
            )
        if "interval" in drift:
            drift_interval = read_seconds(
                doc, drift["interval"][1], "drift.interval", 1.0, MAX_SECONDS
            )
    hooks: Tuple[Hook, ...] = ()
    node = get("hooks")
    if node is not None:
        hooks = _hooks(doc, node, "hooks")
    metrics_textfile: Optional[str] = ""
    node = get("metrics")
    if node is not None:
        metrics_textfile = _metrics(doc, node, "metrics")

    cdi_refresh: str = CdiRefresh.AUTO.value
    cdi_timeout = 60.0
    node = get("cdi")
    if node is not None:
        cdi = read_mapping(doc, node, "cdi")
        check_keys(doc, node, cdi, "cdi", ("refresh", "timeout"))
        if "refresh" in cdi:
            cdi_refresh = read_choice(
                doc, cdi["refresh"][1], "cdi.refresh", tuple(c.value for c in CdiRefresh)
            )
        if "timeout" in cdi:
            cdi_timeout = read_seconds(doc, cdi["timeout"][1], "cdi.timeout", 1.0, CDI_TIMEOUT_MAX)

    if "gpus" in entries and "mig-parted" in entries:
        doc.fail(
            entries["mig-parted"][0],
            "mig-parted",
            "a config has either gpus or mig-parted, not both",
            "remove one of them",
        )
    selected: Optional[str] = None
    if "gpus" in entries:
        if select is not None:
            doc.fail_line(
                None,
                "select",
                f"--select {select} applies to mig-parted files; this is a native migrestore file",
                "drop --select",
            )
        gpus_node = entries["gpus"][1]
        items = read_seq(doc, gpus_node, "gpus", "a list of rules")
        rules = tuple(_rule(doc, item, at_index("gpus", i)) for i, item in enumerate(items))
    elif "mig-parted" in entries:
        rules, selected = referenced_mig_parted(doc, entries["mig-parted"][1], select, reader)
    else:
        doc.fail(
            root,
            "gpus",
            "missing: the config declares no GPUs",
            "add 'gpus:' rules, 'gpus: []' to change nothing, or 'mig-parted:'",
        )
    return Config(
        path=doc.path,
        rules=rules,
        clients=clients,
        drift_policy=DriftPolicy(drift_policy),
        drift_interval=drift_interval,
        ampere_reset=ResetPolicy(ampere_reset),
        driver_wait=driver_wait,
        hooks=hooks,
        selected=selected,
        unit_timeout=unit_timeout,
        metrics_textfile=metrics_textfile,
        cdi_refresh=CdiRefresh(cdi_refresh),
        cdi_timeout=cdi_timeout,
    )
