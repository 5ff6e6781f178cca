"""Hostile input: bad configs, fuzzed configs, bad --simulate specs and bad state files.

Rules:

1. Every file of the corpus (``corpus/``, listed with the text its message must contain
   in ``corpus/MANIFEST``) and every generated one (too large, a directory, a dangling
   symlink, a FIFO, a device, a file another user owns or can write) is given to
   ``migrestore apply`` on simulated GPUs. Each must end with exit 78, exactly one line
   on stderr (``migrestore: error: FILE...``) that names the file, and zero NVML changes
   (the simulator's change count stays where it was).
2. Fuzzing (hypothesis, derandomized): schema-shaped documents with wrong types and
   random keys, mutated copies of the shipped examples, and raw bytes, through
   ``config.parse``/``config.load`` and through ``migrestore validate``: the outcome is a
   Config or a ConfigError (exit 0 or 78), never another exception (exit 70).
3. Malformed ``--simulate`` specs, simulator state files and migrestore state files give
   one clear error line and never a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from migrestore import config
from migrestore.errors import ConfigError
from migrestore.model import Config
from tests.integration.cli_util import Result, run
from tests.reliability.rig import Rig, fast_dir

CORPUS = Path(__file__).resolve().with_name("corpus")
EXAMPLES = Path(__file__).resolve().parents[2] / "etc" / "examples"
ROOT = os.geteuid() == 0
NOBODY = 65534


def manifest() -> List[Tuple[str, str]]:
    rows = []
    for line in (CORPUS / "MANIFEST").read_text(encoding="utf-8").splitlines():
        name, _, expect = line.partition("\t")
        rows.append((name, expect))
    return rows


def corpus_params() -> List[Any]:
    return [pytest.param(name, expect, id=name) for name, expect in manifest()]


class Node:
    """A simulated node shared by the tests of this module: 2 H100, MIG off, so any
    config that were accepted would change them."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def apply(self, capsys: pytest.CaptureFixture[str], path: str, *extra: str) -> Result:
        return run(
            capsys,
            "--simulate",
            self.rig.state,
            "-c",
            path,
            "--log-format",
            "json",
            *extra,
            "apply",
        )

    def refused(self, capsys: pytest.CaptureFixture[str], path: str, expect: str = "") -> str:
        """Rule 1 for ``path``; returns the message."""
        before = self.rig.changes()
        result = self.apply(capsys, path)
        lines = result.err.splitlines()
        assert result.code == 78, (result.code, result.err)
        assert len(lines) == 1, lines
        assert "Traceback" not in result.err
        line = lines[0]
        assert line.startswith(f"migrestore: error: {path}"), line
        assert expect in line, line
        assert result.out == ""
        assert self.rig.changes() == before
        return line


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with pytest.MonkeyPatch.context() as mp, fast_dir("migrestore-hostile-") as tmp:
        rig = Rig(tmp, "h100-80gb-hbm3:2", mp)
        try:
            yield Node(rig)
        finally:
            rig.close()


def test_the_corpus_holds_at_least_60_bad_configs() -> None:
    names = [name for name, _ in manifest()]
    assert len(names) >= 60
    assert sorted(names) == sorted(p.name for p in CORPUS.glob("*.yaml"))


