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
    split_profile,
)
from migrestore.config.yaml_strict import (
    NULL,
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
    fix = "point mig-parted.file at a file with 'version: v1' and 'mig-configs:'"
    if not isinstance(root, yaml.MappingNode) or not any(
        isinstance(k, yaml.ScalarNode) and k.tag == STR and k.value == "mig-configs"
        for k, _ in root.value
    ):
        doc.fail(
            file_node,
            "mig-parted.file",
            f"{path} is not a mig-parted config (no 'mig-configs:' at its top level; "
            "its content is not shown)",
            fix,
        )
    ref_entries = read_mapping(ref, root, "", "a mapping")
    return mig_parted_rules(ref, root, ref_entries, select)


@dataclass(frozen=True)
class _MpEntry:
    node: yaml.Node
    key: str
    selectors: Tuple[Selector, ...]
    enabled: bool
    devices: Tuple[Tuple[str, int, yaml.Node], ...]  # (profile name, count > 0, key node)


_NOTHING = Selector("index", ())  # devices: [] -- mig-parted matches no GPU


def _device_filter(doc: Doc, node: yaml.Node, key: str) -> Optional[Selector]:
    """mig-parted's ``device-filter``: a string or a list of strings. ``""`` and ``[]``
    filter nothing (None). A string mig-parted cannot read as a device id is kept: it
    matches no GPU, as in mig-parted. A YAML number is refused, as mig-parted refuses it."""
    fix = 'quote it: device-filter: "0x233010DE"'
    if isinstance(node, yaml.SequenceNode):
        items = [(item, at_index(key, i)) for i, item in enumerate(read_seq(doc, node, key))]
    else:
        items = [(node, key)]
    values: List[str] = []
    for item, item_key in items:
        if not isinstance(item, yaml.ScalarNode) or item.tag != STR:
            doc.fail(item, item_key, f"expected a quoted device id, got {kind_of(item)}", fix)
        text = str(item.value)
        if text == "" and not isinstance(node, yaml.SequenceNode):
            return None
        if text not in values:
            values.append(text)
    if not values:
        return None
    return Selector("device-id", tuple(values))


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
        indexes: List[str] = []
        for i, item in enumerate(read_seq(doc, dnode, dkey, "'all' or a list of GPU indexes")):
            value = str(read_int(doc, item, at_index(dkey, i), 0, MAX_INDEX))
            if value not in indexes:
                indexes.append(value)
        selectors.append(Selector("index", tuple(indexes)) if indexes else _NOTHING)
    if "device-filter" in entries:
        found = _device_filter(doc, entries["device-filter"][1], sub_key(key, "device-filter"))
        if found is not None:
            selectors.append(found)
    enabled = read_bool(doc, entries["mig-enabled"][1], sub_key(key, "mig-enabled"))
    devices: List[Tuple[str, int, yaml.Node]] = []
    mkey = sub_key(key, "mig-devices")
    mnode = entries["mig-devices"][1] if "mig-devices" in entries else None
    if mnode is not None and isinstance(mnode, yaml.ScalarNode) and mnode.tag == NULL:
        mnode = None  # "mig-devices:" with nothing: null, as mig-parted's own writer puts it
    if mnode is not None:
        counts = read_mapping(doc, mnode, mkey)
        for name, (knode, vnode) in counts.items():
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
        if counts and not devices:
            doc.fail(
                mnode,
                mkey,
                "every count is 0 (mig-parted refuses this)",
                "give a profile a count above 0, or write mig-devices: {} for MIG on with no instances",
            )
        if not enabled and devices:
            doc.fail(
                mnode,
                mkey,
                "mig-enabled is false but mig-devices lists devices",
                "write mig-devices: {}, or set mig-enabled: true",
            )
    elif enabled:
        doc.fail(
            entries["mig-devices"][1] if "mig-devices" in entries else node,
            mkey,
            "missing: mig-enabled: true needs mig-devices (null is none)",
            "list the devices, or write mig-devices: {} for MIG on with no instances",
        )
    return _MpEntry(
        node=node,
        key=key,
        selectors=tuple(selectors),
        enabled=enabled,
        devices=tuple(devices),
    )


def _mp_instances(entry: _MpEntry) -> List[InstanceSpec]:
    """mig-devices -> GIs. A GI-level name is one GI with its default CI; CI-level names
    of one GI profile are packed first-fit (largest first) into as few GIs as fit, as
    mig-parted keeps adding CIs to the GI it created last until that GI is full."""
    out: List[InstanceSpec] = []
    cis: Dict[str, List[Tuple[ProfileName, yaml.Node]]] = {}  # GI name -> CIs, file order
    mkey = sub_key(entry.key, "mig-devices")
    for name, count, knode in entry.devices:
        split = split_profile(name)
        if split is None:  # _mp_entry checked the grammar
            continue
        if split.full:
            spec = InstanceSpec(profile=split.gi, line=node_line(knode), key=sub_key(mkey, name))
            out.extend([spec] * count)
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
            out.append(
                InstanceSpec(
                    profile=gi,
                    compute=tuple(s.ci for s, _ in group),
                    line=node_line(group[0][1]),
                    key=sub_key(mkey, group[0][0].ci),
                )
            )
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
        wanted = _mp_instances(entry) if entry.enabled else []
        line = node_line(entry.node)
        spec = GpuSpec(
            mig=entry.enabled,
            instances=tuple(wanted),
            source=f"{doc.path}:{line}",
        )
        rules.append(Rule(match=entry.selectors, spec=spec, line=line))
    # mig-parted applies every matching entry in turn, so the last one wins; with
    # first-match-wins rules, that is the entries in reverse order.
    rules.reverse()
    return tuple(rules), select
