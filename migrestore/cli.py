"""The ``migrestore`` command line: subcommands, and errors mapped to exit codes.

Rules:

1. Every expected error is one line on stderr (``migrestore: error: ...``) and its
   documented exit code; a traceback only for a bug (exit 70) or with ``--debug``.
2. Heavy imports (pynvml, yaml, structlog) happen inside the commands, so ``--help``
   and the pure parts stay fast.
3. Commands that change GPUs take the GPU lock.
4. The cyclic garbage collector is paused while a command runs (restored when ``main``
   returns; the daemon turns it on again once it is READY, before it watches): a start
   allocates thousands of objects that live to the end (modules, classes, the config,
   the profile tables) and reference counting frees the rest, so collections during a
   start only scan what cannot be freed. A converged ``apply`` on 8 GPUs spends about
   a tenth less CPU (measured side by side on a loaded 2-CPU machine).
5. The program's entry (``run``: ``python -m migrestore`` and the ``migrestore`` script;
   ``main`` stays without it for callers whose process goes on) freezes the collector's
   objects (``gc.freeze``) once ``main`` has returned: the interpreter's exit-time
   collections would traverse every object still alive and free nothing the end of
   the process does not free. Everything that runs at exit still runs (``atexit``
   handlers, log flushing, closing files); only garbage in reference cycles is left to
   the end of the process. A converged ``apply`` spends about 20 ms less CPU
   (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Sequence

from migrestore import __version__
from migrestore.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_REBOOT,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    DriverUnavailable,
    MigrestoreError,
)

if TYPE_CHECKING:
    from migrestore.model import RunResult

DEFAULT_CONFIG = "/etc/migrestore.yaml"

EPILOG = f"""\
exit codes:
  {EXIT_OK}   done, or nothing to do
  {EXIT_FAILED}   an action failed (the error names the GPU, the action and the NVML error),
      or a post-apply hook failed after a verified change
  {EXIT_UNAVAILABLE}  no NVIDIA driver (NVML) available
  {EXIT_SOFTWARE}  a bug in migrestore (please report it with the traceback)
  {EXIT_PARTIAL}  partial: a GPU NVML cannot read (fell off the bus...) or a declared GPU
      that is not listed was left as it is; every other GPU was restored and verified
  {EXIT_REBOOT}  reboot needed: an Ampere GPU's pending MIG mode change cannot be activated
      by a reset here (a passthrough GPU, nvidia_drm loaded, NVSwitch peers that may
      not be reset with Fabric Manager down); every other GPU was restored
  {EXIT_CONFIG}  invalid config or infeasible layout; nothing was touched

environment:
  MIGRESTORE_SIMULATE  same as --simulate
  MIGRESTORE_CONFIG    same as -c/--config
  MIGRESTORE_LOCK      the GPU lock (default /run/migrestore.lock)
  MIGRESTORE_STATE     the last-result file (default /run/migrestore/state.json)
  MIGRESTORE_SYSTEMCTL the systemctl to use for client units and nvidia-cdi-refresh
  MIGRESTORE_NVIDIA_SMI, MIGRESTORE_NVIDIA_CTK, MIGRESTORE_CDI_ENV
                       the nvidia-smi, nvidia-ctk and nvidia-cdi-refresh.env of the
                       device node and CDI refresh (default /usr/bin/nvidia-smi,
                       /usr/bin/nvidia-ctk, /etc/nvidia-container-toolkit/...)
