"""Raw QUIC attacks on the server sidecar with ``aioquic`` (optional: without it these attacks are skipped).

The sidecar's link framing is ``[u32 BE length][type][body]`` on one bidirectional stream; the first frame is the
handshake (type 0x00 Data, body = the token when one is configured). The well-formed Rust client cannot send a
hostile handshake, hence a Python QUIC client here. Everything is bounded: connection counts, bytes actually sent
(the declared length can be large, the bytes sent are not) and the time each connection is held.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import struct
from collections.abc import Callable
from typing import Any

LINK_DATA, LINK_ERROR = 0x00, 0x01
# What a wave of handshakes may take beyond its reply time before the attack gives up on it.
WAVE_SLACK_S = 30.0


def available() -> bool:
    try:
        import aioquic  # noqa: F401
    except ImportError:
        return False
    return True


@dataclasses.dataclass
class Probe:
    """What one attacking connection saw."""

    connected: bool = False
    reply_type: int | None = None  # the first link frame the server sent back (0x00 Data, 0x01 Error)
    closed_by_server: bool = False
    seconds_to_close: float | None = None
    error: str = ""

    @property
    def refused(self) -> bool:
        return not self.connected or self.reply_type == LINK_ERROR or self.closed_by_server


def _protocol_class() -> Any:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.events import ConnectionTerminated, StreamDataReceived, StreamReset

    class Recorder(QuicConnectionProtocol):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.received = bytearray()
            self.terminated = asyncio.Event()
            self.stream_done = asyncio.Event()
            self.replied = asyncio.Event()

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, StreamDataReceived):
                self.received += event.data
                if len(self.received) >= 5:
                    self.replied.set()
                if event.end_stream:
                    self.stream_done.set()
            elif isinstance(event, StreamReset):
                self.stream_done.set()
            elif isinstance(event, ConnectionTerminated):
                self.terminated.set()
                self.stream_done.set()

    return Recorder


def _configuration() -> Any:
    from aioquic.quic.configuration import QuicConfiguration

    # The sidecar serves a fresh self-signed certificate for "localhost" and no ALPN (as openpi-flash).
    return QuicConfiguration(is_client=True, verify_mode=ssl.CERT_NONE, server_name="localhost", idle_timeout=20.0)


async def _first_of(events: list[asyncio.Event], timeout_s: float) -> bool:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    done, pending = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return bool(done)


async def _session(
    port: int,
    send: bytes,
    extra_bytes: int,
    hold_s: float,
    probe: Probe,
    settled: asyncio.Event | None = None,
    released: tuple[asyncio.Event, float] | None = None,
) -> Probe:
    """One connection: send ``send`` (+ ``extra_bytes`` of filler, in pieces), then wait up to ``hold_s``.
    ``settled`` is set once the server has answered or closed (or the hold ran out). An admitted connection is
    held ``hold_s`` more, or with ``released`` = (event, bound) until the event is set (at most bound s)."""
    from aioquic.asyncio import connect

    loop = asyncio.get_running_loop()
    try:
        async with connect(
            "127.0.0.1", port, configuration=_configuration(), create_protocol=_protocol_class(), wait_connected=True
        ) as client:
            probe.connected = True
            began = loop.time()
            if send or extra_bytes:
                stream = client._quic.get_next_available_stream_id()
                client._quic.send_stream_data(stream, send)
                for _ in range(extra_bytes // 65536):  # bounded filler: the server should stop reading long before
                    if client.terminated.is_set() or client.stream_done.is_set():
                        break
                    client._quic.send_stream_data(stream, b"\0" * 65536)
                    client.transmit()
                    await asyncio.sleep(0)  # let acks and the server's close arrive while we send
                client.transmit()
            closed = await _first_of([client.terminated, client.stream_done, client.replied], hold_s)
            if settled is not None:
                settled.set()
            if client.received[4:5]:
                probe.reply_type = client.received[4]
            if closed and (client.terminated.is_set() or client.stream_done.is_set()):
                probe.closed_by_server = True
                probe.seconds_to_close = round(loop.time() - began, 2)
            if probe.reply_type == LINK_DATA and hold_s > 0:
                # Admitted: keep the connection for the rest of the hold (the attack is holding many of them).
                if released is None:
                    await _first_of([client.terminated], hold_s)
                else:
                    await _first_of([client.terminated, released[0]], released[1])
                probe.closed_by_server = client.terminated.is_set()
    except (TimeoutError, ConnectionError, OSError) as exc:
        probe.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if settled is not None:
            settled.set()
    return probe


def huge_handshakes(port: int, connections: int, declared: int, sent: int, hold_s: float) -> list[Probe]:
    """Unauthenticated handshakes declaring ``declared`` bytes and sending ``sent`` of them."""
    header = struct.pack(">IB", declared, LINK_DATA)

    async def run() -> list[Probe]:
        return list(await asyncio.gather(*(_session(port, header, sent, hold_s, Probe()) for _ in range(connections))))

    return asyncio.run(run())


def silent_connections(port: int, connections: int, hold_s: float) -> list[Probe]:
    """Connections that finish TLS and never send the handshake frame."""

    async def run() -> list[Probe]:
        return list(await asyncio.gather(*(_session(port, b"", 0, hold_s, Probe()) for _ in range(connections))))

    return asyncio.run(run())


def authenticated_connections(
    port: int, token: str, connections: int, reply_within_s: float, while_held: Callable[[], None], batch: int = 50
) -> list[Probe]:
    """Well-formed handshakes (with the token), each waiting up to ``reply_within_s`` for its reply. Every admitted
    connection stays open until all of them have had their answer, however long the waves took on a busy host;
    ``while_held`` runs then (the attack samples the sidecar), and they close."""
    handshake = struct.pack(">IB", 1 + len(token), LINK_DATA) + token.encode()

    wave_s = reply_within_s + WAVE_SLACK_S
    waves = -(-connections // batch)

    async def run() -> list[Probe]:
        # Longer than all waves can take: a held connection lets go when told, or once the attack has failed.
        released = (asyncio.Event(), wave_s * (waves + 1))
        tasks = []
        for start in range(0, connections, batch):  # TLS handshakes in waves: 300 at once time out on 2 cores
            wave = [asyncio.Event() for _ in range(min(batch, connections - start))]
            tasks += [
                asyncio.ensure_future(_session(port, handshake, 0, reply_within_s, Probe(), e, released)) for e in wave
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in wave)), timeout=wave_s)
        while_held()
        released[0].set()
        return list(await asyncio.gather(*tasks))

    return asyncio.run(run())
