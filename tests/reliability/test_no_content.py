"""No file content in an error (issue 13, finding 17: ``-c /etc/shadow`` printed root's
password hash into the terminal and the journal).

Rules:

1. Whatever a file migrestore reads as root holds, its text appears in no error and no log
   line unless the file parsed as YAML and is a config (its top level has a config's
   keys) and the line is the config's own. Tried through every path that reads a file:
   the config (``-c``, for validate, plan, apply and ``daemon --once``), a mig-parted file
   a native config references, the state file, the stopped-units note, the simulator
   state of ``--simulate``, a hook's executable and the CDI env file.
2. The contents are secret-looking files of every shape the readers meet: a shadow line,
   YAML whose keys, tags, anchors, aliases, tag handles or escapes carry the secret,
   JSON, a list, Latin-1 and binary data. Each run still fails (or, for a file only
   reported on, ignores it) with one clear error, not a traceback.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from migrestore import logs
from migrestore.cdi import Tools, refresh
from tests.integration.cli_util import Result, run
from tests.reliability.rig import Rig, fast_dir

SECRET = "SECRETHASHq7Zk"
HASH = f"$6$rounds=5000${SECRET}$Wd2Yz1"
CONTENTS = {
    "shadow": f"root:{HASH}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n".encode(),
    "shadow-spaced": f"root: {HASH}\nuser: {SECRET}\n".encode(),
    "key": f"{SECRET}: 1\n".encode(),
    "duplicate-key": f"{SECRET}: 1\n{SECRET}: 2\n".encode(),
    "complex-key": f"? {SECRET}\n".encode(),
    "tag": f"!{SECRET} x\n".encode(),
    "tag-handle": f"a: !{SECRET}! y\n".encode(),
    "tag-directive": f"%TAG !{SECRET}! tag:x,2000:\n--- a\n".encode(),
    "anchor": f"&{SECRET} x\n".encode(),
    "alias": f"- *{SECRET}\n".encode(),
    "escape": f'a: "\\q{SECRET}"\n'.encode(),
    "unclosed": f"a: [{SECRET}\n".encode(),
    "json": f'{{"format": "{SECRET}", "{SECRET}": [1]}}'.encode(),
    "json-list": f'["{SECRET}"]'.encode(),
    "list": f"- {SECRET}\n".encode(),
    "latin-1": f"root:{SECRET}\xe9:\n".encode("latin-1"),
    "binary": b"\x7fELF\x00" + SECRET.encode() + b"\x00\xff",
    "nul-late": f"root:{SECRET}\n".encode() + b"\x00",
    "line-separator": f"# x\u2028{SECRET}: 1\n".encode(),
}
LAYOUT = (
    "version: 1\nclients: [nvidia-dcgm.service]\ngpus:\n  - match: all\n    mig: true\n"
    "    instances:\n      - {profile: 7g.80gb}\n"
)


@pytest.fixture(scope="module")
def rig_dir() -> Iterator[Path]:
    with fast_dir("migrestore-content-") as tmp:
        yield tmp


@pytest.fixture
def rig(rig_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path, "h100-80gb-hbm3:1", monkeypatch)
    try:
        made.write_config(LAYOUT)
        yield made
    finally:
        made.close()


def _secret_file(directory: Path, content: bytes) -> Path:
    path = directory / "secret"  # a root-only file, as /etc/shadow is
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def _clean(result: Result) -> List[str]:
    """What is wrong with a run's output: the secret in it, or a traceback."""
    problems = []
    for stream, text in (("stdout", result.out), ("stderr", result.err)):
        if SECRET in text or "rounds=5000" in text:
            shown = [line for line in text.splitlines() if SECRET in line]
            problems.append(f"{stream} shows the file's content: {shown[:2]}")
        if "Traceback" in text:
            problems.append(f"{stream} has a traceback")
    return problems


def _args(rig: Rig, *argv: str) -> Tuple[str, ...]:
    return ("--simulate", rig.state, "--log-format", "journal", *argv)


YAML_SHAPES = sorted(CONTENTS)  # the config readers meet every shape
# the JSON readers (state, note, simulator state) and the hook's exec: one of each kind
FILE_SHAPES = ["shadow", "json", "json-list", "binary", "latin-1", "key"]


