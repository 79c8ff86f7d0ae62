"""Raw clients for the attacks: what a misbehaving robot sends, byte by byte, on loopback only.

- :class:`RawWebSocket`: the upgrade by hand (any loopback source address, e.g. 127.0.0.2, so per-address
  limits can be told apart from the witnesses on 127.0.0.1), frames with a zero mask (a valid mask that leaves
  the payload as is: no copy of a 32 MB frame), reading the server's text / close frames.
- :func:`local_frame_exchange`: one message on the bridge's sidecar socket (``[u32 len][type][body]``).
- :func:`http_request` / :func:`http_partial_body`: the admin API, including a body that declares more than it
  sends.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import os
import socket
import struct
import time

from openpi_triton.protocols import local_frame

OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8
LOOPBACK = "127.0.0.1"


def _is_loopback(address: str) -> bool:
    return address.startswith("127.")


@dataclasses.dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return struct.unpack(">H", self.payload[:2])[0] if self.opcode == OP_CLOSE and len(self.payload) >= 2 else None

    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the attacker's connection saw after its request."""

    error_text: str = ""  # the text frame (openpi's error message), if any
    close_code: int | None = None
    binary_reply: bool = False  # the server answered as if the request were fine
    closed_without_close_frame: bool = False
    timed_out: bool = False
    seconds: float = 0.0

    def describe(self) -> str:
        if self.timed_out:
            return f"no answer in {self.seconds:.1f}s"
        parts = []
        if self.error_text:
            parts.append(f"error {self.error_text[:90]!r}")
        if self.binary_reply:
            parts.append("binary answer")
        if self.close_code is not None:
            parts.append(f"close {self.close_code}")
        if self.closed_without_close_frame:
            parts.append("TCP closed")
        return (", ".join(parts) or "nothing") + f" in {self.seconds:.1f}s"


class RawWebSocket:
    def __init__(self, port: int, source: str = LOOPBACK, timeout_s: float = 10.0) -> None:
        if not _is_loopback(source):
            raise ValueError(f"attacks stay on loopback, got source {source}")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.bind((source, 0))
        self.sock.connect((LOOPBACK, port))
        self.buffer = b""

    @staticmethod
    def upgrade_request(headers: dict[str, str], path: str = "/") -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1", f"Host: {LOOPBACK}", "Upgrade: websocket", "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]  # fmt: skip
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def upgrade(self, headers: dict[str, str]) -> int:
        """Sends the upgrade; returns the HTTP status (101 when upgraded)."""
        self.sock.sendall(self.upgrade_request(headers))
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return 0
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return int(head.split(b" ", 2)[1])

    def send_frame(self, opcode: int, payload: bytes | memoryview, declared: int | None = None) -> None:
        """One final frame, masked with a zero key; ``declared`` > len(payload) leaves the frame half-sent."""
        length = len(payload) if declared is None else declared
        if length < 126:
            header = struct.pack(">BB", 0x80 | opcode, 0x80 | length)
        elif length < 2**16:
            header = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, length)
        self.sock.sendall(header + b"\0\0\0\0")
        view = memoryview(payload)
        for start in range(0, len(view), 1 << 20):  # a 32 MB frame in pieces: the server may close midway
            self.sock.sendall(view[start : start + (1 << 20)])

    def recv_frame(self) -> Frame | None:
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk

    def _parse(self) -> Frame | None:
        if len(self.buffer) < 2:
            return None
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if len(self.buffer) < 4:
                return None
            (length,) = struct.unpack(">H", self.buffer[2:4])
            offset = 4
        elif length == 127:
            if len(self.buffer) < 10:
                return None
            (length,) = struct.unpack(">Q", self.buffer[2:10])
            offset = 10
        if len(self.buffer) < offset + length:
            return None
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return Frame(opcode, payload)

    def outcome(self, began: float) -> Outcome:
        """Reads frames until the server closes; what it said on the way."""
        text, binary = "", False
        try:
            while True:
                frame = self.recv_frame()
                if frame is None:
                    return Outcome(text, None, binary, True, seconds=time.monotonic() - began)
                if frame.opcode == OP_TEXT:
                    text = frame.text()
                elif frame.opcode == OP_BINARY:
                    binary = True
                    return Outcome(text, None, binary, seconds=time.monotonic() - began)
                elif frame.opcode == OP_CLOSE:
                    return Outcome(text, frame.close_code, binary, seconds=time.monotonic() - began)
        except TimeoutError:
            return Outcome(text, None, binary, timed_out=True, seconds=time.monotonic() - began)
        except OSError:  # reset: the server dropped the connection
            return Outcome(text, None, binary, True, seconds=time.monotonic() - began)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def websocket_attack(
    port: int, headers: dict[str, str], payload: bytes, opcode: int = OP_BINARY, timeout_s: float = 30.0
) -> Outcome:
    """Upgrade, skip the metadata frame, send one frame, report what came back."""
    began = time.monotonic()
    ws = RawWebSocket(port, timeout_s=timeout_s)
    try:
        status = ws.upgrade(headers)
        if status != 101:
            return Outcome(f"upgrade refused: HTTP {status}", seconds=time.monotonic() - began)
        ws.recv_frame()  # the metadata every connection gets first
        began = time.monotonic()
        try:
            ws.send_frame(opcode, payload)
        except OSError:  # the server closed while we were still sending: read why
            pass
        return ws.outcome(began)
    finally:
        ws.close()


