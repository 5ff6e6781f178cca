"""hooks: clean environment, no shell, bounded time and output; with small scripts
written to tmp dirs (the CDI refresh: test_cdi.py)."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from migrestore.hooks import (
    CLEAN_PATH,
    OUTPUT_LIMIT,
    hook_environment,
    result_environment,
    run_bounded,
    run_hooks,
)
from migrestore.model import Hook

from .conftest import Journal


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped between the two looks
        return False


def dies(pid: int, bound: float = 30.0) -> bool:
    """Whether ``pid`` is gone within ``bound`` seconds: a SIGKILL sent to a process
    group is acted on when each process next runs, which a loaded machine delays."""
    deadline = time.monotonic() + bound
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


# --------------------------------------------------------------------------- runner


def test_run_bounded_collects_output_and_status(tmp_path: Path) -> None:
    prog = script(tmp_path / "p", "echo out; echo err >&2; exit 3\n")
    result = run_bounded([prog], 10)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.timed_out and not result.ok


def test_run_bounded_kills_the_whole_group_on_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    prog = script(tmp_path / "p", f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    # The bound only has to outlast the program's start (it then waits for ever): a loaded
    # machine must not turn "killed before it forked" into a missing pid file.
    result = run_bounded([prog], 5.0, kill_grace=0.5)
    assert result.timed_out and result.returncode is None
    assert dies(int(pidfile.read_text()))


def test_run_bounded_kills_a_program_that_ignores_sigterm(tmp_path: Path) -> None:
    prog = script(tmp_path / "p", "trap '' TERM\necho started\nwhile :; do sleep 0.05; done\n")
    result = run_bounded([prog], 5.0, kill_grace=0.2)
    assert result.timed_out
    assert result.stdout == "started\n"


def test_run_bounded_caps_output_but_drains_it(tmp_path: Path) -> None:
    prog = script(tmp_path / "p", "head -c 1000000 /dev/zero | tr '\\0' x\n")
    result = run_bounded([prog], 30)
    assert result.ok
    assert len(result.stdout) == OUTPUT_LIMIT
    assert result.dropped == 1_000_000 - OUTPUT_LIMIT


def test_run_bounded_does_not_wait_for_a_background_child_holding_the_pipe(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "child.pid"
    prog = script(tmp_path / "p", f"sleep 300 &\necho $! > {pidfile}\necho done\nexit 0\n")
    try:
        result = run_bounded([prog], 30)
        assert result.ok and result.stdout == "done\n"
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_run_bounded_reports_a_signal(tmp_path: Path) -> None:
    prog = script(tmp_path / "p", "kill -SEGV $$\n")
    assert run_bounded([prog], 10).returncode == -signal.SIGSEGV


def test_run_bounded_raises_oserror_for_a_missing_program(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run_bounded([str(tmp_path / "missing")], 10)


# --------------------------------------------------------------------------- environment


def test_hook_environment_is_clean() -> None:
    assert hook_environment({"MIGRESTORE_RESULT": "applied"}) == {
        "PATH": CLEAN_PATH,
        "LANG": "C.UTF-8",
        "MIGRESTORE_RESULT": "applied",
    }
    with pytest.raises(ValueError, match="'LD_PRELOAD' does not start with MIGRESTORE_"):
        hook_environment({"LD_PRELOAD": "/tmp/x.so"})


def test_result_environment() -> None:
    assert result_environment(
        "applied",
        "applied: 2 GPUs\nchanged",
        "/run/migrestore/state.json",
        "/etc/migrestore.yaml",
        ("GPU-a", "GPU-b"),
    ) == {
        "MIGRESTORE_RESULT": "applied",
        "MIGRESTORE_MESSAGE": "applied: 2 GPUs changed",
        "MIGRESTORE_STATE": "/run/migrestore/state.json",
        "MIGRESTORE_CONFIG": "/etc/migrestore.yaml",
        "MIGRESTORE_CHANGED": "GPU-a,GPU-b",
    }


# --------------------------------------------------------------------------- hooks


def test_a_hook_sees_only_the_clean_environment_and_no_stdin(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    out = tmp_path / "env.txt"
    prog = script(tmp_path / "h", f"env | sort > {out}\npwd >> {out}\ncat >> {out}\n")
    failed = run_hooks([Hook(argv=(prog,))], journal.log, {"MIGRESTORE_RESULT": "applied"})
    assert failed == ()
    assert out.read_text().splitlines() == [
        "LANG=C.UTF-8",
        "MIGRESTORE_RESULT=applied",
        f"PATH={CLEAN_PATH}",
        "PWD=/",
        "/",
    ]
    assert "hunter2" not in "\n".join(journal.lines())


def test_arguments_reach_the_hook_without_a_shell(tmp_path: Path, journal: Journal) -> None:
    out = tmp_path / "args.txt"
    prog = script(tmp_path / "h", f'for a in "$@"; do echo "[$a]"; done > {out}\n')
    run_hooks([Hook(argv=(prog, "a b", "$HOME", "; rm -rf /", "*"))], journal.log, {})
    assert out.read_text().splitlines() == ["[a b]", "[$HOME]", "[; rm -rf /]", "[*]"]


def test_hook_output_is_logged_line_by_line(tmp_path: Path, journal: Journal) -> None:
    prog = script(tmp_path / "h", "echo 'refreshed 3 devices'\necho 'warning: x' >&2\n")
    assert run_hooks([Hook(argv=(prog,), line=12)], journal.log, {}) == ()
    name = f'"{prog} (line 12)"'
    assert journal.lines() == [
        f"<6>hook_started hook={name} timeout=60.0",
        f'<6>hook_output hook={name} line="refreshed 3 devices" stream=stdout',
        f'<6>hook_output hook={name} line="warning: x" stream=stderr',
        f"<6>hook_finished outcome=ok hook={name}",
    ]


def test_hook_output_logging_is_bounded(tmp_path: Path, journal: Journal) -> None:
    prog = script(tmp_path / "h", "i=0; while [ $i -lt 250 ]; do echo line$i; i=$((i+1)); done\n")
    run_hooks([Hook(argv=(prog,))], journal.log, {})
    output = [line for line in journal.lines() if "hook_output " in line]
    assert len(output) == 200
    assert output[-1].endswith("line=line199 stream=stdout")
    assert journal.lines()[-2] == (
        f"<6>hook_output_truncated hook={prog} lines_dropped=50 stream=stdout"
    )


def test_failures_are_reported_and_the_other_hooks_still_run(
    tmp_path: Path, journal: Journal
) -> None:
    marker = tmp_path / "ran"
    failing = script(tmp_path / "fail", "exit 4\n")
    slow = script(tmp_path / "slow", "exec sleep 300\n")
    good = script(tmp_path / "good", f"touch {marker}\n")
    missing = str(tmp_path / "missing")
    failed = run_hooks(
        [
            Hook(argv=(failing, "--x"), line=3),
            Hook(argv=(slow,), timeout=0.3, line=4),
            Hook(argv=(missing,), line=5),
            Hook(argv=(good,), line=6),
        ],
        journal.log,
        {},
    )
    assert failed == (
        f"hook {failing} --x (line 3) exited with status 4; the MIG geometry is kept",
        f"hook {slow} (line 4) timed out after 0.3 s and was killed; the MIG geometry is kept",
        f"hook {missing} (line 5) could not start: No such file or directory "
        "(fix the hooks list in the config)",
    )
    assert marker.exists()
    errors = [line for line in journal.lines() if line.startswith("<3>")]
    assert errors == [
        f'<3>hook_failed outcome="exited with status 4" hook="{failing} --x (line 3)"',
        f'<3>hook_failed outcome="timed out after 0.3 s and was killed" hook="{slow} (line 4)"',
        f'<3>hook_failed outcome="could not start: No such file or directory" '
        f'hook="{missing} (line 5)"',
    ]


def test_a_hook_killed_by_a_signal(tmp_path: Path, journal: Journal) -> None:
    prog = script(tmp_path / "h", "kill -KILL $$\n")
    assert run_hooks([Hook(argv=(prog,))], journal.log, {}) == (
        f"hook {prog} killed by SIGKILL; the MIG geometry is kept",
    )
