"""Triton servers found by DNS name: every address a name resolves to, as gRPC URLs.

A Kubernetes headless Service's name resolves to one A record per *ready* pod, so re-reading it tells the
bridge which Triton pods exist right now: pods the autoscaler adds appear, pods that drain disappear.
dnspython asks the name servers of ``/etc/resolv.conf`` (search domains included) unless given others.
"""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.inet
import dns.nameserver
import dns.resolver

from openpi_triton.bridge_config import parse_nameserver

# One lookup may take this long before the current server list is kept for another round.
LOOKUP_TIMEOUT_S = 2.0


class DiscoveryError(RuntimeError):
    """The name could not be looked up (no answer, no name server): keep the servers known so far."""


class DnsDiscovery:
    """``name`` resolved to ``address:port`` URLs, sorted, on each :meth:`urls` call."""

    def __init__(self, name: str, port: int, nameservers: list[str] | None = None) -> None:
        self.name = name
        self.port = port
        self.resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_nameserver(s)) for s in nameservers]
        self.resolver.lifetime = LOOKUP_TIMEOUT_S

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"

    async def urls(self) -> list[str]:
        """Every IPv4 address of the name; an empty list when the name has none (no ready pod)."""
        if dns.inet.is_address(self.name):
            return [f"{self.name}:{self.port}"]
        try:
            answer = await self.resolver.resolve(self.name, "A", search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"cannot look up {self.name!r}: {exc}") from None
        return sorted(f"{record.address}:{self.port}" for record in answer)