# -------------------------------------------------------------------------------------------- sidecar socket


@dataclasses.dataclass(frozen=True)
class LocalReply:
    kind: int | None  # None: closed without a reply
    body: bytes
    seconds: float
    timed_out: bool = False

    def describe(self) -> str:
        if self.timed_out:
            return f"no reply in {self.seconds:.1f}s"
        if self.kind is None:
            return f"closed without a reply in {self.seconds:.1f}s"
        name = {0x12: "INFER_RESPONSE", 0x13: "ERROR", 0x11: "METADATA_RESPONSE"}.get(self.kind, hex(self.kind))
        text = f" {self.body[:90].decode('utf-8', errors='replace')!r}" if self.kind == 0x13 else ""
        return f"{name}{text} in {self.seconds:.1f}s"


def local_frame_exchange(path: str, message: bytes, timeout_s: float = 30.0) -> LocalReply:
    """Sends ``message`` (a whole envelope, or a hostile one) on the sidecar socket and reads one reply."""
    began = time.monotonic()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
        try:
            sock.sendall(message)
        except OSError:
            pass  # closed early: the reply (if any) says why
        header = local_frame.recv_exact(sock, 4)
        if header is None:
            return LocalReply(None, b"", time.monotonic() - began)
        (length,) = struct.unpack(">I", header)
        payload = local_frame.recv_exact(sock, min(length, 1 << 20)) or b""
        return LocalReply(payload[0] if payload else None, payload[1:], time.monotonic() - began)
    except TimeoutError:
        return LocalReply(None, b"", time.monotonic() - began, timed_out=True)
    except OSError:
        return LocalReply(None, b"", time.monotonic() - began)
    finally:
        sock.close()


# ----------------------------------------------------------------------------------------------------- admin


@dataclasses.dataclass(frozen=True)
class HttpReply:
    status: int  # 0: no answer
    body: str
    seconds: float

    def describe(self) -> str:
        return f"{self.status or 'no answer'} in {self.seconds:.1f}s"


def http_request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None,
    timeout_s: float = 10.0,
) -> HttpReply:  # fmt: skip
    began = time.monotonic()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout_s)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return HttpReply(response.status, response.read(4096).decode(errors="replace"), time.monotonic() - began)
    except (OSError, http.client.HTTPException):
        return HttpReply(0, "", time.monotonic() - began)
    finally:
        connection.close()


def http_partial_body(
    port: int, path: str, headers: dict[str, str], declared: int, sent: int, timeout_s: float = 5.0
) -> HttpReply:
    """``PATCH path`` declaring ``declared`` body bytes, sending ``sent`` of them (a JSON string's start), then
    waiting for an answer: a server that checks Content-Length refuses at once (413); one that reads on waits."""
    began = time.monotonic()
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout_s)
    try:
        head = [f"PATCH {path} HTTP/1.1", f"Host: {LOOPBACK}", "Content-Type: application/json",
                f"Content-Length: {declared}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        body = b'{"generation_prompt_format": "{task} ' + b"x" * max(sent - 40, 0)
        try:
            for start in range(0, len(body), 1 << 20):
                sock.sendall(body[start : start + (1 << 20)])
        except OSError:
            pass  # refused midway: read the answer
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
        return HttpReply(status, reply[:300].decode(errors="replace"), time.monotonic() - began)
    except TimeoutError:
        return HttpReply(0, "", time.monotonic() - began)
    except OSError:
        return HttpReply(0, "", time.monotonic() - began)
    finally:
        sock.close()
