"""ASGI middleware in front of every admin route, FastAPI's own ``/docs`` and ``/openapi.json`` included.

- With an API key configured, each request needs ``Authorization: Api-Key <key>`` (401 otherwise), except
  ``GET /metrics``: Prometheus scrapers send no key, and the admin port is reachable only where the
  operator put it (127.0.0.1 by default).
- A request body is read here, up to ``max_body_bytes`` (413 past it, whatever Content-Length claimed),
  before the app sees it: the admin API shares the event loop with every robot, so a huge body must cost
  no more than the limit.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


OPEN_PATHS = frozenset({"/metrics"})


class AdminGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body_bytes: int,
        on_unauthorized: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.on_unauthorized = on_unauthorized
        self.expected = f"Api-Key {api_key}".encode() if api_key is not None else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        needs_key = self.expected is not None and scope.get("path") not in OPEN_PATHS
        if needs_key and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected or b""):
            if self.on_unauthorized is not None:
                self.on_unauthorized()
            await _reply(send, 401, "missing or wrong 'Authorization: Api-Key'")
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _reply(send, 413, f"request body over the admin limit of {self.max_body_bytes} bytes")
            return
        body = await self._read_body(receive)
        if body is None:
            await _reply(send, 413, f"request body over the admin limit of {self.max_body_bytes} bytes")
            return
        await self.app(scope, self._replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, as the server reports it

        return replay
