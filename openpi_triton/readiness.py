"""Asking a server whether it serves: an HTTP status, a Unix socket that accepts, a UDP port a process bound.

One home for these probes: the orchestrator, ``perf/`` and the tests all judge readiness by what the servers
themselves answer (health endpoints, sockets that accept), never by log lines or fixed sleeps.
"""

from __future__ import annotations

import http.client
import os
import pathlib
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout_s: float = 5.0, host: str = LOOPBACK
) -> tuple[int, str]:
    """``GET path`` on ``host:port``: (status, body); (0, "") while nothing answers there."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return 0, ""
    finally:
        connection.close()


def http_status(
    port: int, path: str, headers: dict[str, str] | None = None, timeout_s: float = 5.0, host: str = LOOPBACK
) -> int:
    """The status of ``GET path`` on ``host:port``, 0 while nothing answers there."""
    return http_get(port, path, headers, timeout_s, host)[0]


def accepts_tcp(port: int, host: str = LOOPBACK, timeout_s: float = 2.0) -> bool:
    """A TCP connect to ``host:port`` succeeds (a server that speaks no HTTP health endpoint listens)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def accepts_unix(path: str | pathlib.Path) -> bool:
    """A connect to the Unix socket ``path`` succeeds (its file alone may be left by a dead server)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


def _udp_inodes(port: int) -> set[str]:
    """Inodes of the UDP sockets bound to local ``port`` (any port for 0), from the kernel's socket tables."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and (port == 0 or int(fields[1].rsplit(":", 1)[1], 16) == port):
                inodes.add(fields[9])
    return inodes


def udp_port_bound(port: int) -> bool:
    """Some process of this network namespace holds a UDP socket bound to ``port``."""
    return bool(_udp_inodes(port))


def udp_bound_by(pid: int, port: int) -> bool:
    """Process ``pid`` holds a UDP socket bound to local ``port`` (a QUIC server that listens).

    UDP has no connect to try: the kernel's socket tables (``/proc/net/udp*``) name the port of each socket
    inode, and ``/proc/<pid>/fd`` names the inodes the process holds.
    """
    inodes = _udp_inodes(port)
    if not inodes:
        return False
    try:
        held = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in held:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def wait_until(
    condition: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    unless: Callable[[], str | None] | None = None,
    interval_s: float = 0.1,
) -> T:
    """Polls ``condition`` until it returns something true, and returns that.

    Raises :class:`TimeoutError` naming ``what`` after ``timeout_s``, or :class:`RuntimeError` as soon as
    ``unless`` returns a reason to stop waiting (the process that should get ready exited).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if unless is not None and (reason := unless()):
            raise RuntimeError(f"{reason} while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(interval_s)  # the polling interval of a condition, not a wait for readiness itself
