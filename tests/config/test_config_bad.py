"""Bad config texts: each is one ConfigError (exit 78) naming the line, the key and the fix."""

from __future__ import annotations

from typing import Optional

import pytest
from _config_support import gpu

from migrestore import config
from migrestore.errors import EXIT_CONFIG, ConfigError

V = "version: 1\n"


def one_rule(instances: str, match: str = "all") -> str:
    """A native file with one MIG rule; its instance entries start on line 6."""
    return V + f"gpus:\n  - match: {match}\n    mig: true\n    instances:\n{instances}"


def mp(entry: str, label: str = "only") -> str:
    """A mig-parted file with one config; the entry starts on line 4."""
    return f"version: v1\nmig-configs:\n  {label}:\n{entry}"


# (id, text, line, key, substring of the message)
CASES = [
    # --- the document
    ("empty", "", None, "", "the file is empty"),
    ("blank", "  \n\n", None, "", "the file is empty"),
    ("comments-only", "# nothing\n# here\n", None, "", "holds no YAML document"),
    ("top-list", "- version\n- 1\n", 1, "", "expected a mapping of keys"),
    ("top-scalar", "hello\n", 1, "", "expected a mapping of keys"),
    ("nul-byte", "version: 1\ngpus: []\x00\n", 2, "", "contains a NUL byte"),
    ("control-char", "version: 1\n\ngpus: [\x01]\n", 3, "", "character #x0001 is not allowed"),
    ("tab-indent", "version: 1\ngpus:\n\t- match: all\n", 3, "", "a tab in the indentation"),
    ("syntax-unclosed", "version: 1\ngpus: [\n", 3, "", "YAML syntax error"),
    ("syntax-colon", "version: 1\ngpus: a: b\n", 2, "", "mapping values are not allowed"),
    ("two-documents", "version: 1\n---\nversion: 1\n", 2, "", "expected a single document"),
    ("anchor", "version: 1\nclients: &c [a.service]\ngpus: []\n", 2, "", "a YAML anchor (&name)"),
    (
        "alias-bomb",
        'a: &a ["x","x","x"]\nb: [*a,*a,*a]\nc: [*b,*b,*b]\n',
        1,
        "",
        "a YAML anchor (&name) is not allowed",
    ),
    (
        "deep-nesting",
        "version: 1\ngpus: " + "[" * 40 + "]" * 40 + "\n",
        2,
        "",
        "nesting deeper than 32",
    ),
    ("merge-key", "version: 1\n<<: {gpus: []}\n", 2, "", "merge keys (<<) are not allowed"),
    ("bool-key", "version: 1\non: 1\ngpus: []\n", 2, "", "key 'on' is a boolean, not a string"),
    ("complex-key", "version: 1\n? [a]\n: 1\n", 2, "", "key is a list, not a string"),
    (
        "custom-tag",
        "version: !foo 1\ngpus: []\n",
        1,
        "version",
        "a value tagged !foo is not allowed",
    ),
    (
        "set-tag",
        "version: 1\ndrift: !!set {policy: null}\ngpus: []\n",
        2,
        "drift",
        "YAML tag tag:yaml.org,2002:set is not allowed",
    ),
    (
        "duplicate-top-key",
        "version: 1\ngpus: []\ngpus: []\n",
        3,
        "gpus",
        "duplicate key (first at line 2)",
    ),
    # --- top level
    ("unknown-top-key", "version: 1\ngpu: []\n", 2, "gpu", "unknown key (did you mean 'gpus'?)"),
    ("missing-version", "gpus: []\n", 1, "version", "missing required key"),
    ("version-2", "version: 2\ngpus: []\n", 1, "version", "unsupported version 2"),
    ("version-string", 'version: "1"\ngpus: []\n', 1, "version", "unsupported version '1'"),
    ("version-float", "version: 1.0\ngpus: []\n", 1, "version", "unsupported version 1.0"),
    ("version-bool", "version: true\ngpus: []\n", 1, "version", "unsupported version True"),
    ("version-v1-native", "version: v1\ngpus: []\n", 1, "version", "need 'mig-configs:'"),
    ("no-gpus", "version: 1\n", 1, "gpus", "the config declares no GPUs"),
    (
        "gpus-and-mig-parted",
        "version: 1\ngpus: []\nmig-parted: {file: /etc/x.yaml}\n",
        3,
        "mig-parted",
        "either gpus or mig-parted, not both",
    ),
    (
        "clients-string",
        V + "clients: dcgm.service\ngpus: []\n",
        2,
        "clients",
        "expected a list of systemd units, got a string",
    ),
    ("client-no-suffix", V + "clients: [dcgm]\ngpus: []\n", 2, "clients[0]", "write dcgm.service"),
    (
        "client-template-no-instance",
        V + "clients: [dcgm@.service]\ngpus: []\n",
        2,
        "clients[0]",
        "'dcgm@.service' is not a systemd unit name: it is a template with no instance (name an instance: dcgm@INSTANCE.service)",
    ),
    (
        "client-two-at",
        V + "clients: [a@b@c.service]\ngpus: []\n",
        2,
        "clients[0]",
        "has more than one '@'",
    ),
    (
        "client-at-first",
        V + "clients: ['@dcgm.service']\ngpus: []\n",
        2,
        "clients[0]",
        "has no name before the type",
    ),
    (
        "client-unknown-type",
        V + "clients: [dcgm.servic]\ngpus: []\n",
        2,
        "clients[0]",
        "end it in a unit type: .service, .socket",
    ),
    (
        "client-int",
        V + "clients: [7]\ngpus: []\n",
        2,
        "clients[0]",
        "expected a systemd unit name, got an integer",
    ),
    (
        "client-twice",
        V + "clients: [a.service, a.service]\ngpus: []\n",
        2,
        "clients[1]",
        "listed twice",
    ),
    (
        "client-self",
        V + "clients: [migrestore.service]\ngpus: []\n",
        2,
        "clients[0]",
        "cannot stop itself",
    ),
    (
        "client-fabric-manager",
        V + "clients: [nvidia-dcgm.service, nvidia-fabricmanager.service]\ngpus: []\n",
        2,
        "clients[1]",
        "Fabric Manager is never stopped",
    ),
    (
        "client-timeout-negative",
        V + "client-timeout: -5\ngpus: []\n",
        2,
        "client-timeout",
        "-5s is below the minimum 1s",
    ),
    (
        "client-timeout-infinite",
        V + "client-timeout: 1.0e+400\ngpus: []\n",
        2,
        "client-timeout",
        "not a finite number",
    ),
    (
        "client-timeout-word",
        V + "client-timeout: fast\ngpus: []\n",
        2,
        "client-timeout",
        "'fast' is not a duration",
    ),
    (
        "client-timeout-bool",
        V + "client-timeout: true\ngpus: []\n",
        2,
        "client-timeout",
        "expected a duration, got a boolean",
    ),
    (
        "driver-wait-huge",
        V + "driver-wait: 99999\ngpus: []\n",
        2,
        "driver-wait",
        "above the maximum 3600s",
    ),
    (
        "driver-wait-date",
        V + "driver-wait: 2024-01-01\ngpus: []\n",
        2,
        "driver-wait",
        "a date is not allowed here",
    ),
    (
        "huge-number",
        V + "driver-wait: " + "9" * 400 + "\ngpus: []\n",
        2,
        "driver-wait",
        "is far too large",
    ),
    (
        "ampere-reset-bad",
        V + "ampere-reset: maybe\ngpus: []\n",
        2,
        "ampere-reset",
        "'maybe' is not one of: allow, never",
    ),
    (
        "drift-string",
        V + "drift: restore\ngpus: []\n",
        2,
        "drift",
        "expected a mapping, got a string",
    ),
    (
        "drift-typo",
        V + "drift: {polcy: warn}\ngpus: []\n",
        2,
        "drift.polcy",
        "did you mean 'policy'?",
    ),
    (
        "drift-policy-bad",
        V + "drift:\n  policy: fix\ngpus: []\n",
        3,
        "drift.policy",
        "'fix' is not one of: restore, warn, ignore",
    ),
    (
        "cdi-refresh-off-unquoted",
        V + "cdi:\n  refresh: off\ngpus: []\n",
        3,
        "cdi.refresh",
        "a boolean is not one of: auto, never",
    ),
    (
        "cdi-typo",
        V + "cdi: {refesh: never}\ngpus: []\n",
        2,
        "cdi.refesh",
        "did you mean 'refresh'?",
    ),
    (
        "cdi-timeout-long",
        V + "cdi: {timeout: 5m}\ngpus: []\n",
        2,
        "cdi.timeout",
        "300s is above the maximum 240s",
    ),
    (
        "drift-interval-zero",
        V + "drift:\n  interval: 0\ngpus: []\n",
        3,
        "drift.interval",
        "0s is below the minimum 1s",
    ),
    (
        "drift-interval-unit",
        V + "drift:\n  interval: 5 days\ngpus: []\n",
        3,
        "drift.interval",
        "'5 days' is not a duration",
    ),
    # --- hooks
    (
        "hook-point-unknown",
        V + "hooks: {pre-apply: []}\ngpus: []\n",
        2,
        "hooks.pre-apply",
        "did you mean 'post-apply'?",
    ),
    (
        "hook-relative",
        V + "hooks:\n  post-apply:\n    - argv: [regen-gres, -q]\ngpus: []\n",
        4,
        "hooks.post-apply[0].argv[0]",
        "'regen-gres' is not an absolute path",
    ),
    (
        "hook-empty-argv",
        V + "hooks:\n  post-apply:\n    - argv: []\ngpus: []\n",
        4,
        "hooks.post-apply[0].argv",
        "an empty argv",
    ),
    (
        "hook-int-arg",
        V + "hooks:\n  post-apply:\n    - argv: [/usr/bin/x, --level, 3]\ngpus: []\n",
        4,
        "hooks.post-apply[0].argv[2]",
        "expected a string, got an integer",
    ),
    (
        "hook-argv-string",
        V + "hooks:\n  post-apply:\n    - argv: /usr/bin/x -q\ngpus: []\n",
        4,
        "hooks.post-apply[0].argv",
        "expected a list: the program and its arguments",
    ),
    (
        "hook-no-argv",
        V + "hooks:\n  post-apply:\n    - timeout: 5\ngpus: []\n",
        4,
        "hooks.post-apply[0].argv",
        "missing required key",
    ),
    (
        "hook-timeout-zero",
        V + "hooks:\n  post-apply:\n    - argv: [/usr/bin/x]\n      timeout: 0\ngpus: []\n",
        5,
        "hooks.post-apply[0].timeout",
        "below the minimum 1s",
    ),
    # --- rules and selectors
    ("gpus-string", V + "gpus: all\n", 2, "gpus", "expected a list of rules, got a string"),
    ("rule-no-mig", V + "gpus:\n  - match: all\n", 3, "gpus[0].mig", "missing required key"),
    (
        "rule-typo",
        V + "gpus:\n  - match: all\n    mig: true\n    instance: []\n",
        5,
        "gpus[0].instance",
        "did you mean 'instances'?",
    ),
    ("rule-list", V + "gpus:\n  - [all, true]\n", 3, "gpus[0]", "expected a rule mapping"),
    (
        "match-empty",
        V + "gpus:\n  - match: {}\n    mig: false\n",
        3,
        "gpus[0].match",
        "an empty match",
    ),
    (
        "match-true",
        V + "gpus:\n  - match: true\n    mig: false\n",
        3,
        "gpus[0].match",
        "got a boolean",
    ),
    (
        "match-any",
        V + "gpus:\n  - match: any\n    mig: false\n",
        3,
        "gpus[0].match",
        "expected 'all' or a mapping",
    ),
    (
        "selector-unknown",
        V + "gpus:\n  - match: {serial: 123}\n    mig: false\n",
        3,
        "gpus[0].match.serial",
        "unknown key",
    ),
    (
        "selector-typo",
        V + "gpus:\n  - match: {modle: H100}\n    mig: false\n",
        3,
        "gpus[0].match.modle",
        "did you mean 'model'?",
    ),
    (
        "index-negative",
        V + "gpus:\n  - match: {index: -1}\n    mig: false\n",
        3,
        "gpus[0].match.index",
        "-1 is below the minimum 0",
    ),
    (
        "index-word",
        V + "gpus:\n  - match: {index: [0, one]}\n    mig: false\n",
        3,
        "gpus[0].match.index[1]",
        "expected a whole number, got a string",
    ),
    (
        "index-empty-list",
        V + "gpus:\n  - match: {index: []}\n    mig: false\n",
        3,
        "gpus[0].match.index",
        "an empty list matches nothing",
    ),
    (
        "uuid-mig-device",
        V + "gpus:\n  - match: {uuid: MIG-1234-abcd}\n    mig: false\n",
        3,
        "gpus[0].match.uuid",
        "is a MIG device UUID",
    ),
    (
        "uuid-garbage",
        V + "gpus:\n  - match: {uuid: '1234'}\n    mig: false\n",
        3,
        "gpus[0].match.uuid",
        "is not a GPU UUID",
    ),
    (
        "bus-id-bad",
        V + "gpus:\n  - match: {pci-bus-id: '18:00'}\n    mig: false\n",
        3,
        "gpus[0].match.pci-bus-id",
        "'18:00' is not a PCI bus id",
    ),
    (
        "device-id-no-0x",
        V + "gpus:\n  - match: {device-id: '233010DE'}\n    mig: false\n",
        3,
        "gpus[0].match.device-id",
        "is not a PCI device ID",
    ),
    (
        "device-id-too-big",
        V + "gpus:\n  - match: {device-id: 0x1FFFFFFFF}\n    mig: false\n",
        3,
        "gpus[0].match.device-id",
        "not a 32-bit PCI device ID",
    ),
    (
        "model-empty",
        V + "gpus:\n  - match: {model: ''}\n    mig: false\n",
        3,
        "gpus[0].match.model",
        "got an empty string",
    ),
    (
        "mig-word",
        V + "gpus:\n  - match: all\n    mig: enabled\n",
        4,
        "gpus[0].mig",
        "expected true or false, got a string",
    ),
    (
        "mig-false-instances",
        V + "gpus:\n  - match: all\n    mig: false\n    instances: [{profile: 1g.10gb}]\n",
        5,
        "gpus[0].instances",
        "a rule with mig: false cannot list instances",
    ),
    # --- instances
    (
        "instances-map",
        one_rule("      profile: 1g.10gb\n"),
        6,
        "gpus[0].instances",
        "expected a list of instances, got a mapping",
    ),
    (
        "instance-typo",
        one_rule("      - {profile: 1g.10gb, placment: 0}\n"),
        6,
        "gpus[0].instances[0].placment",
        "did you mean 'placement'?",
    ),
    (
        "instance-no-profile",
        one_rule("      - {count: 2}\n"),
        6,
        "gpus[0].instances[0].profile",
        "missing required key",
    ),
    (
        "profile-mig-prefix",
        one_rule("      - {profile: MIG 1g.10gb}\n"),
        6,
        "gpus[0].instances[0].profile",
        "write '1g.10gb'",
    ),
    (
        "profile-is-ci",
        one_rule("      - {profile: 1c.3g.40gb}\n"),
        6,
        "gpus[0].instances[0].profile",
        "is a compute-instance profile",
    ),
    (
        "profile-int",
        one_rule("      - {profile: 7}\n"),
        6,
        "gpus[0].instances[0].profile",
        "got an integer",
    ),
    (
        "count-zero",
        one_rule("      - {profile: 1g.10gb, count: 0}\n"),
        6,
        "gpus[0].instances[0].count",
        "0 is below the minimum 1",
    ),
    (
        "count-negative",
        one_rule("      - {profile: 1g.10gb, count: -2}\n"),
        6,
        "gpus[0].instances[0].count",
        "-2 is below the minimum 1",
    ),
    (
        "count-huge",
        one_rule("      - {profile: 1g.10gb, count: 1000}\n"),
        6,
        "gpus[0].instances[0].count",
        "1000 is above the maximum 64",
    ),
    (
        "count-float",
        one_rule("      - {profile: 1g.10gb, count: 1.5}\n"),
        6,
        "gpus[0].instances[0].count",
        "expected a whole number, got a number",
    ),
    (
        "placement-negative",
        one_rule("      - {profile: 1g.10gb, placement: -1}\n"),
        6,
        "gpus[0].instances[0].placement",
        "-1 is below the minimum 0",
    ),
    (
        "placement-twice-list",
        one_rule("      - {profile: 1g.10gb, placement: [0, 0]}\n"),
        6,
        "gpus[0].instances[0].placement[1]",
        "placement 0 is given twice",
    ),
    (
        "placement-twice-entries",
        one_rule(
            "      - {profile: 1g.10gb, placement: 5}\n      - {profile: 1g.10gb, placement: 5}\n"
        ),
        7,
        "gpus[0].instances[1].placement",
        "placement 5 is given twice for 1g.10gb (also at gpus[0].instances[0])",
    ),
    (
        "placement-count-mismatch",
        one_rule("      - {profile: 1g.10gb, count: 3, placement: [0, 1]}\n"),
        6,
        "gpus[0].instances[0].placement",
        "2 start slices for count 3",
    ),
    (
        "placement-one-for-two",
        one_rule("      - {profile: 1g.10gb, count: 2, placement: 0}\n"),
        6,
        "gpus[0].instances[0].placement",
        "one start slice for count 2",
    ),
    (
        "placement-empty-list",
        one_rule("      - {profile: 1g.10gb, placement: []}\n"),
        6,
        "gpus[0].instances[0].placement",
        "an empty list",
    ),
    (
        "compute-string",
        one_rule("      - {profile: 3g.40gb, compute: 1c.3g.40gb}\n"),
        6,
        "gpus[0].instances[0].compute",
        "expected a list of compute-instance profiles",
    ),
    (
        "compute-foreign",
        one_rule("      - {profile: 3g.40gb, compute: [1c.2g.20gb]}\n"),
        6,
        "gpus[0].instances[0].compute[0]",
        "'1c.2g.20gb' is not a compute-instance profile of 3g.40gb (write 1c.3g.40gb)",
    ),
    (
        "compute-too-big",
        one_rule("      - {profile: 3g.40gb, compute: [2c.3g.40gb, 2c.3g.40gb]}\n"),
        6,
        "gpus[0].instances[0].compute[1]",
        "need 4 compute slices, a 3g.40gb GI has 3",
    ),
    (
        "compute-garbage",
        one_rule("      - {profile: 3g.40gb, compute: [half]}\n"),
        6,
        "gpus[0].instances[0].compute[0]",
        "'half' is not a profile name",
    ),
    # --- mig-parted section of a native file
    (
        "mig-parted-no-file",
        V + "mig-parted: {select: a}\n",
        2,
        "mig-parted.file",
        "missing required key",
    ),
    (
        "mig-parted-relative",
        V + "mig-parted: {file: config.yaml}\n",
        2,
        "mig-parted.file",
        "not an absolute path",
    ),
    (
        "mig-parted-in-parse",
        V + "mig-parted: {file: /etc/x.yaml}\n",
        2,
        "mig-parted.file",
        "parse() reads no files",
    ),
    # --- mig-parted files
    (
        "mp-version",
        "version: v2\nmig-configs: {a: [{devices: all, mig-enabled: false}]}\n",
        1,
        "version",
        "unsupported mig-parted version 'v2'",
    ),
    (
        "mp-no-version",
        "mig-configs: {a: [{devices: all, mig-enabled: false}]}\n",
        1,
        "version",
        "missing required key",
    ),
    (
        "mp-unknown-top",
        "version: v1\nmig-config: {}\nmig-configs: {}\n",
        2,
        "mig-config",
        "did you mean 'mig-configs'?",
    ),
    ("mp-no-configs", "version: v1\nmig-configs: {}\n", 2, "mig-configs", "no configs"),
    (
        "mp-label-map",
        mp("    devices: all\n"),
        4,
        "mig-configs.only",
        "expected a list of entries, got a mapping",
    ),
    ("mp-empty-label", mp("    []\n"), 4, "mig-configs.only", "an empty config"),
    (
        "mp-entry-typo",
        mp("    - devices: all\n      mig-enabled: false\n      device-filters: '0x20B010DE'\n"),
        6,
        "mig-configs.only[0].device-filters",
        "did you mean 'device-filter'?",
    ),
    (
        "mp-devices-word",
        mp("    - devices: some\n      mig-enabled: false\n"),
        4,
        "mig-configs.only[0].devices",
        "expected 'all' or a list of GPU indexes",
    ),
    (
        "mp-no-mig-enabled",
        mp("    - devices: all\n"),
        4,
        "mig-configs.only[0].mig-enabled",
        "missing required key",
    ),
    (
        "mp-enabled-no-devices",
        mp("    - devices: all\n      mig-enabled: true\n"),
        4,
        "mig-configs.only[0].mig-devices",
        "mig-enabled: true needs mig-devices",
    ),
    (
        "mp-disabled-with-devices",
        mp("    - devices: all\n      mig-enabled: false\n      mig-devices: {1g.10gb: 1}\n"),
        6,
        "mig-configs.only[0].mig-devices",
        "mig-enabled is false but mig-devices lists devices",
    ),
    (
        "mp-bad-profile-name",
        mp("    - devices: all\n      mig-enabled: true\n      mig-devices: {1g10gb: 1}\n"),
        6,
        "mig-configs.only[0].mig-devices.1g10gb",
        "is not a MIG profile name",
    ),
    (
        "mp-negative-count",
        mp("    - devices: all\n      mig-enabled: true\n      mig-devices: {1g.10gb: -1}\n"),
        6,
        'mig-configs.only[0].mig-devices."1g.10gb"',
        "-1 is below the minimum 0",
    ),
    (
        "mp-two-labels-no-select",
        "version: v1\nmig-configs:\n  a: [{devices: all, mig-enabled: false}]\n  b: [{devices: all, mig-enabled: false}]\n",
        3,
        "mig-configs",
        "holds 2 configs and none is selected (choose one with --select NAME or mig-parted.select: a, b)",
    ),
]

