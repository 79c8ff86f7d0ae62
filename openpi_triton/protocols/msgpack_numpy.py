"""openpi-client's msgpack-numpy encoding, byte-compatible, with strict decoding for a server.

An ndarray is a map with bytes keys ``__ndarray__`` (True), ``data`` (C-order bytes), ``dtype``
(``dtype.str``, e.g. ``'<f4'``) and ``shape``; a numpy scalar is ``__npgeneric__`` / ``data`` / ``dtype``.
Decoding checks what a robot sent instead of trusting it: the frame's shape is walked first within
:class:`~openpi_triton.limits.FrameLimits` (value count, nesting depth; see :mod:`.msgpack_scan`), the dtype
must be a plain numeric, bool or string dtype, and the byte count must match the shape.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from openpi_triton.limits import DEFAULT_FRAME_LIMITS, FrameLimits
from openpi_triton.protocols import msgpack_scan

_ALLOWED_KINDS = set("biufUS")  # bool, int, uint, float, unicode, bytes: what openpi-client sends


class DecodeError(ValueError):
    """A frame that is not valid msgpack-numpy; the message says what is wrong."""


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in "VOc":
        raise ValueError(f"Unsupported dtype: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_pack_default)


def _dtype(value: Any) -> np.dtype:
    if not isinstance(value, str):
        raise DecodeError(f"ndarray dtype must be a string such as '<f4', got {type(value).__name__}")
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError, SyntaxError):  # numpy parses "," and "(" forms itself and may raise any
        raise DecodeError(f"unknown ndarray dtype {value!r}") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise DecodeError(f"unsupported ndarray dtype {value!r}; expected a numeric, bool or string dtype")
    return dtype


def _object_hook(obj: dict[Any, Any]) -> Any:
    if b"__ndarray__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise DecodeError(f"ndarray shape must be a list of non-negative integers, got {shape!r}")
        if not isinstance(data, bytes):
            raise DecodeError("ndarray data must be bytes")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if expected != len(data):
            raise DecodeError(
                f"ndarray of dtype {dtype.str} and shape {list(shape)} needs {expected} bytes, got {len(data)}"
            )
        return np.ndarray(buffer=data, dtype=dtype, shape=tuple(shape))
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise DecodeError(f"invalid numpy scalar of dtype {dtype.str}: {exc}") from None
    return obj


def unpackb(data: bytes, limits: FrameLimits = DEFAULT_FRAME_LIMITS) -> Any:
    """Decodes one frame; any malformation, or a frame past ``limits``, is a :class:`DecodeError`."""
    try:
        msgpack_scan.scan(data, limits)
    except msgpack_scan.FrameLimitError as exc:
        raise DecodeError(str(exc)) from None
    try:
        return msgpack.unpackb(
            data,
            object_hook=_object_hook,
            raw=False,
            strict_map_key=True,
            max_bin_len=len(data),
            max_str_len=len(data),
            max_array_len=limits.max_values,
            max_map_len=limits.max_values,
        )
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("frame holds more than one msgpack object") from None
    except (msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise DecodeError(f"not a valid msgpack-numpy frame: {exc or type(exc).__name__}") from None
    except RecursionError:
        raise DecodeError("msgpack frame nests too deeply") from None