"""


def _common(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """The options every command takes; in subcommands they default to 'unset' so a value
    given before the subcommand is kept."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if sub else value

    parser.add_argument(
        "--simulate",
        metavar="SPEC",
        default=default(None),
        help="use simulated GPUs: MODEL[:COUNT][@BRANCH][,...] (fresh, in memory) or a "
        "simulator state file (see migrestore-sim)",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=default(None),
        help=f"config file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--select",
        metavar="NAME",
        default=default(None),
        help="the config name to use from a mig-parted file (mig-configs: NAME)",
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "journal", "console", "json"),
        default=default("auto"),
        help="log format (auto: journal under systemd, console on a terminal)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="debug log lines"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="show tracebacks for errors",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migrestore",
        description="Restore NVIDIA MIG geometry (MIG mode, GPU and compute instances at exact "
        "placements) from a declarative config, and keep it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"migrestore {__version__}")
    _common(parser, sub=False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = subs.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(p, sub=True)
        return p

    p = add("status", "show MIG mode and geometry of every GPU, with placements")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--check",
        action="store_true",
        help="health check for monitors (Node Problem Detector, Nagios, exec probes): one "
        "line of at most 80 characters; exit 0 converged and the last pass fine, 1 not "
        "converged, last pass failed or client units left stopped, 2 unknown (no driver, "
        "no state file)",
    )

    p = add("profiles", "show the GPU-instance profiles of every GPU, with placements")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("plan", "show what apply would change, like a diff")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--force", action="store_true", help="plan to destroy instances with processes")

    p = add("apply", "plan, stop GPU clients, change the GPUs, verify, start the clients again")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument(
        "--force", action="store_true", help="destroy instances even if processes run on them"
    )
    p.add_argument(
        "--no-clients",
        action="store_true",
        help="do not stop and start the configured client units",
    )
    p.add_argument(
        "--lock-timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for another migrestore to finish (default 60)",
    )

    p = add("validate", "check the config: schema, and feasibility on the GPUs")
    p.add_argument(
        "--model",
        metavar="MODEL",
        help="check feasibility against a model's table instead of the GPUs: the bundled "
        "one, else the simulator's (every model 'migrestore-sim models' lists)",
    )

    add("export", "print the current geometry as a config file that apply accepts")

    p = add("daemon", "the boot service: converge, notify systemd, then watch for drift")
    p.add_argument(
        "--once",
        action="store_true",
        help="exit after the first convergence instead of watching",
    )
    return parser


# --------------------------------------------------------------------------- helpers


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds (``nan`` and ``inf`` are refused: a
    wait that never ends is not a timeout)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a finite number of seconds >= 0 (e.g. 60)"
        )
    return value


def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("MIGRESTORE_CONFIG") or DEFAULT_CONFIG)


def _simulate(args: argparse.Namespace) -> Optional[str]:
    return args.simulate or os.environ.get("MIGRESTORE_SIMULATE") or None


def _logger(args: argparse.Namespace) -> Any:
    from migrestore import logs

    logs.configure(args.log_format, "debug" if args.verbose else "info")
    return logs.get_logger()


@contextlib.contextmanager
def _session(args: argparse.Namespace) -> Iterator[Any]:
    """An NVML session on the backend the edge chooses. A shutdown that fails after the
    command's work is done (a verified apply, a status read) is a warning: it changes
    nothing on the GPUs, so it does not turn success into failure."""
    from migrestore import backend
    from migrestore.errors import NvmlError
    from migrestore.nvml import Nvml

    nv = Nvml(backend.choose(_simulate(args)))
    nv.open()
    try:
        yield nv
    except BaseException:
        with contextlib.suppress(MigrestoreError):
            nv.close()
        raise
    try:
        nv.close()
    except NvmlError as exc:
        sys.stderr.write(f"migrestore: warning: {exc} (after the work was done; nothing lost)\n")


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _last_result(simulate: Optional[str]) -> Optional[Dict[str, Any]]:
    from migrestore import backend, statefile

    try:
        return statefile.read_state(backend.state_path(simulate))
    except MigrestoreError as exc:
        sys.stderr.write(f"migrestore: warning: no last result shown: {exc}\n")
        return None