SELECT_CASES = [
    (
        "mp-unknown-select",
        "version: v1\nmig-configs:\n  all-balanced: [{devices: all, mig-enabled: false}]\n  all-1g.10gb: [{devices: all, mig-enabled: false}]\n",
        "all-balance",
        3,
        "mig-configs",
        "no config named 'all-balance' (did you mean all-balanced? configs in this file: all-balanced, all-1g.10gb)",
    ),
    (
        "native-with-select",
        "version: 1\ngpus: []\n",
        "all-balanced",
        None,
        "select",
        "--select all-balanced applies to mig-parted files",
    ),
]


def _check(err: ConfigError, line: Optional[int], key: str, text: str) -> None:
    message = str(err)
    assert err.exit_code == EXIT_CONFIG == 78
    assert "\n" not in message
    assert err.line == line, message
    assert err.key == key, message
    assert text in message, message
    where = f"bad.yaml:{line}: " if line is not None else "bad.yaml: "
    assert message.startswith(where + (f"{key}: " if key else "")), message


def test_the_table_is_big_enough() -> None:
    assert len(CASES) + len(SELECT_CASES) >= 50
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("text", "line", "key", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_config(text: str, line: Optional[int], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse(text, "bad.yaml")
    _check(caught.value, line, key, expected)


@pytest.mark.parametrize(
    ("text", "select", "line", "key", "expected"),
    [c[1:] for c in SELECT_CASES],
    ids=[c[0] for c in SELECT_CASES],
)
def test_bad_selection(
    text: str, select: str, line: Optional[int], key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse(text, "bad.yaml", select)
    _check(caught.value, line, key, expected)


# (id, text, simulated model of the GPU the rule matches, line, key, substring)
OFFER_CASES = [
    (
        "profile-unknown",
        one_rule("      - {profile: 3g.45gb}\n"),
        "h100-80gb-hbm3",
        6,
        "gpus[0].instances[0]",
        "NVIDIA H100 80GB HBM3) offers no GPU instance profile '3g.45gb'",
    ),
    (
        "count-over-model-max",
        one_rule("      - {profile: 1g.10gb, count: 8}\n"),
        "h100-80gb-hbm3",
        6,
        "gpus[0].instances[0]",
        "holds at most 7 instances of 1g.10gb, the rule wants 8",
    ),
    (
        "count-over-max-split",
        one_rule("      - {profile: 3g.40gb}\n      - {profile: 3g.40gb, count: 2}\n"),
        "h100-80gb-hbm3",
        7,
        "gpus[0].instances[1]",
        "holds at most 2 instances of 3g.40gb, the rule wants 3",
    ),
    (
        "placement-invalid-start",
        one_rule("      - {profile: 3g.40gb, placement: 2}\n"),
        "h100-80gb-hbm3",
        6,
        "gpus[0].instances[0]",
        "cannot start 3g.40gb at slice 2 (valid starts: 0, 4)",
    ),
    (
        "placement-overlap",
        one_rule(
            "      - {profile: 3g.40gb, placement: 0}\n      - {profile: 1g.10gb, placement: 3}\n"
        ),
        "h100-80gb-hbm3",
        7,
        "gpus[0].instances[1]",
        "cannot hold 1g.10gb at 3 (slice 3): it overlaps 3g.40gb at 0 (slices 0-3) of gpus[0].instances[0]",
    ),
    (
        "placement-overlap-list",
        one_rule(
            "      - {profile: 4g.40gb, placement: 0}\n      - {profile: 2g.20gb, count: 2, placement: [4, 2]}\n"
        ),
        "h100-80gb-hbm3",
        7,
        "gpus[0].instances[1]",
        "cannot hold 2g.20gb at 2 (slices 2-3): it overlaps 4g.40gb at 0 (slices 0-3)",
    ),
    (
        "compute-unknown",
        one_rule("      - {profile: 7g.80gb, compute: [5c.7g.80gb]}\n"),
        "h100-80gb-hbm3",
        6,
        "gpus[0].instances[0]",
        "offers no compute-instance profile '5c.7g.80gb' in a 7g.80gb GI",
    ),
    (
        "profiles-of-two-models",
        one_rule("      - {profile: 1g.5gb}\n      - {profile: 3g.40gb}\n"),
        "h100-80gb-hbm3",
        6,
        "gpus[0].instances[0]",
        "offers no GPU instance profile '1g.5gb'",
    ),
    (
        "placement-invalid-for-selected-model",
        one_rule("      - {profile: 1g.24gb, placement: 3}\n", '{model: "NVIDIA H100 NVL"}'),
        "h100-nvl-94gb",
        6,
        "gpus[0].instances[0]",
        "cannot start 1g.24gb at slice 3 (valid starts: 0, 2, 4, 6)",
    ),
    (
        "mp-unknown-profile",
        mp("    - devices: all\n      mig-enabled: true\n      mig-devices:\n        1g.11gb: 1\n"),
        "h100-80gb-hbm3",
        7,
        'mig-configs.only[0].mig-devices."1g.11gb"',
        "offers no GPU instance profile '1g.11gb'",
    ),
    (
        "mp-too-many",
        mp("    - devices: all\n      mig-enabled: true\n      mig-devices: {1g.10gb: 8}\n"),
        "h100-80gb-hbm3",
        6,
        'mig-configs.only[0].mig-devices."1g.10gb"',
        "holds at most 7 instances of 1g.10gb, the rule wants 8",
    ),
]


@pytest.mark.parametrize(
    ("text", "model", "line", "key", "expected"),
    [c[1:] for c in OFFER_CASES],
    ids=[c[0] for c in OFFER_CASES],
)
def test_what_the_gpu_does_not_offer_is_refused_when_matched(
    text: str, model: str, line: int, key: str, expected: str
) -> None:
    """A file is valid when it parses; the profile table of the GPU a rule matches
    decides whether its names, counts and placements exist (exit 78, naming the GPU)."""
    cfg = config.parse(text, "bad.yaml")
    with pytest.raises(ConfigError) as caught:
        config.resolve(cfg, (gpu(model, 0),))
    err = caught.value
    assert err.exit_code == EXIT_CONFIG
    assert (err.path, err.line, err.key) == ("bad.yaml", line, key), str(err)
    assert f"GPU 0 ({gpu(model, 0).uuid}) (" in str(err)
    assert expected in str(err), str(err)
    if "offers no" in expected:
        assert "offers: " in err.fix  # what the GPU offers instead


def test_unknown_names_are_not_checked_against_the_bundled_tables_at_load() -> None:
    # mig-parted's shipped files carry every SKU: a profile no bundled table knows is a
    # valid file; the GPU that rules match answers whether it exists.
    text = (
        "version: v1\nmig-configs:\n"
        "  future: [{devices: all, mig-enabled: true, mig-devices: {1g.23gb: 7}}]\n"
        "  disabled: [{devices: all, mig-enabled: false}]\n"
    )
    assert config.parse(text, "ok.yaml", "future").selected == "future"
    broken = text.replace("mig-enabled: false", "mig-enabled: nope")
    with pytest.raises(ConfigError) as caught:
        config.parse(broken, "bad.yaml", "future")
    assert caught.value.key == "mig-configs.disabled[0].mig-enabled"


def test_a_name_that_is_not_a_profile_names_the_closest_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse(one_rule("      - {profile: 3g.40g}\n"), "bad.yaml")
    assert "is not a GPU instance profile name" in caught.value.problem
    assert "3g.40gb" in caught.value.fix
