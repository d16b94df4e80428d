"""Checked access to message fields, typed views of packed buffers, and header building.

Converters read messages through these helpers so that a malformed message (a missing field, a
string where a count belongs, a buffer of the wrong type) raises a specific
:class:`~omnibind_ros.core.errors.PreprocessError` instead of an ``AttributeError`` or a numpy
``ValueError`` from deep inside a conversion. Real rclpy messages always pass the type checks;
they matter for duck-typed messages (bag readers, tests) and for messages built with
``check_fields`` off, whose setters accept any value.
"""
from __future__ import annotations

import array
import math
import operator
from typing import Any

import numpy as np

from omnibind_ros.core.errors import (
    ConversionError,
    InvalidDtypeError,
    InvalidShapeError,
    InvalidValueError,
)

# array.array typecodes by numpy kind: a typed array is viewed in place only when its kind and
# item size match the target, so signed values are never reinterpreted as unsigned.
_TYPECODE_KIND = {**dict.fromkeys("BHILQ", "u"), **dict.fromkeys("bhilq", "i"),
                  **dict.fromkeys("fd", "f")}


def field(msg: object, name: str, what: str) -> Any:
    """Return ``msg.<name>``; raise ConversionError naming the message kind if it is missing."""
    try:
        return getattr(msg, name)
    except AttributeError:
        raise ConversionError(
            f"{what} has no field {name!r} (got a {type(msg).__name__})") from None


def uint_field(msg: object, name: str, what: str, bits: int = 32) -> int:
    """Return an unsigned integer field as ``int``, checking its type and its ``bits`` range."""
    value = field(msg, name, what)
    if isinstance(value, bool):
        raise ConversionError(f"{what}.{name} must be an integer, got a bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConversionError(
            f"{what}.{name} must be an integer, got {type(value).__name__}") from None
    if not 0 <= number < 1 << bits:
        raise InvalidValueError(f"{what}.{name} must lie in [0, 2^{bits}), got {number}")
    return number


def bool_field(msg: object, name: str, what: str) -> bool:
    """Return a flag field (``bool`` or the uint8 0/1 that ``Image.is_bigendian`` uses)."""
    value = field(msg, name, what)
    if isinstance(value, bool | np.bool_):
        return bool(value)
    try:
        return operator.index(value) != 0
    except TypeError:
        raise ConversionError(
            f"{what}.{name} must be a bool or an integer, got {type(value).__name__}") from None


def str_field(msg: object, name: str, what: str) -> str:
    """Return a string field, rejecting other types."""
    value = field(msg, name, what)
    if not isinstance(value, str):
        raise ConversionError(f"{what}.{name} must be a str, got {type(value).__name__}")
    return value


def native(values: np.ndarray) -> np.ndarray:
    """Return ``values`` in native byte order: itself if already native, else a swapped copy."""
    if values.dtype.isnative:
        return values
    return values.astype(values.dtype.newbyteorder("="))


def read_only(values: np.ndarray) -> np.ndarray:
    """Mark a view of a message buffer read-only, so writing to it cannot alter the message."""
    values.flags.writeable = False
    return values


def byte_view(value: object, what: str) -> np.ndarray:
    """View a ``uint8[]`` field as a 1-D uint8 array, without a copy where the buffer allows.

    rclpy keeps ``uint8[]`` fields as ``array.array('B')``; ``bytes``, ``bytearray``,
    ``memoryview`` and uint8 ndarrays are viewed in place too. Lists and other integer arrays are
    copied after a range check.
    """
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return np.ascontiguousarray(value.reshape(-1))  # a copy only for a strided array
    if isinstance(value, bytes | bytearray) or (
            isinstance(value, array.array) and value.itemsize == 1):
        return np.frombuffer(value, np.uint8)
    if isinstance(value, memoryview):
        try:
            return np.frombuffer(value.cast("B"), np.uint8)
        except (TypeError, ValueError):  # non-contiguous or odd-format memoryview
            return _checked_cast(value.tolist(), np.dtype(np.uint8), what)
    return _checked_cast(value, np.dtype(np.uint8), what)


