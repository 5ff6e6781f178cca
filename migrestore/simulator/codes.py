"""NVML return codes as the C library defines them (``nvmlReturn_t`` in nvml.h).

Rules:

1. The simulator never imports pynvml: it answers like ``libnvidia-ml.so`` does, with
   plain integers, and these tables are its copy of nvml.h (a test checks them against
   pynvml's constants).
2. ``nvmlErrorString`` texts are the library's own where they are known (nvidia-smi prints
   them: "In use by another client", "Insufficient Resources").
3. Inside the simulator a failing rule raises ``SimNvmlError(code)``; the fake library turns
   it into its return value, and the ``Simulator`` methods into
   ``migrestore.errors.NvmlError`` carrying the code's name.
"""

from __future__ import annotations

from typing import Dict

SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
ALREADY_INITIALIZED = 5
NOT_FOUND = 6
INSUFFICIENT_SIZE = 7
INSUFFICIENT_POWER = 8
DRIVER_NOT_LOADED = 9
TIMEOUT = 10
IRQ_ISSUE = 11
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
CORRUPTED_INFOROM = 14
GPU_IS_LOST = 15
RESET_REQUIRED = 16
OPERATING_SYSTEM = 17
LIB_RM_VERSION_MISMATCH = 18
IN_USE = 19
MEMORY = 20
NO_DATA = 21
VGPU_ECC_NOT_SUPPORTED = 22
INSUFFICIENT_RESOURCES = 23
FREQ_NOT_SUPPORTED = 24
ARGUMENT_VERSION_MISMATCH = 25
DEPRECATED = 26
NOT_READY = 27
GPU_NOT_FOUND = 28
INVALID_STATE = 29
RESET_TYPE_NOT_SUPPORTED = 30
UNKNOWN = 999

NAMES: Dict[int, str] = {
    SUCCESS: "NVML_SUCCESS",
    UNINITIALIZED: "NVML_ERROR_UNINITIALIZED",
    INVALID_ARGUMENT: "NVML_ERROR_INVALID_ARGUMENT",
    NOT_SUPPORTED: "NVML_ERROR_NOT_SUPPORTED",
    NO_PERMISSION: "NVML_ERROR_NO_PERMISSION",
    ALREADY_INITIALIZED: "NVML_ERROR_ALREADY_INITIALIZED",
    NOT_FOUND: "NVML_ERROR_NOT_FOUND",
    INSUFFICIENT_SIZE: "NVML_ERROR_INSUFFICIENT_SIZE",
    INSUFFICIENT_POWER: "NVML_ERROR_INSUFFICIENT_POWER",
    DRIVER_NOT_LOADED: "NVML_ERROR_DRIVER_NOT_LOADED",
    TIMEOUT: "NVML_ERROR_TIMEOUT",
    IRQ_ISSUE: "NVML_ERROR_IRQ_ISSUE",
    LIBRARY_NOT_FOUND: "NVML_ERROR_LIBRARY_NOT_FOUND",
    FUNCTION_NOT_FOUND: "NVML_ERROR_FUNCTION_NOT_FOUND",
    CORRUPTED_INFOROM: "NVML_ERROR_CORRUPTED_INFOROM",
    GPU_IS_LOST: "NVML_ERROR_GPU_IS_LOST",
    RESET_REQUIRED: "NVML_ERROR_RESET_REQUIRED",
    OPERATING_SYSTEM: "NVML_ERROR_OPERATING_SYSTEM",
    LIB_RM_VERSION_MISMATCH: "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
    IN_USE: "NVML_ERROR_IN_USE",
    MEMORY: "NVML_ERROR_MEMORY",
    NO_DATA: "NVML_ERROR_NO_DATA",
    VGPU_ECC_NOT_SUPPORTED: "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED",
    INSUFFICIENT_RESOURCES: "NVML_ERROR_INSUFFICIENT_RESOURCES",
    FREQ_NOT_SUPPORTED: "NVML_ERROR_FREQ_NOT_SUPPORTED",
    ARGUMENT_VERSION_MISMATCH: "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
    DEPRECATED: "NVML_ERROR_DEPRECATED",
    NOT_READY: "NVML_ERROR_NOT_READY",
    GPU_NOT_FOUND: "NVML_ERROR_GPU_NOT_FOUND",
    INVALID_STATE: "NVML_ERROR_INVALID_STATE",
    RESET_TYPE_NOT_SUPPORTED: "NVML_ERROR_RESET_TYPE_NOT_SUPPORTED",
    UNKNOWN: "NVML_ERROR_UNKNOWN",
}

CODES: Dict[str, int] = {name: code for code, name in NAMES.items()}

STRINGS: Dict[int, str] = {
    SUCCESS: "Success",
    UNINITIALIZED: "Uninitialized",
    INVALID_ARGUMENT: "Invalid Argument",
    NOT_SUPPORTED: "Not Supported",
    NO_PERMISSION: "Insufficient Permissions",
    ALREADY_INITIALIZED: "Already Initialized",
    NOT_FOUND: "Not Found",
    INSUFFICIENT_SIZE: "Insufficient Size",
    INSUFFICIENT_POWER: "Insufficient External Power",
    DRIVER_NOT_LOADED: "Driver Not Loaded",
    TIMEOUT: "Timeout",
    IRQ_ISSUE: "Interrupt Request Issue",
    LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    FUNCTION_NOT_FOUND: "Function Not Found",
    CORRUPTED_INFOROM: "Corrupted infoROM",
    GPU_IS_LOST: "GPU is lost",
    RESET_REQUIRED: "GPU requires restart",
    OPERATING_SYSTEM: "The operating system has blocked the request.",
    LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    IN_USE: "In use by another client",
    MEMORY: "Insufficient Memory",
    NO_DATA: "No data",
    VGPU_ECC_NOT_SUPPORTED: "The requested vgpu operation is not available on target device",
    INSUFFICIENT_RESOURCES: "Insufficient Resources",
    FREQ_NOT_SUPPORTED: "Frequency not supported",
    ARGUMENT_VERSION_MISMATCH: "Argument version mismatch",
    DEPRECATED: "Deprecated",
    NOT_READY: "Not ready",
    GPU_NOT_FOUND: "GPU not found",
    INVALID_STATE: "Invalid state",
    RESET_TYPE_NOT_SUPPORTED: "Reset type not supported",
    UNKNOWN: "Unknown Error",
}


def name_of(code: int) -> str:
    """``NVML_ERROR_IN_USE`` for 19; codes nvml.h does not define get a generic name."""
    return NAMES.get(code, f"NVML_ERROR_CODE_{code}")


def string_of(code: int) -> str:
    """What ``nvmlErrorString`` answers for ``code``."""
    return STRINGS.get(code, "Unknown Error")


def parse_error_name(text: str) -> int:
    """The code of an error name: ``NVML_ERROR_IN_USE``, or its short form ``IN_USE``.

    Raises:
        ValueError: not an NVML error name (the message lists the valid ones).
    """
    key = text.strip().upper()
    if not key.startswith("NVML_"):
        key = "NVML_ERROR_" + key
    code = CODES.get(key)
    if code is None or code == SUCCESS:
        valid = ", ".join(name for c, name in sorted(NAMES.items()) if c != SUCCESS)
        raise ValueError(f"unknown NVML error name {text!r} (valid: {valid})")
    return code


class SimNvmlError(Exception):
    """A simulated NVML call fails with ``code``; ``detail`` says which rule, for humans."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        text = name_of(code)
        super().__init__(f"{text}: {detail}" if detail else text)
