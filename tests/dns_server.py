"""A real DNS server on 127.0.0.1 (UDP) whose A records a test changes while clients resolve them: what a
cluster's DNS does for a headless Service as its pods become ready or start draining."""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

# Headless Service records are short-lived, so clients re-read them (Kubernetes' DNS uses 5 s).
TTL_S = 1


class DnsServer:
    """Answers A queries for the names in ``records`` (name -> IPv4 addresses); NXDOMAIN for others."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self._records = {self._key(name): list(addresses) for name, addresses in records.items()}
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)  # the serving thread checks for stop between queries
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.queries = 0

    @staticmethod
    def _key(name: str) -> str:
        return name.lower().rstrip(".") + "."

    @property
    def address(self) -> str:
        host, port = self._sock.getsockname()
        return f"{host}:{port}"

    def set_addresses(self, name: str, addresses: list[str]) -> None:
        with self._lock:
            self._records[self._key(name)] = list(addresses)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        with self._lock:
            addresses = self._records.get(question.name.to_text().lower())
        if addresses is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A and addresses:
            rrset = dns.rrset.from_text_list(question.name, TTL_S, dns.rdataclass.IN, dns.rdatatype.A, addresses)
            response.answer.append(rrset)
        return response.to_wire()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            self._sock.sendto(self._answer(wire), peer)
