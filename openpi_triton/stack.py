"""``make serve``: tritonserver (model_repository/) + the bridge + one QUIC sidecar per slot, each supervised.

    python -m openpi_triton.stack [--role all|triton|bridge|sidecars ...] [--model-repository model_repository]
                                  [--bridge-config bridge.json]

Triton runs on HTTP 8100 / gRPC 8101 / metrics 8102 (poll mode); the bridge serves the action slot on
WebSocket 8000 and the planner slot on 8002 (openpi-flash's ports), admin on 127.0.0.1:8001, sidecar
sockets /tmp/openpi-action.sock and /tmp/openpi-planner.sock, QUIC 5555 / 5556 (``openpi-flash-transport
server`` processes). Ctrl-C stops everything.

Roles (``openpi_triton.orchestrator``): ``all`` (the default) or some of ``triton``, ``bridge``, ``sidecars``,
e.g. ``--role bridge sidecars`` in front of Triton servers elsewhere (``OPENPI_TRITON__URLS``).

Self-healing: every process is restarted with backoff (1 s doubling to 30 s) when it exits, and the others
keep running: a restarted tritonserver is found again by the bridge (its gRPC channel reconnects within a
second, its shared-memory regions are registered again), a restarted bridge by the sidecars (they dial its
socket per connection). A process that fails before it was ready the first time is a configuration error:
the stack stops and says why. No child outlives the stack, even a SIGKILLed one (PDEATHSIG, see
``openpi_triton.processes``).

``--ready-file PATH`` is the stack's explicit ready signal: written once every role serves, removed on exit.
Exit status: 0 after Ctrl-C, 143 after SIGTERM, 1 when a process failed, 2 for an invalid configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import shutil
import signal
import sys
import tempfile
import threading

from pydantic import ValidationError

from openpi_triton.bridge_config import BridgeConfig
from openpi_triton.orchestrator import MODELS, ROLES, Orchestrator, TritonRole, enabled_transports, expand_roles, log
from openpi_triton.processes import Backoff, SupervisorError
from openpi_triton.triton.launcher import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    LauncherError,
    ServerOptions,
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", nargs="+", default=["all"], choices=("all", *ROLES), help="what to run [all]")
    parser.add_argument("--model-repository", type=pathlib.Path, default=pathlib.Path("model_repository"))
    parser.add_argument("--bridge-config", type=pathlib.Path, help="bridge JSON config (default: both slots)")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    triton = parser.add_argument_group("tritonserver (role triton)")
    triton.add_argument("--tritonserver", help="an installed tritonserver with its own backends [the wheel's]")
    triton.add_argument("--triton-address", default="127.0.0.1", help="where HTTP and gRPC listen [127.0.0.1]")
    triton.add_argument("--model-control-mode", choices=("poll", "explicit", "none"), default="poll")
    triton.add_argument("--poll-seconds", type=int, default=2, help="repository poll period in poll mode [2]")
    triton.add_argument("--load-model", action="append", help="explicit mode: a model loaded at start [*]")
    triton.add_argument("--triton-arg", action="append", default=[], help="one more tritonserver flag")
    triton.add_argument(
        "--wait-for-model", action="append", help=f"a model that must be ready [{', '.join(MODELS)}]; '*': all"
    )
    triton.add_argument("--triton-ready-timeout", type=float, default=900.0, help="seconds to load + warm up [900]")
    supervision = parser.add_argument_group("supervision")
    supervision.add_argument(
        "--restart",
        choices=("all", "triton"),
        default="all",
        help="what is restarted in place [all]; triton: any other process exiting stops the stack (exit 1), "
        "for a container whose restart policy brings all of it back",
    )
    supervision.add_argument("--backoff-reset-s", type=float, default=120.0, help="a run this long resets backoff")
    supervision.add_argument("--ready-file", type=pathlib.Path, help="written once every role serves")
    supervision.add_argument("--healthcheck", action="store_true", help="exit 0 if every role serves now, else 1")
    return parser.parse_args(argv)


def _triton_role(args: argparse.Namespace) -> TritonRole:
    models = args.wait_for_model or list(MODELS)
    options = ServerOptions(
        model_repository=args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        poll_seconds=args.poll_seconds,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model or ("*",)),
        extra_args=tuple(args.triton_arg),
        address=args.triton_address,
        binary=args.tritonserver,
    )
    return TritonRole(options, () if "*" in models else tuple(models), args.triton_ready_timeout)


def _bridge_config_path(args: argparse.Namespace, roles: tuple[str, ...], workdir: pathlib.Path) -> pathlib.Path:
    if args.bridge_config is not None:
        return pathlib.Path(args.bridge_config)
    path = workdir / "bridge.json"  # both slots (the action slot then routes through combined_ensemble)
    default: dict[str, object] = {"action": {}, "planner": {}}
    if "triton" in roles:
        default["triton"] = {"url": f"127.0.0.1:{args.grpc_port}"}
    path.write_text(json.dumps(default))
    return path


def _print_ready(orchestrator: Orchestrator, config: BridgeConfig, metrics_port: int) -> None:
    """What really listens, from the configuration the bridge and the sidecars were started with."""
    roles = orchestrator.roles
    transports = enabled_transports(config)
    lines = ["", "[stack] ready. Connect a robot:" if "bridge" in roles else "[stack] ready."]
    if "bridge" in roles and "action" in transports:
        action = transports["action"]
        lines += [
            "  from openpi_client.websocket_client_policy import WebsocketClientPolicy",
            f"  policy = WebsocketClientPolicy(host='127.0.0.1', port={action.websocket_port})   # action slot",
        ]
    if "sidecars" in roles and "action" in transports:
        quic = transports["action"].quic_port
        lines.append(f"  # openpi-flash robots: FlashTransportPolicy(host='<this host>', port={quic})  (QUIC)")
    if "planner" in transports and {"bridge", "sidecars"} & set(roles):
        planner = transports["planner"]
        lines.append(f"  planner slot: WebSocket {planner.websocket_port}, QUIC {planner.quic_port}")
    if orchestrator.triton is not None and "triton" in roles:
        o = orchestrator.triton.server
        lines.append(
            f"  Triton gRPC {o.address}:{o.grpc_port}, HTTP {o.address}:{o.http_port}, metrics :{metrics_port}/metrics"
        )
    if "bridge" in roles and config.admin.enabled:
        admin = f"http://{config.admin.host}:{config.admin.port}"
        lines.append(f"  admin {admin}/docs, bridge metrics {admin}/metrics")
    lines += ["  Ctrl-C stops everything.", ""]
    print("\n".join(lines), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    roles = expand_roles(args.role)
    # The stub watchdog and the follower run in this process: their lifecycle lines at INFO, prefixed.
    logging.basicConfig(level=logging.INFO, format="[watchdog] %(message)s", stream=sys.stderr)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="openpi-triton-stack-"))
    orchestrator = Orchestrator(
        roles,
        _bridge_config_path(args, roles, workdir),
        _triton_role(args) if "triton" in roles else None,
        restart_only_triton=args.restart == "triton",
        backoff=Backoff(initial_s=1.0, max_s=30.0, reset_after_s=args.backoff_reset_s),
    )
    if args.healthcheck:
        shutil.rmtree(workdir, ignore_errors=True)
        return 0 if orchestrator.healthy() else 1
    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            config = orchestrator.config()
            problems = orchestrator.check_ports()
        except (ValidationError, ValueError, FileNotFoundError) as exc:
            log(f"invalid bridge configuration: {exc}")
            return 2
        if problems:
            for problem in problems:
                log(problem)
            log("stop what holds it, or move the stack (README 'Set-up': SERVE_ARGS, OPENPI_* variables)")
            return 1
        if orchestrator.start(cancel=stop):
            _print_ready(orchestrator, config, args.metrics_port)
            if args.ready_file is not None:
                args.ready_file.write_text("ready\n")
        while not stop.wait(0.5):
            if reason := orchestrator.gone():
                log(f"{reason}; stopping the others")
                return 1
        return 143 if stopped_by and stopped_by[0] == signal.SIGTERM else 0
    except (SupervisorError, LauncherError) as exc:
        log(str(exc))  # a tritonserver that failed to start: its log tail is in the message
        return 1
    finally:
        orchestrator.close()
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
