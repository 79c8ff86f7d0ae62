"""openpi's WebSocket protocol, byte-compatible with ``openpi.serving.websocket_policy_server``.

On connect: one binary msgpack frame with the metadata. Then lock-step: one binary msgpack-numpy frame
in, one out, with ``server_timing`` (``infer_ms``; ``prev_total_ms`` from the second request on). An error
is a text frame with the message followed by close code 1011. ``GET /healthz`` answers ``200 OK\\n`` when
Triton and the slot's model are ready, else 503. No compression; frames above ``max_message_bytes`` are
refused (close 1009). With an API key configured, the upgrade needs ``Authorization: Api-Key <key>``.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import time
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from openpi_bridge.slots import Slot
from openpi_triton.protocols import msgpack_numpy

logger = logging.getLogger("openpi_bridge")

ERROR_CLOSE_REASON = "Internal server error. Traceback included in previous frame."


class WebSocketEndpoint:
    def __init__(self, slot: Slot, *, api_key: str | None, max_message_bytes: int, max_connections: int) -> None:
        self.slot = slot
        self.api_key = api_key
        self.max_message_bytes = max_message_bytes
        self.connections = asyncio.Semaphore(max_connections)
        self.max_connections = max_connections

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            if await self.slot.ready():
                return connection.respond(http.HTTPStatus.OK, "OK\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Triton or the model is not ready\n")
        if self.api_key is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Api-Key {self.api_key}".encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong 'Authorization: Api-Key'\n")
        if self.connections.locked():
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        async with self.connections:
            await self._serve(ws)

    async def _serve(self, ws: ServerConnection) -> None:
        try:
            await ws.send(msgpack_numpy.packb(await self.slot.metadata()))
        except ConnectionClosed:
            return
        except Exception as exc:
            await self._fail(ws, f"could not read the served model's metadata: {exc}")
            return
        prev_total_ms: float | None = None
        while True:
            start = time.perf_counter()
            try:
                message = await ws.recv()
            except ConnectionClosed:
                return
            try:
                if isinstance(message, str):
                    raise ValueError("expected a binary msgpack-numpy frame, got a text frame")
                obs = msgpack_numpy.unpackb(message)
                if not isinstance(obs, dict):
                    raise ValueError(f"expected a msgpack map (the observation dict), got {type(obs).__name__}")
                infer_start = time.perf_counter()
                response = await self.slot.infer(obs)
                timing: dict[str, Any] = {"infer_ms": (time.perf_counter() - infer_start) * 1000.0}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                response["server_timing"] = timing
                await ws.send(msgpack_numpy.packb(response))
            except ConnectionClosed:
                return
            except Exception as exc:
                await self._fail(ws, f"{type(exc).__name__}: {exc}")
                return
            prev_total_ms = (time.perf_counter() - start) * 1000.0

    async def _fail(self, ws: ServerConnection, message: str) -> None:
        logger.warning("%s slot: closing connection after error: %s", self.slot.name, message)
        try:
            await ws.send(message)
            await ws.close(1011, ERROR_CLOSE_REASON)
        except ConnectionClosed:
            pass

    async def start(self, host: str, port: int) -> Server:
        return await serve(
            self.handle,
            host,
            port,
            compression=None,
            max_size=self.max_message_bytes,
            process_request=self._process_request,
        )