# --------------------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace) -> int:
    from migrestore import backend, render
    from migrestore.errors import NvmlError
    from migrestore.lock import GpuLock
    from migrestore.nvml import VANISHED

    if args.check:
        return _check(args)
    with _session(args) as nv:
        try:
            observed = nv.observe()
        except NvmlError as exc:
            if exc.nvml_error not in VANISHED:
                raise
            # Another process kept changing the GPUs under every read: read once more
            # holding the GPU lock, while no migrestore changes them.
            with GpuLock(backend.lock_path(_simulate(args))):
                observed = nv.observe()
        driver = nv.driver_version()
    last = _last_result(_simulate(args))
    if args.json:
        data = render.status_json(observed, driver)
        data["last_result"] = last
        _print_json(data)
    else:
        sys.stdout.write(render.status_text(observed))
        if last:
            sys.stdout.write(
                f"\nlast result: {last.get('result')} at {last.get('time')}: {last.get('message')}\n"
            )
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    """``status --check``: the verdict of ``health.decide`` on what is read here."""
    from migrestore import backend, engine, health, metrics, publish, statefile
    from migrestore import config as configmod
    from migrestore.errors import DriverUnavailable

    facts: Dict[str, Any] = {}
    state_path = backend.state_path(_simulate(args))
    try:
        with _session(args) as nv:
            observed = nv.observe(devices=False)
    except DriverUnavailable as exc:
        facts["driver_error"] = str(exc)
    except MigrestoreError as exc:
        facts["state_error"] = f"cannot read the GPUs: {exc}"
    if not facts:
        try:
            facts["state"] = statefile.read_state(state_path)
        except MigrestoreError as exc:
            facts["state_error"] = str(exc)
    if facts.get("state") is not None:
        facts["sick"] = [g.identity.describe_sick() for g in observed if g.sick]
        units = list(metrics.left_stopped(facts["state"]))
        for unit in engine.left_stopped(state_path, _logger(args)):
            if unit not in units:
                units.append(unit)
        facts["left_stopped"] = units
        try:
            cfg = configmod.load(_config_path(args), args.select)
        except MigrestoreError as exc:
            facts["config_error"] = str(exc)
        else:
            verdicts = publish.assess(cfg, observed)
            facts["drift"] = [v for v in verdicts.values() if v is not None]
            mig = [g for g in observed if g.mig_current]
            devices = sum(len(gi.cis) for g in mig for gi in g.instances)
            facts["summary"] = f"{len(mig)} MIG GPUs, {devices} MIG devices"
    verdict = health.decide(**facts)
    sys.stdout.write(verdict.line + "\n")
    return verdict.code


def cmd_profiles(args: argparse.Namespace) -> int:
    from migrestore import render

    with _session(args) as nv:
        observed = nv.observe()
    if args.json:
        _print_json(render.profiles_json(observed))
    else:
        sys.stdout.write(render.profiles_text(observed))
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from migrestore import config as configmod
    from migrestore import engine, render

    cfg = configmod.load(_config_path(args), args.select)
    with _session(args) as nv:
        observed = nv.observe()
    plan = engine.decide(cfg, observed, force=args.force).plan
    if args.json:
        _print_json(render.plan_json(plan))
    else:
        sys.stdout.write(render.plan_text(plan))
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from migrestore import backend, engine
    from migrestore import config as configmod
    from migrestore.lock import GpuLock
    from migrestore.model import RunResult
    from migrestore.services import Systemctl

    log = _logger(args)
    cfg = configmod.load(_config_path(args), args.select)
    with _session(args) as nv:
        if args.dry_run:
            from migrestore import render

            plan = engine.decide(cfg, nv.observe(), force=args.force).plan
            sys.stdout.write(render.plan_text(plan))
            return EXIT_OK
        with GpuLock(backend.lock_path(_simulate(args)), timeout=args.lock_timeout):
            ctl = None if args.no_clients else Systemctl()
            try:
                outcome = engine.converge(
                    nv,
                    cfg,
                    log=log,
                    ctl=ctl,
                    force=args.force,
                    state_path=backend.state_path(_simulate(args)),
                    devices=True,  # one observation: the state file lists the MIG devices
                )
            except MigrestoreError as exc:
                try:
                    now = nv.observe(devices=False)
                except MigrestoreError:
                    now = ()
                _write_state(
                    args,
                    RunResult.FAILED,
                    str(exc),
                    now,
                    cfg=cfg,
                    driver=engine.driver_of(nv),
                    error=exc,
                )
                raise
            # read under the lock: another migrestore may change the GPUs right after
            observed = outcome.observed if outcome.devices_read else nv.observe()
        _write_state(
            args,
            outcome.result,
            outcome.summary(),
            observed,
            cfg=cfg,
            outcome=outcome,
            driver=engine.driver_of(nv),
        )
    if outcome.result == RunResult.PARTIAL:
        log.warning("partial", changes=outcome.changes, outcome=outcome.summary())
    elif outcome.converged_before:
        log.info("converged", outcome="nothing to do")
    else:
        log.info("applied", changes=outcome.changes, outcome=outcome.summary())
    if outcome.hook_failures:
        return EXIT_FAILED
    return EXIT_PARTIAL if outcome.result == RunResult.PARTIAL else EXIT_OK


