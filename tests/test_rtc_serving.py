"""RTC through every layer: the unchanged openpi-client over WebSocket, our FlashTransportPolicy over QUIC, and
direct gRPC to ``action`` and ``combined_ensemble``, against a real tritonserver serving the embedded default."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.flash_client import FlashTransportPolicy
from openpi_triton.sidecar import SidecarSupervisor
from openpi_triton.triton.launcher import TritonServer
from perf.rtc_sim import plan_deviations, run_control_loop
from tests.conftest import BridgeProcess, start_bridge_process, stop_bridge_process
from tests.triton_helpers import (
    batch_counts,
    counted_since,
    counts_once_counted,
    free_udp_port,
    infer_inputs,
    wait_udp_bound,
)

HORIZON, START, DELAY = 50, 25, 5


def observation(seed: int, **extra: Any) -> dict[str, Any]:
    obs = EMBODIMENTS["aloha"].example(np.random.default_rng(seed), "fold the towel")
    noise = np.random.default_rng(700 + seed).standard_normal((HORIZON, 32)).astype(np.float32)
    return {**obs, "noise": noise, **extra}


def frozen_distance(actions: np.ndarray, prev: np.ndarray) -> float:
    return float(np.abs(np.asarray(actions)[:DELAY] - prev[:DELAY]).max())


def check_rtc_round_trip(infer: Any, mode: str) -> None:
    """An earlier answer's tail sent back as ``rtc``: the frozen rows land on it, and the echo says so."""
    earlier = np.asarray(infer(observation(1, mode=mode))["actions"])
    prev = earlier[START:]
    plain = infer(observation(2, mode=mode))
    assert "rtc" not in plain  # robots that send no rtc see nothing new
    rtc = {"prev_actions": prev, "inference_delay": DELAY}
    guided = infer(observation(2, mode=mode, rtc=rtc))
    assert frozen_distance(guided["actions"], prev) < 0.1 * frozen_distance(plain["actions"], prev)
    report = guided["rtc"]
    assert report["applied"] is True and report["inference_delay"] == DELAY
    assert report["guided_horizon"] == HORIZON - START and report["mode"] == "vjp" and report["schedule"] == "exp"
    assert report["prefix_max_abs_err"] == pytest.approx(frozen_distance(guided["actions"], prev), rel=1e-4)
    if mode == "default":
        assert set(guided["subtask"]) == {"text", "ms"}


@pytest.mark.parametrize("mode", ["action_only", "default"])
def test_websocket_robot_with_rtc_gets_a_chunk_pinned_to_its_previous_one(bridge: BridgeProcess, mode: str) -> None:
    robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
    check_rtc_round_trip(robot.infer, mode)


def test_websocket_rtc_errors_name_the_field(bridge: BridgeProcess) -> None:
    prev = np.zeros((10, 14))
    cases = [
        ({"prev_actions": np.zeros((10, 7)), "inference_delay": 2}, r"'rtc/prev_actions': expected value of shape"),
        ({"prev_actions": prev, "inference_delay": 2.5}, r"'rtc/inference_delay': expected whole numbers"),
        ({"prev_actions": prev, "inference_delay": 11}, r"11 ticks but 'rtc/prev_actions' has only 10 rows"),
        ({"prev_actions": prev, "inference_delay": 2, "schedule": "cosine"}, r"'rtc/schedule': expected one of"),
        ({"prev_actions": prev, "inference_delay": 2, "delay": 1}, r"unknown input 'rtc/delay'"),
    ]
    for rtc, message in cases:  # the server closes a connection after an error, as openpi's does
        robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        with pytest.raises(RuntimeError, match=message):
            robot.infer(observation(3, mode="action_only", rtc=rtc))
    robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
    assert robot.infer(observation(3, mode="action_only"))["actions"].shape == (HORIZON, 14)


@pytest.fixture(scope="module")
def quic_port(bridge: BridgeProcess) -> Iterator[int]:
    port = free_udp_port()
    supervisor = SidecarSupervisor("action", port, bridge.action_socket).start()
    try:
        wait_udp_bound(port)
        yield port
    finally:
        supervisor.stop()


def test_quic_robot_with_rtc_gets_the_same_pinned_chunk(quic_port: int, bridge: BridgeProcess) -> None:
    robot = FlashTransportPolicy("127.0.0.1", port=quic_port, local_port=0)
    try:
        check_rtc_round_trip(robot.infer, "action_only")
        # Same answer as over WebSocket, echo included (nested scalars travel in LocalFrame's JSON).
        ws = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        rtc = {"prev_actions": np.linspace(-1, 1, 20 * 14).reshape(20, 14), "inference_delay": 3, "mode": "identity"}
        via_quic = robot.infer(observation(4, mode="action_only", rtc=rtc))
        via_ws = ws.infer(observation(4, mode="action_only", rtc=rtc))
        np.testing.assert_array_equal(via_quic["actions"], via_ws["actions"])
        assert via_quic["rtc"] == via_ws["rtc"] and via_quic["rtc"]["mode"] == "identity"
    finally:
        robot.close()


