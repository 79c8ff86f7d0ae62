"""What `make serve` runs: Triton on model_repository/ + bridge + QUIC sidecars; Ctrl-C stops all of it."""

from __future__ import annotations

import json
import pathlib
import signal
import time

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.flash_client import FlashTransportPolicy
from openpi_triton.native.embodiments import EMBODIMENTS
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton.launcher import free_ports
from tests.conftest import bridge_config
from tests.test_launcher import _processes_mentioning
from tests.triton_helpers import MODEL_REPOSITORY, spawn_module, wait_for_log


def test_stack_serves_a_robot_and_stops_on_ctrl_c(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    http, grpc, metrics = free_ports(3)
    config = bridge_config(tmp_path)
    ws_action = config["action_transport"]["websocket_port"]
    q1 = config["action_transport"]["quic_port"]
    (tmp_path / "bridge.json").write_text(json.dumps(config))
    log = tmp_path / "stack.log"
    stack = spawn_module(
        "openpi_triton.stack",
        [
            "--model-repository",
            str(MODEL_REPOSITORY),
            "--bridge-config",
            str(tmp_path / "bridge.json"),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
        ],
        log,
        embedded_default.root.parent,
    )
    try:
        wait_for_log(stack, log, "[stack] ready", timeout=600)
        robot = WebsocketClientPolicy(host="127.0.0.1", port=ws_action)
        assert robot.get_server_metadata()["action_horizon"] == 50
        result = robot.infer(EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel"))
        assert result["actions"].shape == (50, 14) and "subtask" in result
        wait_for_log(stack, log, "Listening for QUIC", timeout=30)
        quic = FlashTransportPolicy("127.0.0.1", port=q1, local_port=0)
        try:
            via_quic = quic.infer(EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel"))
            assert via_quic["actions"].shape == (50, 14) and "subtask" in via_quic
        finally:
            quic.close()
        stack.send_signal(signal.SIGINT)
        assert stack.wait(timeout=120) == 0, log.read_text()[-4000:]
    finally:
        if stack.poll() is None:
            stack.kill()
    time.sleep(1.0)
    assert _processes_mentioning(f"--grpc-port={grpc}") == []
    assert _processes_mentioning(str(tmp_path / "bridge.json")) == []
    assert _processes_mentioning(str(tmp_path / "a.sock")) == [], "a QUIC sidecar outlived the stack"
