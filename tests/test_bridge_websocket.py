"""The bridge with the real openpi-client (PyPI) as the robot, against a real tritonserver."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed, InvalidStatus

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.triton.launcher import TritonServer
from tests.conftest import BridgeProcess, start_bridge_process, stop_bridge_process
from tests.triton_helpers import batch_counts, counted_since, counts_once_counted, wait_until


def aloha_obs(seed: int, prompt: str = "fold the towel", **extra: object) -> dict:
    return {**EMBODIMENTS["aloha"].example(np.random.default_rng(seed), prompt), **extra}


BREAKDOWN = {
    "decode_ms",
    "inputs_ms",
    "fleet_hold_ms",
    "triton_ms",
    "queue_ms",
    "model_ms",
    "compute_ms",
    "batch_size",
    "return_ms",
}


def noise(seed: int) -> np.ndarray:
    return np.random.default_rng(500 + seed).standard_normal((50, 32)).astype(np.float32)


@pytest.fixture
def robot(bridge: BridgeProcess) -> WebsocketClientPolicy:
    return WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)


def test_metadata_on_connect_comes_from_triton(robot: WebsocketClientPolicy) -> None:
    metadata = robot.get_server_metadata()
    assert metadata["action_horizon"] == 50
    assert metadata["reset_pose"] == [0, -1.5, 1.5, 0, 0, 0]
    assert {"path": ["images", "cam_high"], "target_shape": [3, 224, 224], "dtype": "uint8"} in metadata["image_specs"]


def test_actions_and_timings(robot: WebsocketClientPolicy) -> None:
    first = robot.infer(aloha_obs(1, noise=noise(1), mode="action_only"))
    assert first["actions"].shape == (50, 14) and first["actions"].dtype == np.float64
    assert first["policy_timing"]["infer_ms"] > 0
    # openpi's keys, then where the time went (the ensemble's BLS in front of the action model).
    assert set(first["server_timing"]) == {"infer_ms", *BREAKDOWN, "bls_ms"}
    second = robot.infer(aloha_obs(1, noise=noise(1), mode="action_only"))
    assert set(second["server_timing"]) == {"infer_ms", "prev_total_ms", "prev_encode_ms", *BREAKDOWN, "bls_ms"}
    timing = second["server_timing"]
    inside = timing["queue_ms"] + timing["bls_ms"] + timing["model_ms"] + timing["return_ms"]
    assert inside == pytest.approx(timing["triton_ms"], abs=1.0)  # the stages add up to the Triton call
    assert timing["compute_ms"] <= timing["model_ms"] and timing["batch_size"] == 1
    assert timing["inputs_ms"] + timing["triton_ms"] <= timing["infer_ms"] + 0.5  # decoding comes before infer_ms
    np.testing.assert_array_equal(first["actions"], second["actions"])
    assert "subtask" not in first


def test_default_mode_adds_the_subtask(robot: WebsocketClientPolicy) -> None:
    result = robot.infer(aloha_obs(2, "Fold the towel."))
    assert result["actions"].shape == (50, 14)
    assert set(result["subtask"]) == {"text", "ms"} and result["subtask"]["ms"] > 0


def test_subtask_only_mode_returns_only_the_subtask(robot: WebsocketClientPolicy) -> None:
    result = robot.infer(aloha_obs(3, mode="subtask_only"))
    assert set(result) == {"subtask", "server_timing"}


def test_planner_slot(bridge: BridgeProcess) -> None:
    planner = WebsocketClientPolicy(host="127.0.0.1", port=bridge.planner_port)
    assert planner.get_server_metadata()["image_specs"][0]["path"] == ["images", "cam_high"]
    result = planner.infer(aloha_obs(4))
    assert set(result) == {"subtask", "server_timing"}
    assert isinstance(result["subtask"]["text"], str) and result["subtask"]["ms"] > 0


def test_same_answer_as_triton_directly(robot: WebsocketClientPolicy, triton_server: TritonServer) -> None:
    from tests.triton_helpers import infer_inputs

    obs = aloha_obs(5)
    via_bridge = robot.infer({**obs, "noise": noise(5), "mode": "action_only"})["actions"]
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    direct = client.infer("action", infer_inputs(obs, {"noise": noise(5)})).as_numpy("actions")[0]
    np.testing.assert_array_equal(via_bridge, direct.astype(np.float64))


def test_bad_observation_is_raised_client_side_like_openpi(robot: WebsocketClientPolicy) -> None:
    with pytest.raises(RuntimeError, match="Error in inference server") as info:
        robot.infer(aloha_obs(6, state=np.zeros(13)))
    assert "state" in str(info.value)
    with pytest.raises(ConnectionClosed):
        robot.infer(aloha_obs(6))  # like openpi: the connection was closed after the error


def test_unknown_camera_is_named(robot: WebsocketClientPolicy) -> None:
    obs = aloha_obs(7)
    obs["images"]["cam_lft_wrist"] = obs["images"].pop("cam_left_wrist")
    with pytest.raises(RuntimeError, match="images/cam_lft_wrist"):
        robot.infer(obs)


def test_healthz(bridge: BridgeProcess) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{bridge.action_port}/healthz", timeout=10) as response:
        assert response.status == 200 and response.read() == b"OK\n"


def test_sixteen_concurrent_robots_get_their_own_answers(bridge: BridgeProcess, triton_server: TritonServer) -> None:
    seeds = list(range(100, 116))
    expected = {}
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    start = batch_counts(client, "action")
    solo = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
    for s in seeds:
        expected[s] = solo.infer(aloha_obs(s, noise=noise(s), mode="action_only"))["actions"]
    before = counts_once_counted(client, "action", start, len(seeds))  # the last one alone counted too

    def run(seed: int) -> list[np.ndarray]:
        own = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        return [own.infer(aloha_obs(seed, noise=noise(seed), mode="action_only"))["actions"] for _ in range(3)]

    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        results = dict(zip(seeds, pool.map(run, seeds), strict=True))
    for seed in seeds:
        for actions in results[seed]:
            assert np.abs(actions - expected[seed]).max() < 1e-4, seed
    inferences, executions = counted_since(client, "action", before, 48)
    assert inferences == 48 and executions < inferences


def _raw(bridge: BridgeProcess) -> websockets.sync.client.ClientConnection:
    ws = websockets.sync.client.connect(f"ws://127.0.0.1:{bridge.action_port}", compression=None, max_size=None)
    msgpack_numpy.unpackb(ws.recv())  # metadata
    return ws


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (b"\xc1\xc1\xc1", "msgpack"),
        (msgpack.packb([1, 2, 3]), "expected a msgpack map"),
        (
            msgpack.packb({"state": {b"__ndarray__": True, b"data": b"\0" * 16, b"dtype": "|V16", b"shape": [1]}}),
            "dtype",
        ),
        (
            msgpack.packb({"state": {b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f8", b"shape": [14]}}),
            "bytes",
        ),
        ("a text frame", "binary"),
    ],
)
def test_garbage_frames_get_an_error_and_1011(bridge: BridgeProcess, frame: bytes | str, needle: str) -> None:
    ws = _raw(bridge)
    ws.send(frame)
    error = ws.recv()
    assert isinstance(error, str) and needle in error
    with pytest.raises(ConnectionClosed) as info:
        ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011


def test_oversized_frame_is_refused_and_others_are_unaffected(bridge: BridgeProcess, tmp_path: pathlib.Path) -> None:
    small = start_bridge_process(bridge.triton_url, tmp_path, max_message_bytes=100_000, admin={"enabled": False})
    try:
        ws = websockets.sync.client.connect(f"ws://127.0.0.1:{small.action_port}", compression=None, max_size=None)
        ws.recv()
        ws.send(msgpack_numpy.packb(aloha_obs(8)))  # ~600 KB of images
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        other = WebsocketClientPolicy(host="127.0.0.1", port=small.action_port)
        assert other.get_server_metadata()["action_horizon"] == 50
    finally:
        stop_bridge_process(small)


def test_client_that_disconnects_mid_request_does_not_hurt_others(bridge: BridgeProcess) -> None:
    for seed in range(3):
        ws = _raw(bridge)
        ws.send(msgpack_numpy.packb(aloha_obs(seed)))
        ws.close()
    survivor = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
    assert survivor.infer(aloha_obs(9, mode="action_only"))["actions"].shape == (50, 14)
    assert bridge.process.poll() is None


def test_api_key_is_required_when_configured(bridge: BridgeProcess, tmp_path: pathlib.Path) -> None:
    secured = start_bridge_process(bridge.triton_url, tmp_path, api_key="s3cret", admin={"enabled": False})
    try:
        with pytest.raises(InvalidStatus) as info:
            WebsocketClientPolicy(host="127.0.0.1", port=secured.action_port)
        assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            WebsocketClientPolicy(host="127.0.0.1", port=secured.action_port, api_key="wrong")
        ok = WebsocketClientPolicy(host="127.0.0.1", port=secured.action_port, api_key="s3cret")
        assert ok.infer(aloha_obs(10, mode="action_only"))["actions"].shape == (50, 14)
    finally:
        stop_bridge_process(secured)


def test_admin_config_endpoint(bridge: BridgeProcess) -> None:
    base = f"http://127.0.0.1:{bridge.admin_port}"

    def call(method: str, path: str, body: object | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    assert call("GET", "/health") == (200, {"status": "ok"})
    assert call("GET", "/config") == (200, {"generation_prompt_format": "Task: {task}. Subtask: "})
    assert call("PATCH", "/config", {"generation_prompt_format": "no placeholder"})[0] == 422
    assert call("PATCH", "/config", {"generation_prompt_format": None})[0] == 422
    assert call("PATCH", "/config", {"other": 1})[0] == 422
    try:
        assert call("PATCH", "/config", {"generation_prompt_format": "Goal: {task}. Next: "}) == (
            200,
            {"generation_prompt_format": "Goal: {task}. Next: "},
        )
        assert call("GET", "/config")[1] == {"generation_prompt_format": "Goal: {task}. Next: "}
    finally:
        call("PATCH", "/config", {"generation_prompt_format": "Task: {task}. Subtask: "})
    with urllib.request.urlopen(base + "/openapi.json", timeout=10) as response:
        assert "/config" in json.loads(response.read())["paths"]


def test_images_travel_through_shared_memory_with_identical_results(
    bridge: BridgeProcess, triton_server: TritonServer, tmp_path: pathlib.Path
) -> None:
    robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
    with_shm = robot.infer(aloha_obs(11, noise=noise(11), mode="action_only"))["actions"]
    regions = grpcclient.InferenceServerClient(triton_server.grpc_url).get_system_shared_memory_status(as_json=True)
    assert any(name.startswith("openpi_bridge_") for name in regions.get("regions", {})), regions
    plain = start_bridge_process(
        bridge.triton_url, tmp_path, admin={"enabled": False}, triton={"url": bridge.triton_url, "shared_memory": "off"}
    )
    try:
        without = WebsocketClientPolicy(host="127.0.0.1", port=plain.action_port)
        np.testing.assert_array_equal(
            without.infer(aloha_obs(11, noise=noise(11), mode="action_only"))["actions"], with_shm
        )
    finally:
        stop_bridge_process(plain)


def test_bad_connections_leak_no_file_descriptors(bridge: BridgeProcess) -> None:
    fd_dir = pathlib.Path(f"/proc/{bridge.process.pid}/fd")
    settle = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)  # opens lazily created resources
    connected = len(list(fd_dir.iterdir()))
    settle._ws.close()
    wait_until(lambda: len(list(fd_dir.iterdir())) < connected, 10, "the bridge closes the settling connection")
    before = len(list(fd_dir.iterdir()))
    for index in range(40):
        ws = _raw(bridge)
        if index % 2:
            ws.send(b"\xc1")
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv()
        else:
            ws.close()
    wait_until(lambda: len(list(fd_dir.iterdir())) <= before + 2, 10, f"the bridge back to {before} + 2 fds")