@pytest.mark.parametrize(("name", "expect"), corpus_params())
def test_corpus_config_is_refused_with_exit_78_one_line_and_no_change(
    name: str, expect: str, node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    node.refused(capsys, str(CORPUS / name), expect)


# --------------------------------------------------------------------------- generated


def test_a_file_over_1_mib_is_refused(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("version: 1\ngpus: []\n" + "# padding\n" * 110_000)
    assert path.stat().st_size > 1 << 20
    node.refused(capsys, str(path), "1 MiB")


def test_a_huge_single_line_is_refused(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "one-line.yaml"
    path.write_text("version: 1\nclients: [" + "a.service, " * 200_000 + "]\ngpus: []\n")
    node.refused(capsys, str(path), "1 MiB")


def test_two_thousand_rules_with_a_bad_last_one_name_its_line(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rules = "".join(f"  - {{match: {{index: {i}}}, mig: false}}\n" for i in range(2_000))
    path = tmp_path / "many-rules.yaml"
    path.write_text("version: 1\nclients: []\ngpus:\n" + rules + "  - {match: all, mig: sure}\n")
    line = node.refused(capsys, str(path), "mig")
    assert f"{path}:{3 + 2_000 + 1}:" in line


def test_a_directory_is_refused(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "conf.d").mkdir()
    node.refused(capsys, str(tmp_path / "conf.d"), "directory")


def test_a_dangling_symlink_is_refused(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "link.yaml").symlink_to(tmp_path / "gone.yaml")
    node.refused(capsys, str(tmp_path / "link.yaml"), "dangling symlink")


def test_a_symlink_loop_is_refused(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    node.refused(capsys, str(tmp_path / "a.yaml"))


def test_a_fifo_is_refused_without_blocking(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")
    node.refused(capsys, str(tmp_path / "fifo.yaml"), "not a regular file")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_is_refused_without_reading_it(
    device: str, node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    node.refused(capsys, device, "not a regular file")


def test_a_missing_file_is_refused(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    node.refused(capsys, str(tmp_path / "absent.yaml"), "does not exist")


VALID = "version: 1\nclients: []\ngpus:\n  - match: all\n    mig: true\n"


@pytest.mark.skipif(not ROOT, reason="chown needs root")
@pytest.mark.parametrize(
    ("owner", "mode", "expect"),
    [
        (NOBODY, 0o644, f"owned by uid {NOBODY}, not root"),
        (0, 0o646, "writable by group or others (mode 0646)"),
        (0, 0o664, "writable by group or others (mode 0664)"),
        (NOBODY, 0o600, f"owned by uid {NOBODY}"),
    ],
)
def test_a_config_another_user_owns_or_can_write_is_refused_with_the_fix(
    owner: int,
    mode: int,
    expect: str,
    node: Node,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "migrestore.yaml"
    path.write_text(VALID)
    os.chown(path, owner, 0)
    os.chmod(path, mode)
    line = node.refused(capsys, str(path), expect)
    assert f"chown root:root {path} && chmod 0644 {path}" in line


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_a_mig_parted_file_another_user_owns_is_refused(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    referenced = tmp_path / "mig-parted.yaml"
    referenced.write_text(
        "version: v1\nmig-configs:\n  only:\n    - {devices: all, mig-enabled: false}\n"
    )
    os.chown(referenced, NOBODY, 0)
    path = tmp_path / "migrestore.yaml"
    path.write_text(f"version: 1\nclients: []\nmig-parted: {{file: {referenced}}}\n")
    before = node.rig.changes()
    result = node.apply(capsys, str(path))
    assert result.code == 78 and len(result.err.splitlines()) == 1, result.err
    assert f"{referenced}" in result.err and f"owned by uid {NOBODY}" in result.err
    assert node.rig.changes() == before


# --------------------------------------------------------------------------- fuzzing

KEYS = [
    "version",
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
    "gpus",
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
    "mig-enabled",
    "mig-devices",
    "device-filter",
]
WORDS = [
    "all",
    "1g.10gb",
    "3g.40gb",
    "1c.3g.40gb",
    "7g.80gb",
    "1g.10gb+me",
    "restore",
    "warn",
    "allow",
    "never",
    "nvidia-dcgm.service",
    "/usr/bin/true",
    "GPU-d66a6dd8-0874-5ca4-baec-ad40494a6f9b",
    "00000000:18:00.0",
    "0x233010DE",
    "NVIDIA H100*",
    "v1",
    "5m",
    "1500ms",
]
scalars = st.one_of(
    st.sampled_from(WORDS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=6
        ),
    ),
    max_leaves=20,
)


PROFILES = [
    "1g.10gb",
    "1g.10gb+me",
    "1g.20gb",
    "2g.20gb",
    "3g.40gb",
    "4g.40gb",
    "7g.80gb",
    "1g.5gb",
    "3g.20gb",
    "1g.24gb",
    "2g.48gb+gfx",
    "3g.45gb",
    "1c.3g.40gb",
]
COMPUTE = [
    "1c.3g.40gb",
    "2c.3g.40gb",
    "3g.40gb",
    "1c.4g.40gb",
    "2c.7g.80gb",
    "1g.10gb",
    "4c.7g.80gb",
]
maybe_wrong = scalars  # a value of any type where another one belongs
selectors = st.dictionaries(
    st.sampled_from(["index", "uuid", "pci-bus-id", "model", "device-id", "serial"]),
    st.one_of(
        st.integers(-1, 9),
        st.sampled_from(WORDS),
        st.lists(st.one_of(st.integers(-1, 9), st.sampled_from(WORDS)), max_size=3),
    ),
    max_size=3,
)
instances = st.fixed_dictionaries(
    {"profile": st.one_of(st.sampled_from(PROFILES), maybe_wrong)},
    optional={
        "count": st.one_of(st.integers(-1, 9), maybe_wrong),
        "placement": st.one_of(
            st.integers(-1, 9), st.lists(st.integers(-1, 9), max_size=4), maybe_wrong
        ),
        "compute": st.one_of(st.lists(st.sampled_from(COMPUTE), max_size=4), maybe_wrong),
    },
)
rules = st.fixed_dictionaries(
    {
        "match": st.one_of(st.just("all"), selectors, maybe_wrong),
        "mig": st.one_of(st.booleans(), maybe_wrong),
    },
    optional={"instances": st.one_of(st.lists(instances, max_size=6), maybe_wrong)},
)


def shaped() -> st.SearchStrategy[Dict[str, Any]]:
    """A native config close to a valid one: right keys, plausible values, some of them
    of the wrong type or out of range."""
    return st.fixed_dictionaries(
        {
            "version": st.sampled_from([1] * 12 + ["1", "v1", 2, 1.0, None]),
            "gpus": st.lists(rules, max_size=3),
        },
        optional={
            "clients": st.one_of(
                st.lists(
                    st.sampled_from(["dcgm.service", "nvsm.service", "-x.service", "a b"]),
                    max_size=3,
                ),
                maybe_wrong,
            ),
            "client-timeout": st.one_of(
                st.sampled_from(["90", "5m", "1500ms", "-1", "1e9"]), maybe_wrong
            ),
            "driver-wait": st.one_of(st.integers(-5, 5000), maybe_wrong),
            "ampere-reset": st.one_of(st.sampled_from(["allow", "never", "maybe"]), maybe_wrong),
            "drift": st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "policy": st.sampled_from(["restore", "warn", "ignore", "panic"]),
                        "interval": st.one_of(
                            st.sampled_from(["1s", "0", "24h", "25h"]), maybe_wrong
                        ),
                    },
                ),
                maybe_wrong,
            ),
            "hooks": st.one_of(
                st.fixed_dictionaries(
                    {
                        "post-apply": st.lists(
                            st.fixed_dictionaries({"argv": st.lists(maybe_wrong, max_size=3)}),
                            max_size=2,
                        )
                    }
                ),
                maybe_wrong,
            ),
        },
    )


def outcome(text: str) -> Optional[Config]:
    """Rule 2: a Config or a ConfigError, nothing else."""
    try:
        parsed = config.parse(text, "fuzz.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.yaml")
        event(f"refused at {exc.key.split('.')[0].split('[')[0] or 'the document'}")
        return None
    event("accepted")
    return parsed


FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@FUZZ
@given(shaped())
def test_fuzz_schema_shaped_documents(doc: Dict[str, Any]) -> None:
    outcome(yaml.safe_dump(doc, allow_unicode=True))


def rules_only() -> st.SearchStrategy[Dict[str, Any]]:
    """A valid top level around fuzzed rules, so the fuzz reaches the rule and layout checks."""
    return st.fixed_dictionaries(
        {
            "version": st.just(1),
            "clients": st.just([]),
            "gpus": st.lists(rules, min_size=1, max_size=3),
        }
    )


@FUZZ
@given(rules_only())
def test_fuzz_rules(doc: Dict[str, Any]) -> None:
    outcome(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(documents)
def test_fuzz_any_yaml_document(doc: Any) -> None:
    outcome(yaml.safe_dump(doc, allow_unicode=True))


def _examples() -> List[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*.yaml"))]


@FUZZ
@given(
    st.sampled_from(_examples()),
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 3), st.text(max_size=4)), max_size=6
    ),
)
def test_fuzz_mutated_shipped_examples(text: str, edits: List[Tuple[int, int, str]]) -> None:
    for position, length, insert in edits:
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + length :]
    outcome(text)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_raw_bytes_through_load(data: bytes) -> None:
    with fast_dir("migrestore-fuzz-") as tmp:
        path = tmp / "raw.yaml"
        path.write_bytes(data)
        try:
            config.load(str(path), require_secure=False)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(rules_only())
def test_fuzz_through_migrestore_validate(doc: Dict[str, Any]) -> None:
    with fast_dir("migrestore-fuzz-") as tmp:
        path = tmp / "migrestore.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        with pytest.MonkeyPatch.context() as mp:
            capture = _Capture(mp)
            code = capture.main(
                ["-c", str(path), "validate", "--model", "h100-80gb-hbm3", "--log-format", "json"]
            )
    assert code in (0, 78), capture.err
    assert "Traceback" not in capture.err
    if code == 78:
        assert len(capture.err.splitlines()) == 1
    event("valid" if code == 0 else "refused (78)")


class _Capture:
    """``cli.main`` with its stdout and stderr captured (hypothesis runs a test many
    times, and function-scoped fixtures such as capsys would be shared by them)."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        import io
        import sys

        self.out = io.StringIO()
        self.errs = io.StringIO()
        mp.setattr(sys, "stdout", self.out)
        mp.setattr(sys, "stderr", self.errs)

    @property
    def err(self) -> str:
        return self.errs.getvalue()

    def main(self, argv: List[str]) -> int:
        from migrestore import cli

        return cli.main(argv)


# --------------------------------------------------------------------------- --simulate

BAD_SPECS = [
    "",
    "h100",
    "nosuchmodel:2",
    "h100-80gb-hbm3:0",
    "h100-80gb-hbm3:-1",
    "h100-80gb-hbm3:two",
    "h100-80gb-hbm3:1e3",
    "h100-80gb-hbm3:99999999999999999999",
    "h100-80gb-hbm3:100000000",
    "h100-80gb-hbm3:40,h100-80gb-hbm3:40",
    "h100-80gb-hbm3:2,",
    ",,,",
    ":",
    "h100-80gb-hbm3::2",
    "x" * 5000,
    "h100-80gb-hbm3:2;rm -rf /",
    "/nonexistent/state.json",
    "gpus.json",
]


def spec_params() -> List[Any]:
    return [pytest.param(spec, id=spec[:30] or "empty") for spec in BAD_SPECS]


@pytest.mark.parametrize("spec", spec_params())
def test_a_malformed_simulate_spec_is_one_clear_error(
    spec: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MIGRESTORE_SIMULATE", raising=False)
    result = run(capsys, "--simulate", spec, "status")
    lines = result.err.splitlines()
    if spec == "":  # an empty spec means "no simulator": the real driver, absent here
        assert result.code == 69, result.err
    else:
        assert result.code == 1, result.err
    assert len(lines) == 1 and lines[0].startswith("migrestore: error: "), lines
    assert "Traceback" not in result.err


def _fresh_state(tmp: Path) -> Dict[str, Any]:
    from migrestore.simulator import cli as simcli

    path = tmp / "fresh.json"
    assert simcli.main(["init", str(path), "h100-80gb-hbm3:1"]) == 0
    data: Dict[str, Any] = json.loads(path.read_text())
    return data


def _gpu0(good: Dict[str, Any], **changes: Any) -> Dict[str, Any]:
    return {**good, "gpus": [{**good["gpus"][0], **changes}]}


def _huge_number(good: Dict[str, Any]) -> str:
    return json.dumps(good).replace('"change_count": ', '"change_count": ' + "9" * 5000, 1)


# name -> the file's content made from a fresh state (None: a directory)
SIM_STATES: Dict[str, Callable[[Dict[str, Any]], Any]] = {
    "not-json": lambda g: "{gpus: [",
    "truncated": lambda g: json.dumps(g)[:-40],
    "json-list": lambda g: [g],
    "json-number": lambda g: 42,
    "empty-object": lambda g: {},
    "wrong-format": lambda g: {**g, "format": "migrestore-sim/9"},
    "gpus-not-a-list": lambda g: {**g, "gpus": {"0": g["gpus"][0]}},
    "unknown-model": lambda g: _gpu0(g, model="h900-1tb"),
    "index-string": lambda g: _gpu0(g, index="zero"),
    "change-count-float": lambda g: {**g, "change_count": 1.5},
    "holders-strings": lambda g: _gpu0(g, holders=["init"]),
    "nested-bomb": lambda g: "[" * 100_000 + "]" * 100_000,
    "huge-number": _huge_number,
    "binary": lambda g: b"\x00\xff" * 100,
    "latin1": lambda g: b'{"format": "caf\xe9"}',
    "empty": lambda g: b"",
    "directory": lambda g: None,
}


def sim_state_params() -> List[Any]:
    return [pytest.param(name, id=name) for name in SIM_STATES]


@pytest.mark.parametrize("name", sim_state_params())
def test_a_malformed_simulator_state_file_is_one_clear_error(
    name: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRESTORE_SIM_BOOT_ID_FILE", str(tmp_path / "boot_id"))
    (tmp_path / "boot_id").write_text("boot-1\n")
    value = SIM_STATES[name](_fresh_state(tmp_path))
    path = tmp_path / f"{name}.json"
    if value is None:
        path.mkdir()
    elif isinstance(value, bytes):
        path.write_bytes(value)
    else:
        path.write_text(value if isinstance(value, str) else json.dumps(value))
    result = run(capsys, "--simulate", str(path), "status")
    lines = result.err.splitlines()
    assert result.code == 1, result.err
    assert len(lines) == 1 and lines[0].startswith("migrestore: error: "), lines
    assert str(path) in lines[0], lines
    assert "Traceback" not in result.err


BAD_RESULTS: Dict[str, bytes] = {
    "not-json": b"{result: applied",
    "truncated": b'{"version": 1, "result": "appl',
    "list": b"[1, 2]",
    "no-version": b'{"result": "applied"}',
    "version-string": b'{"version": "1"}',
    "version-from-the-future": b'{"version": 99, "result": "applied"}',
    "binary": b"\x00\x01\xfe\xff" * 64,
    "latin1": b'{"version": 1, "message": "caf\xe9"}',
    "empty": b"",
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "huge-number": b'{"version": 1' + b"0" * 5000 + b"}",
}


def result_params() -> List[Any]:
    return [pytest.param(name, id=name) for name in sorted(BAD_RESULTS)]


@pytest.mark.parametrize("name", result_params())
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_malformed_migrestore_state_file_never_gives_a_traceback(
    name: str,
    fmt: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "run" / "state.json"
    state.parent.mkdir()
    state.write_bytes(BAD_RESULTS[name])
    monkeypatch.setenv("MIGRESTORE_STATE", str(state))
    extra = ["--json"] if fmt == "json" else []
    result = run(capsys, "--simulate", "h100-80gb-hbm3:1", "status", *extra)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    if fmt == "json":
        assert result.json()["last_result"] is None


def test_status_says_why_it_shows_no_last_result(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(BAD_RESULTS["truncated"])
    monkeypatch.setenv("MIGRESTORE_STATE", str(state))
    result = run(capsys, "--simulate", "h100-80gb-hbm3:1", "status")
    assert result.code == 0
    assert str(state) in result.err and "not valid JSON" in result.err
