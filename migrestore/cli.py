"""The ``migrestore`` command line: subcommands, and errors mapped to exit codes.

Rules:

1. Every expected error is one line on stderr (``migrestore: error: ...``) and its
   documented exit code; a traceback only for a bug (exit 70) or with ``--debug``.
2. Heavy imports (pynvml, yaml, structlog) happen inside the commands, so ``--help``
   and the pure parts stay fast.
3. Commands that change GPUs take the GPU lock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from migrestore import __version__
from migrestore.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    MigrestoreError,
)

DEFAULT_CONFIG = "/etc/migrestore.yaml"

EPILOG = f"""\
exit codes:
  {EXIT_OK}   done, or nothing to do
  {EXIT_FAILED}   an action failed (the error names the GPU, the action and the NVML error),
      or a post-apply hook failed after a verified change
  {EXIT_UNAVAILABLE}  no NVIDIA driver (NVML) available
  {EXIT_SOFTWARE}  a bug in migrestore (please report it with the traceback)
  {EXIT_CONFIG}  invalid config or infeasible layout; nothing was touched

environment:
  MIGRESTORE_SIMULATE  same as --simulate
  MIGRESTORE_CONFIG    same as -c/--config
  MIGRESTORE_LOCK      the GPU lock (default /run/migrestore.lock)
  MIGRESTORE_STATE     the last-result file (default /run/migrestore/state.json)
  MIGRESTORE_SYSTEMCTL the systemctl to use for client units
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
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for another migrestore to finish (default 60)",
    )

    p = add("validate", "check the config: schema, and feasibility on the GPUs")
    p.add_argument(
        "--model",
        metavar="MODEL",
        help="check feasibility against a bundled model table instead of the GPUs "
        "(see 'migrestore-sim models')",
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


def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("MIGRESTORE_CONFIG") or DEFAULT_CONFIG)


def _simulate(args: argparse.Namespace) -> Optional[str]:
    return args.simulate or os.environ.get("MIGRESTORE_SIMULATE") or None


def _logger(args: argparse.Namespace) -> Any:
    from migrestore import logs

    logs.configure(args.log_format, "debug" if args.verbose else "info")
    return logs.get_logger()


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
    from migrestore.nvml import Nvml

    with Nvml(backend.choose(_simulate(args))) as nv:
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


def cmd_profiles(args: argparse.Namespace) -> int:
    from migrestore import backend, render
    from migrestore.nvml import Nvml

    with Nvml(backend.choose(_simulate(args))) as nv:
        observed = nv.observe()
    if args.json:
        _print_json(render.profiles_json(observed))
    else:
        sys.stdout.write(render.profiles_text(observed))
    return EXIT_OK


def _plan_json(plan: Any) -> Dict[str, Any]:
    actions: List[Dict[str, Any]] = []
    for a in plan.actions:
        item: Dict[str, Any] = {"gpu": a.gpu_index, "uuid": a.gpu, "action": a.kind}
        if a.enabled is not None:
            item["enabled"] = a.enabled
        if a.kind == "reset":
            item["if_pending"] = a.if_pending
        if a.profile:
            item["profile"] = a.profile
        if a.placement is not None:
            item["placement"] = [a.placement.start, a.placement.size]
        if a.gi_start is not None and a.kind == "create_ci":
            item["gi_start"] = a.gi_start
        if a.gi_id is not None:
            item["gi_id"] = a.gi_id
        if a.ci_id is not None:
            item["ci_id"] = a.ci_id
        item["description"] = a.describe()
        actions.append(item)
    return {
        "converged": plan.converged,
        "actions": actions,
        "unmatched": list(plan.unmatched),
        "notes": list(plan.notes),
        # GPUs with work planned only after these actions ran (profiles a driver lists
        # once MIG is on; CI profiles read from the GIs about to be made)
        "deferred": list(plan.deferred),
    }


