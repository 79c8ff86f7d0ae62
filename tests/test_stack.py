"""What `make serve` runs: Triton on model_repository/ + bridge + QUIC sidecars; Ctrl-C stops all of it. Its roles
split the same stack over processes."""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import subprocess

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.flash_client import FlashTransportPolicy
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton.launcher import free_ports
from tests.clients import healthz
from tests.conftest import bridge_config
from tests.triton_helpers import (
    MODEL_REPOSITORY,
    copy_model,
    processes_mentioning,
    spawn_module,
    stack_args,
    wait_until,
)

OBS = EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel")


def test_stack_serves_a_robot_prints_its_real_ports_and_stops_on_ctrl_c(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> None:
    ports = free_ports(3)
    config = bridge_config(tmp_path)
    ws_action = config["action_transport"]["websocket_port"]
    quic_action = config["action_transport"]["quic_port"]
    (tmp_path / "bridge.json").write_text(json.dumps(config))
    log, ready = tmp_path / "stack.log", tmp_path / "ready"
    args = stack_args(MODEL_REPOSITORY, tmp_path / "bridge.json", ports, ready_file=ready)
    stack = spawn_module("openpi_triton.stack", args, log, embedded_default.root.parent)
    try:
        wait_until(lambda: ready.exists() or stack.poll() is not None, 900, "the stack's ready signal")
        assert stack.poll() is None, log.read_text()[-4000:]
        assert healthz(ws_action) == (200, "OK\n"), "ready means Triton is behind the bridge"
        robot = WebsocketClientPolicy(host="127.0.0.1", port=ws_action)
        assert robot.get_server_metadata()["action_horizon"] == 50
        result = robot.infer(OBS)
        assert result["actions"].shape == (50, 14) and "subtask" in result
        quic_robot = FlashTransportPolicy("127.0.0.1", port=quic_action, local_port=0)  # ready: the sidecar listens
        try:
            via_quic = quic_robot.infer(OBS)
        finally:
            quic_robot.close()
        assert via_quic["actions"].shape == (50, 14) and "subtask" in via_quic
        # The banner (printed before the ready signal) names what listens (the configured ports), not the defaults.
        banner = log.read_text()
        assert "[stack] ready. Connect a robot:" in banner
        assert f"port={ws_action})" in banner and f"port={quic_action})" in banner
        assert f"admin http://127.0.0.1:{config['admin']['port']}/docs" in banner
        stack.send_signal(signal.SIGINT)
        assert stack.wait(timeout=120) == 0, log.read_text()[-4000:]
        assert not ready.exists(), "the ready signal is withdrawn on exit"
    finally:
        if stack.poll() is None:
            stack.kill()
    gone = [f"--grpc-port={ports[1]}", str(tmp_path / "bridge.json"), str(tmp_path / "a.sock")]
    wait_until(lambda: not any(processes_mentioning(text) for text in gone), 30, "no child outlives the stack")


def test_a_busy_port_stops_the_stack_before_any_model_loads(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> None:
    ports = free_ports(3)
    config = bridge_config(tmp_path)
    (tmp_path / "bridge.json").write_text(json.dumps(config))
    log = tmp_path / "stack.log"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config["action_transport"]["websocket_port"]))
        holder.listen()
        args = stack_args(MODEL_REPOSITORY, tmp_path / "bridge.json", ports)
        stack = spawn_module("openpi_triton.stack", args, log, embedded_default.root.parent)
        assert stack.wait(timeout=120) == 1
    text = log.read_text()
    port = config["action_transport"]["websocket_port"]
    assert f"action WebSocket port {port}/tcp on 127.0.0.1 is in use by another process" in text
    assert "starting tritonserver" not in text and "Traceback" not in text


def test_roles_split_the_stack_over_processes_that_serve_robots_together(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> None:
    """``--role triton`` in one process, ``--role bridge sidecars`` in another, each with its own ready signal."""
    repository = tmp_path / "repo"
    copy_model(repository, "action", "action", {"batch_buckets": "1"})  # one model, one bucket: a quick start
    ports = free_ports(3)
    config = bridge_config(tmp_path, planner=None, triton={"url": f"127.0.0.1:{ports[1]}"})
    (tmp_path / "bridge.json").write_text(json.dumps(config))
    home = embedded_default.root.parent

    started: list[subprocess.Popen[bytes]] = []

    def start(roles: list[str], name: str) -> tuple[subprocess.Popen[bytes], pathlib.Path]:
        ready = tmp_path / f"{name}.ready"
        args = ["--role", *roles, *stack_args(repository, tmp_path / "bridge.json", ports, ready_file=ready)]
        process = spawn_module("openpi_triton.stack", [*args, "--wait-for-model", "action"], tmp_path / name, home)
        started.append(process)  # stopped below even if it never gets ready
        wait_until(lambda: ready.exists() or process.poll() is not None, 600, f"the {name} ready signal")
        assert process.poll() is None, (tmp_path / name).read_text()[-4000:]
        return process, ready

    try:
        triton, _ = start(["triton"], "triton.log")
        front, front_ready = start(["bridge", "sidecars"], "front.log")
        assert "starting the bridge" not in (tmp_path / "triton.log").read_text()
        assert "starting tritonserver" not in (tmp_path / "front.log").read_text()
        robot = WebsocketClientPolicy(host="127.0.0.1", port=config["action_transport"]["websocket_port"])
        assert robot.infer(OBS)["actions"].shape == (50, 14)
        quic_robot = FlashTransportPolicy("127.0.0.1", port=config["action_transport"]["quic_port"], local_port=0)
        try:
            assert quic_robot.infer(OBS)["actions"].shape == (50, 14)
        finally:
            quic_robot.close()
        front.send_signal(signal.SIGTERM)
        assert front.wait(timeout=60) == 143 and not front_ready.exists()
        triton.send_signal(signal.SIGINT)
        assert triton.wait(timeout=120) == 0
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
    gone = [f"--grpc-port={ports[1]}", str(tmp_path / "a.sock")]
    wait_until(lambda: not any(processes_mentioning(text) for text in gone), 30, "no child outlives its stack")