def rtc_tensors(prev: np.ndarray, delay: int, beta: float | None = None) -> list[grpcclient.InferInput]:
    """The rtc inputs as a gRPC client (or perf_analyzer) sends them: batch first, scalars as [1, 1]."""
    values: dict[str, tuple[np.ndarray, str]] = {
        "rtc.prev_actions": (prev.astype(np.float32)[None], "FP32"),
        "rtc.inference_delay": (np.array([[delay]], np.int32), "INT32"),
    }
    if beta is not None:
        values["rtc.max_guidance_weight"] = (np.array([[beta]], np.float32), "FP32")
    tensors = []
    for name, (array, dtype) in values.items():
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


@pytest.mark.parametrize(
    ("model", "mode"), [("action", None), ("combined_ensemble", "action_only"), ("combined_ensemble", "default")]
)
def test_grpc_clients_send_rtc_as_optional_inputs(triton_server: TritonServer, model: str, mode: str | None) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    obs = observation(5)
    noise = obs.pop("noise")
    extra: dict[str, Any] = {"noise": noise} if mode is None else {"noise": noise, "mode": mode}
    base = infer_inputs(obs, extra)
    earlier = client.infer(model, infer_inputs(observation(6), {"noise": noise})).as_numpy("actions")[0]
    prev = earlier[START:]
    plain = client.infer(model, base)
    assert plain.as_numpy("rtc_echo") is None
    guided = client.infer(model, base + rtc_tensors(prev, DELAY, beta=5.0))
    actions = guided.as_numpy("actions")[0]
    assert frozen_distance(actions, prev) < 0.1 * frozen_distance(plain.as_numpy("actions")[0], prev)
    report = json.loads(guided.as_numpy("rtc_echo").reshape(-1)[0])
    assert report["applied"] is True and report["max_guidance_weight"] == 5.0
    if mode == "default":
        assert guided.as_numpy("subtask") is not None


def test_the_async_executor_wraps_the_quic_client_too(quic_port: int) -> None:
    fixed = observation(8, mode="action_only")

    def at_tick(state: np.ndarray, tick: int) -> dict[str, Any]:
        return {**fixed, "state": state}

    robot = FlashTransportPolicy("127.0.0.1", port=quic_port, local_port=0)
    try:
        result = run_control_loop(robot, at_tick, np.zeros(14), ticks=60, delay_ticks=4, execution_horizon=25, rtc=True)
    finally:
        robot.close()
    assert [s.tick for s in result.switches] == [29, 54]
    assert all(s.rtc is not None and s.rtc["applied"] for s in result.switches)
    assert plan_deviations(result).max() < 1.0


def test_an_empty_remainder_over_websocket_is_plain_sampling_reported_as_not_applied(bridge: BridgeProcess) -> None:
    robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
    plain = robot.infer(observation(9, mode="action_only"))
    empty = robot.infer(
        observation(9, mode="action_only", rtc={"prev_actions": np.zeros((0, 14)), "inference_delay": 0})
    )
    np.testing.assert_array_equal(empty["actions"], plain["actions"])
    assert empty["rtc"]["applied"] is False and empty["rtc"]["prefix_max_abs_err"] == 0.0


