"""Hidden line breaks: text an editor shows as one line that YAML reads as two (issue 13,
finding 19: a rule hidden behind U+2028 in a comment was applied).

Rules:

1. U+0085, U+2028, U+2029 and a carriage return without a newline are refused anywhere
   in a config file, native or mig-parted, in a comment, a value or a quoted string, and
   in a mig-parted file a native config references: one ConfigError with the file, the
   line and the column an editor shows of the first one; exit 78, nothing changed.
2. Their escapes in a double-quoted string (``"\\u2028"``) are not the character and are
   judged as any other value; a CRLF file stays accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from migrestore.config import load, parse
from migrestore.errors import ConfigError
from tests.reliability.rig import Rig, fast_dir

BREAKS = ["\u2028", "\u2029", "\u0085", "\r"]
IDS = ["U+2028", "U+2029", "U+0085", "lone-CR"]

# A converged-looking config whose comment hides a rule after the break: MIG off on
# every GPU. An editor shows line 4 as one comment.
NATIVE = (
    "version: 1\nclients: []\ngpus:\n"
    "  # keep the GPUs as they are, nothing else BREAK  - {match: all, mig: false}\n"
)
MIG_PARTED = (
    "version: v1\nmig-configs:\n  only:\n"
    "    # reviewed: no GPU changes BREAK    - {devices: all, mig-enabled: false}\n"
)


def _column(template: str) -> Tuple[int, int]:
    before = template[: template.index("BREAK")]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


# (name, template with BREAK where the character goes)
PLACES: List[Tuple[str, str]] = [
    ("native comment", NATIVE),
    ("mig-parted comment", MIG_PARTED),
    ("plain value", "version: 1\nclients: [a.serviceBREAK]\ngpus: []\n"),
    ("double-quoted", 'version: 1\nclients: ["a.serviceBREAK"]\ngpus: []\n'),
    ("single-quoted", "version: 1\nclients: ['a.serviceBREAK']\ngpus: []\n"),
    ("key", "version: 1\ndriftBREAK: {}\ngpus: []\n"),
    ("first line", "BREAKversion: 1\ngpus: []\n"),
    ("after CRLF lines", "version: 1\r\ngpus: []\r\n# endBREAK\r\n"),
]


@pytest.mark.parametrize("char", BREAKS, ids=IDS)
@pytest.mark.parametrize("place", PLACES, ids=[p[0] for p in PLACES])
def test_a_hidden_line_break_is_refused_with_line_and_column(
    place: Tuple[str, str], char: str
) -> None:
    template = place[1]
    line, column = _column(template)
    with pytest.raises(ConfigError) as caught:
        parse(template.replace("BREAK", char), "node.yaml")
    err = caught.value
    assert (err.line, err.column) == (line, column), str(err)
    assert str(err).startswith(f"node.yaml:{line}:{column}: "), str(err)
    assert "line break to YAML but not to editors" in str(err)


def test_the_first_break_is_the_one_named() -> None:
    text = "version: 1\n# a\u2029b\ngpus: [] # \u2028\n"
    with pytest.raises(ConfigError) as caught:
        parse(text, "node.yaml")
    assert (caught.value.line, caught.value.column) == (2, 4)
    assert "U+2029" in caught.value.problem


def test_escapes_and_crlf_are_not_refused() -> None:
    assert parse("version: 1\r\nclients: []\r\ngpus: []\r\n", "a.yaml").rules == ()
    with pytest.raises(ConfigError) as caught:  # judged as a unit name, not as a break
        parse('version: 1\nclients: ["a\\u2028b.service"]\ngpus: []\n', "b.yaml")
    assert "line break" not in caught.value.problem


@pytest.mark.parametrize("char", BREAKS, ids=IDS)
def test_a_referenced_mig_parted_file_is_checked_too(char: str, tmp_path: Path) -> None:
    parted = tmp_path / "parted.yaml"
    parted.write_text(MIG_PARTED.replace("BREAK", char), newline="")
    main = tmp_path / "node.yaml"
    main.write_text(f"version: 1\nclients: []\nmig-parted:\n  file: {parted}\n")
    with pytest.raises(ConfigError) as caught:
        load(str(main))
    line, column = _column(MIG_PARTED)
    assert f"{parted}:{line}:{column}" in str(caught.value), str(caught.value)


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with fast_dir("migrestore-breaks-") as tmp:
        made = Rig(tmp, "h100-80gb-hbm3:2", monkeypatch)
        try:
            yield made
        finally:
            made.close()


@pytest.mark.parametrize("template", [NATIVE, MIG_PARTED], ids=["native", "mig-parted"])
def test_a_rule_hidden_in_a_comment_is_not_applied(
    template: str, rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    # MIG on, one GI on each GPU: what the hidden "mig: false" would destroy
    rig.node.write_config(
        "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n"
        "    instances:\n      - {profile: 7g.80gb}\n"
    )
    assert rig.migrestore(capsys, "apply", "--no-clients").code == 0
    before = rig.changes()
    rig.node.config.write_text(template.replace("BREAK", "\u2028"), encoding="utf-8")
    result = rig.migrestore(capsys, "apply", "--no-clients")
    line, column = _column(template)
    assert result.code == 78, result.err
    assert f"{rig.config_path}:{line}:{column}: " in result.err
    assert rig.changes() == before
    assert all(rig.gpu(i).mig_current and len(rig.gpu(i).gis) == 1 for i in range(2))
