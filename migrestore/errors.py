"""The error contract of migrestore.

Rules:

1. Every error an operator can cause or meet is a ``MigrestoreError``; its ``exit_code``
   is what the process exits with, and ``str(err)`` is one line that names the object,
   the value and, where there is one, the fix.
2. Library exceptions (pynvml, yaml, OSError) never leave the module that called the
   library: they are translated there, keeping the NVML error name
   (``NVML_ERROR_IN_USE``) so an operator can search for it.
3. Anything else that escapes is a bug: the command line prints the traceback and
   exits 70 (EX_SOFTWARE).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

# sysexits.h values, as documented in --help and the README.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
# EX_TEMPFAIL: some GPUs could not be restored (sick: NVML cannot read them, or declared
# and not listed), every other GPU was restored and verified (issue 12 item 3)
EXIT_PARTIAL = 75
# EX_NOPERM: the platform does not permit the GPU reset a MIG mode change needs (a
# passthrough GPU, nvidia_drm holding it, NVSwitch peers that may not be reset with it);
# a restart cannot help, a reboot applies the pending mode (issue 12 items 4 and 5)
EXIT_REBOOT = 77
EXIT_CONFIG = 78


class MigrestoreError(Exception):
    """Base of every expected error."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(MigrestoreError):
    """The config file is invalid: names the file, the line, the key and the fix."""

    exit_code = EXIT_CONFIG

    def __init__(
        self,
        path: str,
        line: Optional[int],
        key: str,
        problem: str,
        fix: str = "",
        column: Optional[int] = None,
    ) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.problem = problem
        self.fix = fix
        self.column = column
        where = f"{path}:{line}" if line is not None else path
        if line is not None and column is not None:
            where += f":{column}"
        text = f"{where}: {key}: {problem}" if key else f"{where}: {problem}"
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class InfeasibleError(MigrestoreError):
    """The declared layout cannot exist on the GPU it was matched to; nothing was touched."""

    exit_code = EXIT_CONFIG

    def __init__(self, gpu: str, reason: str, where: str = "", left: str = "") -> None:
        self.gpu = gpu
        self.reason = reason
        self.where = where  # "file:line" of the rule that asked for it, when known
        self.left = left  # what stays on the GPU when it was already changed
        # set by the executor when it raises this after the other GPUs were applied and
        # verified: the NVML changes the run made (the device nodes and CDI spec are
        # refreshed for them before it is raised on)
        self.others_changed = 0
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}GPU {gpu}: {reason}; {left or 'nothing was changed'}")


class RebootNeeded(MigrestoreError):
    """A GPU's pending MIG mode change cannot be activated by a reset here; a reboot of
    the node (or a reset from the host) applies it. The other GPUs were applied."""

    exit_code = EXIT_REBOOT

    def __init__(
        self, gpu: str, pci_bus_id: str, refused: str, nvml_error: str, fix: str = ""
    ) -> None:
        self.gpu = gpu
        self.pci_bus_id = pci_bus_id
        self.refused = refused
        self.nvml_error = nvml_error
        self.fix = fix or "reboot the node (or reset the GPU from the host)"
        # the GPUs (uuids) that need it, and what each is left with: set by the
        # executor, read by the daemon's back-off (as ActionFailed's; every one is
        # ``held``: no attempt before a reboot can succeed)
        self.failed_gpus: Tuple[str, ...] = ()
        self.left: Tuple[str, ...] = ()
        self.others_changed = 0  # as InfeasibleError's
        # the advice first: systemd's STATUS= shows the start of the line
        super().__init__(
            f"GPU {gpu}: {self.fix} to apply the MIG mode change: {nvml_error}: {refused} "
            f"(PCI bus id {pci_bus_id})"
        )

    @property
    def held(self) -> Tuple[str, ...]:
        return self.failed_gpus


class DriverUnavailable(MigrestoreError):
    """No NVIDIA driver (NVML) could be reached."""

    exit_code = EXIT_UNAVAILABLE


class NvmlError(MigrestoreError):
    """An NVML call failed. ``nvml_error`` keeps NVML's own name for the code."""

    exit_code = EXIT_FAILED

    def __init__(self, nvml_error: str, what: str, code: int = -1, change: bool = False) -> None:
        self.nvml_error = nvml_error
        self.what = what
        self.code = code
        # True: the call that failed is the one that changes the GPU (set the MIG mode,
        # create, destroy); False: a read, e.g. of a profile table before a create
        self.change = change
        super().__init__(f"{what}: {nvml_error}")


class ActionFailed(MigrestoreError):
    """An action of a plan failed: names the GPU, the action and the NVML error."""

    exit_code = EXIT_FAILED

    def __init__(self, gpu: str, action: str, nvml_error: str, detail: str = "") -> None:
        self.gpu = gpu
        self.action = action
        self.nvml_error = nvml_error
        # set by the executor: the UUIDs of every GPU whose actions failed in the round,
        # and for each (same order) the line saying what it is left with ("": unread);
        # ``held``: those whose failure is a destroy answering IN_USE (an instance held)
        self.failed_gpus: Tuple[str, ...] = ()
        self.left: Tuple[str, ...] = ()
        self.held: Tuple[str, ...] = ()
        text = f"GPU {gpu}: {action} failed: {nvml_error}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)


class BusyError(MigrestoreError):
    """The plan would destroy an instance that has running processes."""

    exit_code = EXIT_FAILED

    def __init__(self, gpu: str, instance: str, pids: Sequence[int], unknown: str = "") -> None:
        self.gpu = gpu
        self.instance = instance
        self.pids = tuple(pids)
        # the NVML error that keeps its processes unknown (vGPU host), "" when read
        self.unknown = unknown
        if unknown:
            super().__init__(
                f"GPU {gpu}: refusing to destroy {instance}: processes cannot be read on a "
                f"vGPU host ({unknown}), so whether it is in use is unknown (make sure no VM "
                "uses it, then pass --force to destroy it)"
            )
            return
        pid_text = ", ".join(str(p) for p in self.pids)
        super().__init__(
            f"GPU {gpu}: refusing to destroy {instance}: processes {pid_text} are running on it "
            "(stop them, or pass --force to destroy it anyway)"
        )


class VerifyError(MigrestoreError):
    """After applying, the observed geometry is not the desired one."""

    exit_code = EXIT_FAILED


class ServiceError(MigrestoreError):
    """A client unit could not be stopped or started."""

    exit_code = EXIT_FAILED


class LockError(MigrestoreError):
    """Another migrestore process holds the GPU lock for too long."""

    exit_code = EXIT_FAILED


class StateFileError(MigrestoreError):
    """A state file (ours or the simulator's) is unreadable or malformed."""

    exit_code = EXIT_FAILED
