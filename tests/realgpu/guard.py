"""The realgpu tier's guard: NVML and nvidia-smi made read-only by construction.

Installed in the pytest process by tests/realgpu/conftest.py before the tier's first test,
and in every process the tier starts (migrestore CLI and daemon) by
tests/realgpu/shim/sitecustomize.py when ``MIGRESTORE_REALGPU_GUARD=1``: Python runs it
before the program's first line, so pynvml is guarded before migrestore imports it.

Rules:

1. A name changes something when one of its CamelCase words (after ``nvml``, without a
   ``_vN`` suffix) is a mutating verb (``KINDS``: Set, Create, Destroy, Reset, Clear,
   Enable, Disable, Register, Apply, and Remove, Modify, Update, Freeze, Discover,
   Write, Free, Force, Unload... ); the first such word is its kind. A name nobody wrote
   yet (``nvmlDeviceApplyFoo``) is caught by the same words.
2. Four layers refuse, each raising ``MutationRefused`` before anything reaches the
   driver (or the simulator) and appending one JSON line to the guard log:
   a. pynvml's wrappers: every ``nvml*`` function of pynvml whose name changes
      something is replaced; a function assigned to the module later is replaced as it
      is assigned.
   b. pynvml's symbol lookup (``_nvmlGetFunctionPointer``, which every wrapper uses):
      a C symbol is handed out only when its name is known read-only: no mutating word,
      and a ``Get``/``Is``/``Query`` word, or ``nvmlInit*``/``nvmlShutdown``/
      ``nvmlErrorString``. Anything else (a mutating name, or one nobody classified) is
      refused. The function-pointer cache is cleared at install.
   c. The library object itself (``pynvml.nvmlLib``, the real ``libnvidia-ml.so.1`` or
      the simulator's fake): wrapped as it is loaded or assigned, so even
      ``pynvml.nvmlLib.nvmlDeviceSetMigMode`` refuses.
   d. ``subprocess.Popen`` of any ``nvidia-smi`` (by base name, found on PATH or by an
      absolute path) with arguments the nvidia-smi wrapper would refuse.
3. ``nvidia-smi`` on PATH is a wrapper (tests/realgpu/smi_guard.py) that refuses every
   mutating option and runs read-only calls through the real binary's absolute path.
4. An install is logged (event ``installed`` with the pid), so the tier can prove that
   every process it started was guarded; a process asked to be guarded that cannot be
   exits 70 before its program runs (shim/sitecustomize.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tests.realgpu import smi_guard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHIM = HERE / "shim"

ENV_ACTIVE = "MIGRESTORE_REALGPU_GUARD"
ENV_LOG = "MIGRESTORE_REALGPU_GUARD_LOG"

# Rule 1: the mutating verbs. The first nine are the kinds the tier must refuse by
# contract; the rest are the other verbs NVML uses (or may use) for a change.
KINDS: Tuple[str, ...] = (
    "Set",
    "Create",
    "Destroy",
    "Reset",
    "Clear",
    "Enable",
    "Disable",
    "Register",
    "Apply",
    "Remove",
    "Modify",
    "Activate",
    "Deactivate",
    "Update",
    "Freeze",
    "Discover",
    "Write",
    "Free",
    "Alloc",
    "Allocate",
    "Force",
    "Unload",
    "Load",
    "Start",
    "Stop",
    "Inject",
    "Delete",
    "Add",
    "Attach",
    "Detach",
    "Unregister",
    "Lock",
    "Unlock",
    "Release",
    "Restore",
    "Migrate",
    "Suspend",
    "Resume",
    "Flush",
    "Trigger",
    "Commit",
    "Kill",
    "Abort",
    "Flash",
    "Configure",
    "Assign",
    "Bind",
    "Unbind",
    "Toggle",
    "Override",
    "Evict",
    "Change",
    "Switch",
    "Program",
    "Reboot",
    "Recover",
)
_KIND_SET = frozenset(KINDS)
READ_WORDS = frozenset({"Get", "Is", "Query"})
READ_ONLY_EXACT = frozenset(
    {"nvmlInit", "nvmlInit_v2", "nvmlInitWithFlags", "nvmlShutdown", "nvmlErrorString"}
)
_WORD = re.compile(r"[A-Z][a-z]+|[A-Z]+(?![a-z])|[0-9]+")


class MutationRefused(RuntimeError):
    """A call that could change a GPU, stopped by the realgpu guard.

    Not an ``NVMLError``: code that handles NVML errors cannot mistake it for the
    driver's answer and carry on."""


def words(name: str) -> List[str]:
    """``nvmlDeviceSetMigMode`` -> ``['Device', 'Set', 'Mig', 'Mode']``."""
    core = re.sub(r"_v[0-9]+$", "", name)
    if core.startswith("nvml"):
        core = core[4:]
    return _WORD.findall(core)


def kind(name: str) -> Optional[str]:
    """The mutating verb of an NVML name (rule 1), or None."""
    for word in words(name):
        if word in _KIND_SET:
            return word
    return None