def _write_state(
    args: argparse.Namespace,
    result: RunResult,
    message: str,
    observed: Any,
    *,
    cfg: Any = None,
    outcome: Any = None,
    driver: Optional[str] = None,
    error: Optional[BaseException] = None,
) -> None:
    from migrestore import backend, engine, metrics, publish

    state_path = backend.state_path(_simulate(args))

    def warn(path: str, problem: str) -> None:
        sys.stderr.write(f"migrestore: warning: metrics not written: {problem}\n")

    publisher = publish.Publisher(
        state_path,
        metrics.textfile_path(cfg.metrics_textfile, _simulate(args)) if cfg else None,
        warn,
        lambda: engine.left_stopped(state_path, _logger(args)),
    )
    try:
        publisher.publish(
            engine.state_document(
                result, message, observed, cfg=cfg, outcome=outcome, driver=driver, error=error
            )
        )
    except (OSError, MigrestoreError) as exc:
        sys.stderr.write(f"migrestore: warning: could not write the state file: {exc}\n")


def _warn_unchecked(cfg: Any, why: str) -> None:
    """Where no GPU answers, profile names no bundled table knows are a warning."""
    from migrestore import config as configmod

    unknown = configmod.unknown_profile_names(cfg)
    if unknown:
        sys.stderr.write(
            f"migrestore: warning: {why}: profile names no bundled table lists are "
            f"checked only when a GPU is present: {', '.join(unknown)} "
            "('validate --model MODEL' checks against a model's table)\n"
        )


def cmd_validate(args: argparse.Namespace) -> int:
    from migrestore import config as configmod
    from migrestore import engine

    path = _config_path(args)
    cfg = configmod.load(path, args.select)
    if args.model:
        from migrestore import backend, validate

        table, kind = backend.model_table(args.model)
        lines = validate.against_model(cfg, args.model, table, kind)
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.write(f"{path}: valid for {args.model}\n")
        return EXIT_OK

    try:
        with _session(args) as nv:
            observed = nv.observe()
    except DriverUnavailable as exc:
        _warn_unchecked(cfg, f"no GPU driver ({exc})")
        sys.stdout.write(f"{path}: valid (not checked against any GPU)\n")
        return EXIT_OK
    if not observed:
        _warn_unchecked(cfg, "no GPU")
    plan = engine.decide(cfg, observed, force=True).plan
    changes = len(plan.actions)
    sys.stdout.write(
        f"{path}: valid and feasible on {len(observed)} GPU(s); "
        f"{'converged' if plan.converged else f'{changes} change(s) to apply'}\n"
    )
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from migrestore import config as configmod

    with _session(args) as nv:
        observed = nv.observe()
    sys.stdout.write(configmod.export(observed))
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    from migrestore import daemon

    return daemon.run(
        config_path=_config_path(args),
        select=args.select,
        simulate=_simulate(args),
        log_format=args.log_format,
        verbose=args.verbose,
        once=args.once,
    )


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "status": cmd_status,
    "profiles": cmd_profiles,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "validate": cmd_validate,
    "export": cmd_export,
    "daemon": cmd_daemon,
}


def run() -> int:
    """The program's entry: ``main``, then the objects frozen for the exit (rule 5)."""
    code = main()
    gc.freeze()
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    collecting = gc.isenabled()
    gc.disable()  # rule 4
    try:
        return _main(argv)
    finally:
        if collecting:
            gc.enable()


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except MigrestoreError as exc:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"migrestore: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("migrestore: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception:
        traceback.print_exc()
        sys.stderr.write(
            "migrestore: internal error (a bug): please report it with the traceback above\n"
        )
        return EXIT_SOFTWARE


__all__ = ["EXIT_CONFIG", "build_parser", "main", "run"]
