"""The servers a fleet benchmark talks to, started together and stopped together.

- our stack, through the orchestrator (``openpi_triton.orchestrator``): tritonserver (``action`` on the served
  model, dynamic batching, unless a running Triton is given), the bridge (action slot only: WebSocket + sidecar
  socket) and, for QUIC, one sidecar (``openpi-flash-transport server``), each waited for by its readiness;
  with ``ensemble`` the bridge's action slot calls ``combined_ensemble`` (the BLS) in front of ``action``;
- the baseline: openpi's ``WebsocketPolicyServer`` in its own process (``perf.baseline_server``), ready once
  its port accepts a connection (it listens only once its policy is loaded).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from openpi_triton.orchestrator import Orchestrator, TritonRole
from openpi_triton.processes import SupervisorError, stop_process
from openpi_triton.readiness import accepts_tcp, wait_until
from openpi_triton.triton.launcher import free_ports
from perf.repository import RepositoryVariant, benchmark_server_options, build_repository
from perf.robots import Endpoint
from perf.served_model import ServedModel

HOST = "127.0.0.1"


def _start_baseline(model: ServedModel, logs: pathlib.Path) -> tuple[subprocess.Popen[bytes], Endpoint]:
    (port,) = free_ports(1)
    with open(logs / "openpi_server.log", "wb") as out:
        command = [sys.executable, "-m", "perf.baseline_server", "--port", str(port), *model.baseline_args()]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return process, Endpoint(HOST, port)


def _wait_for_baseline(process: subprocess.Popen[bytes], port: int, log: pathlib.Path, timeout_s: float) -> None:
    def exited() -> str | None:
        return None if process.poll() is None else f"openpi-server exited with {process.returncode}"

    try:
        wait_until(lambda: accepts_tcp(port), timeout_s, f"openpi-server on port {port}", unless=exited)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc} (log {log}):\n{log.read_text(errors='replace')[-3000:]}") from None


def _bridge_config(
    work: pathlib.Path, triton_url: str, ensemble: bool, fleet_batching: Mapping[str, Any] | None = None
) -> tuple[pathlib.Path, dict]:
    """The action slot only (on ``combined_ensemble`` with ``ensemble``), on free ports, no admin API."""
    ws, quic = free_ports(2)
    config = {
        "action": {"model": "combined_ensemble"} if ensemble else {},
        "host": HOST,
        "admin": {"enabled": False},
        "action_transport": {"websocket_port": ws, "quic_port": quic, "unix_socket_path": str(work / "action.sock")},
        "triton": {"url": triton_url} | ({"fleet_batching": dict(fleet_batching)} if fleet_batching else {}),
    }
    path = work / "bridge.json"
    path.write_text(json.dumps(config))
    return path, config


@contextlib.contextmanager
def fleet_services(
    model: ServedModel,
    transports: Sequence[str],
    logs: pathlib.Path,
    triton_url: str | None = None,
    ready_timeout_s: float = 1800.0,
    ensemble: bool = False,
    repository: RepositoryVariant | None = None,
    fleet_batching: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Endpoint]]:
    """Yields ``{transport: Endpoint}`` for the requested transports (plus ``"triton"``: its gRPC endpoint, when
    our stack runs); everything started here is stopped after. ``repository``: the variant to serve (default:
    the served model's parameters on the repository's scheduler settings)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="perf-fleet-"))
    outputs: list[IO[str]] = []
    orchestrator: Orchestrator | None = None
    baseline: subprocess.Popen[bytes] | None = None
    endpoints: dict[str, Endpoint] = {}
    try:
        if "openpi-server" in transports:  # starts first: it loads its policy while Triton warms up
            baseline, endpoints["openpi-server"] = _start_baseline(model, logs)
        if [t for t in transports if t != "openpi-server"]:
            triton = None
            if triton_url is None:
                variant = repository or RepositoryVariant(gpu=model.gpu, parameters=model.parameters())
                models = ("action", "combined_ensemble") if ensemble else ("action",)
                repo = build_repository(work / "repo", variant, list(models))
                outputs.append(open(logs / "triton_fleet.log", "w"))  # closed in finally
                triton = TritonRole(benchmark_server_options(repo), models, ready_timeout_s, log_stream=outputs[-1])
                triton_url = triton.grpc_url
            config_path, config = _bridge_config(work, triton_url, ensemble, fleet_batching)
            outputs.append(open(logs / "bridge.log", "w"))
            roles = ("triton",) if triton is not None else ()
            roles += ("bridge", "sidecars") if "quic" in transports else ("bridge",)
            orchestrator = Orchestrator(roles, config_path, triton, bridge_out=outputs[-1])
            try:
                orchestrator.start()
            except SupervisorError as exc:
                raise RuntimeError(f"{exc} (logs in {logs})") from None
            host, _, grpc_port = triton_url.rpartition(":")
            endpoints["triton"] = Endpoint(host, int(grpc_port), "action")
            if "grpc" in transports:
                endpoints["grpc"] = Endpoint(host, int(grpc_port), "action")
            transport = config["action_transport"]
            endpoints["websocket"] = Endpoint(HOST, transport["websocket_port"])
            if "quic" in transports:
                endpoints["quic"] = Endpoint(HOST, transport["quic_port"])
        if baseline is not None:
            log = logs / "openpi_server.log"
            _wait_for_baseline(baseline, endpoints["openpi-server"].port, log, ready_timeout_s)
        yield {t: e for t, e in endpoints.items() if t in (*transports, "triton")}
    finally:
        if orchestrator is not None:
            orchestrator.close()
        if baseline is not None:
            stop_process(baseline, timeout=20)
        for output in outputs:
            output.close()
        shutil.rmtree(work, ignore_errors=True)
