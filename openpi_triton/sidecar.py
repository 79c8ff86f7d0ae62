"""Supervises one ``openpi-flash-transport server`` per slot: restart with exponential backoff, logs prefixed.

A sidecar is ready once its process holds a UDP socket bound to its QUIC port (what the kernel says, see
:func:`openpi_triton.readiness.udp_bound_by`): from then on it answers robots' handshakes.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import threading
from typing import Any

from openpi_triton.flash_client import find_binary
from openpi_triton.processes import Backoff, Child, Supervisor, pump_lines, spawn, stop_process
from openpi_triton.readiness import udp_bound_by, wait_until

# The sidecar has no state worth a long wait: back within 30 s at worst.
BACKOFF = Backoff(initial_s=1.0, max_s=30.0, reset_after_s=60.0)
# Binding a UDP port takes milliseconds; a loaded machine may take seconds to start the binary at all.
READY_TIMEOUT_S = 60.0


class _SidecarChild(Child):
    def __init__(self, slot: str, quic_port: int, command: list[str]) -> None:
        self.name = f"{slot} QUIC sidecar"
        self.slot = slot
        self.quic_port = quic_port
        self.command = command

    def spawn(self) -> subprocess.Popen[Any]:
        # Spawned on the supervisor's thread, which waits for it: PDEATHSIG kills it with the stack.
        process = spawn(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        pump_lines(process.stdout, f"[quic:{self.slot}] ")
        return process

    def wait_ready(self, process: subprocess.Popen[Any]) -> None:
        def exited() -> str | None:
            return None if process.poll() is None else f"the sidecar exited (code {process.returncode})"

        what = f"the {self.slot} sidecar to bind UDP port {self.quic_port}"
        wait_until(lambda: udp_bound_by(process.pid, self.quic_port), READY_TIMEOUT_S, what, unless=exited)

    def stop(self, process: subprocess.Popen[Any]) -> None:
        stop_process(process, timeout=10)


class SidecarSupervisor:
    """Runs ``server --listen-port <port> --backend-socket-path <socket>`` until :meth:`stop`.

    It needs nothing from the bridge to start: it dials the bridge's socket per QUIC connection, so a
    restarted bridge is found again without restarting the sidecar.
    """

    def __init__(
        self,
        slot: str,
        quic_port: int,
        backend_socket: str | pathlib.Path,
        binary: pathlib.Path | None = None,
        restart: bool = True,
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
        self.supervisor = Supervisor(
            _SidecarChild(slot, quic_port, self.command),
            BACKOFF,
            log=lambda message: print(f"[quic:{slot}] {message}", file=sys.stderr, flush=True),
            restart=restart,
        )

    @property
    def process(self) -> subprocess.Popen[Any] | None:
        return self.supervisor.process

    @property
    def restarts(self) -> int:
        return self.supervisor.restarts

    def start(self) -> SidecarSupervisor:
        self.supervisor.start()
        return self

    def wait_ready(self, cancel: threading.Event | None = None) -> bool:
        """True once the sidecar listens (see :meth:`Supervisor.wait_first_ready`)."""
        return self.supervisor.wait_first_ready(cancel)

    def stop(self) -> None:
        self.supervisor.stop(timeout=15)
