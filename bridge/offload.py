"""CPU work of one request (decoding a frame, converting its arrays) off the event loop every robot shares.

The loop only waits on sockets; a large or hostile frame then costs its own connection the time, while the
loop keeps answering the others. Work per frame is bounded by the frame limits, so a few threads suffice.

A trip to these threads and back costs two thread wake-ups: about 0.06 ms on an idle host, 0.3-0.5 ms on a
busy one (a 600 KB ALOHA observation decodes in 0.11 ms, but its decode stage took 0.57 ms through a thread).
Work known to cost less than the trip runs on the loop instead (:func:`decode`, :func:`run_sized`): it holds
the other robots up for less than the trip would, and it holds the GIL either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from openpi_triton.limits import FrameLimits

P = ParamSpec("P")
T = TypeVar("T")

WORKERS = 4
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="bridge-cpu")

# Work on the loop is bounded by these: copying a megabyte takes well under 0.1 ms, and a frame of at most
# INLINE_MAX_VALUES values (with at most INLINE_MAX_JSON_BYTES of JSON) builds that few objects.
INLINE_MAX_BYTES = 1 << 20
INLINE_MAX_VALUES = 256
INLINE_MAX_JSON_BYTES = 1024


async def run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on the bridge's CPU threads; its exception is raised here."""
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(fn, *args, **kwargs))


async def run_sized(nbytes: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """:func:`run` for work whose cost grows with ``nbytes`` (copies): on the loop up to ``INLINE_MAX_BYTES``."""
    if nbytes <= INLINE_MAX_BYTES:
        return fn(*args, **kwargs)
    return await run(fn, *args, **kwargs)


def inline_limits(limits: FrameLimits) -> FrameLimits:
    """``limits`` tightened to what the loop may decode itself."""
    return dataclasses.replace(
        limits,
        max_values=min(limits.max_values, INLINE_MAX_VALUES),
        max_scalar_json_bytes=min(limits.max_scalar_json_bytes, INLINE_MAX_JSON_BYTES),
    )


async def decode(
    fn: Callable[[bytes | memoryview, FrameLimits], T], data: bytes | memoryview, limits: FrameLimits
) -> T:
    """``fn(data, limits)``, a frame decoder that raises ``ValueError`` on a bad or oversized frame.

    A frame of at most ``INLINE_MAX_BYTES`` is first decoded on the loop within :func:`inline_limits`, which
    stop a frame of many values after a few hundred steps; any frame that fails there (too many values, or
    malformed) is decoded again on the threads within ``limits``, so its result or error is exactly the one
    ``limits`` give. Tighter limits only refuse more, so a frame decoded on the loop decodes the same.
    """
    if len(data) <= INLINE_MAX_BYTES:
        try:
            return fn(data, inline_limits(limits))
        except ValueError:
            pass
    return await run(fn, data, limits)
