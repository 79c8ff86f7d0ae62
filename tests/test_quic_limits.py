"""The QUIC sidecar against broken peers, with the real binary on 127.0.0.1 and free ports.

The backend behind the server sidecar is a small LocalFrame peer on a unix socket served by a thread here
(METADATA -> a msgpack dict, INFER -> the request echoed, RESET -> ack): a real socket peer that speaks the
bridge's protocol, so Triton is not needed. Hostile QUIC handshakes are driven from Rust
(flash-transport/tests/quic_limits.rs); here: the robot-facing behaviour of those limits, the client
sidecar's answers to a broken local peer, and both modes exiting when their parent dies.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from openpi_client import msgpack_numpy

from openpi_triton.flash_client import FlashTransportPolicy, find_binary
from openpi_triton.protocols import local_frame
from openpi_triton.protocols.local_frame import MessageType
from openpi_triton.readiness import accepts_unix, udp_bound_by
from tests.triton_helpers import free_udp_port, wait_until

METADATA = {"served_by": "fake-backend"}
READY_TIMEOUT_S = 30.0


class _EchoBackend(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        replies = {
            MessageType.METADATA: lambda body: (MessageType.METADATA_RESPONSE, msgpack_numpy.packb(METADATA)),
            MessageType.INFER: lambda body: (MessageType.INFER_RESPONSE, body),
            MessageType.RESET: lambda body: (MessageType.RESET_RESPONSE, b""),
        }
        while (message := local_frame.recv_envelope(self.request)) is not None:
            kind, body = message
            self.request.sendall(local_frame.envelope(*replies[MessageType(kind)](body)))


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def backend() -> Iterator[pathlib.Path]:
    path = pathlib.Path("/tmp") / f"quic-limits-backend-{uuid.uuid4().hex[:12]}.sock"
    server = _Server(str(path), _EchoBackend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path
    server.shutdown()
    server.server_close()
    path.unlink(missing_ok=True)


def sidecar_env() -> dict[str, str]:
    """Our environment without the operator's QUIC settings (a token, limits), with plain info logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENPI_QUIC_")}
    return {**env, "RUST_LOG": "info", "NO_COLOR": "1"}


