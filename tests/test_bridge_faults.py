"""Faults around the bridge: Triton down and back, with the bridge left running."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports
from tests.clients import healthz
from tests.conftest import start_bridge_process, stop_bridge_process
from tests.triton_helpers import copy_model, wait_until


def test_triton_restart_is_survived_and_healthz_tells_the_truth(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> None:
    repo = tmp_path / "repo"
    copy_model(repo, "action", "action", {"batch_buckets": "1"})
    http, grpc, metrics = free_ports(3)
    options = ServerOptions(repo, http, grpc, metrics, env={"OPENPI_TRITON_HOME": str(embedded_default.root.parent)})

    def start() -> TritonServer:
        server = TritonServer(options, log_stream=open(tmp_path / "triton.log", "a"))
        server.start()
        server.wait_ready(["action"], timeout=300)
        return server

    server = start()
    bridge = start_bridge_process(f"127.0.0.1:{grpc}", tmp_path, planner=None, admin={"enabled": False})
    obs = EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel")
    try:
        robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        assert robot.infer(obs)["actions"].shape == (50, 14)  # images through shared memory
        assert healthz(bridge.action_port)[0] == 200
        server.stop()
        assert healthz(bridge.action_port)[0] == 503
        with pytest.raises(RuntimeError, match="Error in inference server"):
            robot.infer(obs)  # a clear error while Triton is down
        server = start()
        # The bridge's channel reconnects within about a second.
        wait_until(lambda: healthz(bridge.action_port)[0] == 200, 10, "/healthz 200 again")
        again = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        for _ in range(3):  # the old shared-memory registrations are gone: the bridge registers again
            assert again.infer(obs)["actions"].shape == (50, 14)
        assert bridge.process.poll() is None
        assert "registering again" in bridge.log.read_text()
    finally:
        stop_bridge_process(bridge)
        server.stop()
