"""The servers a fleet benchmark talks to, started together and stopped together.

- our stack: tritonserver (``action`` on the served model, dynamic batching, unless a running Triton is given),
  the bridge (action slot only: WebSocket + sidecar socket) and one QUIC sidecar (``openpi-flash-transport server``);
  with ``ensemble`` the bridge's action slot calls ``combined_ensemble`` (the BLS) in front of ``action``;
- the baseline: openpi's ``WebsocketPolicyServer`` in its own process (``perf.baseline_server``).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import IO

from openpi_triton.processes import stop_process
from openpi_triton.triton.launcher import TritonServer, free_ports
from perf.repository import RepositoryVariant, benchmark_server_options, build_repository
from perf.robots import Endpoint
from perf.served_model import ServedModel

HOST = "127.0.0.1"


def _wait_for_tcp(process: subprocess.Popen[bytes], port: int, log: pathlib.Path, timeout: float, what: str) -> None:
    """Until ``port`` accepts a connection (openpi's server listens only once its policy is loaded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=2):
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            state = (
                f"exited with {process.returncode}" if process.poll() is not None else f"not ready in {timeout:.0f} s"
            )
            raise RuntimeError(f"{what} {state} (log {log}):\n{tail}")
        time.sleep(0.2)


def _wait_for_bridge(bridge: subprocess.Popen[bytes], port: int, socket_path: pathlib.Path, log: pathlib.Path) -> None:
    """Until the bridge's WebSocket port answers ``GET /healthz`` (200, or 503 before Triton is ready) and its
    sidecar socket exists: what its supervisor sees, not a line in its log."""
    from perf.attack_stack import http_status

    deadline = time.monotonic() + 120
    while not (http_status(port, "/healthz") in (200, 503) and socket_path.is_socket()):
        if bridge.poll() is not None or time.monotonic() > deadline:
            state = f"exited with {bridge.returncode}" if bridge.poll() is not None else "not listening in 120 s"
            raise RuntimeError(f"the bridge {state} (log {log}):\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def _spawn(args: Sequence[str], log: pathlib.Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def fleet_services(
    model: ServedModel,
    transports: Sequence[str],
    logs: pathlib.Path,
    triton_url: str | None = None,
    ready_timeout_s: float = 1800.0,
    ensemble: bool = False,
    repository: RepositoryVariant | None = None,
) -> Iterator[dict[str, Endpoint]]:
    """Yields ``{transport: Endpoint}`` for the requested transports (plus ``"triton"``: its gRPC endpoint, when
    our stack runs); everything started here is stopped after. ``repository``: the variant to serve (default:
    the served model's parameters on the repository's scheduler settings)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="perf-fleet-"))
    server: TritonServer | None = None
    server_log: IO[str] | None = None
    processes: list[subprocess.Popen[bytes]] = []
    sidecar = None
    baseline: subprocess.Popen[bytes] | None = None
    endpoints: dict[str, Endpoint] = {}
    try:
        ours = [t for t in transports if t != "openpi-server"]
        if ours and triton_url is None:
            variant = repository or RepositoryVariant(gpu=model.gpu, parameters=model.parameters())
            models = ["action", "combined_ensemble"] if ensemble else ["action"]
            repo = build_repository(work / "repo", variant, models)
            server_log = open(logs / "triton_fleet.log", "w")  # closed in finally
            server = TritonServer(benchmark_server_options(repo), log_stream=server_log)
            server.start()
            triton_url = server.grpc_url
        if "openpi-server" in transports:  # starts while Triton warms up
            (port,) = free_ports(1)
            baseline = _spawn(
                ["-m", "perf.baseline_server", "--port", str(port), *model.baseline_args()], logs / "openpi_server.log"
            )
            processes.append(baseline)
            endpoints["openpi-server"] = Endpoint(HOST, port)
        if server is not None:
            server.wait_ready(models, timeout=ready_timeout_s)
        if ours:
            assert triton_url is not None
            host, _, grpc_port = triton_url.rpartition(":")
            endpoints["triton"] = Endpoint(host, int(grpc_port), "action")
            if "grpc" in transports:
                endpoints["grpc"] = Endpoint(host, int(grpc_port), "action")
            ws, quic = free_ports(2)
            socket_path = work / "action.sock"
            config = {
                "action": {"model": "combined_ensemble"} if ensemble else {},
                "host": HOST,
                "admin": {"enabled": False},
                "action_transport": {"websocket_port": ws, "quic_port": quic, "unix_socket_path": str(socket_path)},
                "triton": {"url": triton_url},
            }
            (work / "bridge.json").write_text(json.dumps(config))
            bridge = _spawn(["-m", "openpi_bridge", "--config", str(work / "bridge.json")], logs / "bridge.log")
            processes.append(bridge)
            _wait_for_bridge(bridge, ws, socket_path, logs / "bridge.log")
            endpoints["websocket"] = Endpoint(HOST, ws)
            if "quic" in transports:
                from openpi_triton.sidecar import SidecarSupervisor

                sidecar = SidecarSupervisor("action", quic, socket_path).start()
                endpoints["quic"] = Endpoint(HOST, quic)
        if baseline is not None:
            log = logs / "openpi_server.log"
            _wait_for_tcp(baseline, endpoints["openpi-server"].port, log, ready_timeout_s, "openpi-server")
        yield {t: e for t, e in endpoints.items() if t in (*transports, "triton")}
    finally:
        if sidecar is not None:
            sidecar.stop()
        for process in processes:
            stop_process(process, timeout=20)
        if server is not None:
            server.stop()
        if server_log is not None:
            server_log.close()
        shutil.rmtree(work, ignore_errors=True)
