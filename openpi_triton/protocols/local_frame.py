"""openpi-flash's LocalFrame: the body of INFER messages on the unix socket between the QUIC sidecar and
the bridge (and between ``FlashTransportPolicy`` and its local binary).

Body layout (all integers big-endian)::

    [schema_id_len u8][schema_id utf8]
    [num_arrays u16]
    num_arrays x ([path_depth u8] path_depth x ([len u8][component utf8])
                  [dtype_code u8][ndim u8][ndim x u32 dims][data_len u64][data])
    [scalar_json_len u32][scalar_json utf8]   # a nested JSON object of the non-array values

Socket envelope: ``[length u32][type u8][body]`` where length counts the type byte and the body.
Decoding validates everything a peer could get wrong (truncation, UTF-8, known dtype, data length equal
to shape x item size, no trailing bytes) and raises :class:`FrameError` with the reason. What a frame may
build is bounded by :class:`~openpi_triton.limits.FrameLimits`: the array count by ``max_values``, the scalar
JSON by ``max_scalar_json_bytes`` and ``max_depth`` (JSON is the one part that amplifies: ``[]`` is two bytes
but a 56-byte list).
"""

from __future__ import annotations

import enum
import json
import socket
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from openpi_triton.limits import DEFAULT_FRAME_LIMITS, FrameLimits


class FrameError(ValueError):
    """A malformed LocalFrame or envelope."""


class MessageType(enum.IntEnum):
    METADATA = 0x01
    INFER = 0x02
    RESET = 0x03
    METADATA_RESPONSE = 0x11
    INFER_RESPONSE = 0x12
    ERROR = 0x13
    RESET_RESPONSE = 0x14


DTYPE_CODES: dict[int, np.dtype] = {
    0x01: np.dtype(np.uint8),
    0x02: np.dtype(np.int8),
    0x03: np.dtype(np.uint16),
    0x04: np.dtype(np.int16),
    0x05: np.dtype(np.uint32),
    0x06: np.dtype(np.int32),
    0x07: np.dtype(np.uint64),
    0x08: np.dtype(np.int64),
    0x09: np.dtype(np.float16),
    0x0A: np.dtype(np.float32),
    0x0B: np.dtype(np.float64),
    0x0C: np.dtype(np.bool_),
}
CODES_BY_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}
DEFAULT_SCHEMA_ID = "unknown"