def _plan_text(plan: Any) -> str:
    lines: List[str] = []
    for a in plan.actions:
        sign = (
            "-" if a.kind.startswith("destroy") else "~" if a.kind in ("set_mode", "reset") else "+"
        )
        lines.append(f"{sign} {a.describe()}")
    for note in plan.notes:
        lines.append(f"  {note}")
    for label in plan.unmatched:
        lines.append(f"  GPU {label}: no rule matches, left as it is")
    if plan.converged and not plan.deferred:
        lines.append("nothing to do: the GPUs match the config")
    else:
        lines.append(f"{len(plan.actions)} change(s) planned")
        if plan.deferred:
            lines.append(
                "more is planned once they ran, from what the GPU then reports (see the notes)"
            )
    return "\n".join(lines) + "\n"


def cmd_plan(args: argparse.Namespace) -> int:
    from migrestore import backend, engine
    from migrestore import config as configmod
    from migrestore.nvml import Nvml

    cfg = configmod.load(_config_path(args), args.select)
    with Nvml(backend.choose(_simulate(args))) as nv:
        observed = nv.observe()
    plan, _desired = engine.make_plan(cfg, observed, force=args.force)
    if args.json:
        _print_json(_plan_json(plan))
    else:
        sys.stdout.write(_plan_text(plan))
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from migrestore import backend, engine
    from migrestore import config as configmod
    from migrestore.lock import GpuLock
    from migrestore.nvml import Nvml
    from migrestore.services import Systemctl

    log = _logger(args)
    cfg = configmod.load(_config_path(args), args.select)
    with Nvml(backend.choose(_simulate(args))) as nv:
        if args.dry_run:
            plan, _ = engine.make_plan(cfg, nv.observe(), force=args.force)
            sys.stdout.write(_plan_text(plan))
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
                )
            except MigrestoreError as exc:
                _write_state(args, "failed", str(exc), (), cfg=cfg, driver=engine.driver_of(nv))
                raise
            # read under the lock: another migrestore may change the GPUs right after
            observed = outcome.observed if outcome.devices_read else nv.observe()
        result = "converged" if outcome.converged_before else "applied"
        _write_state(
            args,
            result,
            outcome.summary(),
            observed,
            cfg=cfg,
            outcome=outcome,
            driver=engine.driver_of(nv),
        )
    if outcome.converged_before:
        log.info("converged", outcome="nothing to do")
    else:
        log.info("applied", changes=outcome.changes, outcome=outcome.summary())
    return EXIT_FAILED if outcome.hook_failures else EXIT_OK


def _write_state(
    args: argparse.Namespace,
    result: str,
    message: str,
    observed: Any,
    *,
    cfg: Any = None,
    outcome: Any = None,
    driver: Optional[str] = None,
) -> None:
    from migrestore import backend, engine, statefile

    try:
        statefile.write_state(
            backend.state_path(_simulate(args)),
            engine.state_document(
                result, message, observed, cfg=cfg, outcome=outcome, driver=driver
            ),
        )
    except (OSError, MigrestoreError) as exc:
        sys.stderr.write(f"migrestore: warning: could not write the state file: {exc}\n")


def cmd_validate(args: argparse.Namespace) -> int:
    from migrestore import config as configmod
    from migrestore import engine

    path = _config_path(args)
    cfg = configmod.load(path, args.select)
    if args.model:
        from migrestore import validate

        lines = validate.against_model(cfg, args.model)
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.write(f"{path}: valid for {args.model}\n")
        return EXIT_OK
    from migrestore import backend
    from migrestore.nvml import Nvml

    with Nvml(backend.choose(_simulate(args))) as nv:
        observed = nv.observe()
    plan, _ = engine.make_plan(cfg, observed, force=True)
    changes = len(plan.actions)
    sys.stdout.write(
        f"{path}: valid and feasible on {len(observed)} GPU(s); "
        f"{'converged' if plan.converged else f'{changes} change(s) to apply'}\n"
    )
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from migrestore import backend
    from migrestore import config as configmod
    from migrestore.nvml import Nvml

    with Nvml(backend.choose(_simulate(args))) as nv:
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


def main(argv: Optional[Sequence[str]] = None) -> int:
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


__all__ = ["EXIT_CONFIG", "build_parser", "main"]
