"""Simulated MIG GPUs beneath pynvml, for tests, benchmarks and ``--simulate``.

Rules:

1. The simulator replaces the C library, not pynvml: ``attach(pynvml, spec)`` installs a
   fake ``libnvidia-ml.so`` as ``pynvml.nvmlLib``, so the production NVML layer runs
   unchanged on it (``fakelib``). It never imports pynvml itself.
2. It enforces the MIG rules real NVML enforces, with the same error codes (``engine``;
   sources in ``docs/SIMULATOR.md``), over the bundled model tables (``migrestore.tables``).
3. Its state lives in the process or in a shared, locked, reboot-aware state file
   (``state``); ``migrestore-sim`` (``cli``) edits such files from outside.

Public API: ``attach``, ``detach``, ``Simulator`` (``core``), ``CallerError`` (``cabi``).
"""

from migrestore.simulator.cabi import CallerError
from migrestore.simulator.core import Simulator, attach, detach

__all__ = ["CallerError", "Simulator", "attach", "detach"]
