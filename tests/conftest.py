"""Shared fixtures: the embedded default model built once per test session in a unique temp folder."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from openpi_triton.bridge_config import load_config
from openpi_triton.flash_client import find_binary
from openpi_triton.native.planner import PlannerOptions, SubtaskPlanner, load_planner
from openpi_triton.native.policy import NativePolicy, PolicyOptions, load_policy
from openpi_triton.native.tiny import EmbeddedDefault, ensure_embedded_default
from openpi_triton.orchestrator import bridge_endpoints_answer
from openpi_triton.processes import stop_process
from openpi_triton.readiness import wait_until
from openpi_triton.triton.config_text import set_field, set_instance_group
from openpi_triton.triton.launcher import (
    ServerOptions,
    TritonPaths,
    TritonServer,
    build_backend_dir,
    free_ports,
    server_environment,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def embedded_default(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedDefault:
    return ensure_embedded_default(tmp_path_factory.mktemp("openpi-triton-home") / "default")


@pytest.fixture(scope="session")
def tiny_policy(embedded_default: EmbeddedDefault) -> NativePolicy:
    options = PolicyOptions(tokenizer_path=str(embedded_default.tokenizer_path), batch_buckets=(1, 2, 4, 8))
    return load_policy(embedded_default.config_name, embedded_default.checkpoint_dir, options)


@pytest.fixture(scope="session")
def tiny_planner(embedded_default: EmbeddedDefault) -> SubtaskPlanner:
    options = PlannerOptions(tokenizer_path=str(embedded_default.tokenizer_path), batch_buckets=(1, 2, 4))
    return load_planner(embedded_default.checkpoint_dir, options)


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    if not (GOLDEN_DIR / "manifest.json").exists():
        pytest.fail(f"golden vectors not found at {GOLDEN_DIR} (shared/ must sit beside the checkout)")
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def triton_server(
    embedded_default: EmbeddedDefault, golden_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """One real tritonserver for the session: action, planner, combined_ensemble on the embedded default, plus
    ``golden_action`` serving the pi05_aloha golden checkpoint in float32."""
    from tests.triton_helpers import copy_model

    repo = tmp_path_factory.mktemp("model-repository")
    for name in ("action", "planner", "combined_ensemble"):
        copy_model(repo, name, name)
    # Its planner never answers in time: the path a failing planner takes.
    copy_model(repo, "combined_ensemble", "combined_impatient", {"planner_timeout_ms": "1"})
    copy_model(
        repo,
        "action",
        "golden_action",
        {
            "checkpoint_dir": str(golden_dir / "pi05_aloha" / "checkpoint"),
            "tokenizer_path": str(golden_dir / "tokenizer.model"),
            "batch_buckets": "1,2",
            "rtc": "off",  # no RTC test uses it: a shorter warm-up
        },
    )
    # Holds requests until three are queued (at most 5 s): tests see which requests Triton puts into one batch.
    batch_of_3 = copy_model(repo, "action", "action_batch_of_3", {"batch_buckets": "4"}) / "config.pbtxt"
    batch_of_3.write_text(
        set_field(
            batch_of_3.read_text(),
            r"max_queue_delay_microseconds: 0",
            "max_queue_delay_microseconds: 5000000\n  preferred_batch_size: [ 3 ]",
            "the queue delay",
        )
    )
    # One BLS instance per request (an instance runs one execute at a time): its three children reach the action
    # model together.
    bls = copy_model(repo, "combined_ensemble", "combined_batch_of_3", {"action_model": "action_batch_of_3"})
    (bls / "config.pbtxt").write_text(set_instance_group((bls / "config.pbtxt").read_text(), 3, 0))
    http, grpc, metrics = free_ports(3)
    server = TritonServer(
        ServerOptions(repo, http, grpc, metrics, env={"OPENPI_TRITON_HOME": str(embedded_default.root.parent)}),
        log_stream=open(tmp_path_factory.mktemp("logs") / "triton.log", "w"),
    )
    server.start()
    try:
        server.wait_ready(
            [
                "action",
                "planner",
                "combined_ensemble",
                "combined_impatient",
                "golden_action",
                "action_batch_of_3",
                "combined_batch_of_3",
            ],
            timeout=600,
        )
        yield server
    finally:
        server.stop()


@dataclasses.dataclass
class BridgeProcess:
    process: subprocess.Popen[bytes]
    action_port: int
    planner_port: int
    admin_port: int
    action_socket: pathlib.Path
    planner_socket: pathlib.Path
    log: pathlib.Path
    triton_url: str


def bridge_config(workdir: pathlib.Path, **overrides: object) -> dict:
    """Both slots on free ports (127.0.0.1), sockets in ``workdir``; ``overrides`` replace top-level keys."""
    action_port, planner_port, admin_port, quic_a, quic_p = free_ports(5)
    return {
        "action": {},
        "planner": {},
        "action_transport": {
            "websocket_port": action_port,
            "quic_port": quic_a,
            "unix_socket_path": str(workdir / "a.sock"),
        },
        "planner_transport": {
            "websocket_port": planner_port,
            "quic_port": quic_p,
            "unix_socket_path": str(workdir / "p.sock"),
        },
        "admin": {"port": admin_port},
        "host": "127.0.0.1",
        **overrides,
    }


def start_bridge_process(triton_url: str, workdir: pathlib.Path, **overrides: object) -> BridgeProcess:
    """``python -m openpi_bridge`` as a real process on free ports, waited for until it accepts connections."""
    config = bridge_config(workdir, **{"triton": {"url": triton_url}, **overrides})
    (workdir / "bridge.json").write_text(json.dumps(config))
    bridge = BridgeProcess(
        _launch_bridge(workdir),
        config["action_transport"]["websocket_port"],
        config["planner_transport"]["websocket_port"],
        config["admin"].get("port", 0),  # 0: admin disabled or on its default port
        pathlib.Path(config["action_transport"]["unix_socket_path"]),
        pathlib.Path(config["planner_transport"]["unix_socket_path"]),
        workdir / "bridge.log",
        triton_url,
    )
    _wait_for_bridge(bridge)
    return bridge


def restart_bridge_process(bridge: BridgeProcess) -> None:
    """Starts the bridge again with the same config file (ports, sockets) after it died or was killed."""
    bridge.process = _launch_bridge(bridge.log.parent)
    _wait_for_bridge(bridge)


def _launch_bridge(workdir: pathlib.Path) -> subprocess.Popen[bytes]:
    with open(workdir / "bridge.log", "ab") as out:  # appended: a restart keeps the earlier log
        return subprocess.Popen(
            [sys.executable, "-m", "openpi_bridge", "--config", str(workdir / "bridge.json")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def bridge_listens(bridge: BridgeProcess) -> bool:
    """Every endpoint of the bridge's config answers, as its supervisor in the stack judges it."""
    return bridge_endpoints_answer(load_config(bridge.log.parent / "bridge.json"))


