"""Supervises one ``openpi-flash-transport server`` per slot: restart with exponential backoff, logs prefixed."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

from openpi_triton.flash_client import find_binary
from openpi_triton.processes import Backoff, Child, Supervisor, pump_lines, spawn, stop_process

# The sidecar has no state worth a long wait: back within 30 s at worst.
BACKOFF = Backoff(initial_s=1.0, max_s=30.0, reset_after_s=60.0)


class _SidecarChild(Child):
    def __init__(self, slot: str, command: list[str]) -> None:
        self.name = "openpi-flash-transport server"
        self.slot = slot
        self.command = command

    def spawn(self) -> subprocess.Popen[Any]:
        # Spawned on the supervisor's thread, which waits for it: PDEATHSIG kills it with the stack.
        process = spawn(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        pump_lines(process.stdout, f"[quic:{self.slot}] ")
        return process

    def stop(self, process: subprocess.Popen[Any]) -> None:
        stop_process(process, timeout=10)


class SidecarSupervisor:
    """Runs ``server --listen-port <port> --backend-socket-path <socket>`` until :meth:`stop`.

    It needs nothing from the bridge to start: it dials the bridge's socket per QUIC connection, so a
    restarted bridge is found again without restarting the sidecar.
    """

    def __init__(
        self, slot: str, quic_port: int, backend_socket: str | pathlib.Path, binary: pathlib.Path | None = None
    ):
        self.slot = slot
        self.command = [
            str(binary or find_binary()),
            "server",
            "--listen-port",
            str(quic_port),
            "--backend-socket-path",
            str(backend_socket),
        ]
        self._supervisor = Supervisor(
            _SidecarChild(slot, self.command),
            BACKOFF,
            log=lambda message: print(f"[quic:{slot}] {message}", file=sys.stderr, flush=True),
            restart_before_ready=True,
        )

    @property
    def process(self) -> subprocess.Popen[Any] | None:
        return self._supervisor.process

    @property
    def restarts(self) -> int:
        return self._supervisor.restarts

    def start(self) -> SidecarSupervisor:
        self._supervisor.start()
        return self

    def stop(self) -> None:
        self._supervisor.stop(timeout=15)
