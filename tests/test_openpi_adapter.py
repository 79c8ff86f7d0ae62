"""The openpi runtime's batching over a stand-in for openpi's pieces (openpi is not on PyPI, so CI has none).

The stand-in has the shape of what :mod:`openpi_triton.openpi_runtime.loader` builds from openpi: input
transforms per observation (here: state padded to the model width, a prompt "tokenized" to one entry per
word, as an unpadded tokenizer would), one model call on the stacked batch that records what it was given,
output transforms per row. Parity with openpi itself is tests/test_openpi_runtime.py, where openpi is
installed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from openpi_triton.domain.configs import get_policy_config
from openpi_triton.openpi_runtime.policy import OpenpiOptions, OpenpiParts, OpenpiPolicy

CONFIG = get_policy_config("pi05_aloha")
HORIZON, MODEL_DIM, ROBOT_DIM = CONFIG.action_horizon, CONFIG.action_dim, 14


@dataclasses.dataclass
class StandInOpenpi:
    """Records every model call; actions of a row are its own state plus its noise (so rows are told apart)."""

    takes_noise: bool = True
    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def input_transform(self, obs: dict[str, Any]) -> dict[str, Any]:
        state = np.asarray(obs["state"], np.float32)
        return {
            "state": np.pad(state, (0, MODEL_DIM - state.shape[0])),
            "image": {"cam_high": np.asarray(obs["images"]["cam_high"], np.uint8)},
            "tokenized_prompt": np.arange(len(str(obs["prompt"]).split()), dtype=np.int32),
        }

    def sample(self, stacked: dict[str, Any], noise: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append({"batch": stacked["state"].shape[0], "state": stacked["state"].copy(), "noise": noise})
        actions = np.repeat(stacked["state"][:, None, :], HORIZON, axis=1)
        return stacked["state"], actions + (noise if noise is not None else 0.0)

    @staticmethod
    def output_transform(row: dict[str, Any]) -> dict[str, Any]:
        return {"actions": np.asarray(row["actions"])[:, :ROBOT_DIM] * 2.0}

    def policy(self, buckets: tuple[int, ...] = (1, 2, 4, 8)) -> OpenpiPolicy:
        parts = OpenpiParts(
            input_transform=self.input_transform,
            output_transform=self.output_transform,
            sample=self.sample,
            takes_noise=self.takes_noise,
            description="stand-in",
        )
        return OpenpiPolicy(parts, CONFIG, OpenpiOptions(batch_buckets=buckets))


def observation(seed: int, prompt: str = "fold the towel") -> dict[str, Any]:
    return CONFIG.embodiment.example(np.random.default_rng(seed), prompt)


def test_a_batch_is_one_model_call_padded_to_its_bucket_with_each_row_its_own_answer() -> None:
    openpi = StandInOpenpi()
    policy = openpi.policy()
    observations = [observation(seed) for seed in range(3)]
    zeros = [np.zeros((HORIZON, MODEL_DIM), np.float32)] * 3
    results = policy.infer_batch(observations, zeros)
    assert [call["batch"] for call in openpi.calls] == [4]  # 3 rows padded up to bucket 4, one call
    for obs, result in zip(observations, results, strict=True):
        expected = np.repeat(np.asarray(obs["state"], np.float32)[None, :] * 2.0, HORIZON, axis=0)
        np.testing.assert_allclose(result["actions"], expected, rtol=1e-6)
        assert result["actions"].dtype == np.float32 and result["actions"].shape == (HORIZON, ROBOT_DIM)


def test_more_rows_than_the_largest_bucket_are_full_buckets_then_the_rest_padded() -> None:
    openpi = StandInOpenpi()
    results = openpi.policy(buckets=(1, 2, 4)).infer_batch([observation(seed) for seed in range(7)])
    assert [call["batch"] for call in openpi.calls] == [4, 4]
    assert len(results) == 7
    # The padded rows of the second call repeat its first row (computed, then dropped).
    second = openpi.calls[1]["state"]
    np.testing.assert_array_equal(second[3], second[0])


def test_warmup_calls_every_bucket_once() -> None:
    openpi = StandInOpenpi()
    seconds = openpi.policy(buckets=(1, 2, 8)).warmup()
    assert sorted(seconds) == [1, 2, 8]
    assert [call["batch"] for call in openpi.calls] == [1, 2, 8]


def test_a_row_whose_transformed_layout_differs_is_its_own_error_naming_the_array() -> None:
    policy = StandInOpenpi().policy()
    policy.prepare(observation(0, "fold the towel"))
    with pytest.raises(ValueError, match=r"'tokenized_prompt' is int32 \[5\], expected int32 \[3\]"):
        policy.prepare(observation(1, "fold the towel twice please"))
    policy.prepare(observation(2, "open the drawer"))  # the same layout still passes


def test_the_robot_format_is_checked_before_openpi_sees_the_observation() -> None:
    policy = StandInOpenpi().policy()
    obs = observation(0)
    obs["state"] = np.zeros(7)
    with pytest.raises(ValueError, match=r"'state': expected .*\[14\]"):
        policy.prepare(obs)


def test_noise_given_is_used_in_order_and_rows_without_get_fresh_noise() -> None:
    openpi = StandInOpenpi()
    policy = openpi.policy()
    given = np.full((HORIZON, MODEL_DIM), 0.5, np.float32)
    policy.sample([policy.prepare(observation(0), given), policy.prepare(observation(1))])
    (call,) = openpi.calls
    noise = call["noise"]
    assert noise.shape == (2, HORIZON, MODEL_DIM)
    np.testing.assert_array_equal(noise[0], given)
    assert np.std(noise[1]) > 0.5  # drawn: standard normal, not zeros or a copy of row 0


def test_noise_is_checked_and_refused_by_models_that_take_none() -> None:
    policy = StandInOpenpi().policy()
    with pytest.raises(ValueError, match=rf"'noise': expected float32 \[{HORIZON}, {MODEL_DIM}\]"):
        policy.prepare(observation(0), np.zeros((HORIZON, 7), np.float32))
    no_noise = StandInOpenpi(takes_noise=False)
    without = no_noise.policy()
    with pytest.raises(ValueError, match=r"'noise': model pi05_aloha .* does not take noise"):
        without.prepare(observation(0), np.zeros((HORIZON, MODEL_DIM), np.float32))
    without.sample([without.prepare(observation(0))])
    assert no_noise.calls[-1]["noise"] is None


def test_an_error_in_openpis_input_transforms_names_the_transform_failure() -> None:
    openpi = StandInOpenpi()

    def failing(obs: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("observation/exterior_image_1_left")

    policy = OpenpiPolicy(dataclasses.replace(openpi.policy().parts, input_transform=failing), CONFIG, OpenpiOptions())
    with pytest.raises(ValueError, match="rejected by openpi's input transforms: KeyError"):
        policy.prepare(observation(0))


def test_rtc_requests_are_refused_with_the_reason_flow_models_and_pi0_fast_alike() -> None:
    obs = {**observation(0), "rtc": {"prev_actions": np.zeros((10, ROBOT_DIM)), "inference_delay": 2}}
    with pytest.raises(ValueError, match=r"'rtc': Real-Time Chunking is served by the native runtime"):
        StandInOpenpi().policy().prepare(obs)
    with pytest.raises(ValueError, match=r"'rtc': pi05_aloha is pi0-FAST, not a flow-matching model"):
        StandInOpenpi(takes_noise=False).policy().prepare(obs)
    plain = StandInOpenpi().policy()
    prepared = plain.prepare(observation(0))
    assert plain.rtc_echo(prepared, np.zeros((HORIZON, ROBOT_DIM))) is None
    # An empty remainder asks for nothing (combined_ensemble sends one for robots without rtc): served plain.
    empty = {**observation(0), "rtc": {"prev_actions": np.zeros((0, ROBOT_DIM)), "inference_delay": 0}}
    for openpi in (StandInOpenpi(), StandInOpenpi(takes_noise=False)):
        openpi.policy().prepare(empty)
