"""``make serve``: tritonserver (model_repository/) + the bridge + one QUIC sidecar per slot, each supervised.

    python -m openpi_triton.stack [--model-repository model_repository] [--bridge-config bridge.json]

Triton runs on HTTP 8100 / gRPC 8101 / metrics 8102 (poll mode); the bridge serves the action slot on
WebSocket 8000 and the planner slot on 8002 (openpi-flash's ports), admin on 127.0.0.1:8001, sidecar
sockets /tmp/openpi-action.sock and /tmp/openpi-planner.sock, QUIC 5555 / 5556 (``openpi-flash-transport
server`` processes). Ctrl-C stops everything.

Self-healing: every process is restarted with backoff (1 s doubling to 30 s) when it exits, and the others
keep running: a restarted tritonserver is found again by the bridge (its gRPC channel reconnects within a
second, its shared-memory regions are registered again), a restarted bridge by the sidecars (they dial its
socket per connection). A process that fails before it was ready the first time is a configuration error:
the stack stops and says why. No child outlives the stack, even a SIGKILLed one (PDEATHSIG, see
``openpi_triton.processes``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from pydantic import ValidationError

from openpi_bridge.config import BridgeConfig, load_config
from openpi_triton.port_check import Port, busy
from openpi_triton.processes import Backoff, Child, Supervisor, SupervisorError, pump_lines, spawn, stop_process
from openpi_triton.sidecar import SidecarSupervisor
from openpi_triton.triton.launcher import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    LauncherError,
    ServerOptions,
    TritonServer,
)
from openpi_triton.triton.watchdog import StubWatchdog, WatchdogOptions

MODELS = ("action", "planner", "combined_ensemble")
# Loading a checkpoint and compiling every batch bucket takes minutes on a GPU.
TRITON_READY_TIMEOUT_S = 900.0
BRIDGE_READY_TIMEOUT_S = 60.0
# A restart waits 1 s, then 2, 4, ... up to 30 s; a process that ran 2 minutes starts that over.
BACKOFF = Backoff(initial_s=1.0, max_s=30.0, reset_after_s=120.0)


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


class TritonChild(Child):
    """tritonserver and its stubs (one process group); the stub watchdog follows each new server."""

    name = "tritonserver"

    def __init__(self, server: TritonServer, watchdog: StubWatchdog) -> None:
        self.server = server
        self.watchdog = watchdog

    def spawn(self) -> subprocess.Popen[Any]:
        self.server.start()  # also removes the regions a killed predecessor left in /dev/shm
        assert self.server.process is not None
        # Before the new server listens: the watchdog must not judge it by the old server's stubs.
        self.watchdog.follow(self.server.process.pid)
        return self.server.process

    def wait_ready(self, process: subprocess.Popen[Any]) -> None:
        self.server.wait_ready(MODELS, timeout=TRITON_READY_TIMEOUT_S)

    def stop(self, process: subprocess.Popen[Any]) -> None:
        self.server.stop()

    def after_exit(self, process: subprocess.Popen[Any]) -> None:
        self.server.stop()  # its stubs (same process group) and its private backend folder


class BridgeChild(Child):
    """``python -m openpi_bridge``; ready once every WebSocket port answers and every sidecar socket exists."""

    name = "bridge"

    def __init__(self, config_path: pathlib.Path, config: BridgeConfig, env: dict[str, str]) -> None:
        self.config_path = config_path
        self.env = env
        slots = ((config.action_transport, config.action), (config.planner_transport, config.planner))
        transports = [transport for transport, slot in slots if slot is not None]
        self.ports = [t.websocket_port for t in transports]
        self.sockets = [pathlib.Path(t.unix_socket_path) for t in transports]

    def spawn(self) -> subprocess.Popen[Any]:
        for path in self.sockets:
            if path.is_socket():  # left by the bridge that died: its presence must mean the new one listens
                path.unlink()
        command = [sys.executable, "-m", "openpi_bridge", "--config", str(self.config_path)]
        process = spawn(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        pump_lines(process.stdout, "")
        return process

    def wait_ready(self, process: subprocess.Popen[Any]) -> None:
        deadline = time.monotonic() + BRIDGE_READY_TIMEOUT_S
        while not (all(_answers_http(port) for port in self.ports) and all(p.is_socket() for p in self.sockets)):
            if process.poll() is not None:
                raise LauncherError(f"the bridge exited during start-up (code {process.returncode})")
            if time.monotonic() > deadline:
                raise LauncherError(
                    f"the bridge did not listen on {self.ports} and {[str(p) for p in self.sockets]} "
                    f"within {BRIDGE_READY_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.1)

    def stop(self, process: subprocess.Popen[Any]) -> None:
        stop_process(process, timeout=20)


def _answers_http(port: int) -> bool:
    """The bridge's WebSocket port answers ``GET /healthz`` (200, or 503 while Triton is not ready)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status in (200, 503)
    except OSError:
        return False
    finally:
        connection.close()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    parser.add_argument("--bridge-config", type=pathlib.Path, help="bridge JSON config (default: both slots)")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    return parser.parse_args(argv)


