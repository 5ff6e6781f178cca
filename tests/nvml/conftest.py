"""Every NVML layer test leaves pynvml's loaded library as it found it (a failed test
must not leave a simulator beneath pynvml for the next one)."""

from __future__ import annotations

from typing import Iterator

import pynvml
import pytest


@pytest.fixture(autouse=True)
def _restore_pynvml_library() -> Iterator[None]:
    before = pynvml.nvmlLib
    yield
    pynvml.nvmlLib = before
    pynvml._nvmlGetFunctionPointer_cache.clear()
