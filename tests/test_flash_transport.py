"""QUIC path end to end: our FlashTransportPolicy -> client binary -> QUIC -> server binary -> bridge -> Triton."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.flash_client import FlashTransportPolicy, find_binary
from openpi_triton.sidecar import SidecarSupervisor
from openpi_triton.triton.launcher import TritonServer
from tests.conftest import BridgeProcess
from tests.triton_helpers import batch_counts, counted_since, free_udp_port, wait_udp_bound, wait_until


def aloha_obs(seed: int, **extra: object) -> dict:
    obs = EMBODIMENTS["aloha"].example(np.random.default_rng(seed), "fold the towel")
    noise = np.random.default_rng(900 + seed).standard_normal((50, 32)).astype(np.float32)
    return {**obs, "noise": noise, "mode": "action_only", **extra}


@pytest.fixture(scope="module")
def quic_server(bridge: BridgeProcess) -> Iterator[SidecarSupervisor]:
    port = free_udp_port()
    supervisor = SidecarSupervisor("action", port, bridge.action_socket).start()
    wait_udp_bound(port)
    supervisor.port = port  # type: ignore[attr-defined]
    yield supervisor
    supervisor.stop()


def connect(server: SidecarSupervisor) -> FlashTransportPolicy:
    return FlashTransportPolicy("127.0.0.1", port=server.port, local_port=0)  # type: ignore[attr-defined]


def test_binary_is_found() -> None:
    assert find_binary().name == "openpi-flash-transport"


def test_quic_gives_the_websocket_answer(quic_server: SidecarSupervisor, bridge: BridgeProcess) -> None:
    policy = connect(quic_server)
    try:
        ws = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        assert policy.get_server_metadata() == ws.get_server_metadata()
        via_quic = policy.infer(aloha_obs(1))
        via_ws = ws.infer(aloha_obs(1))
        np.testing.assert_array_equal(via_quic["actions"], via_ws["actions"])
        assert via_quic["actions"].shape == (50, 14)
        breakdown = {"decode_ms", "inputs_ms", "triton_ms", "queue_ms", "model_ms", "compute_ms", "return_ms"}
        assert {"infer_ms", *breakdown} <= set(via_quic["server_timing"])
        assert "prev_total_ms" not in via_quic["server_timing"]
        second = policy.infer(aloha_obs(1))
        assert {"infer_ms", "prev_total_ms", *breakdown} <= set(second["server_timing"])
        default = policy.infer(aloha_obs(2, mode="default"))
        assert set(default["subtask"]) == {"text", "ms"}
        policy.reset()
    finally:
        policy.close()


def test_server_errors_reach_the_robot(quic_server: SidecarSupervisor) -> None:
    policy = connect(quic_server)
    try:
        with pytest.raises(RuntimeError, match="state"):
            policy.infer(aloha_obs(3, state=np.zeros(13)))
        assert policy.infer(aloha_obs(3))["actions"].shape == (50, 14)  # the connection survives
    finally:
        policy.close()


def test_eight_quic_robots_are_served_concurrently(quic_server: SidecarSupervisor, triton_server: TritonServer) -> None:
    robots = [connect(quic_server) for _ in range(8)]
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    before = batch_counts(client, "action")
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda pair: [pair[1].infer(aloha_obs(pair[0]))["actions"] for _ in range(3)], enumerate(robots)
                )
            )
    finally:
        for robot in robots:
            robot.close()
    assert all(r[0].shape == (50, 14) for r in results)
    for index, actions in enumerate(results):
        assert np.abs(actions[0] - actions[2]).max() < 1e-4  # batched vs alone: float rounding only
        assert index == 0 or np.abs(actions[0] - results[0][0]).max() > 0
    inferences, executions = counted_since(client, "action", before, 24)
    assert inferences == 24 and executions < inferences, "QUIC robots were served one at a time"


def start_server(port: int, socket_path: pathlib.Path, token: str | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "OPENPI_QUIC_TOKEN"}
    if token is not None:
        env["OPENPI_QUIC_TOKEN"] = token
    return subprocess.Popen(
        [str(find_binary()), "server", "--listen-port", str(port), "--backend-socket-path", str(socket_path)], env=env
    )


def test_quic_token_is_opt_in_and_enforced(bridge: BridgeProcess) -> None:
    open_port, closed_port = free_udp_port(), free_udp_port()
    open_server = start_server(open_port, bridge.action_socket)
    closed_server = start_server(closed_port, bridge.action_socket, token="fleet-secret")
    wait_udp_bound(open_port)
    wait_udp_bound(closed_port)
    try:
        # Without a server token, a client token is ignored (openpi-flash's server ignores the body too).
        policy = FlashTransportPolicy("127.0.0.1", port=open_port, local_port=0, auth_token="anything")
        assert policy.infer(aloha_obs(8))["actions"].shape == (50, 14)
        policy.close()
        for wrong in (None, "fleet-secreT", ""):
            with pytest.raises(RuntimeError, match="unauthorized: this server requires a token"):
                FlashTransportPolicy("127.0.0.1", port=closed_port, local_port=0, auth_token=wrong)
        policy = FlashTransportPolicy("127.0.0.1", port=closed_port, local_port=0, auth_token="fleet-secret")
        assert policy.infer(aloha_obs(8))["actions"].shape == (50, 14)
        policy.close()
        assert closed_server.poll() is None and open_server.poll() is None
    finally:
        for server in (open_server, closed_server):
            server.kill()
            server.wait()


def test_client_preprocesses_images_like_openpi(quic_server: SidecarSupervisor, bridge: BridgeProcess) -> None:
    """A robot sends 240x320 HWC frames over QUIC; the client binary resizes them to the advertised
    [3, 224, 224] as openpi's resize_with_pad would, so the answer equals the WebSocket answer for the
    frames resized on the robot with openpi-client."""
    from openpi_client.image_tools import resize_with_pad

    rng = np.random.default_rng(12)
    frames = {cam: rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for cam in ("cam_high", "cam_left_wrist")}
    raw = aloha_obs(12)
    raw["images"] = dict(frames)
    resized = aloha_obs(12)
    resized["images"] = {cam: resize_with_pad(f, 224, 224).transpose(2, 0, 1) for cam, f in frames.items()}
    policy = connect(quic_server)
    try:
        via_quic = policy.infer(raw)["actions"]
    finally:
        policy.close()
    via_ws = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port).infer(resized)["actions"]
    assert np.abs(via_quic - via_ws).max() < 1e-4


def test_server_notices_a_closing_client_at_once_and_serves_ipv6(bridge: BridgeProcess, tmp_path: pathlib.Path) -> None:
    port = free_udp_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                str(find_binary()),
                "server",
                "--listen-port",
                str(port),
                "--backend-socket-path",
                str(bridge.action_socket),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_udp_bound(port)
        policy = FlashTransportPolicy("::1", port=port, local_port=0)  # IPv6 loopback
        assert policy.infer(aloha_obs(5))["actions"].shape == (50, 14)
        policy.close()
        # Reported well under the 10 s idle timeout: the close reached the server.
        wait_until(lambda: "disconnected" in log.read_text(), 7.0, "the server logs the disconnect")
    finally:
        server.kill()
        server.wait()


def test_supervisor_restarts_a_crashed_sidecar_and_a_connected_robot_recovers(bridge: BridgeProcess) -> None:
    port = free_udp_port()
    supervisor = SidecarSupervisor("action", port, bridge.action_socket).start()
    try:
        wait_udp_bound(port)
        robot = FlashTransportPolicy("127.0.0.1", port=port, local_port=0)
        try:
            assert robot.infer(aloha_obs(6))["actions"].shape == (50, 14)
            assert supervisor.process is not None
            supervisor.process.kill()
            wait_until(lambda: supervisor.restarts, 15, "the sidecar restarted")
            assert supervisor.restarts == 1
            wait_udp_bound(port)
            # The restarted server does not know the old connection: the robot's next request fails with a
            # clear error once the QUIC idle timeout (10 s) declares it dead, and the one after reconnects.
            started = time.monotonic()
            with pytest.raises(RuntimeError, match="connection to the openpi-triton server lost"):
                robot.infer(aloha_obs(6))
            assert time.monotonic() - started < 15
            assert robot.infer(aloha_obs(6))["actions"].shape == (50, 14)
            fresh = FlashTransportPolicy("127.0.0.1", port=port, local_port=0)
            assert fresh.infer(aloha_obs(6))["actions"].shape == (50, 14)
            fresh.close()
        finally:
            robot.close()
    finally:
        supervisor.stop()


def test_open_loop_horizon_serves_cached_steps(
    quic_server: SidecarSupervisor, bridge: BridgeProcess, triton_server: TritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENPI_OPEN_LOOP_HORIZON", "3")
    policy = connect(quic_server)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    before = batch_counts(client, "combined_ensemble")
    try:
        steps = [policy.infer(aloha_obs(7))["actions"] for _ in range(4)]
    finally:
        policy.close()
    calls, _ = counted_since(client, "combined_ensemble", before, 2)
    assert calls == 2, "3 steps from one chunk, then a new call"
    assert all(step.shape == (14,) for step in steps)
    full = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port).infer(aloha_obs(7))
    np.testing.assert_array_equal(steps[1], full["actions"][1])
    np.testing.assert_array_equal(steps[3], full["actions"][0])
