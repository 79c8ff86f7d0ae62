"""CPU work of one request (decoding a frame, converting its arrays) off the event loop every robot shares.

The loop only waits on sockets; a large or hostile frame then costs its own connection the time, while the
loop keeps answering the others. Work per frame is bounded by the frame limits, so a few threads suffice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

WORKERS = 4
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="bridge-cpu")


async def run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on the bridge's CPU threads; its exception is raised here."""
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(fn, *args, **kwargs))
