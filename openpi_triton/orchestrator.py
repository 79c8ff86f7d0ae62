"""The one way the stack's processes are started, supervised, waited for and stopped, by role.

Roles, started in this order (``all`` is the three):

- ``triton``: tritonserver on the model repository, and the stub watchdog (a thread here) that follows it;
  ready when ``/v2/health/ready`` of each required model says so (``--strict-readiness``: loaded and warm);
- ``bridge``: ``python -m openpi_bridge``; ready when every enabled slot's WebSocket port answers
  ``GET /healthz`` (200, or 503 while Triton is not ready), every sidecar socket accepts a connection and
  the admin port answers;
- ``sidecars``: one ``openpi-flash-transport server`` per enabled slot; ready when it holds a UDP socket on
  its QUIC port (``openpi_triton.sidecar``).

With both ``triton`` and ``bridge`` the stack is ready once every slot's ``/healthz`` says 200 (end to end).
Readiness is what the servers answer, never a log line. Each process runs under a
:class:`~openpi_triton.processes.Supervisor` (backoff, PDEATHSIG). A process that fails before it was ready
the first time is a configuration error: :meth:`Orchestrator.start` raises, naming it. After that, every exit
is restarted in place, or (``restart_only_triton``, containers) any exit other than tritonserver's ends the
whole stack with a non-zero status, so the container's restart policy brings all of it back.

``make serve`` (``python -m openpi_triton.stack``), the docker entrypoint and ``perf/`` all start the stack
through this module.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from openpi_triton.bridge_config import BridgeConfig, load_config
from openpi_triton.port_check import Port, busy
from openpi_triton.processes import Backoff, Child, Supervisor, SupervisorError, pump_lines, spawn, stop_process
from openpi_triton.readiness import accepts_unix, http_get, http_status, udp_port_bound, wait_until
from openpi_triton.sidecar import SidecarSupervisor
from openpi_triton.triton.launcher import ServerOptions, TritonServer
from openpi_triton.triton.watchdog import StubWatchdog, WatchdogOptions

ROLES = ("triton", "bridge", "sidecars")
MODELS = ("action", "planner", "combined_ensemble")
# Loading a checkpoint and compiling every batch bucket takes minutes on a GPU.
TRITON_READY_TIMEOUT_S = 900.0
BRIDGE_READY_TIMEOUT_S = 60.0
# A restart waits 1 s, then 2, 4, ... up to 30 s; a process that ran 2 minutes starts that over.
BACKOFF = Backoff(initial_s=1.0, max_s=30.0, reset_after_s=120.0)


def expand_roles(names: Sequence[str]) -> tuple[str, ...]:
    """``all`` or any of :data:`ROLES`, in start order; an unknown name is an error naming the choices."""
    unknown = sorted(set(names) - {"all", *ROLES})
    if unknown or not names:
        raise ValueError(f"roles must be 'all' or some of {', '.join(ROLES)}; got {', '.join(unknown) or 'none'}")
    return ROLES if "all" in names else tuple(role for role in ROLES if role in names)


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def probe_host(host: str) -> str:
    """Where to ask a server bound to ``host``: a wildcard address answers on loopback."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


@dataclasses.dataclass
class TritonRole:
    """tritonserver as the ``triton`` role runs it: its options, the models that must be ready, how long."""

    server: ServerOptions
    # The models that must be ready; empty: every model Triton loaded (its /v2/health/ready).
    models: tuple[str, ...] = MODELS
    ready_timeout_s: float = TRITON_READY_TIMEOUT_S
    log_stream: IO[str] | None = None  # tritonserver's output (prefixed); stderr by default

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"


class TritonChild(Child):
    """tritonserver and its stubs (one process group); the stub watchdog follows each new server."""

    name = "tritonserver"

    def __init__(self, role: TritonRole, watchdog: StubWatchdog) -> None:
        self.role = role
        self.server = TritonServer(role.server, log_stream=role.log_stream)
        self.watchdog = watchdog

    def spawn(self) -> subprocess.Popen[Any]:
        self.server.start()  # also removes the regions a killed predecessor left in /dev/shm
        assert self.server.process is not None
        # Before the new server listens: the watchdog must not judge it by the old server's stubs.
        self.watchdog.follow(self.server.process.pid)
        return self.server.process

    def wait_ready(self, process: subprocess.Popen[Any]) -> None:
        every_model = not self.role.models
        self.server.wait_ready(self.role.models, timeout=self.role.ready_timeout_s, every_model=every_model)

    def stop(self, process: subprocess.Popen[Any]) -> None:
        self.server.stop()

    def after_exit(self, process: subprocess.Popen[Any]) -> None:
        self.server.stop()  # its stubs (same process group) and its private backend folder


