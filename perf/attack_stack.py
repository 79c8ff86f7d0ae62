"""The stack ``perf.attack`` attacks: ``python -m openpi_triton.stack`` (what ``make serve`` runs) as a child process.

Everything on loopback and on free ports, sockets and the bridge config in a private temp folder, an API key on
the bridge (WebSocket upgrades and the admin API) and a token on the QUIC sidecars (``OPENPI_QUIC_TOKEN``). The
model repository is a private copy of ``model_repository/`` so that nothing edited in the checkout meanwhile
reloads a model in the middle of an attack (Triton runs in poll mode under the stack).

Readiness is the stack's explicit ready signal (``--ready-file``: every role serves, the QUIC sidecars' ports
bound) and what the servers answer: Triton's ``/v2/health/ready``, the bridge's ``GET /healthz`` on both
WebSocket ports, the admin ``/health``. The stack's processes are found through ``/proc`` (its process tree).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from openpi_triton.processes import spawn
from openpi_triton.readiness import http_status, wait_until
from openpi_triton.triton.launcher import free_ports
from perf.soak import _cmdline, _proc_children, open_fds, rss_bytes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
PARTS = ("bridge", "triton", "quic")


@dataclasses.dataclass(frozen=True)
class StackPorts:
    http: int
    grpc: int
    metrics: int
    ws_action: int
    ws_planner: int
    admin: int
    quic_action: int
    quic_planner: int

    @classmethod
    def free(cls) -> StackPorts:
        # QUIC is UDP; a TCP port that is free on loopback is free for UDP as well in practice (nothing else here
        # binds UDP), and the sidecar would fail loudly if not.
        return cls(*free_ports(8))


@dataclasses.dataclass
class Stack:
    process: subprocess.Popen[bytes]
    ports: StackPorts
    workdir: pathlib.Path
    log: pathlib.Path
    api_key: str
    quic_token: str
    config: dict

    @property
    def action_socket(self) -> pathlib.Path:
        return pathlib.Path(self.config["action_transport"]["unix_socket_path"])

    @property
    def ready_file(self) -> pathlib.Path:
        """Written by the stack once every role serves (its explicit ready signal)."""
        return self.workdir / "ready"

    @property
    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self.api_key}"}

    def alive(self) -> bool:
        return self.process.poll() is None


def bridge_config(ports: StackPorts, workdir: pathlib.Path, api_key: str) -> dict:
    """Both slots (action -> combined_ensemble, planner), admin on loopback, the API key; limits at defaults."""
    return {
        "action": {},
        "planner": {},
        "host": LOOPBACK,
        "api_key": api_key,
        "action_transport": {
            "websocket_port": ports.ws_action,
            "quic_port": ports.quic_action,
            "unix_socket_path": str(workdir / "action.sock"),
        },
        "planner_transport": {
            "websocket_port": ports.ws_planner,
            "quic_port": ports.quic_planner,
            "unix_socket_path": str(workdir / "planner.sock"),
        },
        "admin": {"host": LOOPBACK, "port": ports.admin},
        "triton": {"url": f"{LOOPBACK}:{ports.grpc}"},
    }


def copy_repository(target: pathlib.Path) -> pathlib.Path:
    shutil.copytree(REPO_ROOT / "model_repository", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def start_stack(results: pathlib.Path) -> Stack:
    """Starts the stack (not yet ready: see :func:`wait_ready`)."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="openpi-attack-"))
    ports = StackPorts.free()
    api_key, token = secrets.token_hex(16), secrets.token_hex(16)
    config = bridge_config(ports, workdir, api_key)
    (workdir / "bridge.json").write_text(json.dumps(config, indent=1))
    repository = copy_repository(workdir / "model_repository")
    log = results / "stack.log"
    env = {**os.environ, "OPENPI_QUIC_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "openpi_triton.stack", "--model-repository", str(repository),
        "--bridge-config", str(workdir / "bridge.json"), "--http-port", str(ports.http),
        "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics), "--ready-file", str(workdir / "ready"),
    ]  # fmt: skip
    with open(log, "ab") as out:
        # Tied to this run: a run killed from outside (a test's timeout) takes its stack along.
        process = spawn(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    return Stack(process, ports, workdir, log, api_key, token, config)


# ------------------------------------------------------------------------------------------------ readiness


def stack_ready(stack: Stack) -> bool:
    p = stack.ports
    return (
        http_status(p.http, "/v2/health/ready") == 200
        and http_status(p.ws_action, "/healthz") == 200
        and http_status(p.ws_planner, "/healthz") == 200
        and http_status(p.admin, "/health", stack.auth_header) == 200
    )


def wait_ready(stack: Stack, timeout_s: float) -> float:
    """Until the stack's ready signal and its health endpoints; raises when it exits first. Returns the seconds."""

    def exited() -> str | None:
        return None if stack.alive() else f"the stack exited with {stack.process.returncode}"

    def ready() -> bool:
        return stack.ready_file.exists() and stack_ready(stack)

    began = time.monotonic()
    wait_until(ready, timeout_s, "the stack's ready signal and health endpoints", unless=exited, interval_s=0.5)
    return time.monotonic() - began


# ------------------------------------------------------------------------------------------------ processes


@dataclasses.dataclass
class StackProcesses:
    """The stack's processes by part: bridge, triton (server + Python stubs), quic (every server sidecar)."""

    parts: dict[str, list[int]]
    triton_server: int | None
    quic_by_port: dict[int, int]
    all_pids: list[int]


def find_processes(stack_pid: int) -> StackProcesses:
    children = _proc_children()
    tree, todo = [], list(children.get(stack_pid, []))
    parts: dict[str, list[int]] = {name: [] for name in PARTS}
    triton_server, quic_by_port = None, {}
    while todo:
        pid = todo.pop()
        tree.append(pid)
        argv = _cmdline(pid)
        below = children.get(pid, [])
        if argv and argv[0].endswith("tritonserver"):
            triton_server = pid
            parts["triton"] += [pid, *_descendants(pid, children)]
        elif "openpi_bridge" in argv:
            parts["bridge"].append(pid)
        elif argv and argv[0].endswith("openpi-flash-transport") and "server" in argv:
            parts["quic"].append(pid)
            if "--listen-port" in argv:
                quic_by_port[int(argv[argv.index("--listen-port") + 1])] = pid
        todo += below
    return StackProcesses(parts, triton_server, quic_by_port, tree)


def _descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [], list(children.get(pid, []))
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


@dataclasses.dataclass(frozen=True)
class Usage:
    """RSS (bytes) and open fds per part at one moment."""

    rss: dict[str, int]
    fds: dict[str, int]

    def brief(self, part: str) -> str:
        return f"{self.rss.get(part, 0) / 2**20:.0f}M/{self.fds.get(part, 0)}"


def usage(processes: StackProcesses) -> Usage:
    return Usage(
        {part: rss_bytes(pids) for part, pids in processes.parts.items()},
        {part: open_fds(pids) for part, pids in processes.parts.items()},
    )


def shm_bytes(prefix: str = "") -> int:
    """Bytes of POSIX shared memory in /dev/shm (the bridge's regions for Triton live there)."""
    total = 0
    for entry in pathlib.Path("/dev/shm").iterdir():
        if entry.name.startswith(prefix):
            try:
                total += entry.stat().st_size
            except OSError:
                continue
    return total


def pid_alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_stack(stack: Stack, timeout_s: float = 60.0) -> list[int]:
    """SIGINT (the stack's Ctrl-C path), then SIGKILL; then SIGKILL for any of its processes left. Returns those."""
    known = find_processes(stack.process.pid).all_pids if stack.alive() else []
    if stack.alive():
        stack.process.send_signal(signal.SIGINT)
        try:
            stack.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stack.process.kill()
            stack.process.wait(timeout=10)
    return kill_leftovers(known)


def kill_leftovers(pids: list[int]) -> list[int]:
    """SIGKILL for each of ``pids`` still running (by pid: they were the stack's processes)."""
    left = [p for p in pids if pid_alive(p)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return left


def cleanup_workdir(stack: Stack) -> None:
    shutil.rmtree(stack.workdir, ignore_errors=True)