def _planned_ports(config: BridgeConfig, args: argparse.Namespace) -> list[Port]:
    ports = [
        Port("Triton HTTP", "127.0.0.1", args.http_port),
        Port("Triton gRPC", "127.0.0.1", args.grpc_port),
        Port("Triton metrics", "0.0.0.0", args.metrics_port),
    ]
    for slot, transport in (("action", config.action_transport), ("planner", config.planner_transport)):
        if getattr(config, slot) is not None:
            ports.append(Port(f"{slot} WebSocket", config.host, transport.websocket_port))
            ports.append(Port(f"{slot} QUIC", "0.0.0.0", transport.quic_port, udp=True))
    if config.admin.enabled:
        ports.append(Port("admin", config.admin.host, config.admin.port))
    return ports


def _print_ready(triton: TritonServer, config: BridgeConfig, metrics_port: int) -> None:
    """What really listens, from the configuration the bridge and the sidecars were started with."""
    action, planner = config.action_transport, config.planner_transport
    lines = ["", "[stack] ready. Connect a robot:"]
    if config.action is not None:
        lines += [
            "  from openpi_client.websocket_client_policy import WebsocketClientPolicy",
            f"  policy = WebsocketClientPolicy(host='127.0.0.1', port={action.websocket_port})   # action slot",
            f"  # openpi-flash robots: FlashTransportPolicy(host='<this host>', port={action.quic_port})  (QUIC)",
        ]
    if config.planner is not None:
        lines.append(f"  planner slot: WebSocket {planner.websocket_port}, QUIC {planner.quic_port}")
    lines.append(f"  Triton gRPC {triton.grpc_url}, HTTP {triton.http_url}, metrics :{metrics_port}/metrics")
    if config.admin.enabled:
        admin = f"http://{config.admin.host}:{config.admin.port}"
        lines.append(f"  admin {admin}/docs, bridge metrics {admin}/metrics")
    lines += ["  Ctrl-C stops everything.", ""]
    print("\n".join(lines), file=sys.stderr, flush=True)


class Stack:
    """The supervisors of one ``make serve``, started in order and stopped in reverse."""

    def __init__(self, args: argparse.Namespace, stop: threading.Event, workdir: pathlib.Path) -> None:
        self.args = args
        self.stop_requested = stop
        self.workdir = workdir
        options = ServerOptions(args.model_repository, args.http_port, args.grpc_port, args.metrics_port)
        self.triton = TritonServer(options)
        # Triton does not restart a crashed Python stub: reload its model (poll mode: touch its folder).
        self.watchdog = StubWatchdog(WatchdogOptions(self.triton.grpc_url, None, args.model_repository))
        self.supervisors: list[Supervisor] = []
        self.sidecars: list[SidecarSupervisor] = []

    def _supervise(self, child: Child) -> bool:
        supervisor = Supervisor(child, BACKOFF, log=log).start()
        self.supervisors.append(supervisor)
        return supervisor.wait_first_ready(cancel=self.stop_requested)

    @property
    def bridge_config_path(self) -> pathlib.Path:
        if self.args.bridge_config is not None:
            return pathlib.Path(self.args.bridge_config)
        path = self.workdir / "bridge.json"
        if not path.exists():
            path.write_text(json.dumps({"action": {}, "planner": {}, "triton": {"url": self.triton.grpc_url}}))
        return path

    @property
    def bridge_config(self) -> BridgeConfig:
        """As the bridge will read it: the file and the ``OPENPI_*`` environment overrides."""
        return load_config(self.bridge_config_path)

    def check_ports(self) -> list[str]:
        return busy(_planned_ports(self.bridge_config, self.args))

    def start(self) -> bool:
        """True once everything serves; False if Ctrl-C came first; raises SupervisorError on a failed start."""
        log("starting tritonserver (models warm up before they report ready) ...")
        if not self._supervise(TritonChild(self.triton, self.watchdog)):
            return False
        self.watchdog.start()
        config_path, config = self.bridge_config_path, self.bridge_config
        env = {**os.environ, "OPENPI_TRITON__URL": self.triton.grpc_url}
        if not self._supervise(BridgeChild(config_path, config, env)):
            return False
        transports = {"action": config.action_transport, "planner": config.planner_transport}
        for slot, enabled in (("action", config.action), ("planner", config.planner)):
            if enabled is not None:
                transport = transports[slot]
                self.sidecars.append(SidecarSupervisor(slot, transport.quic_port, transport.unix_socket_path).start())
        return True

    def close(self) -> None:
        for sidecar in self.sidecars:
            sidecar.stop()
        # Before Triton stops: its stubs exiting on the way down are no reason to reload models.
        self.watchdog.stop()
        for supervisor in reversed(self.supervisors):
            supervisor.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # The stub watchdog and the follower run in this process: their lifecycle lines at INFO, prefixed.
    logging.basicConfig(level=logging.INFO, format="[watchdog] %(message)s", stream=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="openpi-triton-stack-"))
    stack = Stack(args, stop, workdir)
    try:
        try:
            problems = stack.check_ports()
        except (ValidationError, ValueError, FileNotFoundError) as exc:
            log(f"invalid bridge configuration: {exc}")
            return 2
        if problems:
            for problem in problems:
                log(problem)
            log("stop what holds it, or move the stack (README 'Set-up': SERVE_ARGS, OPENPI_* variables)")
            return 1
        if stack.start():
            _print_ready(stack.triton, stack.bridge_config, args.metrics_port)
        while not stop.wait(0.5):
            pass
        return 0
    except (SupervisorError, LauncherError) as exc:
        log(str(exc))  # a tritonserver that failed to start: its log tail is in the message
        return 1
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
