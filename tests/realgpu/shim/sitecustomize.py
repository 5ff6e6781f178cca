"""Guards a process the realgpu tier starts (tests/realgpu/guard.py, rule 4).

The tier puts this directory first on PYTHONPATH and sets MIGRESTORE_REALGPU_GUARD=1;
Python imports ``sitecustomize`` before the program's first line, so pynvml is guarded
before migrestore imports it. A process asked to be guarded that cannot be exits 70 at
once: it never runs unguarded. Another ``sitecustomize`` further down sys.path (a
distribution's) still runs after the guard is in place.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

if os.environ.get("MIGRESTORE_REALGPU_GUARD") == "1":
    try:
        from tests.realgpu import guard as _guard

        _guard.install(os.environ.get("MIGRESTORE_REALGPU_GUARD_LOG") or None)
    except BaseException as _exc:
        sys.stderr.write(
            f"realgpu guard: cannot guard this process ({type(_exc).__name__}: {_exc}); "
            "refusing to run it unguarded\n"
        )
        sys.stderr.flush()
        os._exit(70)

_rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
