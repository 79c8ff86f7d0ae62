"""The simulated GPU that instances of the simulated runtime share: one batch runs on it at a time.

Triton runs two instances of a model on one GPU so that one prepares its batch (openpi's transforms, on the
CPU) while the other's batch runs; the GPU still executes one batch after the other. The simulated runtime
has no GPU to serialise its calls, so its instances on one device take turns through a lock file: one per
Triton server (the parent of its instances' backend stubs) and device id. Without it, two instances would
"compute" at once, which no GPU does under a cost curve measured one batch at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import tempfile
from collections.abc import Iterator


def lock_path(device_id: int, server_pid: int) -> pathlib.Path:
    """The lock file of device ``device_id`` of the Triton server with process id ``server_pid``."""
    return pathlib.Path(tempfile.gettempdir()) / f"openpi-simulated-gpu-{os.getuid()}-{server_pid}-{device_id}.lock"


class SimulatedDevice:
    """A lock file held for the duration of each simulated model call (a blocking ``flock``: no CPU spent
    waiting; the kernel lets the next waiter in when the holder releases it or its process dies)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @classmethod
    def of_server(cls, device_id: int) -> SimulatedDevice:
        """The device ``device_id`` of the Triton server that started this backend stub (its parent)."""
        return cls(lock_path(device_id, os.getppid()))

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)
