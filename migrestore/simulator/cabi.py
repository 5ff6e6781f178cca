"""The C side of the fake library: nvml.h struct layouts and ctypes argument decoding.

Rules:

1. The fake library sees exactly what ``libnvidia-ml.so`` would: the ctypes objects
   pynvml passes. Outputs are written through their address into the caller's memory,
   laid out as the structs below (copied from nvml.h, checked against pynvml's in the
   tests), never by setting attributes on pynvml's Python classes.
2. An argument that real C would misread is a caller bug and raises ``CallerError`` (a
   ``TypeError``) at once: a struct passed by value where C takes a pointer, a Python int
   where C takes a handle, an output buffer smaller than what C writes. On real hardware
   these crash or corrupt memory, so the test that made the call must see them.
3. A NULL pointer where NVML needs one is NVML's own INVALID_ARGUMENT, not a caller bug.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Optional, Tuple, Type, TypeVar, cast

from migrestore.simulator import codes
from migrestore.simulator.codes import SimNvmlError

if TYPE_CHECKING:
    from _ctypes import _CData

NAME_BUFFER = 96  # NVML_DEVICE_NAME_V2_BUFFER_SIZE
PCI_BUS_ID_LEGACY = 16  # NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE
PCI_BUS_ID = 32  # NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE


class Placement(ctypes.Structure):
    """nvmlGpuInstancePlacement_t / nvmlComputeInstancePlacement_t."""

    _fields_ = [("start", ctypes.c_uint), ("size", ctypes.c_uint)]


class GpuInstanceProfileInfoV1(ctypes.Structure):
    """nvmlGpuInstanceProfileInfo_t."""

    _fields_ = [
        ("id", ctypes.c_uint),
        ("isP2pSupported", ctypes.c_uint),
        ("sliceCount", ctypes.c_uint),
        ("instanceCount", ctypes.c_uint),
        ("multiprocessorCount", ctypes.c_uint),
        ("copyEngineCount", ctypes.c_uint),
        ("decoderCount", ctypes.c_uint),
        ("encoderCount", ctypes.c_uint),
        ("jpegCount", ctypes.c_uint),
        ("ofaCount", ctypes.c_uint),
        ("memorySizeMB", ctypes.c_ulonglong),
    ]


class GpuInstanceProfileInfoV2(ctypes.Structure):
    """nvmlGpuInstanceProfileInfo_v2_t."""

    _fields_ = [
        ("version", ctypes.c_uint),
        *GpuInstanceProfileInfoV1._fields_,
        ("name", ctypes.c_char * NAME_BUFFER),
    ]


GI_PROFILE_INFO_V2 = (2 << 24) | ctypes.sizeof(GpuInstanceProfileInfoV2)  # 0x02000098


class GpuInstanceProfileInfoV3(ctypes.Structure):
    """nvmlGpuInstanceProfileInfo_v3_t: v2 without isP2pSupported, plus capabilities."""

    _fields_ = [
        ("version", ctypes.c_uint),
        *(f for f in GpuInstanceProfileInfoV1._fields_ if f[0] != "isP2pSupported"),
        ("name", ctypes.c_char * NAME_BUFFER),
        ("capabilities", ctypes.c_uint),
    ]


GI_PROFILE_INFO_V3 = (3 << 24) | ctypes.sizeof(GpuInstanceProfileInfoV3)  # 0x03000098


class ComputeInstanceProfileInfoV1(ctypes.Structure):
    """nvmlComputeInstanceProfileInfo_t."""

    _fields_ = [
        ("id", ctypes.c_uint),
        ("sliceCount", ctypes.c_uint),
        ("instanceCount", ctypes.c_uint),
        ("multiprocessorCount", ctypes.c_uint),
        ("sharedCopyEngineCount", ctypes.c_uint),
        ("sharedDecoderCount", ctypes.c_uint),
        ("sharedEncoderCount", ctypes.c_uint),
        ("sharedJpegCount", ctypes.c_uint),
        ("sharedOfaCount", ctypes.c_uint),
    ]


class ComputeInstanceProfileInfoV2(ctypes.Structure):
    """nvmlComputeInstanceProfileInfo_v2_t."""

    _fields_ = [
        ("version", ctypes.c_uint),
        *ComputeInstanceProfileInfoV1._fields_,
        ("name", ctypes.c_char * NAME_BUFFER),
    ]


CI_PROFILE_INFO_V2 = (2 << 24) | ctypes.sizeof(ComputeInstanceProfileInfoV2)  # 0x02000088


class ComputeInstanceProfileInfoV3(ctypes.Structure):
    """nvmlComputeInstanceProfileInfo_v3_t: v2 plus capabilities."""

    _fields_ = [*ComputeInstanceProfileInfoV2._fields_, ("capabilities", ctypes.c_uint)]


CI_PROFILE_INFO_V3 = (3 << 24) | ctypes.sizeof(ComputeInstanceProfileInfoV3)  # 0x0300008C


class GpuInstanceInfo(ctypes.Structure):
    """nvmlGpuInstanceInfo_t."""

    _fields_ = [
        ("device", ctypes.c_void_p),
        ("id", ctypes.c_uint),
        ("profileId", ctypes.c_uint),
        ("placement", Placement),
    ]


class ComputeInstanceInfo(ctypes.Structure):
    """nvmlComputeInstanceInfo_t."""

    _fields_ = [
        ("device", ctypes.c_void_p),
        ("gpuInstance", ctypes.c_void_p),
        ("id", ctypes.c_uint),
        ("profileId", ctypes.c_uint),
        ("placement", Placement),
    ]


class PciInfo(ctypes.Structure):
    """nvmlPciInfo_t (v3)."""

    _fields_ = [
        ("busIdLegacy", ctypes.c_char * PCI_BUS_ID_LEGACY),
        ("domain", ctypes.c_uint),
        ("bus", ctypes.c_uint),
        ("device", ctypes.c_uint),
        ("pciDeviceId", ctypes.c_uint),
        ("pciSubSystemId", ctypes.c_uint),
        ("busId", ctypes.c_char * PCI_BUS_ID),
    ]


class Memory(ctypes.Structure):
    """nvmlMemory_t."""

    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


class ProcessInfo(ctypes.Structure):
    """nvmlProcessInfo_v2_t (pynvml uses the same layout for the _v3 call)."""

    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


VALUE_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE for unsigned long long

_CArgObject: type = type(ctypes.byref(ctypes.c_int()))
_SIMPLE: Tuple[type, ...] = (
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_long,
    ctypes.c_ulonglong,
    ctypes.c_longlong,
    ctypes.c_ushort,
    ctypes.c_short,
    ctypes.c_ubyte,
    ctypes.c_byte,
)

T = TypeVar("T", bound="_CData")


class CallerError(TypeError):
    """The caller passed an argument real C would misread (rule 2)."""


def pointer(arg: Any, what: str) -> Tuple[int, Optional[int]]:
    """(address, size in bytes when known) of a pointer argument; (0, None) for NULL.

    Accepts what ctypes passes as a pointer: ``byref(obj)``, a ``POINTER`` value, a
    ctypes array, a ``c_void_p``."""
    if arg is None:
        return 0, None
    if isinstance(arg, _CArgObject):
        obj = arg._obj  # type: ignore[attr-defined]
        return ctypes.addressof(obj), ctypes.sizeof(obj)
    if isinstance(arg, ctypes.Array):
        return ctypes.addressof(arg), ctypes.sizeof(arg)
    if isinstance(arg, ctypes._Pointer):
        return ctypes.cast(arg, ctypes.c_void_p).value or 0, None
    if isinstance(arg, ctypes.c_void_p):
        return arg.value or 0, None
    if isinstance(arg, ctypes.Structure):
        raise CallerError(
            f"{what}: a {type(arg).__name__} passed by value where C takes a pointer "
            "(real NVML would crash); pass ctypes.byref(...)"
        )
    raise CallerError(
        f"{what}: {type(arg).__name__} passed where C takes a pointer; "
        "pass ctypes.byref(...), a POINTER or a ctypes array"
    )


def out(arg: Any, ctype: Type[T], what: str) -> T:
    """The caller's memory behind an output pointer, as ``ctype``.

    Raises:
        SimNvmlError: INVALID_ARGUMENT for NULL.
        CallerError: the pointed-to object is smaller than ``ctype``.
    """
    address, size = pointer(arg, what)
    if not address:
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"{what} is NULL")
    if size is not None and size < ctypes.sizeof(ctype):
        raise CallerError(
            f"{what}: the buffer has {size} bytes, C writes a {ctype.__name__} of "
            f"{ctypes.sizeof(ctype)} bytes"
        )
    return cast(T, ctype.from_address(address))  # type: ignore[attr-defined]


def version_of(arg: Any, what: str) -> int:
    """The ``version`` field (first member) of a versioned struct behind ``arg``."""
    address, size = pointer(arg, what)
    if not address:
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"{what} is NULL")
    if size is not None and size < 4:
        raise CallerError(f"{what}: a {size}-byte buffer cannot hold a versioned struct")
    return int(ctypes.c_uint.from_address(address).value)


def array(arg: Any, ctype: Type[Any], needed: int, what: str) -> Optional[Any]:
    """An output array of ``needed`` elements of ``ctype`` (None for a NULL pointer).

    Raises:
        CallerError: the caller's array is known to be too small (C would overrun it).
    """
    address, size = pointer(arg, what)
    if not address:
        return None
    if size is not None and size < needed * ctypes.sizeof(ctype):
        raise CallerError(
            f"{what}: the array holds {size // ctypes.sizeof(ctype)} elements, NVML writes {needed}"
        )
    return (ctype * max(needed, 1)).from_address(address)


def handle(arg: Any, what: str) -> int:
    """The value of an opaque handle argument (``nvmlDevice_t`` and friends)."""
    if arg is None:
        return 0
    if isinstance(arg, ctypes._Pointer):
        return ctypes.cast(arg, ctypes.c_void_p).value or 0
    if isinstance(arg, ctypes.c_void_p):
        return arg.value or 0
    if isinstance(arg, _CArgObject):
        raise CallerError(
            f"{what}: byref(handle) passed where C takes the handle itself; pass the handle"
        )
    raise CallerError(f"{what}: {type(arg).__name__} passed where C takes an NVML handle")


def write_handle(arg: Any, value: int, what: str) -> None:
    """Store a handle into the caller's ``nvml*_t`` output (``byref(c_nvmlDevice_t())``)."""
    out(arg, ctypes.c_void_p, what).value = value