def _wait_for_bridge(bridge: BridgeProcess) -> None:
    """Until every endpoint answers (the readiness a supervisor sees), or the process dies."""

    def exited() -> str | None:
        return None if bridge.process.poll() is None else f"the bridge exited ({bridge.process.returncode})"

    try:
        wait_until(lambda: bridge_listens(bridge), 120, "the bridge's endpoints", unless=exited)
    except (RuntimeError, TimeoutError) as exc:
        bridge.process.kill()
        raise RuntimeError(f"bridge did not start ({exc}):\n{bridge.log.read_text()}") from None


def stop_bridge_process(bridge: BridgeProcess) -> None:
    stop_process(bridge.process, timeout=20)


@pytest.fixture(scope="session")
def bridge(triton_server: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """The bridge in combined mode (action slot -> combined_ensemble, planner slot -> planner)."""
    running = start_bridge_process(triton_server.grpc_url, tmp_path_factory.mktemp("bridge"))
    yield running
    stop_bridge_process(running)


# ----------------------------------------------------- the docker entrypoint, run on this machine

ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"


@pytest.fixture()
def container_env(tmp_path: pathlib.Path, embedded_default: EmbeddedDefault) -> dict[str, str]:
    """What the image provides, on this machine: ``tritonserver`` on PATH (the wheel's binary), its backend
    directory, the sidecar binary, the venv's Python first on PATH; every port free, sockets in tmp_path."""
    paths = TritonPaths.from_wheel()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tritonserver").symlink_to(paths.binary)
    backends = build_backend_dir(paths, tmp_path / "backends")
    env = server_environment(paths)
    http, grpc, metrics = free_ports(3)
    config = bridge_config(tmp_path)
    (tmp_path / "bridge.json").write_text(json.dumps(config))
    env.update(
        PATH=os.pathsep.join((str(bin_dir), env["PATH"])),
        MODEL_REPOSITORY=str(REPO_ROOT / "model_repository"),
        TRITON_EXTRA_ARGS=f"--backend-directory={backends}",
        TRITON_HTTP_PORT=str(http),
        TRITON_GRPC_PORT=str(grpc),
        TRITON_METRICS_PORT=str(metrics),
        TRITON_REPOSITORY_POLL_SECS="2",
        TRITON_READY_TIMEOUT="600",
        BRIDGE_CONFIG=str(tmp_path / "bridge.json"),
        STACK_READY_FILE=str(tmp_path / "ready"),  # the stack's ready signal
        OPENPI_ADMIN__HOST="127.0.0.1",  # the container default (0.0.0.0) is for a published port
        OPENPI_TRITON_HOME=str(embedded_default.root.parent),
        OPENPI_FLASH_TRANSPORT_BINARY=str(find_binary()),
    )
    for key in [k for k in env if k.startswith("OPENPI_ROLE") or k.startswith("OPENPI_TRITON__")]:
        del env[key]
    return env


@pytest.fixture()
def spawn_entrypoint(tmp_path: pathlib.Path) -> Iterator[object]:
    """Starts ``entrypoint.sh ROLE`` in its own session; whatever is left of it is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(role: str, env: dict[str, str], log: pathlib.Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(ENTRYPOINT), role], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(process)
        return process

    yield spawn
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