def symbol_refusal(name: str) -> Optional[str]:
    """Why the C symbol ``name`` is refused (rule 2b), or None when it is read-only."""
    verb = kind(name)
    if verb is not None:
        return f"{name} is a {verb.lower()} call"
    if name in READ_ONLY_EXACT or READ_WORDS.intersection(words(name)):
        return None
    return f"{name} is not known to be read-only"


# --------------------------------------------------------------------------- log


class GuardLog:
    """The JSON-lines log every layer (and the nvidia-smi wrapper) appends to."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path

    def write(self, record: Dict[str, Any]) -> None:
        if not self.path:
            return
        record = {"time": time.time(), "pid": os.getpid(), **record}
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def records(self) -> List[Dict[str, Any]]:
        if not self.path or not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


# --------------------------------------------------------------------------- layers


class _GuardedLibrary:
    """``pynvml.nvmlLib`` behind the guard (rule 2c). ``isinstance`` sees the wrapped
    library's class, so the simulator's detach still recognises its fake."""

    def __init__(self, lib: Any, guard: Guard) -> None:
        object.__setattr__(self, "_realgpu_lib", lib)
        object.__setattr__(self, "_realgpu_guard", guard)

    @property  # type: ignore[misc]
    def __class__(self) -> Any:
        return type(object.__getattribute__(self, "_realgpu_lib"))

    def __getattr__(self, name: str) -> Any:
        lib = object.__getattribute__(self, "_realgpu_lib")
        if name.startswith("nvml"):
            guard = object.__getattribute__(self, "_realgpu_guard")
            verb = kind(name)
            if verb is not None:
                guard.refuse(name, "library", f"{name} is a {verb.lower()} call")
        return getattr(lib, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_realgpu_lib"), name, value)

    def __dir__(self) -> List[str]:
        return dir(object.__getattribute__(self, "_realgpu_lib"))


def unwrap(lib: Any) -> Any:
    """The library beneath a guarded one."""
    if type(lib) is _GuardedLibrary:
        return object.__getattribute__(lib, "_realgpu_lib")
    return lib


class _GuardedModule(types.ModuleType):
    """pynvml's module class while guarded: assignments are guarded too (rules 2a, 2c)."""

    def __setattr__(self, name: str, value: Any) -> None:
        guard = _ACTIVE
        if guard is not None:
            value = guard.guard_value(name, value)
        super().__setattr__(name, value)


_ACTIVE: Optional[Guard] = None


class Guard:
    """The installed guard of this process."""

    def __init__(self, pynvml: Any, log: GuardLog) -> None:
        self.pynvml = pynvml
        self.log = log
        self.wrapped: Dict[str, Any] = {}  # pynvml attributes replaced, with the originals
        self._module_class: Any = None
        self._popen: Any = None
        self.refusals = 0

    # ------------------------------------------------------------------ refusing

    def refuse(self, name: str, layer: str, reason: str) -> None:
        self.refusals += 1
        self.log.write({"event": "refused", "layer": layer, "function": name, "reason": reason})
        raise MutationRefused(f"realgpu guard: {reason}; refused ({layer}) before the driver")

    def _refusing(self, name: str, original: Any) -> Callable[..., Any]:
        reason = f"{name} is a {kind(name).lower()} call"  # type: ignore[union-attr]

        def refused(*_args: Any, **_kwargs: Any) -> Any:
            self.refuse(name, "pynvml", reason)

        refused.__name__ = name
        refused.__qualname__ = name
        refused._realgpu_original = original  # type: ignore[attr-defined]
        return refused

    def guard_value(self, name: str, value: Any) -> Any:
        """What a pynvml attribute assignment stores while guarded."""
        if name == "nvmlLib" and value is not None and type(value) is not _GuardedLibrary:
            return _GuardedLibrary(value, self)
        if (
            name.startswith("nvml")
            and isinstance(value, types.FunctionType)
            and kind(name) is not None
            and not hasattr(value, "_realgpu_original")
        ):
            return self._refusing(name, value)
        return value

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        mod = self.pynvml
        for name, value in list(vars(mod).items()):
            mutating = name.startswith("nvml") and kind(name) is not None
            if mutating and isinstance(value, types.FunctionType):
                self.wrapped[name] = value
                vars(mod)[name] = self._refusing(name, value)

        original_lookup = mod._nvmlGetFunctionPointer
        original_load = mod._LoadNvmlLibrary

        def lookup(name: str) -> Any:
            reason = symbol_refusal(name)
            if reason is not None:
                self.refuse(name, "symbol", reason)
            self._wrap_library()
            return original_lookup(name)

        def load() -> None:
            original_load()
            self._wrap_library()

        self.wrapped["_nvmlGetFunctionPointer"] = original_lookup
        self.wrapped["_LoadNvmlLibrary"] = original_load
        vars(mod)["_nvmlGetFunctionPointer"] = lookup
        vars(mod)["_LoadNvmlLibrary"] = load
        mod._nvmlGetFunctionPointer_cache.clear()
        self._wrap_library()
        self._module_class = mod.__class__
        mod.__class__ = _GuardedModule

        self._popen = subprocess.Popen
        subprocess.Popen = _guarded_popen(self, self._popen)  # type: ignore[misc]

    def _wrap_library(self) -> None:
        lib = vars(self.pynvml).get("nvmlLib")
        if lib is not None and type(lib) is not _GuardedLibrary:
            vars(self.pynvml)["nvmlLib"] = _GuardedLibrary(lib, self)

    def uninstall(self) -> None:
        mod = self.pynvml
        if self._module_class is not None:
            mod.__class__ = self._module_class
        for name, original in self.wrapped.items():
            vars(mod)[name] = original
        for name, value in list(vars(mod).items()):
            if hasattr(value, "_realgpu_original"):
                vars(mod)[name] = value._realgpu_original
        vars(mod)["nvmlLib"] = unwrap(vars(mod).get("nvmlLib"))
        mod._nvmlGetFunctionPointer_cache.clear()
        if self._popen is not None:
            subprocess.Popen = self._popen  # type: ignore[misc]
        self.wrapped.clear()