def _component(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise FrameError(f"{what} {text[:40]!r}... is longer than 255 bytes")
    return bytes([len(raw)]) + raw


def _split(payload: Mapping[str, Any], path: tuple[str, ...], arrays: list, scalars: dict[str, Any]) -> None:
    for key, value in payload.items():
        if not isinstance(key, str):
            raise TypeError(f"LocalFrame keys must be str, got {type(key).__name__}")
        if isinstance(value, Mapping):
            nested: dict[str, Any] = {}
            _split(value, (*path, key), arrays, nested)
            if nested:
                scalars[key] = nested
        elif isinstance(value, np.ndarray):
            arrays.append(((*path, key), value))
        elif isinstance(value, np.generic):
            scalars[key] = value.item()
        else:
            scalars[key] = value


def pack(payload: Mapping[str, Any], schema_id: str = DEFAULT_SCHEMA_ID) -> bytes:
    """A nested dict of arrays and JSON values -> LocalFrame body."""
    arrays: list[tuple[tuple[str, ...], np.ndarray]] = []
    scalars: dict[str, Any] = {}
    _split(payload, (), arrays, scalars)
    if len(arrays) > 0xFFFF:
        raise FrameError(f"{len(arrays)} arrays; at most 65535 fit in a LocalFrame")
    out = [_component(schema_id, "schema_id"), struct.pack(">H", len(arrays))]
    for path, array in arrays:
        dtype = array.dtype if array.dtype.isnative else None
        code = CODES_BY_DTYPE.get(dtype) if dtype is not None else None
        if code is None:
            raise ValueError(f"array '{'/'.join(path)}': unsupported dtype {array.dtype.str} for LocalFrame")
        if len(path) > 255 or array.ndim > 255:
            raise FrameError(f"array '{'/'.join(path)}': path depth or rank above 255")
        data = np.ascontiguousarray(array).tobytes()
        out.append(bytes([len(path)]) + b"".join(_component(c, "path component") for c in path))
        out.append(struct.pack(">BB", code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        out.append(struct.pack(">Q", len(data)) + data)
    text = json.dumps(scalars, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    out.append(struct.pack(">I", len(text)) + text)
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise FrameError(f"LocalFrame truncated while reading {what} ({n} bytes at offset {self.pos})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def text(self, n: int, what: str) -> str:
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(f"LocalFrame {what} is not valid UTF-8") from None


def _insert(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise FrameError(f"LocalFrame path {'/'.join(path)} collides with a value")
        tree = node
    tree[path[-1]] = value


def _merge(tree: dict[str, Any], scalars: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in scalars.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value, f"{prefix}{key}/")
        elif key in tree:
            raise FrameError(f"LocalFrame scalar '{prefix}{key}' collides with an array")
        else:
            tree[key] = value


def _exact_count(text: str) -> int:
    """JSON values outside strings (commas and colons inside a prompt do not count): a linear scan, run only
    when the quick bound is over the limit."""
    values, in_string, escaped = 1, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in ",:[{":
            values += 1
    return values


def _check_depth(value: Any, max_depth: int) -> None:
    todo = [(value, 1)]
    while todo:
        node, depth = todo.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        if children and depth >= max_depth:
            raise FrameError(f"LocalFrame scalar JSON nests more than {max_depth} deep (max_frame_depth)")
        todo.extend((child, depth + 1) for child in children)


def _count_upper_bound(text: str) -> int:
    """At least the number of JSON values in ``text``: each one after the first follows a ',' or ':' or opens
    a container (string contents may inflate the count, never deflate it)."""
    return 1 + text.count(",") + text.count(":") + text.count("[") + text.count("{")


def _scalars(text: str, limits: FrameLimits, arrays: int) -> dict[str, Any]:
    if arrays + _count_upper_bound(text) > limits.max_values and _exact_count(text) + arrays > limits.max_values:
        raise FrameError(f"LocalFrame holds more than {limits.max_values} values (max_frame_values)")
    try:
        scalars = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise FrameError(f"LocalFrame scalar JSON is invalid: {exc}") from None
    except RecursionError:
        raise FrameError(f"LocalFrame scalar JSON nests more than {limits.max_depth} deep (max_frame_depth)") from None
    if not isinstance(scalars, dict):
        raise FrameError("LocalFrame scalar JSON must be an object")
    _check_depth(scalars, limits.max_depth)
    return scalars


def unpack(body: bytes | memoryview, limits: FrameLimits = DEFAULT_FRAME_LIMITS) -> tuple[str, dict[str, Any]]:
    """LocalFrame body -> (schema_id, nested dict); arrays are read-only views on ``body``."""
    reader = _Reader(body)
    (schema_len,) = reader.unpack(">B", "schema_id length")
    schema_id = reader.text(schema_len, "schema_id")
    (count,) = reader.unpack(">H", "array count")
    if count > limits.max_values:
        raise FrameError(f"LocalFrame holds {count} arrays, more than {limits.max_values} (max_frame_values)")
    tree: dict[str, Any] = {}
    for index in range(count):
        (depth,) = reader.unpack(">B", f"array {index} path depth")
        if depth < 1:
            raise FrameError(f"LocalFrame array {index} has an empty path")
        path = []
        for _ in range(depth):
            (length,) = reader.unpack(">B", "path component length")
            path.append(reader.text(length, "path component"))
        code, ndim = reader.unpack(">BB", f"array '{'/'.join(path)}' dtype and rank")
        if code not in DTYPE_CODES:
            raise FrameError(f"LocalFrame array '{'/'.join(path)}' has unknown dtype code 0x{code:02x}")
        dtype = DTYPE_CODES[code]
        shape = reader.unpack(f">{ndim}I", "shape")
        (data_len,) = reader.unpack(">Q", "data length")
        expected = int(np.prod(shape, dtype=np.uint64)) * dtype.itemsize if shape else dtype.itemsize
        if expected != data_len:
            raise FrameError(
                f"LocalFrame array '{'/'.join(path)}': data length mismatch ({data_len} bytes for "
                f"{dtype.name} {list(shape)}, expected {expected})"
            )
        data = reader.take(data_len, f"array '{'/'.join(path)}' data")
        _insert(tree, path, np.frombuffer(data, dtype=dtype).reshape(shape))
    (json_len,) = reader.unpack(">I", "scalar JSON length")
    if json_len > limits.max_scalar_json_bytes:
        raise FrameError(
            f"LocalFrame scalar JSON of {json_len} bytes is over the limit of {limits.max_scalar_json_bytes} "
            "bytes (max_scalar_json_bytes)"
        )
    text = reader.text(json_len, "scalar JSON")
    if reader.pos != len(reader.data):
        raise FrameError(f"LocalFrame has {len(reader.data) - reader.pos} trailing bytes")
    _merge(tree, _scalars(text, limits, count))
    return schema_id, tree


def envelope(message_type: MessageType, body: bytes = b"") -> bytes:
    """``[length u32 BE][type][body]`` with length = 1 + len(body)."""
    return struct.pack(">IB", len(body) + 1, int(message_type)) + body


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes from a blocking socket, or None if the peer closes first."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def recv_envelope(sock: socket.socket) -> tuple[int, bytes] | None:
    """One ``[length][type][body]`` message: (type, body); None if the peer closes before it is complete."""
    header = recv_exact(sock, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    payload = recv_exact(sock, length) if length else b""
    if not payload:
        return None
    return payload[0], payload[1:]
