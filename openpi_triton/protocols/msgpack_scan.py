"""A bounded structural walk over a msgpack frame, run before the real decoder builds anything.

msgpack is compact: an empty array is one byte but a Python list of 56+ bytes, so an unchecked 32 MB frame
of empty arrays builds gigabytes of objects. This walk reads only type headers (string, binary and
extension payloads are skipped by length, never copied), counts every value and tracks container depth,
and stops at the first value past ``max_values`` or container past ``max_depth``. It costs at most
``max_values`` steps whatever the frame, and once it passes, the decoder builds at most ``max_values``
objects plus copies of the payload bytes: memory stays within a small constant of the frame size.
"""

from __future__ import annotations

import struct

from openpi_triton.limits import FrameLimits

# Header byte -> (bytes of length field, or 0 for fixed-size; fixed payload size) for the non-fixed types.
_SIZED = {  # length-prefixed payloads: str8/16/32, bin8/16/32
    0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4,
}  # fmt: skip
_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}  # ext8/16/32: length, then a type byte, then the payload
_FIXED = {  # nil, false, true, float32/64, uint8..64, int8..64, fixext1..16 (type byte + payload)
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}  # fmt: skip
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # array16/32, map16/32: (len bytes, x)
_UNPACK = {1: ">B", 2: ">H", 4: ">I"}


class FrameLimitError(ValueError):
    """The frame holds more values or deeper nesting than the limits allow, or is cut short."""


def _length(data: bytes | memoryview, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise FrameLimitError(f"frame truncated at byte {pos}")
    return struct.unpack_from(_UNPACK[size], data, pos)[0]


def scan(data: bytes | memoryview, limits: FrameLimits) -> int:
    """Checks the frame's shape against ``limits``; returns the number of values. Raises :class:`FrameLimitError`."""
    end = len(data)
    pos = 0
    values = 0
    pending = [1]  # per open container: values still to read (the frame itself is one value)
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        values += 1
        if values > limits.max_values:
            raise FrameLimitError(
                f"frame holds more than {limits.max_values} msgpack values (max_frame_values); an openpi "
                "observation holds about 40"
            )
        if pos >= end:
            raise FrameLimitError(f"frame truncated at byte {pos}")
        head = data[pos]
        pos += 1
        children = 0
        if head <= 0x7F or head >= 0xE0:
            continue  # fixint
        if head <= 0x8F:
            children = 2 * (head & 0x0F)  # fixmap
        elif head <= 0x9F:
            children = head & 0x0F  # fixarray
        elif head <= 0xBF:
            pos += head & 0x1F  # fixstr
        elif head in _FIXED:
            pos += _FIXED[head]
        elif head in _SIZED:
            size = _SIZED[head]
            pos += size + _length(data, pos, size)
        elif head in _EXT:
            size = _EXT[head]
            pos += size + 1 + _length(data, pos, size)
        elif head in _CONTAINERS:
            size, per_item = _CONTAINERS[head]
            children = per_item * _length(data, pos, size)
            pos += size
        else:
            raise FrameLimitError(f"byte 0x{head:02x} at offset {pos - 1} is not a msgpack type")
        if children:
            if len(pending) >= limits.max_depth:
                raise FrameLimitError(f"frame nests containers more than {limits.max_depth} deep (max_frame_depth)")
            if children > end - pos:  # every value takes at least one byte: a lie about the count
                raise FrameLimitError(f"container at byte {pos} declares {children} values but the frame ends first")
            pending.append(children)
    if pos > end:
        raise FrameLimitError(f"frame truncated: a value runs {pos - end} bytes past its end")
    return values