def bridge_endpoints_answer(config: BridgeConfig) -> bool:
    """Every endpoint the bridge was configured with answers: WebSocket ports (``/healthz``: 200, or 503 while
    Triton is not ready), sidecar sockets (a connect succeeds) and the admin port (any answer)."""
    host = probe_host(config.host)
    for transport in enabled_transports(config).values():
        if http_status(transport.websocket_port, "/healthz", host=host) not in (200, 503):
            return False
        if not accepts_unix(transport.unix_socket_path):
            return False
    admin = config.admin
    return not admin.enabled or http_status(admin.port, "/metrics", host=probe_host(admin.host)) != 0


def enabled_transports(config: BridgeConfig) -> dict[str, Any]:
    """``{slot: its transport}`` for the slots the configuration enables."""
    slots = {"action": (config.action, config.action_transport), "planner": (config.planner, config.planner_transport)}
    return {slot: transport for slot, (enabled, transport) in slots.items() if enabled is not None}


class BridgeChild(Child):
    """``python -m openpi_bridge --config <file>``, ready once :func:`bridge_endpoints_answer`."""

    name = "bridge"

    def __init__(self, config_path: pathlib.Path, env: dict[str, str], out: IO[str] | None = None) -> None:
        self.config_path = config_path
        self.env = env
        self.out = out
        # As the bridge will read it: the file and the OPENPI_* variables (only Triton's URL differs in ``env``).
        self.config = load_config(config_path)

    def spawn(self) -> subprocess.Popen[Any]:
        for transport in enabled_transports(self.config).values():
            path = pathlib.Path(transport.unix_socket_path)
            if path.is_socket():  # left by the bridge that died: its presence must mean the new one listens
                path.unlink()
        command = [sys.executable, "-m", "openpi_bridge", "--config", str(self.config_path)]
        process = spawn(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        pump_lines(process.stdout, "", self.out)
        return process

    def wait_ready(self, process: subprocess.Popen[Any]) -> None:
        def exited() -> str | None:
            return None if process.poll() is None else f"the bridge exited during start-up (code {process.returncode})"

        wait_until(
            lambda: bridge_endpoints_answer(self.config),
            BRIDGE_READY_TIMEOUT_S,
            f"the bridge's endpoints (config {self.config_path})",
            unless=exited,
        )

    def stop(self, process: subprocess.Popen[Any]) -> None:
        stop_process(process, timeout=20)


@dataclasses.dataclass
class Orchestrator:
    """The supervisors of one stack, started role by role in order and stopped in reverse.

    ``bridge_config`` is the bridge's JSON file (it names the slots, their ports and sockets, which the
    sidecars use too); ``triton`` is needed for the ``triton`` role. With both the ``triton`` and ``bridge``
    roles the bridge talks to this tritonserver unless ``OPENPI_TRITON__URL(S)`` says otherwise.
    """

    roles: tuple[str, ...]
    bridge_config: pathlib.Path
    triton: TritonRole | None = None
    restart_only_triton: bool = False
    backoff: Backoff = BACKOFF
    bridge_out: IO[str] | None = None  # the bridge's output; stderr by default
    log: Callable[[str], None] = log
    watchdog: StubWatchdog | None = None
    supervisors: list[Supervisor] = dataclasses.field(default_factory=list)
    sidecars: list[SidecarSupervisor] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if "triton" in self.roles and self.triton is None:
            raise ValueError("the triton role needs tritonserver's options")

    @property
    def bridge_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if "triton" in self.roles and self.triton is not None:
            if not (env.get("OPENPI_TRITON__URL") or env.get("OPENPI_TRITON__URLS")):
                env["OPENPI_TRITON__URL"] = self.triton.grpc_url
        return env

    def config(self) -> BridgeConfig:
        """The bridge's configuration as the bridge will read it (file + ``OPENPI_*`` overrides); its Triton URL
        may differ (see :attr:`bridge_env`), its slots, ports and sockets do not."""
        return load_config(self.bridge_config)

    def planned_ports(self) -> list[Port]:
        ports: list[Port] = []
        if "triton" in self.roles and self.triton is not None:
            o = self.triton.server
            ports += [
                Port("Triton HTTP", o.address, o.http_port),
                Port("Triton gRPC", o.address, o.grpc_port),
                Port("Triton metrics", "0.0.0.0", o.metrics_port),
            ]
        if "bridge" in self.roles or "sidecars" in self.roles:
            config = self.config()
            for slot, transport in enabled_transports(config).items():
                if "bridge" in self.roles:
                    ports.append(Port(f"{slot} WebSocket", config.host, transport.websocket_port))
                if "sidecars" in self.roles:
                    ports.append(Port(f"{slot} QUIC", "0.0.0.0", transport.quic_port, udp=True))
            if "bridge" in self.roles and config.admin.enabled:
                ports.append(Port("admin", config.admin.host, config.admin.port))
        return ports

    def check_ports(self) -> list[str]:
        """One line per port another process holds (before anything starts, so before any model loads)."""
        return busy(self.planned_ports())

    def _supervise(self, child: Child, restart: bool, cancel: threading.Event | None) -> bool:
        supervisor = Supervisor(child, self.backoff, log=self.log, restart=restart).start()
        self.supervisors.append(supervisor)
        return supervisor.wait_first_ready(cancel=cancel)

    def start(self, cancel: threading.Event | None = None) -> bool:
        """True once every role serves; False if ``cancel`` came first; raises :class:`SupervisorError` when
        a process fails before it was ready."""
        restart_others = not self.restart_only_triton
        if "triton" in self.roles:
            assert self.triton is not None
            o = self.triton.server
            self.log("starting tritonserver (models warm up before they report ready) ...")
            # Triton does not restart a crashed Python stub: reload its model (poll mode: touch its folder).
            options = WatchdogOptions(
                self.triton.grpc_url, None, o.model_repository, model_control_mode=o.model_control_mode
            )
            self.watchdog = StubWatchdog(options)
            if not self._supervise(TritonChild(self.triton, self.watchdog), True, cancel):
                return False
            self.watchdog.start()
        if "bridge" in self.roles:
            self.log("starting the bridge ...")
            child = BridgeChild(self.bridge_config, self.bridge_env, self.bridge_out)
            if not self._supervise(child, restart_others, cancel):
                return False
        if "sidecars" in self.roles:
            for slot, transport in enabled_transports(self.config()).items():
                sidecar = SidecarSupervisor(
                    slot, transport.quic_port, transport.unix_socket_path, restart=restart_others
                )
                self.sidecars.append(sidecar.start())
            for sidecar in self.sidecars:
                if not sidecar.wait_ready(cancel):
                    return False
        if "triton" in self.roles and "bridge" in self.roles:
            return self._wait_end_to_end(cancel)
        return True

    def _wait_end_to_end(self, cancel: threading.Event | None) -> bool:
        """With its own Triton the stack is ready once every slot's ``/healthz`` says 200: a robot gets answers.

        The bridge's own readiness accepts 503 (it must come back while Triton restarts); its first health
        checks after start-up may still fail for a moment, a lasting 503 (a model mismatch) is an error."""
        config = self.config()
        host = probe_host(config.host)
        ports = [t.websocket_port for t in enabled_transports(config).values()]

        def serving() -> bool:
            return all(http_status(port, "/healthz", host=host) == 200 for port in ports)

        def cancelled() -> str | None:
            return "stopped" if cancel is not None and cancel.is_set() else None

        try:
            wait_until(serving, BRIDGE_READY_TIMEOUT_S, "every slot's /healthz 200", unless=cancelled)
        except RuntimeError:
            return False
        except TimeoutError:
            says = {port: http_get(port, "/healthz", host=host) for port in ports}
            raise SupervisorError(f"the bridge does not serve end to end: /healthz {says}") from None
        return True

    def gone(self) -> str | None:
        """Why the stack cannot go on (a process that exited and is not restarted), else None."""
        for supervisor in [*self.supervisors, *(s.supervisor for s in self.sidecars)]:
            if supervisor.gone:
                return supervisor.failure or f"{supervisor.child.name} stopped"
        return None

    def healthy(self) -> bool:
        """Every role serves now (the container's health check): Triton ready, every slot's ``/healthz`` 200,
        every sidecar's QUIC port bound."""
        if "triton" in self.roles and self.triton is not None:
            if http_status(self.triton.server.http_port, "/v2/health/ready") != 200:
                return False
        if "bridge" in self.roles or "sidecars" in self.roles:
            config = self.config()
            for transport in enabled_transports(config).values():
                if "bridge" in self.roles:
                    if http_status(transport.websocket_port, "/healthz", host=probe_host(config.host)) != 200:
                        return False
                if "sidecars" in self.roles and not udp_port_bound(transport.quic_port):
                    return False
        return True

    def close(self) -> None:
        for sidecar in self.sidecars:
            sidecar.stop()
        # Before Triton stops: its stubs exiting on the way down are no reason to reload models.
        if self.watchdog is not None:
            self.watchdog.stop()
        for supervisor in reversed(self.supervisors):
            supervisor.stop()
