"""One robot's hostile or huge request costs only its own connection: each attack runs beside a witness robot
(the real openpi-client, fixed noise) whose every answer must equal its reference.

Latency is not asserted here (timed tests are noisy on a shared machine); ``make attack`` measures it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

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
from tests.triton_helpers import infer_inputs


def aloha_obs(seed: int, **extra: object) -> dict:
    return {**EMBODIMENTS["aloha"].example(np.random.default_rng(seed), "fold the towel"), **extra}


class Witness:
    """A well-behaved robot calling in a loop on its own thread; every answer is checked against the first."""

    def __init__(self, port: int) -> None:
        noise = np.random.default_rng(7).standard_normal((50, 32)).astype(np.float32)
        self.obs = aloha_obs(7, noise=noise, mode="action_only")
        self.policy = WebsocketClientPolicy(host="127.0.0.1", port=port)
        self.reference = self.policy.infer(self.obs)["actions"]
        self.calls = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._calls_changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                actions = self.policy.infer(self.obs)["actions"]
                if not np.allclose(actions, self.reference, atol=1e-4):
                    self.errors.append("wrong answer")
            except Exception as exc:  # recorded; the test fails on any
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            with self._calls_changed:
                self.calls += 1
                self._calls_changed.notify_all()

    def wait_for_calls(self, count: int, timeout: float = 120.0) -> None:
        with self._calls_changed:
            assert self._calls_changed.wait_for(lambda: self.calls >= count or self.errors, timeout), "witness stalled"

    @contextlib.contextmanager
    def beside(self) -> Iterator[None]:
        """Runs the witness around the block; after it, the witness must have been served, without errors."""
        self._thread.start()
        self.wait_for_calls(1)
        yield
        done = self.calls
        self.wait_for_calls(done + 2)  # still served after the attack
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self.errors, self.errors


@pytest.fixture
def witness(bridge: BridgeProcess) -> Witness:
    return Witness(bridge.action_port)


def _raw_connection(port: int, source: str = "127.0.0.1") -> websockets.sync.client.ClientConnection:
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    connection = websockets.sync.client.connect(
        f"ws://127.0.0.1:{port}", sock=sock, compression=None, max_size=None, open_timeout=60
    )
    connection.recv(timeout=60)  # the metadata frame
    return connection


def _refusal(port: int, frame: bytes) -> str:
    """Sends one frame on a fresh connection; returns the error text the bridge answers before closing."""
    with _raw_connection(port) as connection:
        connection.send(frame)
        reply = connection.recv(timeout=120)
        assert isinstance(reply, str), "expected an error text frame"
        with pytest.raises(ConnectionClosed):
            connection.recv(timeout=60)
        assert connection.close_code == 1011
        return reply


def test_amplifying_frames_are_refused_while_the_witness_is_served(bridge: BridgeProcess, witness: Witness) -> None:
    empty_arrays = b"\xdd" + (8 * 2**20).to_bytes(4, "big") + b"\x90" * (8 * 2**20)
    with witness.beside():
        assert "max_frame_values" in _refusal(bridge.action_port, empty_arrays)
        assert "max_frame_depth" in _refusal(bridge.action_port, b"\x91" * 200 + b"\xc0")
        assert "DecodeError" in _refusal(bridge.action_port, msgpack.packb({"images": {"x": b"\xc1"}})[:-3])


def test_huge_inputs_are_refused_naming_the_limit(bridge: BridgeProcess, witness: Witness) -> None:
    huge_image = aloha_obs(1)
    huge_image["images"]["cam_high"] = np.zeros((3, 2000, 2000), np.uint8)
    with witness.beside():
        message = _refusal(bridge.action_port, msgpack_numpy.packb(huge_image))
        assert "image 'images/cam_high': 4000000 pixels" in message and "max_image_pixels" in message
        message = _refusal(bridge.action_port, msgpack_numpy.packb(aloha_obs(1, prompt="x" * 1_000_000)))
        assert "'prompt': 1000000 bytes" in message and "max_prompt_bytes" in message


def test_robot_mistakes_read_in_the_robots_terms(bridge: BridgeProcess) -> None:
    short_state = aloha_obs(1, mode="action_only")
    short_state["state"] = np.zeros(7)
    message = _refusal(bridge.action_port, msgpack_numpy.packb(short_state))
    assert "'state': expected value of shape [14], got [7]" in message
    assert "-1" not in message and "batch" not in message.lower()
    overflow = aloha_obs(1, mode="action_only")
    overflow["state"] = np.full(14, 1e308)
    assert "'state': values must be finite in float32, got 1e+308" in _refusal(
        bridge.action_port, msgpack_numpy.packb(overflow)
    )
    chw = aloha_obs(1, mode="action_only")
    chw["images"]["cam_high"] = np.zeros((224, 224, 3), np.uint8)
    assert "'images/cam_high': expected image of shape [3, H, W], got [224, 224, 3]" in _refusal(
        bridge.action_port, msgpack_numpy.packb(chw)
    )
    missing = aloha_obs(1, mode="action_only")
    del missing["state"]
    assert "observation is missing ['state']" in _refusal(bridge.action_port, msgpack_numpy.packb(missing))


def test_direct_grpc_clients_get_the_same_limits(triton_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    obs = aloha_obs(2)
    obs["images"]["cam_high"] = np.zeros((3, 2000, 2000), np.uint8)
    with pytest.raises(grpcclient.InferenceServerException) as error:
        client.infer("action", infer_inputs(obs))
    assert "StatusCode.INVALID_ARGUMENT" in str(error.value.status()) and "max_image_pixels" in error.value.message()
    for bad in ("{task} {0}", "{task.__init__.__globals__}", "{task:>10000000}", "{task!r}"):
        planner_obs = {"prompt": "fold", "generation_prompt_format": bad}
        with pytest.raises(grpcclient.InferenceServerException) as error:
            client.infer("planner", infer_inputs(planner_obs))
        assert "only the bare field '{task}' is allowed" in error.value.message(), bad


def test_per_address_limit_keeps_new_robots_in_and_idle_timeout_closes(
    triton_server: TritonServer, tmp_path: pathlib.Path
) -> None:
    limits = {"max_connections_per_address": 3, "idle_timeout_s": 5.0}  # the fourth is refused well before
    bridge = start_bridge_process(
        triton_server.grpc_url, tmp_path, planner=None, admin={"enabled": False}, limits=limits
    )
    try:
        held = [_raw_connection(bridge.action_port, "127.0.0.2") for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            _raw_connection(bridge.action_port, "127.0.0.2")
        assert refused.value.response.status_code == 503
        assert b"max_connections_per_address=3" in refused.value.response.body
        robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)  # another address: served
        assert robot.infer(aloha_obs(3))["actions"].shape == (50, 14)
        for connection in held:  # idle past idle_timeout_s: closed by the bridge with the reason
            with pytest.raises(ConnectionClosed):
                connection.recv(timeout=60)
            assert connection.close_code == 1000 and "idle_timeout_s" in (connection.close_reason or "")
    finally:
        stop_bridge_process(bridge)


def _admin(port: int, method: str, path: str, body: bytes | None = None, key: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Api-Key {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_admin_needs_the_key_everywhere_and_accepts_only_safe_formats(
    triton_server: TritonServer, tmp_path: pathlib.Path
) -> None:
    bridge = start_bridge_process(triton_server.grpc_url, tmp_path, api_key="k3y")
    port = bridge.admin_port
    try:
        for method, path in (("GET", "/config"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/health")):
            assert _admin(port, method, path)[0] == 401, path
            assert _admin(port, method, path, key="k3y")[0] == 200, path
        patch = json.dumps({"generation_prompt_format": "{task} {0}"}).encode()
        assert _admin(port, "PATCH", "/config", patch)[0] == 401
        for bad in ("{task} {0}", "{task.__init__.__globals__}", "{task:>10000000}", "x" * 2000 + "{task}"):
            status, text = _admin(
                port, "PATCH", "/config", json.dumps({"generation_prompt_format": bad}).encode(), "k3y"
            )
            assert status == 422, (bad[:40], status, text)
        big = json.dumps({"generation_prompt_format": "{task}" + "x" * 100_000}).encode()
        assert _admin(port, "PATCH", "/config", big, "k3y")[0] == 413
        good = json.dumps({"generation_prompt_format": "Do {task} now. {{literal}} "}).encode()
        assert _admin(port, "PATCH", "/config", good, "k3y") == (
            200,
            json.dumps({"generation_prompt_format": "Do {task} now. {{literal}} "}, separators=(",", ":")),
        )
    finally:
        stop_bridge_process(bridge)


def test_shared_memory_pool_gives_back_what_a_burst_took(triton_server: TritonServer) -> None:
    import asyncio

    from openpi_bridge import shared_memory
    from openpi_bridge.triton_gateway import TritonCallError, TritonGateway
    from openpi_triton.limits import InputLimits

    async def burst() -> None:
        # Limits raised so that one request may carry more image bytes than a shared-memory region takes.
        gateway = TritonGateway(triton_server.grpc_url, 300.0, "on", InputLimits(max_image_pixels=4000 * 4000))
        endpoint = gateway.endpoints[0]
        try:
            calls = [gateway.infer("action", aloha_obs(seed)) for seed in range(12)]
            results = await asyncio.gather(*calls)
            assert all(r["actions"].shape == (1, 50, 14) for r in results)
            assert len(endpoint.pool.free) <= shared_memory.MAX_FREE_REGIONS
            assert len(endpoint.pool.regions) == len(endpoint.pool.free)  # nothing in use, extra regions dropped
            registered = await endpoint.client.get_system_shared_memory_status(as_json=True)
            mine = f"openpi_bridge_{os.getpid()}_"  # other bridges of this test session share the server
            ours = [r for r in registered.get("regions", {}) if r.startswith(mine)]
            assert len(ours) == len(endpoint.pool.regions)
            big = aloha_obs(99)
            big["images"]["cam_high"] = np.zeros((3, 3000, 3000), np.uint8)  # 27 MB and 12 MB: together over
            big["images"]["cam_low"] = np.zeros((3, 2000, 2000), np.uint8)  # MAX_REGION_BYTES (32 MiB)
            before = list(endpoint.pool.regions)
            with pytest.raises(TritonCallError, match="max_image_pixels"):  # the model's own limit: it arrived
                await gateway.infer("action", big)  # in the gRPC payload, not in a new region
            assert endpoint.pool.regions == before
        finally:
            await gateway.close()

    asyncio.run(burst())
