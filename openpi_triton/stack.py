"""``make serve``: tritonserver (model_repository/) + the bridge + one QUIC sidecar per slot, started and
stopped together.

    python -m openpi_triton.stack [--model-repository model_repository] [--bridge-config bridge.json]

Triton runs on HTTP 8100 / gRPC 8101 / metrics 8102 (poll mode); the bridge serves the action slot on
WebSocket 8000 and the planner slot on 8002 (openpi-flash's ports), admin on 127.0.0.1:8001, sidecar
sockets /tmp/openpi-action.sock and /tmp/openpi-planner.sock, QUIC 5555 / 5556 (supervised
``openpi-flash-transport server`` processes, restarted with backoff). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

from openpi_bridge.config import BridgeConfig, load_config
from openpi_triton.processes import stop_process
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


def _pump(stream: object, prefix: str) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sys.stderr.write(prefix + line)
        sys.stderr.flush()


def _wait_for_sockets(bridge: subprocess.Popen[str], config: BridgeConfig, timeout: float = 60.0) -> None:
    """The sidecars dial the bridge's sockets: start them once those exist."""
    paths = [
        pathlib.Path(t.unix_socket_path)
        for t, slot in ((config.action_transport, config.action), (config.planner_transport, config.planner))
        if slot is not None
    ]
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if bridge.poll() is not None or time.monotonic() > deadline:
            raise LauncherError(f"the bridge did not open its sockets {[str(p) for p in paths]}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    parser.add_argument("--bridge-config", type=pathlib.Path, help="bridge JSON config (default: both slots)")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    triton = TritonServer(ServerOptions(args.model_repository, args.http_port, args.grpc_port, args.metrics_port))
    bridge: subprocess.Popen[str] | None = None
    sidecars: list[SidecarSupervisor] = []
    watchdog: StubWatchdog | None = None
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="openpi-triton-stack-"))
    try:
        print("[stack] starting tritonserver (models warm up before they report ready) ...", file=sys.stderr)
        triton.start()
        triton.wait_ready(MODELS, timeout=900)
        assert triton.process is not None
        # Triton does not restart a crashed Python stub: reload its model (poll mode: touch its folder).
        watchdog = StubWatchdog(WatchdogOptions(triton.grpc_url, triton.process.pid, args.model_repository)).start()
        config_path = args.bridge_config
        if config_path is None:
            config_path = workdir / "bridge.json"
            config_path.write_text(json.dumps({"action": {}, "planner": {}, "triton": {"url": triton.grpc_url}}))
        env = {**os.environ, "OPENPI_TRITON__URL": triton.grpc_url}
        bridge = subprocess.Popen(
            [sys.executable, "-m", "openpi_bridge", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(target=_pump, args=(bridge.stdout, ""), daemon=True).start()
        bridge_config = load_config(config_path)
        _wait_for_sockets(bridge, bridge_config)
        slots = {"action": bridge_config.action_transport, "planner": bridge_config.planner_transport}
        for slot, enabled in (("action", bridge_config.action), ("planner", bridge_config.planner)):
            if enabled is not None:
                transport = slots[slot]
                sidecars.append(SidecarSupervisor(slot, transport.quic_port, transport.unix_socket_path).start())
        print(
            "\n[stack] ready. Connect a robot:\n"
            "  from openpi_client.websocket_client_policy import WebsocketClientPolicy\n"
            "  policy = WebsocketClientPolicy(host='127.0.0.1', port=8000)   # action slot (planner 8002)\n"
            "  # openpi-flash robots: FlashTransportPolicy(host='<this host>', port=5555)  (QUIC; planner 5556)\n"
            f"  Triton gRPC {triton.grpc_url}, HTTP {triton.http_url}, metrics :{args.metrics_port}/metrics; "
            "admin http://127.0.0.1:8001/docs\n  Ctrl-C stops everything.\n",
            file=sys.stderr,
            flush=True,
        )
        while not stop.is_set():
            if bridge.poll() is not None:
                print(f"[stack] the bridge exited with code {bridge.returncode}", file=sys.stderr)
                return 1
            if triton.process is None or triton.process.poll() is not None:
                print("[stack] tritonserver exited", file=sys.stderr)
                return 1
            stop.wait(0.5)
        return 0
    except LauncherError as exc:
        print(f"[stack] {exc}", file=sys.stderr)
        return 1
    finally:
        if watchdog is not None:
            watchdog.stop()
        for sidecar in sidecars:
            sidecar.stop()
        if bridge is not None:
            stop_process(bridge, timeout=20)
        triton.stop()
        for leftover in workdir.iterdir():
            leftover.unlink()
        workdir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
