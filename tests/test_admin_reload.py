"""``POST /models/{name}/reload`` on the bridge's admin API against real tritonservers: explicit mode reloads
with robots driving traffic and none of their requests failing; poll mode gets a 409 that says why."""

from __future__ import annotations

import json
import pathlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports
from tests.conftest import start_bridge_process, stop_bridge_process
from tests.triton_helpers import copy_model, infer_inputs, set_parameter, wait_until

API_KEY = "reload-secret"


def _post(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=900) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _server(repo: pathlib.Path, home: pathlib.Path, log: pathlib.Path, mode: str, models: tuple[str, ...] = ()):
    http, grpc, metrics = free_ports(3)
    options = ServerOptions(
        repo, http, grpc, metrics, model_control_mode=mode, load_models=models, env={"OPENPI_TRITON_HOME": str(home)}
    )
    return TritonServer(options, log_stream=open(log, "w"))


@pytest.fixture(scope="module")
def explicit_triton(
    embedded_default: EmbeddedDefault, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TritonServer, pathlib.Path]]:
    repo = tmp_path_factory.mktemp("explicit-repository")
    copy_model(repo, "action", "action", {"batch_buckets": "1,2", "num_steps": "10"})
    server = _server(
        repo, embedded_default.root.parent, tmp_path_factory.mktemp("logs") / "triton.log", "explicit", ("action",)
    )
    server.start()
    try:
        server.wait_ready(["action"], timeout=600)
        yield server, repo
    finally:
        server.stop()


def _actions(triton: TritonServer, obs: dict, noise: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        return client.infer("action", infer_inputs(obs, {"noise": noise})).as_numpy("actions")[0]
    finally:
        client.close()


def test_reload_in_explicit_mode_keeps_every_request_alive(
    explicit_triton: tuple[TritonServer, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    triton, repo = explicit_triton
    bridge = start_bridge_process(triton.grpc_url, tmp_path, planner=None, api_key=API_KEY)
    reload_url = f"http://127.0.0.1:{bridge.admin_port}/models/action/reload"
    aloha = EMBODIMENTS["aloha"]
    obs = aloha.example(np.random.default_rng(1), "fold the towel")
    noise = np.random.default_rng(2).standard_normal((50, 32)).astype(np.float32)
    before = _actions(triton, obs, noise)

    stop = threading.Event()
    answered: list[float] = []
    failures: list[str] = []

    def robot() -> None:
        policy = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port, api_key=API_KEY)
        while not stop.is_set():
            try:
                result = policy.infer(aloha.example(np.random.default_rng(len(answered)), "fold the towel"))
                assert result["actions"].shape == (50, 14)
                answered.append(time.monotonic())
            except Exception as exc:  # every failure is reported, none may happen
                failures.append(repr(exc))
                return

    try:
        status, body = _post(reload_url)
        assert status == 401, body

        # The reload must read the edited config: fewer flow steps change the actions for the same noise.
        config = repo / "action" / "config.pbtxt"
        config.write_text(set_parameter(config.read_text(), "num_steps", "2"))
        robots = [threading.Thread(target=robot) for _ in range(2)]
        for thread in robots:
            thread.start()
        wait_until(lambda: len(answered) >= 2 or failures, 120, "both robots answered before the reload")
        started = time.monotonic()
        status, body = _post(reload_url, {"Authorization": f"Api-Key {API_KEY}"})
        finished = time.monotonic()
        on_new_copy = len(answered) + 4  # a few requests on the new copy too
        wait_until(lambda: len(answered) >= on_new_copy or failures, 120, "requests answered after the reload")
        stop.set()
        for thread in robots:
            thread.join(timeout=120)

        assert status == 200, body
        assert body["model"] == "action" and [s["url"] for s in body["servers"]] == [triton.grpc_url], body
        assert failures == [], failures
        during = [t for t in answered if started <= t <= finished]
        assert during, f"no request was answered while the model reloaded ({finished - started:.1f} s)"
        after = _actions(triton, obs, noise)
        assert not np.allclose(before, after), "the reload did not pick up the edited config.pbtxt"

        status, body = _post(
            f"http://127.0.0.1:{bridge.admin_port}/models/no_such_model/reload", {"Authorization": f"Api-Key {API_KEY}"}
        )
        assert status == 502 and "no_such_model" in body["detail"], body
    finally:
        stop.set()
        stop_bridge_process(bridge)


def test_reload_in_poll_mode_is_a_409_that_explains(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    # An empty repository is enough: Triton refuses the load API in poll mode before looking for the model.
    (tmp_path / "repo").mkdir()
    triton = _server(tmp_path / "repo", embedded_default.root.parent, tmp_path / "triton.log", "poll")
    triton.start()
    try:
        triton.wait_ready([], timeout=120)
        bridge = start_bridge_process(triton.grpc_url, tmp_path, planner=None)
        try:
            status, body = _post(f"http://127.0.0.1:{bridge.admin_port}/models/action/reload")
        finally:
            stop_bridge_process(bridge)
    finally:
        triton.stop()
    assert status == 409, body
    assert "not allowed" in body["detail"], body  # Triton's own message
    assert "poll mode it reloads a model by itself when its config.pbtxt changes" in body["detail"], body
