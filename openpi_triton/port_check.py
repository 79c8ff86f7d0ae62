"""Are the ports a stack is about to listen on free? Checked before any model loads, so that a busy port
costs one clear line instead of a traceback after minutes of warm-up."""

from __future__ import annotations

import dataclasses
import socket


@dataclasses.dataclass(frozen=True)
class Port:
    what: str  # "action WebSocket", "Triton gRPC", ...
    host: str
    number: int
    udp: bool = False


def _free(port: Port) -> bool:
    if port.number == 0:
        return True  # any free port
    family = socket.AF_INET6 if ":" in port.host else socket.AF_INET
    kind = socket.SOCK_DGRAM if port.udp else socket.SOCK_STREAM
    with socket.socket(family, kind) as probe:
        if not port.udp:
            # As the servers themselves bind: a port in TIME_WAIT after a restart is free for them.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((port.host, port.number))
        except OSError:
            return False
    return True


def busy(ports: list[Port]) -> list[str]:
    """One line per port that another process holds, naming what it was meant for."""
    return [
        f"{p.what} port {p.number}/{'udp' if p.udp else 'tcp'} on {p.host} is in use by another process"
        for p in ports
        if not _free(p)
    ]