def uint(arg: Any, what: str) -> int:
    """An ``unsigned int`` argument: a Python int (ctypes converts it) or a ctypes integer."""
    if isinstance(arg, bool):
        return int(arg)
    if isinstance(arg, int):
        return arg & 0xFFFFFFFF
    if isinstance(arg, _SIMPLE):
        return int(arg.value) & 0xFFFFFFFF  # type: ignore[attr-defined]
    raise CallerError(f"{what}: {type(arg).__name__} passed where C takes an unsigned int")


def text_in(arg: Any, what: str) -> str:
    """A ``const char *`` argument (``c_char_p``, bytes or a char buffer)."""
    if isinstance(arg, bytes):
        raw = arg
    elif isinstance(arg, ctypes.c_char_p):
        raw = arg.value or b""
    elif isinstance(arg, ctypes.Array) and arg._type_ is ctypes.c_char:
        raw = bytes(arg.value)
    elif arg is None:
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"{what} is NULL")
    else:
        raise CallerError(f"{what}: {type(arg).__name__} passed where C takes a char *")
    return raw.decode("utf-8", errors="replace")


def text_out(arg: Any, length: Any, value: str, what: str) -> None:
    """Copy ``value`` and its NUL into a caller's ``char *`` of ``length`` bytes;
    INSUFFICIENT_SIZE when it does not fit."""
    size = uint(length, f"{what} length")
    data = value.encode("utf-8") + b"\0"
    address, known = pointer(arg, what)
    if not address:
        raise SimNvmlError(codes.INVALID_ARGUMENT, f"{what} is NULL")
    if known is not None and known < size:
        raise CallerError(f"{what}: length says {size} bytes, the buffer has {known}")
    if len(data) > size:
        raise SimNvmlError(
            codes.INSUFFICIENT_SIZE, f"{what}: {len(data)} bytes needed, {size} given"
        )
    ctypes.memmove(address, data, len(data))


def fixed_text(value: str, size: int) -> bytes:
    """``value`` for a ``char[size]`` struct member (truncated to leave the NUL)."""
    return value.encode("utf-8")[: size - 1]
