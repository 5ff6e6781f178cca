"""Good configs parse to the expected Config, including every shipped example."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import pytest

from migrestore import config
from migrestore.model import (
    DEFAULT_CLIENTS,
    DRIFT_IGNORE,
    DRIFT_RESTORE,
    DRIFT_WARN,
    RESET_ALLOW,
    RESET_NEVER,
    CdiRefresh,
    Config,
    GpuSpec,
    Hook,
    InstanceSpec,
    Rule,
    Selector,
)

REPO = Path(__file__).resolve().parents[2]
ETC = REPO / "etc"

I = InstanceSpec  # noqa: E741


def rule(
    line: int,
    match: Tuple[Selector, ...],
    mig: bool,
    *instances: InstanceSpec,
    path: str = "c.yaml",
) -> Rule:
    return Rule(match=match, spec=GpuSpec(mig, tuple(instances), f"{path}:{line}"), line=line)


ALL = (Selector("all"),)

# (id, text, expected Config) for files whose policies are all default but the rules
RULE_CASES = [
    ("no-gpus", "version: 1\ngpus: []\n", ()),
    ("mig-off-all", "version: 1\ngpus:\n  - match: all\n    mig: false\n", (rule(3, ALL, False),)),
    (
        "mig-on-no-instances",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n",
        (rule(3, ALL, True),),
    ),
    (
        "mig-on-empty-instances",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n    instances: []\n",
        (rule(3, ALL, True),),
    ),
    (
        "count-expands",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n    instances:\n      - {profile: 1g.10gb, count: 3}\n",
        (rule(3, ALL, True, I("1g.10gb"), I("1g.10gb"), I("1g.10gb")),),
    ),
    (
        "placement-list-sets-count",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n    instances:\n      - {profile: 1g.10gb, placement: [6, 2]}\n",
        (rule(3, ALL, True, I("1g.10gb", 6), I("1g.10gb", 2)),),
    ),
    (
        "placement-list-with-count",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n    instances:\n      - {profile: 2g.20gb, count: 2, placement: [0, 2]}\n",
        (rule(3, ALL, True, I("2g.20gb", 0), I("2g.20gb", 2)),),
    ),
    (
        "ci-layout",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n    instances:\n"
        "      - {profile: 7g.80gb, compute: [4c.7g.80gb, 2c.7g.80gb, 1c.7g.80gb]}\n",
        (rule(3, ALL, True, I("7g.80gb", None, ("4c.7g.80gb", "2c.7g.80gb", "1c.7g.80gb"))),),
    ),
    (
        "full-ci-is-the-default",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n    instances:\n      - {profile: 3g.40gb, compute: [3g.40gb]}\n"
        "      - {profile: 3g.40gb, compute: [3c.3g.40gb]}\n",
        (rule(3, ALL, True, I("3g.40gb"), I("3g.40gb")),),
    ),
    (
        "compute-empty-is-a-gi-without-cis",
        "version: 1\ngpus:\n  - match: all\n    mig: true\n    instances:\n"
        "      - {profile: 3g.40gb, compute: []}\n      - {profile: 3g.40gb}\n",
        (rule(3, ALL, True, InstanceSpec("3g.40gb", no_compute=True), I("3g.40gb")),),
    ),
    (
        "media-extension-profiles",
        "version: 1\ngpus:\n  - match: {model: 'NVIDIA RTX PRO 6000*'}\n    mig: true\n    instances:\n"
        "      - {profile: 1g.24gb+me.all, placement: 0}\n      - {profile: 1g.24gb-me, count: 3, placement: [3, 6, 9]}\n",
        (
            rule(
                3,
                (Selector("model", ("NVIDIA RTX PRO 6000*",)),),
                True,
                I("1g.24gb+me.all", 0),
                I("1g.24gb-me", 3),
                I("1g.24gb-me", 6),
                I("1g.24gb-me", 9),
            ),
        ),
    ),
    (
        "first-rule-order-kept",
        "version: 1\ngpus:\n  - match: {index: [0, 1]}\n    mig: true\n  - match: all\n    mig: false\n",
        (rule(3, (Selector("index", ("0", "1")),), True), rule(5, ALL, False)),
    ),
    (
        "selectors-normalised",
        "version: 1\ngpus:\n  - match:\n      index: 3\n      uuid: GPU-5f3e1b2a-0000-1111-2222-333344445555\n"
        "      pci-bus-id: [0000:3b:00.0, '18:00.0', 00000000:AF:00.0]\n"
        "      model: ['NVIDIA H100*', 'NVIDIA H200']\n      device-id: [0x233010de, '0x233510DE', 0x233010DE]\n"
        "    mig: false\n",
        (
            rule(
                3,
                (
                    Selector("index", ("3",)),
                    Selector("uuid", ("GPU-5f3e1b2a-0000-1111-2222-333344445555",)),
                    Selector(
                        "pci-bus-id", ("00000000:3B:00.0", "00000000:18:00.0", "00000000:AF:00.0")
                    ),
                    Selector("model", ("NVIDIA H100*", "NVIDIA H200")),
                    Selector("device-id", ("0x233010DE", "0x233510DE")),
                ),
                False,
            ),
        ),
    ),
    (
        "device-id-as-yaml-int",
        "version: 1\ngpus:\n  - match: {device-id: 590352606}\n    mig: false\n",
        (rule(3, (Selector("device-id", ("0x233010DE",)),), False),),
    ),
    (
        "block-style",
        "version: 1\ngpus:\n- match:\n    model: NVIDIA H100 80GB HBM3\n  mig: true\n  instances:\n  - profile: 3g.40gb\n"
        "    placement: 4\n    compute:\n    - 1c.3g.40gb\n    - 2c.3g.40gb\n  - profile: 1g.10gb\n    count: 4\n",
        (
            rule(
                3,
                (Selector("model", ("NVIDIA H100 80GB HBM3",)),),
                True,
                I("3g.40gb", 4, ("1c.3g.40gb", "2c.3g.40gb")),
                I("1g.10gb"),
                I("1g.10gb"),
                I("1g.10gb"),
                I("1g.10gb"),
            ),
        ),
    ),
]


@pytest.mark.parametrize(
    ("text", "rules"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES]
)
def test_rules(text: str, rules: Tuple[Rule, ...]) -> None:
    assert config.parse(text, "c.yaml") == Config(path="c.yaml", rules=rules)


POLICY_CASES = [
    ("defaults", "", {}),
    (
        "all-policies",
        "clients: [a.service, b.socket]\nclient-timeout: 2m\ndriver-wait: 0\nampere-reset: never\n"
        "drift:\n  policy: ignore\n  interval: 1h\n",
        dict(
            clients=("a.service", "b.socket"),
            unit_timeout=120.0,
            driver_wait=0.0,
            ampere_reset=RESET_NEVER,
            drift_policy=DRIFT_IGNORE,
            drift_interval=3600.0,
        ),
    ),
    ("no-clients", "clients: []\n", dict(clients=())),
    (
        "every-unit-type",
        "clients: [proc-sys-fs-binfmt_misc.automount, getty@tty1.service, dev-nvidia0.device,"
        " a.socket, a.target, a.timer, a.path, data.mount, a.swap, a.slice, a.scope]\n",
        dict(
            clients=(
                "proc-sys-fs-binfmt_misc.automount",
                "getty@tty1.service",
                "dev-nvidia0.device",
                "a.socket",
                "a.target",
                "a.timer",
                "a.path",
                "data.mount",
                "a.swap",
                "a.slice",
                "a.scope",
            )
        ),
    ),
    ("interval-seconds-string", "drift: {interval: 30s}\n", dict(drift_interval=30.0)),
    ("interval-fraction", "drift: {interval: 2.5}\n", dict(drift_interval=2.5)),
    ("interval-minutes", "drift: {interval: '5m'}\n", dict(drift_interval=300.0)),
    (
        "drift-warn-only",
        "drift: {policy: warn}\n",
        dict(drift_policy=DRIFT_WARN, drift_interval=60.0),
    ),
    ("timeout-ms", "client-timeout: 1500ms\n", dict(unit_timeout=1.5)),
    ("cdi-never", "cdi: {refresh: never}\n", dict(cdi_refresh=CdiRefresh.NEVER)),
    (
        "cdi-auto-timeout",
        "cdi:\n  refresh: auto\n  timeout: 2m\n",
        dict(cdi_refresh=CdiRefresh.AUTO, cdi_timeout=120.0),
    ),
    (
        "hooks",
        "hooks:\n  post-apply:\n    - argv: [/usr/local/bin/regen-gres, --quiet, '3']\n      timeout: 30\n"
        "    - {argv: [/bin/true]}\n",
        dict(
            hooks=(
                Hook(("/usr/local/bin/regen-gres", "--quiet", "3"), 30.0, 4),
                Hook(("/bin/true",), 60.0, 6),
            )
        ),
    ),
]


@pytest.mark.parametrize(
    ("text", "fields"), [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES]
)
def test_policies(text: str, fields: dict) -> None:  # type: ignore[type-arg]
    parsed = config.parse("version: 1\n" + text + "gpus: []\n", "c.yaml")
    assert parsed == Config(path="c.yaml", rules=(), **fields)


def test_defaults_are_the_models_defaults() -> None:
    parsed = config.parse("version: 1\ngpus: []\n")
    assert parsed.path == "<config>"
    assert parsed.clients == DEFAULT_CLIENTS
    assert parsed.drift_policy == DRIFT_RESTORE
    assert parsed.ampere_reset == RESET_ALLOW
    assert (parsed.unit_timeout, parsed.driver_wait, parsed.drift_interval) == (90.0, 120.0, 60.0)
    assert parsed.selected is None
    assert (parsed.cdi_refresh, parsed.cdi_timeout) == (CdiRefresh.AUTO, 60.0)


def test_utf8_bom_and_crlf_are_accepted() -> None:
    parsed = config.parse(
        "\ufeffversion: 1\r\ngpus:\r\n  - match: all\r\n    mig: false\r\n", "c.yaml"
    )
    assert parsed.rules == (rule(3, ALL, False),)


def test_unquoted_bus_id_that_yaml_reads_as_a_number_is_taken_as_written() -> None:
    # YAML 1.1 reads 0000:18:00.0 as a base-60 float; the text is what counts.
    parsed = config.parse(
        "version: 1\ngpus:\n  - match: {pci-bus-id: 0000:18:00.0}\n    mig: false\n"
    )
    assert parsed.rules[0].match == (Selector("pci-bus-id", ("00000000:18:00.0",)),)


# --------------------------------------------------------------------------- shipped files


def test_shipped_conffile_changes_nothing() -> None:
    parsed = config.load(str(ETC / "migrestore.yaml"), require_secure=False)
    assert parsed.rules == ()
    assert parsed.hooks == ()
    assert parsed.clients == DEFAULT_CLIENTS
    assert parsed.drift_policy == DRIFT_RESTORE
    assert parsed.ampere_reset == RESET_ALLOW


def test_shipped_conffile_documents_every_top_level_key() -> None:
    text = (ETC / "migrestore.yaml").read_text()
    for key in (
        "version",
        "clients",
        "client-timeout",
        "driver-wait",
        "ampere-reset",
        "drift",
        "hooks",
        "metrics",
        "gpus",
        "mig-parted",
    ):
        assert f"{key}:" in text, key


def test_example_h100_all_1g() -> None:
    path = str(ETC / "examples" / "h100-all-1g.yaml")
    parsed = config.load(path, require_secure=False)
    assert parsed.rules == (
        rule(
            5,
            (Selector("model", ("NVIDIA H100 80GB HBM3",)),),
            True,
            *(I("1g.10gb", s) for s in range(7)),
            path=path,
        ),
    )


def test_example_h100_mixed() -> None:
    path = str(ETC / "examples" / "h100-mixed.yaml")
    parsed = config.load(path, require_secure=False)
    assert parsed.clients == ("nvidia-dcgm.service", "dcgm-exporter.service")
    assert (parsed.unit_timeout, parsed.drift_policy, parsed.drift_interval) == (
        60.0,
        DRIFT_RESTORE,
        300.0,
    )
    assert parsed.hooks == (Hook(("/usr/local/sbin/regen-slurm-gres", "--quiet"), 30.0, 16),)
    assert parsed.rules == (
        rule(
            19,
            (Selector("pci-bus-id", ("00000000:18:00.0", "00000000:2A:00.0")),),
            True,
            I("2g.20gb", 0),
            I("1g.10gb", 2),
            I("1g.10gb", 3),
            I("3g.40gb", 4, ("2c.3g.40gb", "1c.3g.40gb")),
            path=path,
        ),
        rule(
            27,
            (Selector("index", ("2",)), Selector("model", ("NVIDIA H100*",))),
            True,
            I("7g.80gb", 0),
            path=path,
        ),
        rule(31, (Selector("device-id", ("0x233010DE",)),), False, path=path),
    )


def test_example_a100_balanced() -> None:
    path = str(ETC / "examples" / "a100-balanced.yaml")
    parsed = config.load(path, require_secure=False)
    assert parsed.ampere_reset == RESET_ALLOW
    assert parsed.rules == (
        rule(
            9,
            (Selector("device-id", ("0x20B010DE",)),),
            True,
            I("3g.20gb"),
            I("2g.10gb"),
            I("1g.5gb"),
            I("1g.5gb"),
            path=path,
        ),
    )


def test_example_mig_parted_reference(tmp_path: Path) -> None:
    # The example points at /etc/nvidia-mig-manager/config.yaml; point it at the
    # shipped mig-parted example instead and load both.
    text = (ETC / "examples" / "mig-parted-reference.yaml").read_text()
    assert "file: /etc/nvidia-mig-manager/config.yaml" in text
    native = tmp_path / "migrestore.yaml"
    native.write_text(
        text.replace(
            "/etc/nvidia-mig-manager/config.yaml", str(ETC / "examples" / "mig-parted-config.yaml")
        )
    )
    parsed = config.load(str(native), require_secure=False)
    assert parsed.selected == "all-balanced"
    assert parsed.clients == ("nvidia-dcgm.service", "nvsm.service")
    assert parsed.drift_policy == DRIFT_WARN
    assert [r.spec.instances for r in parsed.rules] == [
        (I("1g.10gb"), I("1g.10gb"), I("2g.20gb"), I("3g.40gb")),
        (I("1g.5gb"), I("1g.5gb"), I("2g.10gb"), I("3g.20gb")),
    ]
    assert parsed.rules[0].spec.source.endswith("mig-parted-config.yaml:55")


def test_every_shipped_example_is_tested() -> None:
    names = sorted(p.name for p in (ETC / "examples").glob("*.yaml"))
    assert names == [
        "a100-balanced.yaml",
        "h100-all-1g.yaml",
        "h100-mixed.yaml",
        "mig-parted-config.yaml",
        "mig-parted-reference.yaml",
    ]