class TestNoContentInErrors:
    """Each path migrestore reads a file through, fed each secret-looking content; one
    rig per path, the contents in turn (a rig costs half a second)."""

    def test_config(self, rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
        before = rig.changes()
        problems = {}
        for name in YAML_SHAPES:
            secret = _secret_file(Path(rig.config_path).parent, CONTENTS[name])
            commands = [["validate"], ["apply"]]
            if name == "shadow":
                commands += [["plan"], ["daemon", "--once"]]
            for command in commands:
                result = run(capsys, *_args(rig, "-c", str(secret), *command))
                found = _clean(result)
                if result.code != 78 or str(secret) not in result.err:
                    found.append(f"exit {result.code}: {result.err.strip()}")
                if found:
                    problems[f"{name} {command[0]}"] = found
        assert problems == {}
        assert rig.changes() == before

    def test_referenced_mig_parted_file(self, rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
        problems = {}
        for name in YAML_SHAPES:
            secret = _secret_file(Path(rig.config_path).parent, CONTENTS[name])
            rig.node.write_config(f"version: 1\nclients: []\nmig-parted:\n  file: {secret}\n")
            result = run(capsys, *_args(rig, "-c", rig.config_path, "apply"))
            found = _clean(result)
            if result.code != 78:
                found.append(f"exit {result.code}: {result.err.strip()}")
            if found:
                problems[name] = found
        assert problems == {}

    def test_state_file(self, rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
        state = Path(rig.node.env["MIGRESTORE_STATE"])
        state.parent.mkdir(parents=True, exist_ok=True)
        problems = {}
        for name in FILE_SHAPES:
            state.write_bytes(CONTENTS[name])
            for command in (["status"], ["apply", "--no-clients"]):
                found = _clean(run(capsys, *_args(rig, "-c", rig.config_path, *command)))
                if found:
                    problems[f"{name} {command[0]}"] = found
        assert problems == {}

    def test_stopped_units_note(self, rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
        note = Path(rig.node.env["MIGRESTORE_STATE"] + ".stopped-units")
        note.parent.mkdir(parents=True, exist_ok=True)
        problems = {}
        for name in FILE_SHAPES:
            for command in (["apply"], ["daemon", "--once"], ["status"]):
                note.write_bytes(CONTENTS[name])
                note.chmod(0o600)
                found = _clean(run(capsys, *_args(rig, "-c", rig.config_path, *command)))
                if found:
                    problems[f"{name} {command[0]}"] = found
        assert problems == {}

    def test_simulator_state(
        self, rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        problems = {}
        for name in [*FILE_SHAPES, "tag", "escape"]:
            secret = _secret_file(tmp_path, CONTENTS[name])
            for command in (["status"], ["apply", "--no-clients"]):
                argv = ["--simulate", str(secret), "-c", rig.config_path, "--log-format"]
                result = run(capsys, *argv, "journal", *command)
                found = _clean(result)
                if result.code == 0:
                    found.append("exit 0")
                if found:
                    problems[f"{name} {command[0]}"] = found
        assert problems == {}

    def test_hook_executable(self, rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
        problems = {}
        for name in FILE_SHAPES:
            hook = Path(rig.config_path).parent / "hook"
            hook.write_bytes(b"#!/nonexistent/" + CONTENTS[name])
            hook.chmod(0o755)
            rig.node.write_config(
                LAYOUT.replace("gpus:", f"hooks:\n  post-apply:\n    - argv: [{hook}]\ngpus:")
            )
            result = run(capsys, *_args(rig, "-c", rig.config_path, "apply", "--no-clients"))
            found = _clean(result)
            if found:
                problems[name] = found
        assert problems == {}

    def test_cdi_env_file(self, tmp_path: Path) -> None:
        """The operator's nvidia-cdi-refresh.env (read as root for nvidia-ctk): lines it
        ignores are reported by number, nothing of them is shown."""
        smi = tmp_path / "nvidia-smi"
        ctk = tmp_path / "nvidia-ctk"
        for program, body in ((smi, "exit 0\n"), (ctk, "exit 3\n")):
            program.write_text("#!/bin/sh\n" + body)
            program.chmod(0o755)
        problems = {}
        for name in FILE_SHAPES:
            env_file = _secret_file(tmp_path, CONTENTS[name] + f"\nX={SECRET}\n".encode())
            out = io.StringIO()
            logs.configure("journal", "debug", stream=out)
            tools = Tools(nvidia_smi=str(smi), nvidia_ctk=str(ctk), env_file=str(env_file))
            said = refresh(logs.get_logger(), tools, timeout=30)
            found = _clean(Result(0, "\n".join(said), out.getvalue()))
            if "cdi_env_lines_ignored" not in out.getvalue() and name != "key":
                found.append(f"no line reported as ignored: {out.getvalue()}")
            if found:
                problems[name] = found
        assert problems == {}


def test_a_config_still_shows_its_own_line(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """The rule does not blind the errors of a real config: its own key is named."""
    rig.node.write_config("version: 1\ngpu: []\n")
    result = run(capsys, *_args(rig, "-c", rig.config_path, "validate"))
    assert result.code == 78
    assert f"{rig.config_path}:2: gpu: unknown key (did you mean 'gpus'?)" in result.err


def test_a_file_without_config_keys_names_no_key(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.node.write_config(f"{SECRET}: 1\nother: 2\n")
    result = run(capsys, *_args(rig, "-c", rig.config_path, "validate"))
    assert result.code == 78
    assert "not a migrestore config" in result.err
    assert _clean(result) == []
