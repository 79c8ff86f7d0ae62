"""The sidecar's unix socket: openpi-flash's LocalFrame protocol (METADATA / INFER / RESET), many connections.

Requests ``0x01`` METADATA, ``0x02`` INFER (LocalFrame body), ``0x03`` RESET are answered with ``0x11``
(msgpack metadata), ``0x12`` (LocalFrame body) or ``0x13`` (UTF-8 error text, the connection stays
usable), ``0x14``. A declared length above ``max_message_bytes`` or an unknown type is answered with
``0x13`` and the connection is closed (its framing can no longer be trusted). Connections beyond
``max_connections`` get ``0x13`` and are closed at once; bodies are decoded within the frame limits on the
bridge's CPU threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import stat
import struct
import time

from openpi_bridge import fleet_gate, offload, request_timing
from openpi_bridge.errors import robot_message
from openpi_bridge.metrics import BridgeMetrics
from openpi_bridge.slots import Slot
from openpi_triton.limits import DEFAULT_FRAME_LIMITS, FrameLimits
from openpi_triton.protocols import local_frame, msgpack_numpy
from openpi_triton.protocols.local_frame import MessageType

logger = logging.getLogger("openpi_bridge")
# Only the QUIC server sidecar talks on this socket: its requests are the QUIC robots'.
TRANSPORT = "quic"


class LocalSocketEndpoint:
    def __init__(
        self,
        slot: Slot,
        *,
        max_message_bytes: int,
        max_connections: int = 256,
        frame_limits: FrameLimits = DEFAULT_FRAME_LIMITS,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self.slot = slot
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self.open_connections = 0
        self.frame_limits = frame_limits
        self.metrics = metrics or BridgeMetrics()

    async def start(self, path: str) -> asyncio.AbstractServer:
        socket_path = pathlib.Path(path)
        if socket_path.exists() or socket_path.is_symlink():
            if not stat.S_ISSOCK(socket_path.lstat().st_mode):
                raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
            socket_path.unlink()
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        server = await asyncio.start_unix_server(self._serve, path=str(socket_path), limit=2**20)
        os.chmod(socket_path, 0o660)
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self.max_connections:
            logger.info(
                "%s slot: refused a sidecar connection (max_connections=%d)", self.slot.name, self.max_connections
            )
            self.metrics.refused.labels(self.slot.name, TRANSPORT, "max_connections").inc()
            with contextlib.suppress(Exception):
                await self._send(
                    writer, MessageType.ERROR, f"too many connections (max_connections={self.max_connections})".encode()
                )
            writer.close()
            return
        self.open_connections += 1
        gauge = self.metrics.connections.labels(self.slot.name, TRANSPORT)
        gauge.inc()
        try:
            with fleet_gate.serving_robot():  # one sidecar connection carries one QUIC robot
                await self._serve_messages(reader, writer)
        finally:
            gauge.dec()
            self.open_connections -= 1

    async def _serve_messages(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    header = await reader.readexactly(4)
                except asyncio.IncompleteReadError:
                    return  # peer closed between messages
                (length,) = struct.unpack(">I", header)
                if length == 0 or length > self.max_message_bytes + 1:
                    await self._send(
                        writer,
                        MessageType.ERROR,
                        f"message length {length} outside 1..{self.max_message_bytes + 1}".encode(),
                    )
                    return
                payload = await reader.readexactly(length)
                kind, body = payload[0], memoryview(payload)[1:]
                if not await self._answer(writer, kind, body):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            logger.info("%s slot: sidecar connection dropped mid-message", self.slot.name)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter, kind: int, body: memoryview) -> bool:
        if kind == MessageType.METADATA:
            try:
                await self._send(writer, MessageType.METADATA_RESPONSE, msgpack_numpy.packb(await self.slot.metadata()))
            except Exception as exc:
                await self._send(
                    writer, MessageType.ERROR, f"could not read the served model's metadata: {exc}".encode()
                )
            return True
        if kind == MessageType.RESET:
            await self._send(writer, MessageType.RESET_RESPONSE)
            return True
        if kind == MessageType.INFER:
            await self._infer(writer, body)
            return True
        await self._send(writer, MessageType.ERROR, f"unknown message type 0x{kind:02x}".encode())
        return False

    async def _infer(self, writer: asyncio.StreamWriter, body: memoryview) -> None:
        start = time.perf_counter()
        self.metrics.bytes_received.labels(self.slot.name, TRANSPORT).inc(len(body) + 5)
        try:
            with request_timing.recording() as timing:
                with timing.stage("decode_ms"):
                    _, obs = await offload.decode(local_frame.unpack, body, self.frame_limits)
                response = await self.slot.infer(obs)
            # The sidecar adds openpi's infer_ms and prev_total_ms to this server_timing (keeping these keys).
            response["server_timing"] = timing.server_timing()
            answer = local_frame.pack(response)
        except Exception as exc:
            self.metrics.request_done(self.slot.name, TRANSPORT, time.perf_counter() - start, exc)
            await self._send(writer, MessageType.ERROR, robot_message(exc, self.slot.name).encode())
            return
        await self._send(writer, MessageType.INFER_RESPONSE, answer)
        self.metrics.bytes_sent.labels(self.slot.name, TRANSPORT).inc(len(answer) + 5)
        self.metrics.request_done(self.slot.name, TRANSPORT, time.perf_counter() - start)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, kind: MessageType, body: bytes = b"") -> None:
        writer.write(local_frame.envelope(kind, body))
        await writer.drain()
