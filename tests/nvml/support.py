"""Helpers for the NVML layer tests: the shipped models by architecture, and a counter of
the C calls pynvml makes (installed beneath pynvml, where the simulator sits)."""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, Tuple

import pynvml

from migrestore import tables

MODELS: Tuple[str, ...] = tables.MODEL_NAMES
AMPERE = tuple(m for m in MODELS if tables.model(m).architecture == "ampere")
NOT_AMPERE = tuple(m for m in MODELS if tables.model(m).architecture != "ampere")


class CountingLib:
    """Wraps the library pynvml calls and counts the calls per C function."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.calls: Dict[str, int] = collections.Counter()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self._lib, name)

        def call(*args: Any) -> Any:
            self.calls[name] += 1
            return fn(*args)

        return call

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def clear(self) -> None:
        self.calls.clear()


def count_calls() -> CountingLib:
    """Count every C call pynvml makes from now on (on the library it has loaded)."""
    counter = CountingLib(pynvml.nvmlLib)
    pynvml.nvmlLib = counter
    pynvml._nvmlGetFunctionPointer_cache.clear()
    return counter