def typed_view(value: object, dtype: np.dtype, what: str) -> np.ndarray:
    """View a primitive-sequence field (``uint16[]``, ``uint32[]``...) as a 1-D ``dtype`` array.

    ``array.array`` and ndarrays of the same kind and item size are viewed in place (rclpy's
    representation); ``bytes`` are taken as raw little-endian values; sequences of ints are
    range-checked and copied.
    """
    dtype = np.dtype(dtype)
    if isinstance(value, np.ndarray):
        if value.dtype.kind == dtype.kind and value.dtype.itemsize == dtype.itemsize:
            return native(np.ascontiguousarray(value.reshape(-1)))
        return _checked_cast(value, dtype, what)
    if isinstance(value, array.array):
        if _TYPECODE_KIND.get(value.typecode) == dtype.kind and value.itemsize == dtype.itemsize:
            return np.frombuffer(value, dtype)
        return _checked_cast(value, dtype, what)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = byte_view(value, what)
        if raw.size % dtype.itemsize:
            raise InvalidShapeError(
                f"{what}: {raw.size} bytes is not a whole number of {dtype.itemsize}-byte values")
        return native(raw.view(dtype.newbyteorder("<")))
    return _checked_cast(value, dtype, what)


def _checked_cast(value: object, dtype: np.dtype, what: str) -> np.ndarray:
    try:
        values = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidDtypeError(f"{what} must be a sequence of numbers ({exc})") from None
    if values.dtype.kind not in "biuf":  # None, str, objects, ints beyond 64 bits
        raise InvalidDtypeError(f"{what} must be a sequence of numbers, got "
                                f"{type(value).__name__} (dtype {values.dtype})")
    if values.ndim != 1:
        raise InvalidShapeError(f"{what} must be a flat sequence, got shape {values.shape}")
    if values.size == 0:
        return np.zeros(0, dtype)
    if dtype.kind == "f":
        return values.astype(dtype)
    if values.dtype.kind == "f":
        raise InvalidDtypeError(f"{what} must hold integers, got dtype {values.dtype}")
    info = np.iinfo(dtype)
    if int(values.min()) < info.min or int(values.max()) > info.max:
        raise InvalidValueError(
            f"{what} values must lie in [{info.min}, {info.max}], "
            f"got [{int(values.min())}, {int(values.max())}]")
    return values.astype(dtype)


def stamp_parts(stamp: object) -> tuple[int, int]:
    """Split a stamp into ``(sec, nanosec)``.

    Parameters
    ----------
    stamp : None (zero), seconds as ``float``/``int`` (>= 0), or a
        ``builtin_interfaces/Time``-like object with ``sec`` and ``nanosec``.
    """
    if stamp is None:
        return 0, 0
    if hasattr(stamp, "sec") and hasattr(stamp, "nanosec"):
        return int(stamp.sec), int(stamp.nanosec)
    if isinstance(stamp, bool) or not isinstance(stamp, int | float | np.integer | np.floating):
        raise InvalidValueError(
            f"stamp must be seconds (float) or a builtin_interfaces/Time, got {stamp!r}")
    if not (math.isfinite(stamp) and stamp >= 0):
        raise InvalidValueError(f"stamp must be finite seconds >= 0, got {stamp!r}")
    total_ns = round(float(stamp) * 1e9) if isinstance(stamp, float | np.floating) \
        else int(stamp) * 1_000_000_000
    sec, nanosec = divmod(total_ns, 1_000_000_000)
    if sec >= 1 << 31:  # builtin_interfaces/Time.sec is an int32
        raise InvalidValueError(f"stamp {stamp!r} s does not fit builtin_interfaces/Time")
    return sec, nanosec


def make_header(stamp: object, frame_id: str) -> Any:
    """Build a ``std_msgs/Header`` (imported here: the ros layer, after the safe environment)."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    sec, nanosec = stamp_parts(stamp)
    if not isinstance(frame_id, str):
        raise InvalidValueError(f"frame_id must be a str, got {type(frame_id).__name__}")
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def packed(typecode: str, values: np.ndarray) -> array.array:
    """numpy -> ``array.array`` for a message field with one memcpy (no per-element loop)."""
    dtype = {"B": "<u1", "H": "<u2", "I": "<u4", "f": "<f4"}[typecode]
    return array.array(typecode, np.ascontiguousarray(values, dtype=dtype).tobytes())
