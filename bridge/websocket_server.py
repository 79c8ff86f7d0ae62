"""openpi's WebSocket protocol, byte-compatible with ``openpi.serving.websocket_policy_server``.

On connect: one binary msgpack frame with the metadata. Then lock-step: one binary msgpack-numpy frame
in, one out, with ``server_timing`` (openpi's ``infer_ms``; ``prev_total_ms`` from the second request on; plus
where the time went, see :mod:`openpi_bridge.request_timing`). An error
is a text frame with the message followed by close code 1011. ``GET /healthz`` answers ``200 OK\\n`` when
Triton and the slot's model are ready, else 503. No compression; frames above ``max_message_bytes`` are
refused (close 1009). With an API key configured, the upgrade needs ``Authorization: Api-Key <key>``.

Isolation: frames are decoded within the frame limits on the bridge's CPU threads (see
:mod:`openpi_bridge.offload`), connections are limited in total and per client address (HTTP 503 at the
upgrade), and an optional idle timeout closes connections that send nothing for that long.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import http
import logging
import time
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from openpi_bridge import fleet_gate, offload, request_timing
from openpi_bridge.errors import RobotError, robot_message
from openpi_bridge.metrics import BridgeMetrics
from openpi_bridge.slots import Slot
from openpi_triton.limits import DEFAULT_FRAME_LIMITS, FrameLimits
from openpi_triton.protocols import msgpack_numpy

logger = logging.getLogger("openpi_bridge")

ERROR_CLOSE_REASON = "Internal server error. Traceback included in previous frame."


IDLE_CLOSE_CODE = 1000
TRANSPORT = "websocket"


class WebSocketEndpoint:
    def __init__(
        self,
        slot: Slot,
        *,
        api_key: str | None,
        max_message_bytes: int,
        max_connections: int,
        max_connections_per_address: int = 64,
        idle_timeout_s: float | None = None,
        frame_limits: FrameLimits = DEFAULT_FRAME_LIMITS,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self.slot = slot
        self.metrics = metrics or BridgeMetrics()
        self.api_key = api_key
        self.max_message_bytes = max_message_bytes
        self.connections = asyncio.Semaphore(max_connections)
        self.max_connections = max_connections
        self.max_per_address = max_connections_per_address
        self.per_address: collections.Counter[str] = collections.Counter()
        self.idle_timeout_s = idle_timeout_s
        self.frame_limits = frame_limits

    @staticmethod
    def _address(connection: ServerConnection) -> str:
        remote = connection.remote_address
        return str(remote[0]) if remote else "unknown"

    def _refusal(self, connection: ServerConnection) -> str | None:
        if self.connections.locked():
            self._refused("max_connections")
            return f"too many connections (max_connections={self.max_connections})\n"
        address = self._address(connection)
        if self.per_address[address] >= self.max_per_address:
            self._refused("per_address")
            return f"too many connections from {address} (max_connections_per_address={self.max_per_address})\n"
        return None

    def _refused(self, reason: str) -> None:
        self.metrics.refused.labels(self.slot.name, TRANSPORT, reason).inc()

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            problem = await self.slot.health()
            if problem is None:
                return connection.respond(http.HTTPStatus.OK, "OK\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{problem}\n")
        if self.api_key is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Api-Key {self.api_key}".encode()):
                self._refused("unauthorized")
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong 'Authorization: Api-Key'\n")
        refusal = self._refusal(connection)
        if refusal is not None:
            logger.info("%s slot: refused a WebSocket upgrade: %s", self.slot.name, refusal.strip())
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, refusal)
        return None

    async def handle(self, ws: ServerConnection) -> None:
        refusal = self._refusal(ws)  # upgrades that were checked at the same time may exceed a limit together
        if refusal is not None:
            await ws.close(1013, refusal.strip()[:120])
            return
        address = self._address(ws)
        self.per_address[address] += 1
        open_connections = self.metrics.connections.labels(self.slot.name, TRANSPORT)
        open_connections.inc()
        try:
            async with self.connections:
                await self._serve(ws)
        finally:
            open_connections.dec()
            self.per_address[address] -= 1
            if self.per_address[address] <= 0:
                del self.per_address[address]

    async def _next_frame(self, ws: ServerConnection) -> str | bytes | None:
        """The robot's next frame; None when it hung up or stayed idle past the idle timeout (then closed)."""
        try:
            return await asyncio.wait_for(ws.recv(), timeout=self.idle_timeout_s)
        except ConnectionClosed:
            return None
        except TimeoutError:
            logger.info("%s slot: closing a connection idle for %s s", self.slot.name, self.idle_timeout_s)
            self._refused("idle")
            await ws.close(IDLE_CLOSE_CODE, f"idle for {self.idle_timeout_s:g} s (idle_timeout_s)")
            return None

    async def _serve(self, ws: ServerConnection) -> None:
        with fleet_gate.serving_robot():  # this connection's requests are one robot's at the fleet gate
            await self._serve_robot(ws)

    async def _serve_robot(self, ws: ServerConnection) -> None:
        try:
            await ws.send(msgpack_numpy.packb(await self.slot.metadata()))
        except ConnectionClosed:
            return
        except Exception as exc:
            await self._fail(ws, f"could not read the served model's metadata: {exc}")
            return
        prev_total_ms: float | None = None
        prev_encode_ms: float | None = None
        while True:
            start = time.perf_counter()  # as openpi's server: prev_total_ms includes waiting for the frame
            message = await self._next_frame(ws)
            if message is None:
                return
            received = time.perf_counter()
            self.metrics.bytes_received.labels(self.slot.name, TRANSPORT).inc(len(message))
            try:
                with request_timing.recording() as timing:
                    with timing.stage("decode_ms"):
                        obs = await self._decode(message)
                    del message  # the frame's bytes are not needed while the model runs
                    answer, prev_encode_ms = await self._answer(obs, prev_total_ms, prev_encode_ms, timing)
                await ws.send(answer)
                self.metrics.bytes_sent.labels(self.slot.name, TRANSPORT).inc(len(answer))
            except ConnectionClosed:
                return
            except Exception as exc:
                self.metrics.request_done(self.slot.name, TRANSPORT, time.perf_counter() - received, exc)
                await self._fail(ws, robot_message(exc, self.slot.name))
                return
            self.metrics.request_done(self.slot.name, TRANSPORT, time.perf_counter() - received)
            prev_total_ms = (time.perf_counter() - start) * 1000.0

    async def _decode(self, message: str | bytes) -> dict[str, Any]:
        if isinstance(message, str):
            raise RobotError("expected a binary msgpack-numpy frame, got a text frame")
        obs = await offload.decode(msgpack_numpy.unpackb, message, self.frame_limits)
        if not isinstance(obs, dict):
            raise RobotError(f"expected a msgpack map (the observation dict), got {type(obs).__name__}")
        return obs

    async def _answer(
        self,
        obs: dict[str, Any],
        prev_total_ms: float | None,
        prev_encode_ms: float | None,
        stages: request_timing.RequestTiming,
    ) -> tuple[bytes, float]:
        """The packed answer and the milliseconds its packing took (reported with the next answer)."""
        infer_start = time.perf_counter()
        response = await self.slot.infer(obs)
        timing: dict[str, Any] = {"infer_ms": (time.perf_counter() - infer_start) * 1000.0}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        timing.update(stages.server_timing())
        if prev_encode_ms is not None:
            timing["prev_encode_ms"] = round(prev_encode_ms, 3)
        response["server_timing"] = timing
        pack_start = time.perf_counter()
        packed = msgpack_numpy.packb(response)
        return packed, (time.perf_counter() - pack_start) * 1000.0

    async def _fail(self, ws: ServerConnection, message: str) -> None:
        # A robot's own mistake is routine for a fleet server (INFO); the metrics count it by outcome.
        logger.info("%s slot: closing connection after error: %s", self.slot.name, message)
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
