"""The three Triton models on a real tritonserver over real gRPC (tritonclient), on the embedded default."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.golden.tree import load_tree
from openpi_triton.triton.launcher import TritonServer
from tests.clients import metric_sum, scrape
from tests.triton_helpers import batch_counts, counted_since, counts_once_counted, infer_inputs

ALOHA = EMBODIMENTS["aloha"]


def aloha_obs(seed: int, prompt: str = "fold the towel") -> dict:
    return ALOHA.example(np.random.default_rng(seed), prompt)


def noise(seed: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).standard_normal((50, 32)).astype(np.float32)


@pytest.fixture
def client(triton_server: TritonServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(triton_server.grpc_url)


def output_names(result: grpcclient.InferResult) -> list[str]:
    return [o["name"] for o in result.get_response(as_json=True)["outputs"]]


def test_action_model_answers_with_an_action_chunk(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer("action", infer_inputs(aloha_obs(0), {"noise": noise(0)}))
    assert result.as_numpy("actions").shape == (1, 50, 14)
    assert result.as_numpy("policy_infer_ms")[0, 0] > 0


def test_action_io_follows_the_openpi_config(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("action", as_json=True)["config"]
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["images.cam_high"]["data_type"] == "TYPE_UINT8" and inputs["images.cam_high"]["dims"] == [
        "3",
        "-1",
        "-1",
    ]
    assert not inputs["images.cam_high"].get("optional") and inputs["images.cam_low"]["optional"]
    assert inputs["state"]["data_type"] == "TYPE_FP64" and inputs["state"]["dims"] == ["14"]
    assert inputs["prompt"]["optional"] and inputs["noise"]["dims"] == ["50", "32"]
    assert {o["name"]: o["dims"] for o in config["output"]}["actions"] == ["50", "14"]


def test_noise_makes_calls_reproducible(client: grpcclient.InferenceServerClient) -> None:
    first = client.infer("action", infer_inputs(aloha_obs(1), {"noise": noise(1)})).as_numpy("actions")
    second = client.infer("action", infer_inputs(aloha_obs(1), {"noise": noise(1)})).as_numpy("actions")
    other = client.infer("action", infer_inputs(aloha_obs(1), {"noise": noise(2)})).as_numpy("actions")
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - other).max() > 1e-3


def test_golden_case_through_triton_matches_openpi(
    client: grpcclient.InferenceServerClient, golden_dir: pathlib.Path
) -> None:
    for obs_dir in ("obs_0", "obs_2", "obs_3"):
        folder = golden_dir / "pi05_aloha" / obs_dir
        obs = load_tree(folder, "input")
        result = client.infer("golden_action", infer_inputs(obs, {"noise": np.load(folder / "noise.npy")}))
        expected = load_tree(folder, "output")["actions"]
        assert np.abs(result.as_numpy("actions")[0] - expected).max() < 1e-4, obs_dir


def test_planner_answers_with_text_and_spliced_prompt(client: grpcclient.InferenceServerClient) -> None:
    obs = aloha_obs(3, "Fold the towel.")
    del obs["state"]
    result = client.infer("planner", infer_inputs(obs))
    text = result.as_numpy("subtask")[0, 0].decode()
    assert result.as_numpy("subtask_ms")[0, 0] > 0
    assert result.as_numpy("action_prompt")[0, 0].decode() == (
        f"Fold the towel.. Subtask: {text}" if text else "Fold the towel."
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("default", ["actions", "policy_infer_ms", "model_timing", "subtask", "subtask_ms"]),
        ("", ["actions", "policy_infer_ms", "model_timing", "subtask", "subtask_ms"]),
        ("subtask_only", ["subtask", "subtask_ms"]),
        ("action_only", ["actions", "policy_infer_ms", "model_timing"]),
    ],
)
def test_combined_modes_return_the_documented_outputs(
    client: grpcclient.InferenceServerClient, mode: str, expected: list[str]
) -> None:
    result = client.infer("combined_ensemble", infer_inputs(aloha_obs(4), {"mode": mode, "noise": noise(4)}))
    assert sorted(output_names(result)) == sorted(expected)


def test_combined_action_only_equals_the_action_model(client: grpcclient.InferenceServerClient) -> None:
    direct = client.infer("action", infer_inputs(aloha_obs(5), {"noise": noise(5)})).as_numpy("actions")
    via_bls = client.infer(
        "combined_ensemble", infer_inputs(aloha_obs(5), {"mode": "action_only", "noise": noise(5)})
    ).as_numpy("actions")
    np.testing.assert_array_equal(direct, via_bls)


def test_combined_default_runs_the_action_on_the_spliced_prompt(client: grpcclient.InferenceServerClient) -> None:
    obs = aloha_obs(6, "Fold the towel.")
    combined = client.infer("combined_ensemble", infer_inputs(obs, {"noise": noise(6)}))
    text = combined.as_numpy("subtask")[0, 0].decode()
    spliced = dict(obs, prompt=f"Fold the towel.. Subtask: {text}" if text else "Fold the towel.")
    direct = client.infer("action", infer_inputs(spliced, {"noise": noise(6)}))
    np.testing.assert_array_equal(combined.as_numpy("actions"), direct.as_numpy("actions"))


def test_planner_failure_still_returns_actions_with_an_empty_subtask(
    triton_server: TritonServer, client: grpcclient.InferenceServerClient
) -> None:
    # combined_impatient gives its planner 1 ms: the call fails by deadline, the action still runs.
    result = client.infer("combined_impatient", infer_inputs(aloha_obs(7), {"noise": noise(7)}))
    assert result.as_numpy("subtask")[0, 0] == b""
    assert result.as_numpy("subtask_ms")[0, 0] == 0.0
    direct = client.infer("action", infer_inputs(aloha_obs(7), {"noise": noise(7)}))
    np.testing.assert_array_equal(result.as_numpy("actions"), direct.as_numpy("actions"))
    url = f"http://127.0.0.1:{triton_server.options.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'openpi_planner_failures_total{model="combined_impatient"} 1' in text


def test_a_bad_prompt_format_is_the_clients_mistake(client: grpcclient.InferenceServerClient) -> None:
    for mode in ("default", "subtask_only"):
        inputs = infer_inputs(aloha_obs(7), {"generation_prompt_format": "no placeholder", "mode": mode})
        _expect_invalid(client, "combined_ensemble", inputs, "generation_prompt_format", "{task}")


@pytest.mark.parametrize("model", ["action", "combined_ensemble"])
def test_eight_concurrent_robots_are_batched_and_get_sequential_results(
    triton_server: TritonServer, client: grpcclient.InferenceServerClient, model: str
) -> None:
    extra = {"mode": "action_only"} if model == "combined_ensemble" else {}
    seeds = list(range(20, 28))
    start = batch_counts(client, "action")
    sequential = {
        s: client.infer(model, infer_inputs(aloha_obs(s), {**extra, "noise": noise(s)})).as_numpy("actions")
        for s in seeds
    }
    before = counts_once_counted(client, "action", start, len(seeds))  # the last one alone counted too

    def robot(seed: int) -> list[np.ndarray]:
        own = grpcclient.InferenceServerClient(triton_server.grpc_url)
        try:
            return [
                own.infer(model, infer_inputs(aloha_obs(seed), {**extra, "noise": noise(seed)})).as_numpy("actions")
                for _ in range(3)
            ]
        finally:
            own.close()

    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        results = dict(zip(seeds, pool.map(robot, seeds), strict=True))
    for seed in seeds:
        for actions in results[seed]:
            assert np.abs(actions - sequential[seed]).max() < 1e-4
    inferences, executions = counted_since(client, "action", before, 3 * len(seeds))
    assert inferences == 3 * len(seeds), "a request was executed twice"
    assert executions < inferences, f"no batching happened: {executions} executions for {inferences} requests"


def _expect_invalid(client: grpcclient.InferenceServerClient, model: str, inputs: list, *needles: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs)
    assert "INVALID_ARG" in str(info.value.status()), info.value
    for needle in needles:
        assert needle in info.value.message(), info.value.message()


def test_bad_requests_get_invalid_arg_naming_the_tensor(client: grpcclient.InferenceServerClient) -> None:
    obs = aloha_obs(30)
    _expect_invalid(client, "action", infer_inputs({k: v for k, v in obs.items() if k != "state"}), "state")
    _expect_invalid(client, "action", infer_inputs(obs, {"bogus": np.zeros(3, np.float32)}), "bogus")
    _expect_invalid(client, "action", infer_inputs(dict(obs, state=obs["state"].astype(np.float32))), "state", "FP64")
    _expect_invalid(client, "action", infer_inputs(dict(obs, state=np.zeros(13))), "state", "14")
    _expect_invalid(client, "action", infer_inputs(dict(obs, prompt=b"\xff\xfe")), "prompt", "UTF-8")
    _expect_invalid(client, "action", infer_inputs(dict(obs, state=np.full(14, np.nan))), "state", "finite")
    _expect_invalid(client, "combined_ensemble", infer_inputs(obs, {"mode": "bogus"}), "mode", "bogus")
    # A robot mistake found by the action model stays INVALID_ARG through the BLS, in every mode that acts.
    for mode in ("action_only", "default"):
        nan_state = infer_inputs(dict(obs, state=np.full(14, np.nan)), {"mode": mode})
        _expect_invalid(client, "combined_ensemble", nan_state, "state", "finite")
    images = dict(obs["images"], cam_high=np.zeros((224, 224, 3), np.uint8))
    _expect_invalid(client, "action", infer_inputs(dict(obs, images=images)), "images.cam_high")


def test_one_bad_request_does_not_hurt_its_batch(triton_server: TritonServer) -> None:
    """Requests that Triton batches together: the bad one fails alone, the others succeed."""

    def call(seed: int) -> str:
        own = grpcclient.InferenceServerClient(triton_server.grpc_url)
        obs = aloha_obs(seed)
        if seed % 4 == 0:
            obs["state"] = np.full(14, np.inf)
        try:
            own.infer("action", infer_inputs(obs, {"noise": noise(seed)}))
            return "ok"
        except InferenceServerException as exc:
            return "invalid" if "INVALID_ARG" in str(exc.status()) else f"other: {exc}"
        finally:
            own.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(40, 56)))
    assert outcomes == ["invalid" if s % 4 == 0 else "ok" for s in range(40, 56)]
    assert grpcclient.InferenceServerClient(triton_server.grpc_url).is_server_ready()


def test_custom_metrics_are_exported(triton_server: TritonServer, client: grpcclient.InferenceServerClient) -> None:
    client.infer("action", infer_inputs(aloha_obs(60), {"noise": noise(60)}))
    client.infer("planner", infer_inputs({"images": aloha_obs(60)["images"], "prompt": "fold"}))
    with pytest.raises(InferenceServerException):
        client.infer("action", infer_inputs(dict(aloha_obs(61), state=np.full(14, np.nan))))
    url = f"http://127.0.0.1:{triton_server.options.metrics_port}/metrics"
    text = scrape(url)
    served = {"config": "pi05_aloha", "checkpoint": "embedded-default"}
    assert metric_sum(text, "openpi_batch_size_count", model="action", **served) >= 1
    assert metric_sum(text, "openpi_action_ms_count", model="action", **served) >= 1
    assert metric_sum(text, "openpi_planner_ms_count", model="planner", **served) >= 1
    # Triton counts an error response as a success; our own counter sees it.
    assert metric_sum(text, "openpi_request_failures_total", model="action", code="INVALID_ARG") >= 1


def test_repository_index_lists_ready_models(client: grpcclient.InferenceServerClient) -> None:
    index = {m["name"]: m.get("state") for m in client.get_model_repository_index(as_json=True)["models"]}
    assert {index[m] for m in ("action", "planner", "combined_ensemble")} == {"READY"}
    assert json.dumps(index)


def test_robot_metadata_comes_from_the_served_model(client: grpcclient.InferenceServerClient) -> None:
    from openpi_triton.contract.robot_metadata import robot_metadata

    metadata = robot_metadata(client.get_model_config("action", as_json=True)["config"])
    assert metadata["action_horizon"] == 50
    assert metadata["reset_pose"] == [0, -1.5, 1.5, 0, 0, 0]
    assert metadata["image_specs"] == [
        {"path": ["images", cam], "target_shape": [3, 224, 224], "dtype": "uint8"}
        for cam in ("cam_high", "cam_left_wrist", "cam_right_wrist", "cam_low")
    ]
    # The ensemble inherits the action model's config: same cameras and horizon (the bridge takes the
    # robot metadata from the action model, which names the config).
    ensemble = robot_metadata(client.get_model_config("combined_ensemble", as_json=True)["config"])
    assert ensemble["image_specs"] == metadata["image_specs"]
    assert ensemble["action_horizon"] == metadata["action_horizon"]
