"""A ``FlashTransportPolicy``-compatible robot client: QUIC through the ``openpi-flash-transport`` binary.

Same constructor and methods as openpi-flash's class, so robot code switches by import. The binary is
spawned in ``client`` mode with a private unix socket; this class speaks LocalFrame to it.

Binary lookup: ``$OPENPI_FLASH_TRANSPORT_BINARY``, then this checkout's newest cargo build
(``flash-transport/target/{release,debug}``), then ``openpi-flash-transport`` on ``PATH``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from openpi_client import base_policy, msgpack_numpy

from openpi_triton.processes import spawn, stop_process
from openpi_triton.protocols import local_frame
from openpi_triton.protocols.local_frame import MessageType

BINARY_NAME = "openpi-flash-transport"
STARTUP_TIMEOUT_S = 30.0
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def find_binary() -> pathlib.Path:
    candidates: list[pathlib.Path] = []
    if os.environ.get("OPENPI_FLASH_TRANSPORT_BINARY"):
        candidates.append(pathlib.Path(os.environ["OPENPI_FLASH_TRANSPORT_BINARY"]))
    # Of this checkout's builds, the most recent one (a stale release build must not shadow a fresh debug one).
    builds = [_REPO_ROOT / "flash-transport" / "target" / profile / BINARY_NAME for profile in ("release", "debug")]
    candidates += sorted((b for b in builds if b.is_file()), key=lambda b: b.stat().st_mtime, reverse=True)
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        candidates.append(pathlib.Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    searched = ", ".join(str(c) for c in candidates) or f"{BINARY_NAME} on PATH"
    raise FileNotFoundError(
        f"{BINARY_NAME} not found (searched {searched}). Build it with `cargo build --release` in flash-transport/ "
        "or set OPENPI_FLASH_TRANSPORT_BINARY to override the path."
    )


def _own_binary(
    command: list[str],
    env: dict[str, str],
    log_tail: collections.deque[str],
    started: queue.Queue[subprocess.Popen[str] | BaseException],
) -> None:
    """The thread that spawns the client binary, relays its log (the last lines are kept in ``log_tail`` to
    explain an early exit) and waits for it: the binary must not outlive this thread (PDEATHSIG)."""
    try:
        # SIGTERM, not SIGKILL: the binary then closes its QUIC connection, and the server frees it at once.
        process = spawn(
            command, death_signal=signal.SIGTERM, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
    except BaseException as exc:
        started.put(exc)
        return
    started.put(process)
    assert process.stdout is not None
    for line in process.stdout:
        log_tail.append(line)
        sys.stderr.write(line)
    process.wait()


class FlashTransportPolicy(base_policy.BasePolicy):
    def __init__(
        self,
        host: str,
        port: int = 5555,
        local_port: int = 5556,
        transport_options: object | None = None,
        auth_token: str | None = None,
    ):
        """``auth_token``: the server's opt-in QUIC token (default: ``$OPENPI_QUIC_TOKEN``, else none)."""
        if transport_options is not None:
            raise ValueError("Custom transport_options are not supported by openpi-flash-transport yet")
        self._socket_path = pathlib.Path("/tmp") / f"openpi-flash-transport-client-{uuid.uuid4().hex}.sock"
        self._process: subprocess.Popen[str] | None = None
        self._sock: socket.socket | None = None
        self._log_tail: collections.deque[str] = collections.deque(maxlen=200)
        env = dict(os.environ)
        if auth_token is not None:
            env["OPENPI_QUIC_TOKEN"] = auth_token  # the environment, not argv: `ps` does not show it
        command = [
            str(find_binary()),
            "client",
            "--server-host",
            host,
            "--local-socket-path",
            str(self._socket_path),
            "--server-port",
            str(port),
            "--local-port",
            str(local_port),
            "--max-idle-timeout-secs",
            "10",
            "--keep-alive-interval-secs",
            "2",
            "--initial-window-bytes",
            "1048576",
        ]
        try:
            self._process = self._start_binary(command, env)
            self._sock = self._connect()
            self._metadata = msgpack_numpy.unpackb(self._request(MessageType.METADATA, MessageType.METADATA_RESPONSE))
        except BaseException:
            self.close()
            raise

    def _start_binary(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        """Spawns the binary on a thread of its own that lives as long as the binary does.

        The binary dies with this process (PDEATHSIG, see ``openpi_triton.processes``), but PDEATHSIG fires
        when the spawning *thread* ends: a robot may well build its policy in a short-lived worker thread, so
        the spawning thread is a dedicated one, which relays the binary's log and then waits for its exit. It
        holds no reference to this object, so a dropped policy is still collected (and closes the binary).
        """
        started: queue.Queue[subprocess.Popen[str] | BaseException] = queue.Queue(maxsize=1)
        args = (command, env, self._log_tail, started)
        threading.Thread(target=_own_binary, args=args, name=BINARY_NAME, daemon=True).start()
        outcome = started.get()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _exit_reason(self) -> str:
        """The binary's last log lines, without the backtrace that RUST_BACKTRACE adds to its error."""
        lines = list(self._log_tail)
        if "Stack backtrace:\n" in lines:
            lines = lines[: lines.index("Stack backtrace:\n")]
        return "".join(lines[-10:])

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                time.sleep(0.1)  # let the relay thread read the last lines
                raise RuntimeError(
                    f"{BINARY_NAME} client exited before opening its local socket (exit_code={code}):\n"
                    + self._exit_reason()
                )
            if self._socket_path.exists():
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(str(self._socket_path))
                    return sock
                except OSError:
                    sock.close()
            time.sleep(0.1)
        raise TimeoutError(f"{BINARY_NAME} client did not open {self._socket_path} within {STARTUP_TIMEOUT_S} s")

    def _request(self, request: MessageType, expected: MessageType, body: bytes = b"") -> bytes:
        if self._sock is None:
            raise ConnectionError(f"{BINARY_NAME} is closed")
        self._sock.sendall(local_frame.envelope(request, body))
        message = local_frame.recv_envelope(self._sock)
        if message is None:
            raise ConnectionError(f"{BINARY_NAME} disconnected before its answer was complete")
        kind, reply = message
        if kind == MessageType.ERROR:
            raise RuntimeError(f"Error from {BINARY_NAME}:\n{reply.decode('utf-8', errors='replace')}")
        if kind != expected:
            raise RuntimeError(f"{BINARY_NAME} answered {MessageType(kind).name} to {request.name}")
        return reply

    def get_server_metadata(self) -> dict[str, Any]:
        return self._metadata

    def infer(self, obs: dict) -> dict:
        body = self._request(MessageType.INFER, MessageType.INFER_RESPONSE, local_frame.pack(obs))
        return local_frame.unpack(body)[1]

    def reset(self) -> None:
        self._request(MessageType.RESET, MessageType.RESET_RESPONSE)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._process is not None:
            stop_process(self._process, timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
