"""The edge that chooses what lies beneath NVML: the real driver or the simulator.

Only the composition roots (``cli``, ``daemon``) and tests call this module; ``nvml``
never imports it, nor the simulator, nor the bundled tables.

Rules:

1. The choice is made once, from ``--simulate`` (``$MIGRESTORE_SIMULATE``): no spec is
   the real driver (``Hardware``), a spec is the simulator (``Simulated``), attached
   beneath pynvml when the NVML session opens and taken away when it closes.
2. A GPU reset goes through one interface on both: the session shuts NVML down and
   calls ``reset(pci_bus_id, what)``. On hardware that runs
   ``nvidia-smi --gpu-reset -i <bus id>`` from a fixed path (never ``$PATH``), bounded
   by ``proc.run_bounded``; on the simulator it is the simulator's model of that tool,
   which refuses while this process still has NVML open, as the driver does.
3. No bundled table is consulted: on a machine with GPUs, hardware or simulated, the
   GPU is the authority for every profile (``nvml`` rule 6).
4. Paths: the environment (``MIGRESTORE_LOCK``, ``MIGRESTORE_STATE``) wins; on real
   GPUs the node-wide defaults (``/run/migrestore.lock``,
   ``/run/migrestore/state.json``); with simulated GPUs kept in a state file, beside
   that file, so every process working on the same simulated node shares one lock and
   a simulation never touches the real node's files; with fresh in-memory GPUs
   (``MODEL:COUNT``), which no other process can see, in a private temporary directory
   of this process.
5. Whether a kernel module is loaded (``module_loaded``: ``nvidia_drm`` holds the GPUs
   and makes an Ampere reset fail) is read from a fixed place: ``/sys/module/NAME`` on
   a real node; the simulated node's module directory (``simulator.core.module_dir``,
   beside its state file) when simulating, which the simulator's reset model reads too.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any, Optional, Tuple, Union

from migrestore import lock, statefile
from migrestore.errors import NvmlError
from migrestore.nvml import error_name
from migrestore.proc import describe_argv, run_bounded

if TYPE_CHECKING:
    from migrestore.simulator import Simulator
    from migrestore.tables import ModelTable

__all__ = [
    "RESET_TIMEOUT",
    "RESET_TOOL",
    "Hardware",
    "Simulated",
    "choose",
    "lock_path",
    "model_table",
    "run_reset_tool",
    "state_path",
]

# How long `nvidia-smi --gpu-reset` may take before it is killed.
RESET_TIMEOUT = 120.0
# Where the driver packages install nvidia-smi (rule 2: no PATH lookup as root).
RESET_TOOL = "/usr/bin/nvidia-smi"

# Where the kernel lists its loaded modules, one directory each (rule 5).
SYS_MODULE = "/sys/module"

# nvidia-smi's exit codes are NVML return codes (nvidia-smi(1), RETURN VALUE); 255 is
# "other error".
_NOT_FOUND, _TIMEOUT, _IN_USE, _UNKNOWN = 6, 10, 19, 999


def run_reset_tool(
    bus_id: str, what: str, timeout: float = RESET_TIMEOUT, tool: str = RESET_TOOL
) -> None:
    """Reset one GPU with ``<tool> --gpu-reset -i <bus id>`` (rule 2), or several in one
    command: ``bus_id`` a comma-separated list (nvidia-smi's ``-i`` takes one).

    Raises:
        NvmlError: the tool is missing, timed out (``NVML_ERROR_TIMEOUT``), or failed;
            its exit code is an NVML return code and is named as such, and the message
            carries the tool's last output line.
    """
    argv = (tool, "--gpu-reset", "-i", bus_id)
    command = describe_argv(argv)
    try:
        result = run_bounded(argv, timeout, env={"PATH": "/usr/bin:/bin"}, cwd="/")
    except OSError as exc:
        raise NvmlError(
            nvml_error=error_name(_NOT_FOUND),
            what=f"{what}: cannot run `{command}` ({exc.strerror}; install the NVIDIA "
            "driver utilities)",
            code=_NOT_FOUND,
        ) from None
    if result.timed_out:
        raise NvmlError(
            nvml_error=error_name(_TIMEOUT),
            what=f"{what}: `{command}` did not finish within {timeout:g}s and was killed",
            code=_TIMEOUT,
        )
    if result.ok:
        return
    lines = [x.strip() for x in (result.stdout + "\n" + result.stderr).splitlines() if x.strip()]
    said = lines[-1] if lines else "no output"
    code = result.returncode if result.returncode is not None else _UNKNOWN
    if 0 < code < 256 and not error_name(code).startswith("NVML_ERROR_UNKNOWN_CODE"):
        name = error_name(code)
    elif "in use" in said.lower() or any("in use" in x.lower() for x in lines):
        name, code = error_name(_IN_USE), _IN_USE
    else:
        name, code = error_name(_UNKNOWN), _UNKNOWN
    raise NvmlError(
        nvml_error=name,
        what=f"{what}: `{command}` exited {result.returncode}: {said}",
        code=code,
    )


class Hardware:
    """The real driver: nothing is attached; resets run ``nvidia-smi`` (rule 2)."""

    simulated = False  # the node's own tools (nvidia-smi, nvidia-ctk) act on these GPUs

    def __init__(self, reset_timeout: float = RESET_TIMEOUT, reset_tool: str = RESET_TOOL):
        self.reset_timeout = reset_timeout
        self.reset_tool = reset_tool

    def attach(self, pynvml_module: Any) -> None:
        """Nothing: pynvml loads libnvidia-ml.so.1 itself."""

    def detach(self, pynvml_module: Any) -> None:
        """Nothing to take away."""

    def reset(self, pci_bus_id: str, what: str) -> None:
        run_reset_tool(pci_bus_id, what, self.reset_timeout, self.reset_tool)

    def module_loaded(self, name: str) -> bool:
        """Whether kernel module ``name`` is loaded (rule 5)."""
        return os.path.isdir(os.path.join(SYS_MODULE, name))


class Simulated:
    """The simulator of ``spec``, attached beneath pynvml while a session is open."""

    simulated = True  # the node's own tools must not act on behalf of simulated GPUs

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._simulator: Optional[Simulator] = None

    @property
    def attached(self) -> bool:
        return self._simulator is not None

    @property
    def simulator(self) -> Simulator:
        """The attached simulator (for tests and ``migrestore-sim``-like tooling)."""
        if self._simulator is None:
            raise RuntimeError("the simulator is attached only while the NVML session is open")
        return self._simulator

    def attach(self, pynvml_module: Any) -> None:
        """Raises MigrestoreError for a bad spec, StateFileError for a bad state file."""
        from migrestore import simulator

        if self._simulator is None:
            self._simulator = simulator.attach(pynvml_module, self.spec)

    def detach(self, pynvml_module: Any) -> None:
        from migrestore import simulator

        if self._simulator is not None:
            simulator.detach(pynvml_module)
            self._simulator = None

    def module_loaded(self, name: str) -> bool:
        """Whether kernel module ``name`` is loaded on the simulated node (rule 5)."""
        from migrestore.simulator import core

        return core.module_loaded(self.spec, name)

    def reset(self, pci_bus_id: str, what: str) -> None:
        try:
            self.simulator.reset_tool(pci_bus_id)
        except NvmlError as err:
            raise NvmlError(err.nvml_error, f"{what}: {err.what}", err.code) from None


Backend = Union[Hardware, Simulated]


def model_table(model_name: str) -> Tuple[ModelTable, str]:
    """The table of ``model_name`` for ``validate --model`` (no GPU at all), and what it
    is: migrestore's bundled table when it ships the model, else the simulator's.

    Raises:
        MigrestoreError: neither migrestore nor the simulator knows the model.
    """
    from migrestore import tables

    if model_name in tables.MODEL_NAMES:
        return tables.model(model_name), "bundled table"
    from migrestore.simulator import models as simmodels

    return simmodels.table(model_name), "simulator table, some values inferred"


def choose(simulate: Optional[str], reset_timeout: float = RESET_TIMEOUT) -> Backend:
    """The backend of rule 1."""
    if simulate:
        return Simulated(simulate)
    return Hardware(reset_timeout)


# --------------------------------------------------------------------------- paths

_private_dir: Optional[str] = None


def _is_state_file(simulate: str) -> bool:
    from migrestore.simulator.core import is_state_path

    return is_state_path(simulate)


def _private() -> str:
    global _private_dir
    if _private_dir is None:
        _private_dir = tempfile.mkdtemp(prefix="migrestore-sim-")
    return _private_dir


def lock_path(simulate: Optional[str]) -> str:
    """The GPU lock of rule 4."""
    if os.environ.get("MIGRESTORE_LOCK") or not simulate:
        return lock.default_path()
    if _is_state_file(simulate):
        return os.path.abspath(simulate) + ".migrestore.lock"
    return os.path.join(_private(), "migrestore.lock")


def state_path(simulate: Optional[str]) -> str:
    """The state file of rule 4."""
    if os.environ.get("MIGRESTORE_STATE") or not simulate:
        return statefile.default_path()
    if _is_state_file(simulate):
        return os.path.abspath(simulate) + ".migrestore-state.json"
    return os.path.join(_private(), "state.json")
