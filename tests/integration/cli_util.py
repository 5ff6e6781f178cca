"""Run the real command lines in-process, with their exit codes and output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Sequence

import pytest

from migrestore import cli
from migrestore.simulator import cli as simcli


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def sim(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    capsys.readouterr()
    try:
        code = simcli.main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code or 0, captured.out, captured.err)


def sim_show(capsys: pytest.CaptureFixture[str], state: str) -> Dict[str, Any]:
    result = sim(capsys, "show", state, "--json")
    assert result.code == 0, result.err
    data: Dict[str, Any] = json.loads(result.out)
    return data


def write(path: Any, text: str) -> str:
    path.write_text(text)
    return str(path)


def layout_of(status: Dict[str, Any], index: int) -> Sequence[Any]:
    gpu = status["gpus"][index] if "gpus" in status else status[index]
    return [(gi["profile"], tuple(gi["placement"])) for gi in gpu["instances"]]
