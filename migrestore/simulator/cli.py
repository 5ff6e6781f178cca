"""``migrestore-sim``: make and change simulated GPU state files from outside.

Rules:

1. Every verb that changes geometry goes through the same rule-enforcing code as the fake
   library (``Simulator`` and ``engine``): an invalid request prints one line naming the
   NVML error (``NVML_ERROR_INSUFFICIENT_RESOURCES``) and exits 1.
2. Errors are one line on stderr and exit 1; usage errors exit 2 (argparse). Output that
   is data has ``--json`` where a script would want it.
3. ``hold`` and ``run`` register this process as a client and sleep until killed;
   SIGTERM or SIGINT unregister it; a SIGKILLed client is pruned as dead by the next
   access to the state.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from migrestore.errors import MigrestoreError
from migrestore.simulator import clib, codes, engine, models
from migrestore.simulator.core import GPU_RESET, LOST_ERROR, Simulator, module_dir
from migrestore.simulator.fakelib import SYMBOL_NAMES
from migrestore.simulator.state import PASSTHROUGH_STATUSES, current_boot_id, write_new

PROG = "migrestore-sim"


def _gpu(text: str) -> Any:
    """--gpu: an index (digits) or a GPU UUID."""
    return int(text) if text.isdigit() else text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


# --------------------------------------------------------------------------- verbs


def _provenance_text(prov: Dict[str, Any]) -> str:
    if prov["kind"] == "inferred":
        return f"inferred ({prov['rule']})"
    return f"{prov['kind']} ({prov['source']})"


def _model_row(model: models.SimModel) -> Dict[str, Any]:
    table = model.table
    raw = models.document()["models"][model.name]
    return {
        "name": model.name,
        "nvml_name": table.nvml_name,
        "pci_device_ids": [f"0x{p:08X}" for p in model.pci_device_ids],
        "pci_subsystem_id": f"0x{model.pci_subsystem_id:08X}",
        "bundled": model.bundled,
        "architecture": table.architecture,
        "memory_mib": table.memory_mib,
        "memory_slices": table.memory_slices,
        "compute_slices": table.compute_slices,
        "min_branch": model.min_branch,
        "default_branch": model.default_branch(),
        "provenance": model.provenance,
        "notes": list(model.notes),
        "gi_profiles": raw["gi_profiles"],
    }


def _by_rule(provenance: Dict[str, Any]) -> str:
    """``"memory_mib, sms (gi-sms-scale); ..."``: inferred fields grouped by rule."""
    rules: Dict[str, List[str]] = {}
    for key, prov in provenance.items():
        if prov["kind"] == "inferred":
            rules.setdefault(prov["rule"], []).append(key)
    if len(rules) == 1 and len(next(iter(rules.values()))) == len(provenance):
        return f"every field ({next(iter(rules))})"
    return "; ".join(f"{', '.join(sorted(keys))} ({rule})" for rule, keys in sorted(rules.items()))


def cmd_models(args: argparse.Namespace) -> int:
    rows = [_model_row(m) for m in models.all_models().values()]
    if args.json:
        print(json.dumps({"models": rows, "rules": models.document()["rules"]}, indent=1))
        return 0
    for row in rows:
        bundled = "bundled in migrestore" if row["bundled"] else "simulator only"
        print(
            f"{row['name']}: {row['nvml_name']}  [{bundled}]  {row['architecture']}, "
            f"{row['memory_mib']} MiB, {row['memory_slices']}/{row['compute_slices']} slices, "
            f"driver @{row['min_branch']}+ (default @{row['default_branch']})"
        )
        print(f"  pci device ids: {', '.join(row['pci_device_ids'])}")
        for key in ("nvml_name", "pci_device_ids", "pci_subsystem_id", "memory_mib"):
            print(f"  {key}: {_provenance_text(row['provenance'][key])}")
        for gi in row["gi_profiles"]:
            inferred = _by_rule(gi["provenance"])
            kinds = sorted({v["kind"] for v in gi["provenance"].values()} - {"inferred"})
            ci_rules = sorted(
                {
                    v["rule"]
                    for ci in gi["ci_profiles"]
                    for v in ci["provenance"].values()
                    if v["kind"] == "inferred"
                }
            )
            print(
                f"  {gi['index']:>2} {gi['name']:<16} id {gi['id']:<3} {gi['memory_mib']:>6} MiB "
                f"{gi['sms']:>3} SMs  {'/'.join(kinds) or '-'}"
                + (f"; inferred: {inferred}" if inferred else "")
            )
            ci_names = " ".join(ci["name"] for ci in gi["ci_profiles"])
            print(
                f"       CI {ci_names}"
                + (f" (inferred: {', '.join(ci_rules)})" if ci_rules else "")
            )
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    try:
        gpus = engine.parse_spec(",".join(args.models))
    except ValueError as err:
        raise MigrestoreError(f"init: {err}") from None
    state = engine.fresh_state(
        gpus,
        passthrough=args.passthrough,
        permute_seed=args.permute_gi_ids,
        boot_id=current_boot_id(),
        nvswitch=args.nvswitch,
    )
    write_new(args.state, state, overwrite=args.force)
    branch = gpus[0][1] if gpus else models.DEFAULT_BRANCH
    print(
        f"{args.state}: {len(gpus)} simulated GPU(s) on driver branch {branch}: "
        + ", ".join(m for m, _ in gpus)
    )
    return 0


def _show_text(sim: Simulator) -> str:
    state = sim.state()
    lines = [
        f"state {sim.path}  driver {state.driver_version}  boot {state.boot_id or '?'}  "
        f"changes {state.change_count}"
    ]
    for gpu in state.gpus:
        table = engine.table_of(gpu)
        mode = f"MIG current={'on' if gpu.mig_current else 'off'} pending={'on' if gpu.mig_pending else 'off'}"
        extras = []
        if gpu.passthrough:
            extras.append(f"passthrough: reset refused, activation {gpu.passthrough_status}")
        if gpu.nvlink_group:
            extras.append(f"NVSwitch group {gpu.nvlink_group}")
        if gpu.gi_id_map is not None:
            extras.append("permuted GI IDs")
        if gpu.lost:
            extras.append(f"LOST: every call answers {gpu.lost}")
        if gpu.vgpu_host:
            extras.append("vGPU host: MIG device process queries answer NOT_SUPPORTED")
        extra = f"  ({', '.join(extras)})" if extras else ""
        lines.append(
            f"GPU {gpu.index} {gpu.uuid} {gpu.model} ({table.nvml_name}) @{gpu.branch} "
            f"{gpu.pci_bus_id}  {mode}{extra}"
        )
        if gpu.holders:
            lines.append("  held by pid " + ", ".join(str(p) for p in gpu.holders))
        for gi in sorted(gpu.gis, key=lambda g: g.start):
            profile = engine.gi_profile(table, gi)
            held = f"  held by pid {', '.join(str(p) for p in gi.holders)}" if gi.holders else ""
            lines.append(f"  GI {gi.id} {profile.name} at {gi.start}:{gi.size}{held}")
            for ci in sorted(gi.cis, key=lambda c: c.start):
                ci_prof = engine.ci_profile(profile, ci.profile_id)
                name = ci_prof.name if ci_prof is not None else f"profile {ci.profile_id}"
                pids = f"  pids {', '.join(str(p) for p in ci.pids)}" if ci.pids else ""
                if ci.holders:
                    pids += f"  held by pid {', '.join(str(p) for p in ci.holders)}"
                lines.append(f"    CI {ci.id} {name} at {ci.start}:{ci.size} {ci.uuid}{pids}")
    if any(g.nvlink_group for g in state.gpus):
        lines.append(f"fabric manager: {'running' if state.fabric_manager else 'not running'}")
    loaded = sorted(os.listdir(module_dir(sim.spec))) if os.path.isdir(module_dir(sim.spec)) else []
    if loaded:
        lines.append("kernel modules loaded: " + ", ".join(loaded))
    for fault in state.faults:
        lines.append(
            f"fault: call {fault.nth} of {fault.function} fails with {fault.error} "
            f"({fault.seen} call(s) seen)"
        )
    for function, us in sorted(state.latency_us.items()):
        lines.append(f"latency: {function} {us} us")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    sim = Simulator(args.state)
    try:
        if args.json:
            print(json.dumps(sim.snapshot(), indent=1))
        else:
            print(_show_text(sim))
    finally:
        sim.close()
    return 0


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _hold_signals() -> None:
    """Block SIGINT and SIGTERM before the resource is taken and the line saying so is
    printed: ``_wait_until_killed`` takes them with sigwait, so one sent as soon as the
    line is read is never lost (a handler plus pause() missed a signal that landed
    between the handler's check and the pause(), and the process slept for good)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


def _wait_until_killed(cleanup: Callable[[], None]) -> int:
    try:
        signal.sigwait(_STOP_SIGNALS)
    finally:
        try:
            cleanup()
        except MigrestoreError as err:
            print(f"{PROG}: {err}", file=sys.stderr)
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    _hold_signals()
    sim = Simulator(args.state)
    if args.gi is not None:
        pid = sim.hold_instance(args.gpu, args.gi, args.ci)
        where = f"GI {args.gi}" + (f" CI {args.ci}" if args.ci is not None else "")
        print(
            f"holding {where} of GPU {args.gpu} as pid {pid} (listed by no process query)",
            flush=True,
        )
        return _wait_until_killed(lambda: sim.release_instance(args.gpu, args.gi, args.ci, pid))
    if args.ci is not None:
        raise SystemExit(f"{PROG} hold: --ci needs --gi")
    pid = sim.hold(args.gpu)
    uuid = _uuid_of(sim, args.gpu)
    print(f"holding GPU {args.gpu} ({uuid}) as pid {pid}", flush=True)
    return _wait_until_killed(lambda: sim.release(args.gpu, pid))


def cmd_run(args: argparse.Namespace) -> int:
    _hold_signals()
    sim = Simulator(args.state)
    ci_id, mig_uuid = sim.run_process(args.gpu, args.gi, args.ci)
    print(
        f"running on GPU {args.gpu} GI {args.gi} CI {ci_id} ({mig_uuid}) as pid {os.getpid()}",
        flush=True,
    )
    return _wait_until_killed(lambda: sim.stop_process())


def _uuid_of(sim: Simulator, gpu: Any) -> str:
    state = sim.state()
    if isinstance(gpu, int):
        return state.gpus[gpu].uuid
    return str(gpu)


def _with_sim(args: argparse.Namespace, action: Callable[[Simulator], Optional[str]]) -> int:
    sim = Simulator(args.state)
    try:
        message = action(sim)
    finally:
        sim.close()
    if message:
        print(message)
    return 0


def cmd_fail(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.fail(args.call, args.nth, args.error)
        name = codes.name_of(codes.parse_error_name(args.error))
        return f"call {args.nth} of {args.call} from now fails with {name}"

    return _with_sim(args, act)


def cmd_clear_faults(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.clear_faults()
        return "faults cleared"

    return _with_sim(args, act)


def cmd_latency(args: argparse.Namespace) -> int:
    function = "*" if args.all else args.call

    def act(sim: Simulator) -> str:
        sim.latency(args.us, function)
        target = "every call" if function == "*" else function
        return f"latency of {target}: {args.us} us"

    return _with_sim(args, act)


def cmd_reboot(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.reboot()
        return "rebooted: instances and clients are gone, lost GPUs are back"

    return _with_sim(args, act)


def cmd_reset(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.reset_gpu(args.gpu)
        return f"GPU {args.gpu} reset"

    return _with_sim(args, act)


def cmd_lose(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.lose(args.gpu, args.error, args.after_changes)
        name = codes.name_of(codes.parse_error_name(args.error))
        if args.after_changes:
            return (
                f"GPU {args.gpu} falls off the bus after {args.after_changes} more change(s): "
                f"every call on it will answer {name}"
            )
        return f"GPU {args.gpu} fell off the bus: every call on it answers {name}"

    return _with_sim(args, act)


def cmd_recover(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.recover(args.gpu)
        return f"GPU {args.gpu} is back: no instances, the pending MIG mode in effect"

    return _with_sim(args, act)


def cmd_passthrough(args: argparse.Namespace) -> int:
    status = "" if args.off else args.status

    def act(sim: Simulator) -> str:
        sim.passthrough(args.gpu, status)
        if not status:
            return f"GPU {args.gpu} can be reset again"
        return (
            f"GPU {args.gpu}: the platform refuses its reset; an Ampere activation answers {status}"
        )

    return _with_sim(args, act)


def cmd_fabric_manager(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.fabric_manager(args.action == "start")
        return f"fabric manager {'running' if args.action == 'start' else 'not running'}"

    return _with_sim(args, act)


def cmd_module(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.load_module(args.name, args.action == "load")
        where = module_dir(args.state)
        return f"{args.name} {'loaded' if args.action == 'load' else 'unloaded'} ({where})"

    return _with_sim(args, act)


def cmd_vgpu_host(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.set_vgpu_host(args.gpu, args.mode == "on")
        if args.mode == "on":
            return (
                f"GPU {args.gpu}: vGPU host mode: MIG device process queries answer NOT_SUPPORTED"
            )
        return f"GPU {args.gpu}: vGPU host mode off"

    return _with_sim(args, act)


def cmd_set_mode(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        status = sim.set_mode(args.gpu, args.mode == "on", via=PROG)
        return f"GPU {args.gpu}: MIG mode {args.mode}: activation {status}"

    return _with_sim(args, act)


def cmd_create_gi(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        gi_id = sim.create_gi(args.gpu, args.profile, args.placement, via=PROG)
        return f"GPU {args.gpu}: created GI {gi_id} ({args.profile})"

    return _with_sim(args, act)


def cmd_create_ci(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        ci_id = sim.create_ci(args.gpu, args.gi, args.profile, args.placement, via=PROG)
        return f"GPU {args.gpu}: created CI {ci_id} in GI {args.gi}"

    return _with_sim(args, act)


def cmd_destroy_ci(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.destroy_ci(args.gpu, args.gi, args.ci, via=PROG)
        return f"GPU {args.gpu}: destroyed CI {args.ci} in GI {args.gi}"

    return _with_sim(args, act)


def cmd_destroy_gi(args: argparse.Namespace) -> int:
    def act(sim: Simulator) -> str:
        sim.destroy_gi(args.gpu, args.gi, via=PROG)
        return f"GPU {args.gpu}: destroyed GI {args.gi}"

    return _with_sim(args, act)


def cmd_lib(args: argparse.Namespace) -> int:
    path = clib.library_path()
    if not os.path.isfile(path):
        raise MigrestoreError(
            f"the simulated {clib.SONAME} is not built ({path} is missing): "
            f"run 'make sim-lib' in {os.path.dirname(os.path.dirname(os.path.dirname(path)))}"
        )
    if args.path:
        print(path)
        return 0
    state = args.state or "STATE"
    directory = os.path.dirname(path)
    print(f"simulated NVML library: {path}")
    print(f"(it answers {len(clib.KINDS) + 1} NVML functions from the state file in ${clib.ENV})")
    print("a program that loads libnvidia-ml.so.1 by name (dlopen, go-nvml, pynvml):")
    print(f"  {clib.ENV}={state} LD_LIBRARY_PATH={directory} PROGRAM")
    print("a program with an RPATH to a real library (searched before LD_LIBRARY_PATH):")
    print(f"  {clib.ENV}={state} LD_PRELOAD={path} PROGRAM")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Simulated NVIDIA MIG GPUs for migrestore: make a state file, then point "
            "'migrestore --simulate STATE' (or the tests) at it. Verbs that change the "
            "geometry follow the same rules as NVML."
        ),
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    def verb(name: str, func: Callable[[argparse.Namespace], int], text: str) -> Any:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        return p

    def state_arg(p: Any) -> None:
        p.add_argument("state", metavar="STATE", help="the simulator state file")

    def gpu_arg(p: Any) -> None:
        p.add_argument(
            "--gpu", type=_gpu, required=True, metavar="N", help="GPU index (or GPU UUID)"
        )

    p = verb(
        "models",
        cmd_models,
        "list the simulated GPU models: identity, PCI IDs, whether migrestore bundles the "
        "table, and where every value comes from (hardware, documented, inferred by a rule)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = verb(
        "lib",
        cmd_lib,
        "say where the simulated libnvidia-ml.so.1 is (make sim-lib) and how to run an "
        "NVML program on a state file with it",
    )
    p.add_argument(
        "state", metavar="STATE", nargs="?", help="the state file to show in the example"
    )
    p.add_argument("--path", action="store_true", help="print only the library's path")

    p = verb("init", cmd_init, "create a state file with fresh GPUs (MIG off, no instances)")
    state_arg(p)
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL[:COUNT][@BRANCH]",
        help=(
            "GPU models in index order, e.g. h100-80gb-hbm3:8 or h100-80gb-hbm3:2@535 "
            "(see 'models'); BRANCH is the driver branch ("
            + ", ".join(str(b) for b in sorted(models.BRANCHES))
            + f"; default {models.DEFAULT_BRANCH} or the model's first supported), one per node"
        ),
    )
    p.add_argument(
        "--passthrough",
        action="store_true",
        help="GPUs cannot be reset (a VM's passthrough GPU): Ampere mode changes need a reboot",
    )
    p.add_argument(
        "--nvswitch",
        action="store_true",
        help="every GPU's NVLinks go to one NVSwitch fabric (a DGX/HGX A100 8-GPU node)",
    )
    p.add_argument(
        "--permute-gi-ids",
        type=int,
        metavar="SEED",
        help="shuffle GI IDs per GPU (deterministic from SEED) so callers must read them back",
    )
    p.add_argument("--force", action="store_true", help="replace an existing state file")

    p = verb("show", cmd_show, "show modes, instances, holders, faults and the change count")
    state_arg(p)
    p.add_argument("--json", action="store_true", help="print the state document as JSON")

    p = verb(
        "hold",
        cmd_hold,
        "hold a GPU open as a client (like DCGM) until killed; SIGTERM/SIGINT release it; "
        "with --gi, hold an instance open as a leaked handle would: listed by no process "
        "query, its destroy answers IN_USE",
    )
    state_arg(p)
    gpu_arg(p)
    p.add_argument("--gi", type=int, metavar="GI_ID", help="hold this GPU instance (hidden)")
    p.add_argument("--ci", type=int, metavar="CI_ID", help="hold this CI of --gi instead")

    p = verb(
        "run",
        cmd_run,
        "run as a process on a MIG device until killed; SIGTERM/SIGINT end it",
    )
    state_arg(p)
    gpu_arg(p)
    p.add_argument("--gi", type=int, required=True, metavar="GI_ID", help="GPU instance ID")
    p.add_argument(
        "--ci", type=int, metavar="CI_ID", help="compute instance ID (default: the lowest)"
    )

    p = verb(
        "fail",
        cmd_fail,
        "make the Nth call of an NVML function (counted from now, in every process) fail once",
    )
    p.epilog = "NVML functions: " + ", ".join((*SYMBOL_NAMES, GPU_RESET))
    state_arg(p)
    p.add_argument(
        "--call",
        required=True,
        metavar="NVML_FUNCTION",
        help="C symbol, e.g. nvmlDeviceCreateGpuInstanceWithPlacement; gpu_reset for a reset",
    )
    p.add_argument("--nth", type=_positive, default=1, metavar="N", help="which call (1 = next)")
    p.add_argument(
        "--error", required=True, metavar="NVML_ERROR_NAME", help="e.g. NVML_ERROR_IN_USE"
    )

    p = verb("clear-faults", cmd_clear_faults, "remove every armed fault")
    state_arg(p)

    p = verb("latency", cmd_latency, "add a delay to NVML calls (for benchmarks)")
    state_arg(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every call")
    which.add_argument("--call", metavar="NVML_FUNCTION", help="one C symbol")
    p.add_argument(
        "--us", type=_non_negative, required=True, metavar="N", help="microseconds (0: remove)"
    )

    p = verb(
        "reboot",
        cmd_reboot,
        "reboot now: Hopper+ lose MIG mode, Ampere keeps it; instances and clients are gone",
    )
    state_arg(p)

    p = verb("reset", cmd_reset, "reset a GPU (nvidia-smi --gpu-reset): pending mode takes effect")
    state_arg(p)
    gpu_arg(p)

    p = verb(
        "lose",
        cmd_lose,
        "a GPU falls off the bus (Xid 79): still counted, but its handle and every call on "
        "it fail with the error until 'recover' or 'reboot'",
    )
    state_arg(p)
    gpu_arg(p)
    p.add_argument(
        "--error",
        default=LOST_ERROR,
        metavar="NVML_ERROR_NAME",
        help=f"what its calls answer (default {LOST_ERROR}; e.g. IRQ_ISSUE, UNKNOWN)",
    )
    p.add_argument(
        "--after-changes",
        type=int,
        default=0,
        metavar="N",
        help="not now: once N more changes are made (by any process, on any GPU), "
        "in the middle of a restore",
    )

    p = verb("recover", cmd_recover, "a lost GPU is back (no instances; pending mode in effect)")
    state_arg(p)
    gpu_arg(p)

    p = verb(
        "passthrough",
        cmd_passthrough,
        "the platform refuses a GPU's reset (a VM's passthrough GPU): its reset answers "
        "NOT_SUPPORTED and an Ampere MIG activation the status given",
    )
    state_arg(p)
    gpu_arg(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--status",
        default="NVML_ERROR_RESET_REQUIRED",
        choices=PASSTHROUGH_STATUSES,
        help="the activation status (default NVML_ERROR_RESET_REQUIRED, as nvml.h says; "
        "NVIDIA's MIG guide transcript shows NVML_ERROR_NOT_SUPPORTED)",
    )
    which.add_argument("--off", action="store_true", help="the GPU can be reset again")

    p = verb(
        "fabric-manager",
        cmd_fabric_manager,
        "Fabric Manager starts or stops: while it is not running an Ampere GPU of an "
        "NVSwitch group is reset only together with every GPU of its group",
    )
    state_arg(p)
    p.add_argument("action", choices=("start", "stop"))

    p = verb(
        "module",
        cmd_module,
        "load or unload a kernel module on the simulated node (a directory in "
        "STATE.sys-module, its /sys/module); a loaded nvidia_drm makes every reset fail IN_USE",
    )
    state_arg(p)
    p.add_argument("action", choices=("load", "unload"))
    p.add_argument("name", metavar="MODULE", help="e.g. nvidia_drm")

    p = verb(
        "vgpu-host",
        cmd_vgpu_host,
        "vGPU host mode (SR-IOV, MIG-backed vGPU): process queries on MIG device handles "
        "answer NOT_SUPPORTED",
    )
    state_arg(p)
    gpu_arg(p)
    p.add_argument("mode", choices=("on", "off"), help="vGPU host mode")

    p = verb("set-mode", cmd_set_mode, "change MIG mode behind migrestore's back")
    state_arg(p)
    gpu_arg(p)
    p.add_argument("mode", choices=("on", "off"), help="the new MIG mode")

    p = verb("create-gi", cmd_create_gi, "create a GPU instance behind migrestore's back")
    state_arg(p)
    gpu_arg(p)
    p.add_argument("--profile", required=True, metavar="NAME", help="GI profile, e.g. 3g.40gb")
    p.add_argument(
        "--placement",
        type=_non_negative,
        metavar="START",
        help="start memory slice (default: where the driver would put it)",
    )

    p = verb("create-ci", cmd_create_ci, "create a compute instance behind migrestore's back")
    state_arg(p)
    gpu_arg(p)
    p.add_argument("--gi", type=int, required=True, metavar="GI_ID", help="GPU instance ID")
    p.add_argument(
        "--profile", metavar="NAME", help="CI profile, e.g. 1c.3g.40gb (default: the whole GI)"
    )
    p.add_argument(
        "--placement", type=_non_negative, metavar="START", help="start compute slice in the GI"
    )

    p = verb("destroy-ci", cmd_destroy_ci, "destroy a compute instance behind migrestore's back")
    state_arg(p)
    gpu_arg(p)
    p.add_argument("--gi", type=int, required=True, metavar="GI_ID", help="GPU instance ID")
    p.add_argument("--ci", type=int, required=True, metavar="CI_ID", help="compute instance ID")

    p = verb("destroy-gi", cmd_destroy_gi, "destroy a GPU instance behind migrestore's back")
    state_arg(p)
    gpu_arg(p)
    p.add_argument("--gi", type=int, required=True, metavar="GI_ID", help="GPU instance ID")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except MigrestoreError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