class Sidecar:
    """The binary with its log collected; ``wait_for`` blocks until a log line matches (what it reports)."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [str(find_binary()), *args], stderr=subprocess.PIPE, text=True, env=sidecar_env()
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            sys.stderr.write(line)
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = READY_TIMEOUT_S) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no log line matching {pattern!r}:\n{''.join(self.lines)}")
                self._changed.wait(min(left, 0.5))

    def exited(self) -> str | None:
        return None if self.process.poll() is None else f"the sidecar exited:\n{''.join(self.lines)}"

    def wait_listening(self, port: int) -> None:
        """Until it holds its UDP socket (a server) ..."""
        wait_until(lambda: udp_bound_by(self.process.pid, port), READY_TIMEOUT_S, f"UDP {port}", unless=self.exited)

    def wait_accepting(self, path: pathlib.Path) -> None:
        """... or its local socket accepts a connection (a client)."""
        wait_until(lambda: accepts_unix(path), READY_TIMEOUT_S, f"a connect to {path}", unless=self.exited)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def server_args(backend: pathlib.Path, port: int, *extra: str) -> list[str]:
    return ["server", "--listen-port", str(port), "--backend-socket-path", str(backend), *extra]


def start_server(backend: pathlib.Path, *extra: str) -> tuple[Sidecar, int]:
    port = free_udp_port()
    server = Sidecar(server_args(backend, port, *extra))
    server.wait_listening(port)
    return server, port


def client_args(port: int, socket_path: pathlib.Path) -> list[str]:
    return ["client", "--server-host", "127.0.0.1", "--server-port", str(port), "--local-port", "0",
            "--local-socket-path", str(socket_path)]  # fmt: skip


def local_socket_path() -> pathlib.Path:
    return pathlib.Path("/tmp") / f"quic-limits-client-{uuid.uuid4().hex[:12]}.sock"


@pytest.fixture(scope="module")
def server_port(backend: pathlib.Path) -> Iterator[int]:
    server, port = start_server(backend)
    yield port
    server.stop()


def obs(seed: int) -> dict:
    return {"state": np.arange(4, dtype=np.float32) + seed, "prompt": "hi"}


def test_a_robot_beyond_the_connection_limit_is_told_why_and_the_others_keep_their_answers(
    backend: pathlib.Path,
) -> None:
    server, port = start_server(backend, "--max-connections", "2")
    robots = [FlashTransportPolicy("127.0.0.1", port=port, local_port=0) for _ in range(2)]
    try:
        assert robots[0].get_server_metadata() == METADATA
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="refused the connection"):
            FlashTransportPolicy("127.0.0.1", port=port, local_port=0)
        assert time.monotonic() - started < 10
        for seed, robot in enumerate(robots):
            np.testing.assert_array_equal(robot.infer(obs(seed))["state"], obs(seed)["state"])
        server.wait_for(r"refused 1 connection\(s\).*--max-connections")
    finally:
        for robot in robots:
            robot.close()
        server.stop()


def test_client_sidecar_answers_broken_local_requests_with_an_error_and_stays_usable(server_port: int) -> None:
    path = local_socket_path()
    client = Sidecar(client_args(server_port, path))
    try:
        client.wait_accepting(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.settimeout(10)
            sock.sendall(local_frame.envelope(MessageType.METADATA))
            assert local_frame.recv_envelope(sock) == (MessageType.METADATA_RESPONSE, msgpack_numpy.packb(METADATA))
            # A well-framed INFER whose LocalFrame is malformed (an array with an empty path).
            sock.sendall(local_frame.envelope(MessageType.INFER, b"\x07unknown\x00\x01\x00"))
            kind, text = local_frame.recv_envelope(sock) or (None, b"")
            assert kind == MessageType.ERROR and b"malformed INFER request" in text and b"empty path" in text, text
            # Truncated arrays and unknown message types: errors too, and the connection still works.
            body = local_frame.pack(obs(1))
            sock.sendall(local_frame.envelope(MessageType.INFER, body[:-5]))
            assert (local_frame.recv_envelope(sock) or (None,))[0] == MessageType.ERROR
            sock.sendall(struct.pack(">IB", 1, 0x7F))
            kind, text = local_frame.recv_envelope(sock) or (None, b"")
            assert kind == MessageType.ERROR and b"unknown local message type 0x7f" in text, text
            sock.sendall(local_frame.envelope(MessageType.INFER, body))
            kind, reply = local_frame.recv_envelope(sock) or (None, b"")
            assert kind == MessageType.INFER_RESPONSE
            np.testing.assert_array_equal(local_frame.unpack(reply)[1]["state"], obs(1)["state"])
            # Broken framing (a length over --max-message-bytes): the reason, then the connection closes.
            sock.sendall(struct.pack(">I", 0xFFFFFFFF))
            kind, text = local_frame.recv_envelope(sock) or (None, b"")
            assert kind == MessageType.ERROR and b"exceeds the limit" in text, text
            assert local_frame.recv_exact(sock, 1) is None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # the sidecar itself serves on
            sock.connect(str(path))
            sock.sendall(local_frame.envelope(MessageType.RESET))
            assert local_frame.recv_envelope(sock) == (MessageType.RESET_RESPONSE, b"")
    finally:
        client.stop()
        path.unlink(missing_ok=True)


PARENT_SCRIPT = """
import subprocess, sys
child = subprocess.Popen(sys.argv[2:], stderr=open(sys.argv[1], "w"))
print(child.pid, flush=True)
child.wait()  # alive as long as its child, until the test kills it
"""


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet (its parent was killed)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.parametrize("mode", ["client", "server"])
def test_a_sidecar_exits_by_itself_when_its_parent_is_killed(
    mode: str, server_port: int, backend: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    path = local_socket_path()
    port = free_udp_port()
    args = client_args(server_port, path) if mode == "client" else server_args(backend, port)
    log = tmp_path / "sidecar.log"
    # The parent spawns with a plain Popen (no PDEATHSIG): what is tested is the binary's own watch.
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(log), str(find_binary()), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=sidecar_env(),
    )
    child_pid = 0
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())

        def ready() -> bool:
            return accepts_unix(path) if mode == "client" else udp_bound_by(child_pid, port)

        def died() -> str | None:
            return f"the sidecar exited:\n{log.read_text()}" if is_gone(child_pid) else None

        wait_until(ready, READY_TIMEOUT_S, f"the {mode} sidecar ready", unless=died)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        # Its parent poll (250 ms) and a bounded close.
        wait_until(lambda: is_gone(child_pid), 8, f"the {mode} sidecar exits with its parent")
        assert "went away" in log.read_text()
        if mode == "client":
            assert not path.exists(), "the client sidecar left its socket behind"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child_pid and not is_gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        path.unlink(missing_ok=True)
