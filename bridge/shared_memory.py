"""Camera images to a co-located Triton through system shared memory instead of the gRPC payload.

An ALOHA observation carries ~600 KB of images; serialising them into gRPC and parsing them again in
Triton costs milliseconds. With Triton on the same host, the bridge copies the images into a POSIX
shared-memory region registered with Triton once, and the request only names region, offset and size.
Regions live in a pool: one per request in flight, reused afterwards, unregistered and unlinked on close.
The pool is bounded: at most ``MAX_FREE_REGIONS`` idle regions are kept (a burst's extra regions are given
back when their requests finish), and images above ``MAX_REGION_BYTES`` go in the gRPC payload instead.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from multiprocessing import shared_memory
from typing import Any

import numpy as np

logger = logging.getLogger("openpi_bridge")

_MIN_REGION_BYTES = 1 << 20
# Four 224 x 224 cameras take 0.6 MB; 32 MiB covers four cameras at the pixel limit.
MAX_REGION_BYTES = 32 << 20
# Idle regions kept per Triton server: enough for the requests one server has in flight at a time.
MAX_FREE_REGIONS = 8
_names = itertools.count()


@dataclasses.dataclass
class Region:
    name: str  # Triton's name for the region
    memory: shared_memory.SharedMemory

    @property
    def size(self) -> int:
        return self.memory.size

    def write(self, array: np.ndarray, offset: int) -> None:
        view = np.ndarray(array.shape, dtype=array.dtype, buffer=self.memory.buf, offset=offset)
        view[...] = array


class SharedMemoryPool:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.free: list[Region] = []
        self.regions: list[Region] = []

    async def acquire(self, size: int) -> Region:
        for index, region in enumerate(self.free):
            if region.size >= size:
                return self.free.pop(index)
        byte_size = max(_MIN_REGION_BYTES, 1 << (size - 1).bit_length())
        memory = shared_memory.SharedMemory(create=True, size=byte_size)
        name = f"openpi_bridge_{os.getpid()}_{next(_names)}"
        try:
            await self.client.register_system_shared_memory(name, f"/{memory.name}", byte_size)
        except BaseException:
            memory.close()
            memory.unlink()
            raise
        region = Region(name, memory)
        self.regions.append(region)
        logger.info("registered shared-memory region %s (%d bytes) with Triton", name, byte_size)
        return region

    def fits(self, size: int) -> bool:
        return size <= MAX_REGION_BYTES

    async def release(self, region: Region) -> None:
        if region not in self.regions:  # dropped by reset() while it was in use
            return
        if len(self.free) < MAX_FREE_REGIONS:
            self.free.append(region)
            return
        self.regions.remove(region)
        await self._drop(region)

    async def _drop(self, region: Region) -> None:
        try:
            await self.client.unregister_system_shared_memory(region.name)
        except Exception as exc:  # Triton may already be gone
            logger.info("could not unregister %s: %s", region.name, exc)
        region.memory.close()
        region.memory.unlink()

    async def reset(self) -> None:
        """Drops every region (Triton no longer knows them); new ones are registered on demand."""
        await self.close()

    async def close(self) -> None:
        regions, self.regions = self.regions, []
        for region in regions:
            await self._drop(region)
        self.free.clear()