def test_concurrent_robots_with_and_without_rtc_each_get_their_own_answer(triton_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    prev = np.random.default_rng(3).uniform(-1, 1, size=(HORIZON - START, 14))

    def request(seed: int) -> list[grpcclient.InferInput]:
        obs = observation(seed)
        noise = obs.pop("noise")
        inputs = infer_inputs(obs, {"noise": noise})
        return inputs + rtc_tensors(prev, DELAY) if seed % 2 == 0 else inputs

    seeds = list(range(30, 38))
    start = batch_counts(client, "action")
    alone = {s: client.infer("action", request(s)).as_numpy("actions") for s in seeds}
    before = counts_once_counted(client, "action", start, len(seeds))  # the last one alone counted too

    def robot(seed: int) -> list[np.ndarray]:
        own = grpcclient.InferenceServerClient(triton_server.grpc_url)
        try:
            return [own.infer("action", request(seed)).as_numpy("actions") for _ in range(3)]
        finally:
            own.close()

    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        results = dict(zip(seeds, pool.map(robot, seeds), strict=True))
    for seed in seeds:
        for actions in results[seed]:
            assert np.abs(actions - alone[seed]).max() < 1e-4, seed
    inferences, executions = counted_since(client, "action", before, 3 * len(seeds))
    assert executions < inferences, "no batching happened"


def _concurrently(url: str, model: str, requests: list[list[grpcclient.InferInput]]) -> list[Any]:
    def send(inputs: list[grpcclient.InferInput]) -> Any:
        own = grpcclient.InferenceServerClient(url)
        try:
            return own.infer(model, inputs)
        finally:
            own.close()

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


@pytest.mark.parametrize("model", ["action_batch_of_3", "combined_batch_of_3"])
def test_robots_with_different_remainders_and_one_without_rtc_share_one_triton_batch(
    triton_server: TritonServer, model: str
) -> None:
    """``action_batch_of_3`` holds requests until three are queued: Triton executes them as one batch only if its
    batcher may group them (equal shapes but for ragged inputs, the same set of optional inputs)."""
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    ragged = {i.name: i.allow_ragged_batch for i in client.get_model_config(model).config.input}
    assert ragged["rtc.prev_actions"] is True and not ragged["rtc.inference_delay"]
    earlier = np.random.default_rng(11).uniform(-1, 1, size=(HORIZON, 14))
    # K = 25 and K = 10 rows left, and a robot without rtc: through combined_ensemble it sends nothing, a direct
    # gRPC client of the action model sends an empty remainder (the documented way to share batches).
    remainders: dict[int, tuple[np.ndarray, int] | None] = {40: (earlier[25:], 5), 41: (earlier[40:], 3), 42: None}
    through_ensemble = model.startswith("combined")

    def request(seed: int, ensemble: bool) -> list[grpcclient.InferInput]:
        obs = observation(seed)
        inputs = infer_inputs(obs, {"noise": obs.pop("noise"), **({"mode": "action_only"} if ensemble else {})})
        remainder = remainders[seed]
        if remainder is not None:
            return inputs + rtc_tensors(*remainder)
        return inputs if ensemble else inputs + rtc_tensors(np.zeros((0, 14)), 0)

    alone = {seed: client.infer("action", request(seed, False)) for seed in remainders}  # same weights, one by one
    before = batch_counts(client, "action_batch_of_3")
    answers = _concurrently(triton_server.grpc_url, model, [request(s, through_ensemble) for s in remainders])
    together = dict(zip(remainders, answers, strict=True))
    counted = counted_since(client, "action_batch_of_3", before, 3)
    assert counted == (3, 1), "the three requests were not one batch"
    for seed, remainder in remainders.items():
        actions = together[seed].as_numpy("actions")[0]
        assert np.abs(actions - alone[seed].as_numpy("actions")[0]).max() < 1e-4, seed
        echo = together[seed].as_numpy("rtc_echo")
        if remainder is None and through_ensemble:
            assert echo is None  # a robot that sent no rtc sees no rtc output
        else:
            report = json.loads(echo.reshape(-1)[0])
            assert report["applied"] is (remainder is not None)
            if remainder is not None:
                assert report["guided_horizon"] == len(remainder[0]) and report["inference_delay"] == remainder[1]


def test_a_remainder_out_of_range_is_the_robots_error_and_a_witness_in_the_same_batch_is_served(
    triton_server: TritonServer, tmp_path: pathlib.Path
) -> None:
    """Finite but huge values (1e20) would make guidance diverge: the robot that sent them gets an error naming
    the field and its range; a witness robot in the same Triton batch gets its usual answer."""
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    witnesses = {seed: observation(seed, mode="action_only") for seed in (12, 13)}
    expected = {}
    for seed, obs in witnesses.items():
        plain = {k: v for k, v in obs.items() if k not in ("noise", "mode")}
        expected[seed] = client.infer("action", infer_inputs(plain, {"noise": obs["noise"]})).as_numpy("actions")[0]
    prev = np.zeros((HORIZON - START, 14))
    prev[0, 0] = 1e20
    bad = observation(14, mode="action_only", rtc={"prev_actions": prev, "inference_delay": DELAY})
    # The bridge's action slot on combined_batch_of_3: the three requests are one batch of the action model.
    bridge = start_bridge_process(triton_server.grpc_url, tmp_path, action={"model": "combined_batch_of_3"})
    try:

        def send(obs: dict[str, Any]) -> dict[str, Any] | Exception:
            try:
                return WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port).infer(obs)
            except RuntimeError as exc:
                return exc

        before = batch_counts(client, "action_batch_of_3")
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(send, [bad, *witnesses.values()]))
        counted = counted_since(client, "action_batch_of_3", before, 3)
    finally:
        stop_bridge_process(bridge)
    assert counted == (3, 1), "the three requests were not one batch"
    refusal = answers[0]
    assert isinstance(refusal, RuntimeError)
    assert re.search(r"'rtc/prev_actions': row 0, dim 0 is 1e\+20, expected a value in \[-?[0-9.e+-]+, ", str(refusal))
    assert "non-finite" not in str(refusal)
    for seed, answer in zip(witnesses, answers[1:], strict=True):
        assert isinstance(answer, dict), answer
        assert np.abs(answer["actions"] - expected[seed]).max() < 1e-4 and "rtc" not in answer
