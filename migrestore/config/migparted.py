"""mig-parted config files (``version: v1``, ``mig-configs:``) -> rules with mig-parted's meaning.

Rules:

1. One config of the file is used: the one ``--select`` (or ``mig-parted.select``) names,
   or the only one in the file.
2. mig-parted applies every matching entry in turn, so its last matching entry wins;
   with migrestore's first-match-wins rules, the entries become rules in reverse order.
3. ``mig-devices`` become GPU instances: a GI-level name is one GI with its default CI;
   CI-level names of one GI profile are packed first-fit (largest first) into as few GIs
   as fit, as mig-parted keeps adding CIs to the GI it created last until it is full.
4. Pure: a file a native config references is read through the reader ``files.load``
   passes in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import yaml

from migrestore.config.fields import (
    MAX_COUNT,
    MAX_INDEX,
    ProfileName,
    Wanted,
    catalog,
    check_ci_known,
    check_gi_known,
    check_layout,
    read_device_id,
    split_profile,
)
from migrestore.config.yaml_strict import (
    STR,
    Doc,
    Entries,
    Reader,
    at_index,
    check_keys,
    close_matches,
    compose,
    kind_of,
    node_line,
    read_bool,
    read_int,
    read_mapping,
    read_one_or_list,
    read_scalar,
    read_seq,
    read_str,
    sub_key,
)
from migrestore.errors import ConfigError
from migrestore.model import GpuSpec, InstanceSpec, Rule, Selector

MIG_PARTED_VERSION = "v1"


def referenced_mig_parted(
    doc: Doc, node: yaml.Node, select: Optional[str], reader: Optional[Reader]
) -> Tuple[Tuple[Rule, ...], str]:
    entries = read_mapping(doc, node, "mig-parted")
    check_keys(
        doc,
        node,
        entries,
        "mig-parted",
        ("file", "select"),
        ("file",),
        {"file": "add 'file:' with the mig-parted config's absolute path"},
    )
    file_node = entries["file"][1]
    path = read_str(doc, file_node, "mig-parted.file", "a file path")
    if not path.startswith("/"):
        doc.fail(
            file_node, "mig-parted.file", f"{path!r} is not an absolute path", "write /etc/..."
        )
    if select is None and "select" in entries:
        select = read_str(doc, entries["select"][1], "mig-parted.select", "a config name")
    if reader is None:
        doc.fail(
            file_node,
            "mig-parted.file",
            "parse() reads no files; a config that references a mig-parted file needs load()",
        )
    try:
        text = reader(path)
    except ConfigError as exc:
        doc.fail(file_node, "mig-parted.file", f"{path}: {exc.problem}", exc.fix)
    ref = Doc(path)
    root = compose(ref, text)
    ref_entries = read_mapping(ref, root, "", "a mapping")
    if "mig-configs" not in ref_entries:
        doc.fail(
            file_node,
            "mig-parted.file",
            f"{path} is not a mig-parted config (it has no mig-configs)",
            "point it at a file with 'version: v1' and 'mig-configs:'",
        )
    return mig_parted_rules(ref, root, ref_entries, select)


@dataclass(frozen=True)
class _MpEntry:
    node: yaml.Node
    key: str
    selectors: Tuple[Selector, ...]
    enabled: bool
    devices: Tuple[Tuple[str, int, yaml.Node], ...]  # (profile name, count > 0, key node)
    filtered: bool  # has a device-filter
    device_ids: Tuple[int, ...]


def _mp_entry(doc: Doc, node: yaml.Node, key: str) -> _MpEntry:
    entries = read_mapping(doc, node, key, "an entry with devices and mig-enabled")
    check_keys(
        doc,
        node,
        entries,
        key,
        ("devices", "device-filter", "mig-enabled", "mig-devices"),
        ("devices", "mig-enabled"),
    )
    dnode = entries["devices"][1]
    dkey = sub_key(key, "devices")
    selectors: List[Selector] = []
    if isinstance(dnode, yaml.ScalarNode):
        if dnode.tag != STR or dnode.value != "all":
            doc.fail(dnode, dkey, f"expected 'all' or a list of GPU indexes, got {kind_of(dnode)}")
        selectors.append(Selector("all"))
    else:
        items = read_seq(doc, dnode, dkey, "'all' or a list of GPU indexes")
        if not items:
            doc.fail(dnode, dkey, "an empty list matches no GPU", "list GPU indexes, or write all")
        indexes: List[str] = []
        for i, item in enumerate(items):
            value = str(read_int(doc, item, at_index(dkey, i), 0, MAX_INDEX))
            if value not in indexes:
                indexes.append(value)
        selectors.append(Selector("index", tuple(indexes)))
    device_ids: List[int] = []
    if "device-filter" in entries:
        fkey = sub_key(key, "device-filter")
        values: List[str] = []
        for item, item_key in read_one_or_list(doc, entries["device-filter"][1], fkey):
            value = read_device_id(doc, item, item_key)
            if value not in values:
                values.append(value)
                device_ids.append(int(value, 16))
        selectors.append(Selector("device-id", tuple(values)))
    enabled = read_bool(doc, entries["mig-enabled"][1], sub_key(key, "mig-enabled"))
    devices: List[Tuple[str, int, yaml.Node]] = []
    mkey = sub_key(key, "mig-devices")
    if "mig-devices" in entries:
        mnode = entries["mig-devices"][1]
        for name, (knode, vnode) in read_mapping(doc, mnode, mkey).items():
            pkey = sub_key(mkey, name)
            if split_profile(name) is None:
                doc.fail(
                    knode,
                    pkey,
                    f"{name!r} is not a MIG profile name",
                    "write it as [<C>c.]<G>g.<GB>gb[+attr], e.g. 1g.10gb or 1c.3g.40gb",
                )
            count = read_int(doc, vnode, pkey, 0, MAX_COUNT)
            if count:
                devices.append((name, count, knode))
        if not enabled and devices:
            doc.fail(
                mnode,
                mkey,
                "mig-enabled is false but mig-devices lists devices",
                "write mig-devices: {}, or set mig-enabled: true",
            )
    elif enabled:
        doc.fail(
            node,
            mkey,
            "missing: mig-enabled: true needs mig-devices",
            "list the devices, or write mig-devices: {} for MIG on with no instances",
        )
    return _MpEntry(
        node=node,
        key=key,
        selectors=tuple(selectors),
        enabled=enabled,
        devices=tuple(devices),
        filtered="device-filter" in entries,
        device_ids=tuple(device_ids),
    )


def _mp_instances(doc: Doc, entry: _MpEntry) -> List[Wanted]:
    """mig-devices -> GIs. A GI-level name is one GI with its default CI; CI-level names
    of one GI profile are packed first-fit (largest first) into as few GIs as fit, as
    mig-parted keeps adding CIs to the GI it created last until that GI is full."""
    checked = not entry.filtered or any(d in catalog().device_ids for d in entry.device_ids)
    out: List[Wanted] = []
    cis: Dict[str, List[Tuple[ProfileName, yaml.Node]]] = {}  # GI name -> CIs, file order
    for name, count, knode in entry.devices:
        key = sub_key(sub_key(entry.key, "mig-devices"), name)
        split = split_profile(name)
        if split is None:  # _mp_entry checked the grammar
            continue
        if checked:
            check_gi_known(doc, knode, key, split.gi)
            check_ci_known(doc, knode, key, split)
        if split.full:
            out.extend(Wanted(InstanceSpec(profile=split.gi), knode, key) for _ in range(count))
        else:
            cis.setdefault(split.gi, []).extend([(split, knode)] * count)
    for gi, singles in cis.items():
        singles = sorted(singles, key=lambda pair: -pair[0].ci_slices)  # stable on ties
        packed: List[List[Tuple[ProfileName, yaml.Node]]] = []
        for split, knode in singles:
            for group in packed:
                if sum(s.ci_slices for s, _ in group) + split.ci_slices <= split.gi_slices:
                    group.append((split, knode))
                    break
            else:
                packed.append([(split, knode)])
        for group in packed:
            key = sub_key(sub_key(entry.key, "mig-devices"), group[0][0].ci)
            spec = InstanceSpec(profile=gi, compute=tuple(s.ci for s, _ in group))
            out.append(Wanted(spec, group[0][1], key))
    if checked:
        check_layout(doc, entry.node, sub_key(entry.key, "mig-devices"), out, entry.selectors)
    return out


def mig_parted_rules(
    doc: Doc, root: yaml.Node, entries: Entries, select: Optional[str]
) -> Tuple[Tuple[Rule, ...], str]:
    """The rules of the selected config of a mig-parted file, and its name."""
    check_keys(
        doc,
        root,
        entries,
        "",
        ("version", "mig-configs"),
        ("version", "mig-configs"),
        {"version": "a mig-parted file starts with 'version: v1'"},
    )
    vnode = entries["version"][1]
    version = read_scalar(doc, vnode, "version")
    if version != MIG_PARTED_VERSION:
        doc.fail(
            vnode, "version", f"unsupported mig-parted version {version!r}", "write 'version: v1'"
        )
    cnode = entries["mig-configs"][1]
    configs = read_mapping(doc, cnode, "mig-configs", "a mapping of config names")
    if not configs:
        doc.fail(cnode, "mig-configs", "no configs", "add at least one named config")
    parsed: Dict[str, List[_MpEntry]] = {}
    for label, (_knode, lnode) in configs.items():
        lkey = sub_key("mig-configs", label)
        items = read_seq(doc, lnode, lkey, "a list of entries")
        if not items:
            doc.fail(lnode, lkey, "an empty config", "add at least one entry")
        parsed[label] = [_mp_entry(doc, item, at_index(lkey, i)) for i, item in enumerate(items)]
    labels = list(parsed)
    if select is None:
        if len(labels) > 1:
            doc.fail(
                cnode,
                "mig-configs",
                f"the file holds {len(labels)} configs and none is selected",
                f"choose one with --select NAME or mig-parted.select: {', '.join(labels)}",
            )
        select = labels[0]
    if select not in parsed:
        close = close_matches(select, labels, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        doc.fail(
            cnode,
            "mig-configs",
            f"no config named {select!r}",
            f"{hint}configs in this file: {', '.join(labels)}",
        )
    rules: List[Rule] = []
    for entry in parsed[select]:
        wanted = _mp_instances(doc, entry) if entry.enabled else []
        line = node_line(entry.node)
        spec = GpuSpec(
            mig=entry.enabled,
            instances=tuple(w.spec for w in wanted),
            source=f"{doc.path}:{line}",
        )
        rules.append(Rule(match=entry.selectors, spec=spec, line=line))
    # mig-parted applies every matching entry in turn, so the last one wins; with
    # first-match-wins rules, that is the entries in reverse order.
    rules.reverse()
    return tuple(rules), select
