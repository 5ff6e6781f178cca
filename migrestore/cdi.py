"""Device nodes and the CDI spec after a pass that changed the MIG geometry.

NVIDIA's driver cannot create the ``/dev/nvidia-caps/nvidia-cap*`` nodes of new GPU and
compute instances itself; ``nvidia-smi`` has ``nvidia-modprobe`` create the missing ones,
and a CDI spec generated before they exist leaves them out, so containers given a MIG
device through CDI cannot open it. NVIDIA's ``nvidia-cdi-refresh.service`` regenerates
the spec with the operator's settings from ``nvidia-cdi-refresh.env``.

Rules:

1. The refresh runs only after a verified pass that changed something (GIs or CIs
   created or destroyed, a MIG mode changed: ``engine`` rule 4), and not at all with
   ``cdi.refresh: never``. A converged pass runs nothing.
2. Device nodes first: ``nvidia-smi -L`` (NVIDIA: running nvidia-smi creates the missing
   nodes), then ``nvidia-ctk system create-device-nodes --control-devices`` (the control
   nodes), as NVIDIA's unit did. Either missing (not installed) is skipped.
3. Then the spec. When ``nvidia-cdi-refresh.service`` is loaded in systemd, it is
   restarted (a oneshot with ``RemainAfterExit=yes``: a start of the active unit would do
   nothing) and waited for, within ``cdi.timeout``. While the system boots or
   ``migrestore.service`` is starting, the refresh is only queued (``--no-block``): it is
   ordered after us (``After=multi-user.target`` in NVIDIA's unit, ``Before=`` in ours),
   so waiting for it would wait for ourselves; it runs once we are done. Otherwise
   ``nvidia-ctk cdi generate`` runs directly with the unit's environment:
   ``NVIDIA_CTK_CDI_OUTPUT_FILE_PATH=/var/run/cdi/nvidia.yaml``, overridden by what
   ``ENV_FILE`` sets (``parse_env_file``, systemd's EnvironmentFile syntax, no shell,
   no expansion; pure).
4. Every program runs from a fixed absolute path (``NVIDIA_SMI``, ``NVIDIA_CTK``,
   systemctl's of ``services.Systemctl``), never through ``$PATH``, after
   ``proc.open_trusted`` checked it as hooks are checked, with a clean environment
   (``PATH``, ``LANG`` and the env file's variables only; systemctl gets ours, as in
   ``services``), stdin /dev/null, cwd ``/``. ``cdi.timeout`` bounds the whole refresh
   (each program gets what the ones before left), so a pass of the watching daemon
   stays within the unit's ``WatchdogSec=`` (the config keeps it at most 240 s). The env file is read with ``proc.read_trusted``: one
   another user can write is refused, and the spec is then not regenerated (a spec
   with the wrong options is worse than a stale one).
5. Nothing here fails the restore: ``refresh`` never raises ``MigrestoreError`` nor
   ``OSError``. Each failure is one warning line (what, which program, exit status) and
   one line in the returned problems, which the pass shows in its summary, state file
   (``hooks_failed``) and metrics. The geometry stands.
6. ``$MIGRESTORE_NVIDIA_SMI``, ``$MIGRESTORE_NVIDIA_CTK`` and ``$MIGRESTORE_CDI_ENV``
   name other paths explicitly (set by whoever starts migrestore, as
   ``$MIGRESTORE_SYSTEMCTL``; tests put stand-ins there); the checks of rule 4 still
   apply. With simulated GPUs the node's real tools are never run: the refresh runs
   only when ``$MIGRESTORE_NVIDIA_CTK`` names one, and nvidia-smi and systemctl only
   when named too.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from migrestore.logs import BoundLogger
from migrestore.proc import Completed, Untrusted, describe_argv, open_trusted, read_trusted
from migrestore.proc import run_bounded as _run_bounded

__all__ = [
    "CDI_OUTPUT",
    "CDI_SERVICE",
    "ENV_FILE",
    "NVIDIA_CTK",
    "NVIDIA_SMI",
    "Tools",
    "parse_env_file",
    "refresh",
]

CDI_OUTPUT = "/var/run/cdi/nvidia.yaml"  # nvidia-cdi-refresh.service's default
CDI_SERVICE = "nvidia-cdi-refresh.service"
SELF_UNIT = "migrestore.service"
ENV_FILE = "/etc/nvidia-container-toolkit/nvidia-cdi-refresh.env"
NVIDIA_CTK = "/usr/bin/nvidia-ctk"  # where the NVIDIA Container Toolkit packages put it
NVIDIA_SMI = "/usr/bin/nvidia-smi"  # where the driver packages put it
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
ENV_FILE_LIMIT = 64 * 1024
LINE_MAX = 300  # characters of a program's last output line kept in a warning
SYSTEMD_RUNTIME = "/run/systemd/system"  # exists exactly when systemd is PID 1
BOOTING = frozenset({"initializing", "starting"})  # is-system-running while booting


# --------------------------------------------------------------------------- env file

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DQ_ESCAPES = '"\\`$'  # what a backslash escapes inside double quotes (systemd's)

# the states of systemd's env-file reader (parse_env_file_internal)
(
    _PRE_KEY,
    _KEY,
    _PRE_VALUE,
    _VALUE,
    _VALUE_ESCAPE,
    _SQ,
    _DQ,
    _DQ_ESCAPE,
    _COMMENT,
    _COMMENT_ESCAPE,
) = range(10)


def parse_env_file(text: str) -> Tuple[Dict[str, str], Tuple[int, ...]]:
    """The variables a systemd ``EnvironmentFile=`` holding ``text`` sets, and the
    numbers of the lines ignored (no ``=``, a name that is not a variable name). Pure.

    Read as systemd reads it: lines starting with ``#`` or ``;`` are comments; blanks
    before a key, around ``=`` and at the end of an unquoted value are dropped; a
    backslash escapes the next character outside quotes and ``"\\`$`` inside double
    quotes, and a backslash before a newline continues the line; single quotes are
    literal; quoted parts and plain parts join; quotes may span lines. No expansion, no
    command substitution; a later assignment wins.
    """
    env: Dict[str, str] = {}
    bad: List[int] = []
    state = _PRE_KEY
    key: List[str] = []
    value: List[str] = []
    key_line = line = 1
    trailing = 0  # unescaped blanks at the end of an unquoted value

    def push() -> None:
        name = "".join(key).rstrip(" \t")
        text_value = "".join(value)
        if trailing:
            text_value = text_value[:-trailing]
        if _NAME.match(name):
            env[name] = text_value
        else:
            bad.append(key_line)

    for ch in text.replace("\r\n", "\n").replace("\r", "\n"):
        if state == _PRE_KEY:
            if ch in "#;":
                state = _COMMENT
            elif not ch.isspace():
                state, key, value, trailing, key_line = _KEY, [ch], [], 0, line
        elif state == _KEY:
            if ch == "\n":
                bad.append(key_line)
                state = _PRE_KEY
            elif ch == "=":
                state = _PRE_VALUE
            else:
                key.append(ch)
        elif state == _PRE_VALUE:
            if ch == "\n":
                push()
                state = _PRE_KEY
            elif ch == "'":
                state = _SQ
            elif ch == '"':
                state = _DQ
            elif ch == "\\":
                state = _VALUE_ESCAPE
            elif not ch.isspace():
                value.append(ch)
                state, trailing = _VALUE, 0
        elif state == _VALUE:
            if ch == "\n":
                push()
                state = _PRE_KEY
            elif ch == "\\":
                state, trailing = _VALUE_ESCAPE, 0
            else:
                value.append(ch)
                trailing = trailing + 1 if ch.isspace() else 0
        elif state == _VALUE_ESCAPE:
            state = _VALUE
            if ch != "\n":
                value.append(ch)
        elif state == _SQ:
            if ch == "'":
                state = _PRE_VALUE
            else:
                value.append(ch)
        elif state == _DQ:
            if ch == '"':
                state = _PRE_VALUE
            elif ch == "\\":
                state = _DQ_ESCAPE
            else:
                value.append(ch)
        elif state == _DQ_ESCAPE:
            state = _DQ
            if ch in _DQ_ESCAPES:
                value.append(ch)
            elif ch != "\n":
                value.extend(("\\", ch))
        elif state == _COMMENT:
            if ch == "\\":
                state = _COMMENT_ESCAPE
            elif ch == "\n":
                state = _PRE_KEY
        else:  # _COMMENT_ESCAPE
            state = _COMMENT
        if ch == "\n":
            line += 1
    if state in (_PRE_VALUE, _VALUE, _VALUE_ESCAPE, _SQ, _DQ, _DQ_ESCAPE):
        push()
    elif state == _KEY:
        bad.append(key_line)
    return env, tuple(bad)


# --------------------------------------------------------------------------- programs


@dataclass(frozen=True)
class Tools:
    """Where the programs and the env file are (rule 6); None: not to be used."""

    nvidia_smi: Optional[str] = NVIDIA_SMI
    nvidia_ctk: Optional[str] = NVIDIA_CTK
    systemctl: Optional[str] = None  # None: no systemd to ask
    env_file: str = ENV_FILE

    @classmethod
    def for_node(cls, simulated: bool) -> Tools:
        """The tools of rule 6, from the environment."""
        from migrestore.services import Systemctl

        env = os.environ
        ctl = Systemctl()
        systemd = ctl.explicit or os.path.isdir(SYSTEMD_RUNTIME)
        if simulated:
            return cls(
                nvidia_smi=env.get("MIGRESTORE_NVIDIA_SMI") or None,
                nvidia_ctk=env.get("MIGRESTORE_NVIDIA_CTK") or None,
                systemctl=ctl.binary if ctl.explicit else None,
                env_file=env.get("MIGRESTORE_CDI_ENV") or ENV_FILE,
            )
        return cls(
            nvidia_smi=env.get("MIGRESTORE_NVIDIA_SMI") or NVIDIA_SMI,
            nvidia_ctk=env.get("MIGRESTORE_NVIDIA_CTK") or NVIDIA_CTK,
            systemctl=ctl.binary if systemd else None,
            env_file=env.get("MIGRESTORE_CDI_ENV") or ENV_FILE,
        )


class _Missing(Exception):
    """The program is not installed (its fixed path does not exist)."""


def _last_line(result: Completed) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return f": {lines[-1].strip()[:LINE_MAX]}" if lines else ""


class _Run:
    """Runs the programs of one refresh; collects one problem line per failure."""

    def __init__(self, log: BoundLogger, timeout: float) -> None:
        self.log = log
        self.timeout = timeout  # of the program running now (what is left of the budget)
        self.deadline = time.monotonic() + timeout
        self.problems: List[str] = []

    def warn(self, step: str, problem: str) -> None:
        self.log.warning("cdi_refresh_failed", step=step, error=problem)
        self.problems.append(f"{step}: {problem}")

    def run(
        self, step: str, argv: Sequence[str], env: Optional[Mapping[str, str]]
    ) -> Optional[Completed]:
        """``argv`` per rule 4. None after a failure to start (warned); _Missing when the
        program does not exist."""
        command = describe_argv(argv)
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.warn(step, f"{command} not run: cdi.timeout was used up by the steps before")
            return None
        self.timeout = left
        try:
            program = open_trusted(argv[0])
        except FileNotFoundError:
            raise _Missing(argv[0]) from None
        except Untrusted as err:
            self.warn(step, f"refused to run {argv[0]}: {err}")
            return None
        except OSError as err:
            self.warn(step, f"cannot open {argv[0]}: {err.strerror or err}")
            return None
        try:
            return _run_bounded(argv, self.timeout, env=env, cwd="/", program_fd=program)
        except OSError as err:
            self.warn(step, f"cannot run {command}: {err.strerror or err}")
            return None
        finally:
            os.close(program)

    def check(self, step: str, result: Optional[Completed]) -> bool:
        """True when ``result`` ran fine; else one warning with the exit status."""
        if result is None:
            return False
        if result.ok:
            self.log.info("cdi_step_done", step=step, program=result.argv[0], outcome="ok")
            return True
        self.warn(
            step,
            f"{describe_argv(result.argv)} {result.outcome(self.timeout)}{_last_line(result)}",
        )
        return False


def _base_env() -> Dict[str, str]:
    return {"PATH": CLEAN_PATH, "LANG": "C.UTF-8"}


def _nodes(run: _Run, tools: Tools) -> None:
    """Rule 2: the MIG capability nodes, then the control nodes."""
    if tools.nvidia_smi:
        try:
            run.check(
                "device nodes", run.run("device nodes", (tools.nvidia_smi, "-L"), _base_env())
            )
        except _Missing:
            run.log.info(
                "cdi_step_skipped",
                step="device nodes",
                program=tools.nvidia_smi,
                outcome="not installed",
            )
    if tools.nvidia_ctk:
        argv = (tools.nvidia_ctk, "system", "create-device-nodes", "--control-devices")
        with contextlib.suppress(_Missing):  # a missing nvidia-ctk is said by the spec step
            run.check("control device nodes", run.run("control device nodes", argv, _base_env()))


def _service(run: _Run, tools: Tools) -> Optional[bool]:
    """Rule 3 with systemd: None when nvidia-cdi-refresh.service is not loaded (or
    systemd cannot be asked); else whether it was restarted (or queued) fine."""
    ctl = tools.systemctl
    if not ctl:
        return None
    env = None  # systemctl gets our environment, as services.Systemctl's calls do
    step = "CDI refresh"
    try:
        shown = run.run(
            step,
            (ctl, "--no-ask-password", "show", "--property=LoadState", "--value", CDI_SERVICE),
            env,
        )
    except _Missing:
        return None
    if shown is None or not shown.ok or shown.stdout.strip() != "loaded":
        return None
    queued_only = False
    try:
        system = run.run(step, (ctl, "--no-ask-password", "is-system-running"), env)
        self_state = run.run(step, (ctl, "--no-ask-password", "is-active", SELF_UNIT), env)
    except _Missing:
        return None
    if system is not None and system.stdout.strip() in BOOTING:
        queued_only = True
    if self_state is not None and self_state.stdout.strip() == "activating":
        queued_only = True
    argv: Tuple[str, ...] = (ctl, "--no-ask-password", "restart")
    argv += ("--no-block", CDI_SERVICE) if queued_only else (CDI_SERVICE,)
    try:
        result = run.run(step, argv, env)
    except _Missing:
        return None
    if not run.check(step, result):
        return False
    run.log.info(
        "cdi_refreshed",
        unit=CDI_SERVICE,
        outcome="queued: it runs once the boot or our start is done" if queued_only else "ok",
    )
    return True


def _generate(run: _Run, tools: Tools) -> None:
    """Rule 3 without the service: nvidia-ctk cdi generate with the operator's env file."""
    step = "CDI refresh"
    if not tools.nvidia_ctk:
        return
    env = _base_env()
    env["NVIDIA_CTK_CDI_OUTPUT_FILE_PATH"] = CDI_OUTPUT
    try:
        text = read_trusted(tools.env_file, ENV_FILE_LIMIT)
    except FileNotFoundError:
        text = ""
    except Untrusted as err:
        run.warn(step, f"refused to read {tools.env_file}: {err}; the CDI spec was not regenerated")
        return
    except OSError as err:
        run.warn(
            step,
            f"cannot read {tools.env_file}: {err.strerror or err}; the CDI spec was not "
            "regenerated",
        )
        return
    values, bad = parse_env_file(text)
    if bad:
        run.log.warning(
            "cdi_env_lines_ignored",
            path=tools.env_file,
            lines=",".join(str(n) for n in bad),
            outcome="ignored as systemd ignores them",
        )
    env.update(values)
    argv = (tools.nvidia_ctk, "cdi", "generate")
    try:
        result = run.run(step, argv, env)
    except _Missing:
        run.log.info(
            "cdi_step_skipped", step=step, program=tools.nvidia_ctk, outcome="not installed"
        )
        return
    if run.check(step, result):
        run.log.info("cdi_refreshed", path=env["NVIDIA_CTK_CDI_OUTPUT_FILE_PATH"], outcome="ok")


def refresh(log: BoundLogger, tools: Tools, timeout: float = 60.0) -> Tuple[str, ...]:
    """Rules 2 and 3 after a change; the problems, one line each (empty: all fine).
    Never raises for a program or file that fails (rule 5)."""
    if not tools.nvidia_ctk:
        log.debug("cdi_refresh_skipped", outcome="simulated GPUs: the node's CDI spec is kept")
        return ()
    run = _Run(log, timeout)
    _nodes(run, tools)
    if _service(run, tools) is None:
        _generate(run, tools)
    return tuple(run.problems)
