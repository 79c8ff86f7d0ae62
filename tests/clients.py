"""Small clients tests use beside the robots: the sidecar's side of the bridge socket, a metrics scrape."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from openpi_triton.protocols import local_frame
from openpi_triton.protocols.local_frame import MessageType
from openpi_triton.readiness import http_get


class SidecarClient:
    """What the Rust sidecar does on the bridge's socket: framed requests, framed replies."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(path)

    def request(self, kind: MessageType, body: bytes = b"") -> tuple[int, bytes]:
        self.sock.sendall(local_frame.envelope(kind, body))
        return self.read()

    def read(self) -> tuple[int, bytes]:
        message = local_frame.recv_envelope(self.sock)
        if message is None:
            raise ConnectionError("bridge closed the socket")
        return message


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` (Prometheus text format) whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def healthz(port: int) -> tuple[int, str]:
    """The bridge's ``GET /healthz`` on a WebSocket port: (status, body); (0, "") while nothing listens."""
    return http_get(port, "/healthz", timeout_s=30)
