"""A Python-backend stub ends as soon as the Triton server that started it is gone.

Triton's stub checks on its server with ``kill(pid, 0)``, which a dead server passes until someone reaps it.
When the stack is SIGKILLed, Triton dies with it (PDEATHSIG) and is re-parented to the machine's init; an
init that does not reap (many containers' first process, this project's CI sandboxes) leaves it a zombie
for good, and its stubs wait on it forever, each holding its model's memory (a GPU's, on a GPU). A thread of
ours in every stub polls ``getppid()`` instead: a dead server's children are re-parented at once, reaped or
not, and the stub exits. It skips the model's ``finalize``: there is no server left to hand anything back
to, and the kernel frees what the process held.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time

# A dead server's stubs are gone within this much.
POLL_INTERVAL_S = 0.25


@functools.cache  # once per process: a stub's initialize runs on one thread
def exit_with_server() -> None:
    """Start the watch on this stub's server (its parent now); later calls do nothing."""
    threading.Thread(target=_watch, args=(os.getppid(),), name="openpi-server-watch", daemon=True).start()


def _watch(server: int) -> None:
    while os.getppid() == server:
        time.sleep(POLL_INTERVAL_S)
    try:
        # Triton's log went with the server: stderr is what is left, often a pipe whose reader (the stack that
        # started Triton) died too; a write that fails must not keep the stub alive.
        print(
            f"[openpi-triton] Triton server (pid {server}) is gone: backend stub {os.getpid()} exits now",
            file=sys.stderr,
            flush=True,
        )
    finally:
        os._exit(1)
