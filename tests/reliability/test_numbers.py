"""Numbers that never end: NaN and infinities in every numeric option and config value
(issue 13, finding 13: ``--lock-timeout nan`` waited forever).

Rules:

1. Every numeric value of a config file (native and mig-parted formats) refuses NaN and
   +/-infinity in every YAML spelling (``.nan``, ``.NaN``, ``.inf``, ``-.Inf``, ``+.inf``,
   ``1e999``) and as a string (``"nan"``, ``"inf"``): one ConfigError naming the file,
   the value's line and its key; exit 78 through the command line.
2. Every numeric command-line option of ``migrestore`` and ``migrestore-sim`` refuses
   ``nan``, ``inf`` and ``-inf`` with argparse's usage error (exit 2) naming the option.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest

from migrestore import cli
from migrestore.config import parse
from migrestore.errors import ConfigError
from migrestore.simulator import cli as simcli
from tests.integration.cli_util import run

BAD_YAML = (".nan", ".NaN", ".NAN", ".inf", ".Inf", "-.Inf", "+.inf", "-.INF", "1e999", "-1e999")
BAD_STRINGS = ('"nan"', '"inf"', '"-inf"', '"infinity"', '"NaN s"', '"inf s"')

# (name, config text with X where the number goes, the key the error names)
NATIVE_GPUS = "gpus:\n  - match: all\n    mig: true\n    instances:\n"
FIELDS: List[Tuple[str, str, str]] = [
    ("version", "version: X\ngpus: []\n", "version"),
    ("client-timeout", "version: 1\nclient-timeout: X\ngpus: []\n", "client-timeout"),
    ("driver-wait", "version: 1\ndriver-wait: X\ngpus: []\n", "driver-wait"),
    ("drift.interval", "version: 1\ndrift:\n  interval: X\ngpus: []\n", "drift.interval"),
    ("cdi.timeout", "version: 1\ncdi:\n  timeout: X\ngpus: []\n", "cdi.timeout"),
    (
        "hook timeout",
        "version: 1\nhooks:\n  post-apply:\n    - argv: [/bin/true]\n      timeout: X\ngpus: []\n",
        "timeout",
    ),
    ("count", "version: 1\n" + NATIVE_GPUS + "      - {profile: 1g.10gb, count: X}\n", "count"),
    (
        "placement",
        "version: 1\n" + NATIVE_GPUS + "      - {profile: 1g.10gb, placement: X}\n",
        "placement",
    ),
    (
        "placement list",
        "version: 1\n" + NATIVE_GPUS + "      - {profile: 1g.10gb, count: 1, placement: [X]}\n",
        "placement",
    ),
    ("match index", "version: 1\ngpus:\n  - match: {index: X}\n    mig: false\n", "index"),
    (
        "mig-parted count",
        "version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n"
        '      mig-devices: {"1g.10gb": X}\n',
        "1g.10gb",
    ),
    (
        "mig-parted device",
        "version: v1\nmig-configs:\n  a:\n    - devices: [X]\n      mig-enabled: false\n",
        "devices",
    ),
]


def _line_of_x(text: str) -> int:
    return text[: text.index("X")].count("\n") + 1


@pytest.mark.parametrize("value", BAD_YAML + BAD_STRINGS)
@pytest.mark.parametrize("field", FIELDS, ids=[f[0] for f in FIELDS])
def test_a_config_number_that_never_ends_is_refused(
    field: Tuple[str, str, str], value: str
) -> None:
    _, template, key = field
    text = template.replace("X", value)
    with pytest.raises(ConfigError) as caught:
        parse(text, "node.yaml")
    err = caught.value
    assert err.path == "node.yaml"
    assert err.line == _line_of_x(template), str(err)
    assert key in err.key, str(err)
    assert str(err).startswith(f"node.yaml:{err.line}: ")


@pytest.mark.parametrize("field", FIELDS, ids=[f[0] for f in FIELDS])
def test_the_command_line_exits_78_on_a_config_nan(
    field: Tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = field[1]
    path = tmp_path / "node.yaml"
    path.write_text(template.replace("X", ".nan"))
    result = run(capsys, "-c", str(path), "validate", "--model", "H100-80GB-HBM3")
    assert result.code == 78, result.err
    assert f"{path}:{_line_of_x(template)}: " in result.err
    assert "Traceback" not in result.err


# (program, the arguments before the option, the option)
OPTIONS: List[Tuple[str, List[str], str]] = [
    ("migrestore", ["apply"], "--lock-timeout"),
    ("migrestore-sim", ["init", "STATE", "--permute-gi-ids"], "--permute-gi-ids"),
    (
        "migrestore-sim",
        ["fail", "STATE", "--call", "nvmlInit_v2", "--error", "X", "--nth"],
        "--nth",
    ),
    ("migrestore-sim", ["latency", "STATE", "--all", "--us"], "--us"),
    ("migrestore-sim", ["run", "STATE", "--gpu", "0", "--ci", "0", "--gi"], "--gi"),
    ("migrestore-sim", ["run", "STATE", "--gpu", "0", "--gi", "0", "--ci"], "--ci"),
    (
        "migrestore-sim",
        ["create-gi", "STATE", "--gpu", "0", "--profile", "1g.10gb", "--placement"],
        "--placement",
    ),
]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize("option", OPTIONS, ids=[f"{o[0]} {o[2]}" for o in OPTIONS])
def test_a_numeric_option_that_never_ends_is_a_usage_error(
    option: Tuple[str, List[str], str],
    value: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    program, before, name = option
    main = cli.main if program == "migrestore" else simcli.main
    state = str(tmp_path / "sim.json")
    argv = [a.replace("STATE", state) for a in before]
    monkeypatch.setenv("MIGRESTORE_STATE", str(tmp_path / "state.json"))
    capsys.readouterr()
    # the option's value comes last: parsing stops at it, before anything runs
    with pytest.raises(SystemExit) as exited:
        main([*argv, f"{name}={value}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert f"argument {name}" in err, err
    assert "usage:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