def _guarded_popen(guard: Guard, base: Any) -> Any:
    class GuardedPopen(base):  # type: ignore[misc, valid-type]
        """``subprocess.Popen`` refusing a mutating ``nvidia-smi`` (rule 2d)."""

        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            argv: Sequence[str]
            if isinstance(args, (str, bytes, os.PathLike)):
                argv = [os.fsdecode(args)]
                if kwargs.get("shell"):
                    argv = os.fsdecode(args).split()
            else:
                argv = [os.fsdecode(a) for a in args]
            if argv and os.path.basename(argv[0]) == "nvidia-smi":
                reason = smi_guard.check(argv[1:])
                if reason is not None:
                    guard.refuse(" ".join(argv), "subprocess", f"nvidia-smi: {reason}")
            super().__init__(args, *rest, **kwargs)

    return GuardedPopen


def install(log_path: Optional[str] = None) -> Guard:
    """Guard this process (idempotent); returns the active guard."""
    global _ACTIVE
    if _ACTIVE is not None:
        return _ACTIVE
    import pynvml

    guard = Guard(pynvml, GuardLog(log_path))
    guard.install()
    _ACTIVE = guard
    guard.log.write({"event": "installed", "argv": sys.argv})
    return guard


def uninstall() -> None:
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.uninstall()
        _ACTIVE = None


def active() -> Optional[Guard]:
    return _ACTIVE


# --------------------------------------------------------------------------- nvidia-smi


def write_smi_wrapper(bin_dir: Path, real: Optional[str], log_path: Optional[str]) -> Path:
    """``bin_dir/nvidia-smi``: the wrapper of rule 3, running read-only calls through
    ``real`` (an absolute path, or None when the machine has no nvidia-smi)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "nvidia-smi"

    def q(text: str) -> str:
        return "'" + text.replace("'", "'\\''") + "'"

    wrapper.write_text(
        "#!/bin/sh\n"
        "# realgpu guard: refuses nvidia-smi options that change a GPU (tests/realgpu)\n"
        f"exec {q(sys.executable)} -I {q(str(HERE / 'smi_guard.py'))} "
        f'--real {q(real or "")} --log {q(log_path or "")} -- "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wrapper


def real_nvidia_smi(path: Optional[str] = None) -> Optional[str]:
    """The real nvidia-smi's absolute path, or None."""
    found = shutil.which("nvidia-smi", path=path)
    return os.path.realpath(found) if found else None


def subprocess_env(base: Dict[str, str], bin_dir: Path, log_path: str) -> Dict[str, str]:
    """The environment that guards a process the tier starts (rule 4)."""
    env = dict(base)
    env[ENV_ACTIVE] = "1"
    env[ENV_LOG] = log_path
    env["PYTHONPATH"] = os.pathsep.join([str(SHIM), str(ROOT)])
    env["PATH"] = os.pathsep.join([str(bin_dir), base.get("PATH", os.defpath)])
    return env


# --------------------------------------------------------------------------- symbols


def exported_symbols(path: str) -> List[str]:
    """The names of the functions an ELF64 little-endian shared library exports (its
    dynamic symbol table): what the real ``libnvidia-ml.so.1`` offers, new symbols
    included."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not an ELF64 little-endian file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    names: List[str] = []
    for sh in sections:
        if sh[1] != 11:  # SHT_DYNSYM
            continue
        strtab = sections[sh[6]]
        str_off = strtab[4]
        offset, size, entsize = sh[4], sh[5], sh[9] or 24
        for pos in range(offset, offset + size, entsize):
            st_name, st_info, _other, st_shndx = struct.unpack_from("<IBBH", data, pos)
            if st_shndx == 0 or (st_info & 0xF) != 2:  # undefined, or not STT_FUNC
                continue
            end = data.index(b"\0", str_off + st_name)
            names.append(data[str_off + st_name : end].decode())
    return sorted(set(names))


def loaded_library_path(name: str = "libnvidia-ml.so") -> Optional[str]:
    """The file of a library mapped into this process (after NVML was initialised)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if os.path.basename(path).startswith(name):
                    return path
    except OSError:
        return None
    return None
