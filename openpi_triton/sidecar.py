"""Supervises one ``openpi-flash-transport server`` per slot: restart with exponential backoff, logs prefixed."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import threading
import time

from openpi_triton.flash_client import find_binary
from openpi_triton.processes import stop_process

MAX_BACKOFF_S = 60.0


class SidecarSupervisor:
    """Runs ``server --listen-port <port> --backend-socket-path <socket>`` until :meth:`stop`."""

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
        self.process: subprocess.Popen[str] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"quic-{slot}", daemon=True)

    def start(self) -> SidecarSupervisor:
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            assert self.process.stdout is not None
            for line in self.process.stdout:
                sys.stderr.write(f"[quic:{self.slot}] {line}")
            code = self.process.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - started > MAX_BACKOFF_S:
                backoff = 1.0  # it ran a good while: start the backoff over
            sys.stderr.write(f"[quic:{self.slot}] exited with code {code}; restarting in {backoff:.0f} s\n")
            self.restarts += 1
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def stop(self) -> None:
        self._stop.set()
        if self.process is not None:
            stop_process(self.process, timeout=10)
        self._thread.join(timeout=15)
