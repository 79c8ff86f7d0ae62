"""Camera images to a co-located Triton through system shared memory instead of the gRPC payload.

An ALOHA observation carries ~600 KB of images; serialising them into gRPC and parsing them again in
Triton costs milliseconds. With Triton on the same host, the bridge copies the images into a POSIX
shared-memory region registered with Triton once, and the request only names region, offset and size.
Regions live in a pool: one per request in flight, reused afterwards, unregistered and unlinked on close.
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

    def release(self, region: Region) -> None:
        if region in self.regions:  # not dropped by reset() while it was in use
            self.free.append(region)

    async def reset(self) -> None:
        """Drops every region (Triton no longer knows them); new ones are registered on demand."""
        await self.close()

    async def close(self) -> None:
        for region in self.regions:
            try:
                await self.client.unregister_system_shared_memory(region.name)
            except Exception as exc:  # Triton may already be gone
                logger.info("could not unregister %s: %s", region.name, exc)
            region.memory.close()
            region.memory.unlink()
        self.regions.clear()
        self.free.clear()
