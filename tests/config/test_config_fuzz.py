"""Fuzzing parse: whatever the text, the outcome is a Config or one ConfigError."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrestore import config
from migrestore.errors import ConfigError
from migrestore.model import Config

TOKENS = [
    *"abcxyz019.-_:,[]{}&*!|>'\"#?%@`~<=+/\\ ",
    "\n",
    "\n  ",
    "\n    - ",
    "\t",
    "\r",
    "\x00",
    "\x01",
    "\x85",
    "\u2028",
    "\ufeff",
    "\u00e9",
    "\ud800",
    "version: 1\n",
    "version: v1\n",
    "gpus:\n",
    "gpus: []\n",
    "mig-configs:\n",
    "  - match: all\n",
    "    mig: true\n",
    "    instances:\n",
    "      - {profile: 1g.10gb, count: 7}\n",
    "      - {profile: 3g.40gb, placement: 4, compute: [1c.3g.40gb]}\n",
    "  only:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {1c.3g.40gb: 3}\n",
    "!!binary ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!str ",
    "!!set ",
    "!foo ",
    "&a ",
    "*a",
    "<<: ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "0x",
    "0o",
    "1:30",
    ".inf",
    "1e999",
    "9" * 40,
    "2024-01-01",
]

KEYS = [
    "version",
    "gpus",
    "clients",
    "client-timeout",
    "driver-wait",
    "ampere-reset",
    "drift",
    "policy",
    "interval",
    "hooks",
    "post-apply",
    "argv",
    "timeout",
    "match",
    "mig",
    "instances",
    "profile",
    "count",
    "placement",
    "compute",
    "index",
    "uuid",
    "pci-bus-id",
    "model",
    "device-id",
    "mig-parted",
    "file",
    "select",
    "mig-configs",
    "devices",
    "device-filter",
    "mig-enabled",
    "mig-devices",
]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "all",
            "v1",
            "1g.10gb",
            "3g.40gb",
            "1c.3g.40gb",
            "7g.80gb",
            "1g.5gb",
            "1g.24gb+me.all",
            "GPU-0000",
            "0x233010DE",
            "00000000:18:00.0",
            "NVIDIA H100*",
            "/usr/bin/true",
            "restore",
            "allow",
            "30s",
            "5m",
        ]
    ),
)

TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(0, 3)),
            children,
            max_size=5,
        ),
    ),
    max_leaves=24,
)


def _outcome(text: str) -> None:
    try:
        result = config.parse(text, "fuzz.yaml", None)
    except ConfigError as err:
        message = str(err)
        assert err.exit_code == 78
        assert message.startswith("fuzz.yaml")
        assert "\n" not in message
        return
    assert isinstance(result, Config)


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_random_yamlish_text(text: str) -> None:
    _outcome(text)


@FUZZ
@given(st.text(max_size=200))
def test_random_unicode_text(text: str) -> None:
    _outcome(text)


def _dump(tree: Any) -> str:
    return yaml.safe_dump(tree, default_flow_style=None, allow_unicode=True, sort_keys=False)


@FUZZ
@given(TREES)
def test_random_structures(tree: Any) -> None:
    _outcome(_dump(tree))


@FUZZ
@given(
    st.fixed_dictionaries(
        {"version": st.one_of(st.just(1), SCALARS)},
        optional={
            "clients": TREES,
            "drift": st.fixed_dictionaries({}, optional={"policy": TREES, "interval": TREES}),
            "hooks": st.fixed_dictionaries(
                {
                    "post-apply": st.lists(
                        st.fixed_dictionaries({"argv": TREES}, optional={"timeout": TREES}),
                        max_size=2,
                    )
                }
            ),
            "gpus": st.lists(
                st.fixed_dictionaries(
                    {
                        "match": st.one_of(st.just("all"), TREES),
                        "mig": st.one_of(st.booleans(), TREES),
                    },
                    optional={
                        "instances": st.lists(
                            st.fixed_dictionaries(
                                {"profile": st.one_of(SCALARS, TREES)},
                                optional={"count": TREES, "placement": TREES, "compute": TREES},
                            ),
                            max_size=4,
                        )
                    },
                ),
                max_size=3,
            ),
        },
    )
)
def test_random_native_shaped_documents(tree: Any) -> None:
    _outcome(_dump(tree))


@FUZZ
@given(
    st.fixed_dictionaries(
        {
            "version": st.one_of(st.just("v1"), SCALARS),
            "mig-configs": st.dictionaries(
                st.sampled_from(["a", "all-balanced", "custom"]),
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "devices": st.one_of(st.just("all"), TREES),
                            "mig-enabled": st.one_of(st.booleans(), TREES),
                        },
                        optional={
                            "device-filter": TREES,
                            "mig-devices": st.one_of(
                                st.dictionaries(
                                    st.sampled_from(
                                        [
                                            "1g.10gb",
                                            "1c.3g.40gb",
                                            "1c.2g.20gb",
                                            "3g.40gb",
                                            "1g.5gb",
                                            "7g.80gb",
                                            "x",
                                        ]
                                    ),
                                    st.one_of(st.integers(-1, 9), SCALARS),
                                    max_size=4,
                                ),
                                TREES,
                            ),
                        },
                    ),
                    max_size=3,
                ),
                max_size=3,
            ),
        }
    ),
    st.one_of(st.none(), st.sampled_from(["a", "all-balanced", "custom", "nope"])),
)
def test_random_mig_parted_shaped_documents(tree: Any, select: Any) -> None:
    text = _dump(tree)
    try:
        config.parse(text, "fuzz.yaml", select)
    except ConfigError as err:
        assert err.exit_code == 78
        assert "\n" not in str(err)
