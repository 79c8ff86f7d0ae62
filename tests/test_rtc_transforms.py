"""RTC requests: the inverse output transforms (round trips per config, re-anchoring, fail closed) and the
validation of the ``rtc`` key in the robot's terms."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from openpi_triton.domain import output_transforms, rtc
from openpi_triton.domain.configs import POLICY_CONFIGS, PolicyConfig
from openpi_triton.domain.embodiments.base import Embodiment, StateField
from openpi_triton.domain.normalize import NormStats, normalize, unnormalize
from openpi_triton.native.policy import NativePolicy, PolicyOptions, load_policy
from openpi_triton.native.tiny import EmbeddedDefault


def synthetic_stats(rng: np.random.Generator, width: int) -> NormStats:
    q01 = rng.uniform(-2.0, -0.5, size=width)
    return NormStats(
        mean=rng.uniform(-0.5, 0.5, size=width),
        std=rng.uniform(0.1, 2.0, size=width),
        q01=q01,
        q99=q01 + rng.uniform(0.5, 3.0, size=width),
    )


def robot_chunk(rng: np.random.Generator, config: PolicyConfig, rows: int) -> np.ndarray:
    chunk = rng.uniform(-1.0, 1.0, size=(rows, config.embodiment.action_dim))
    if config.embodiment.name == "aloha":
        chunk[:, [6, 13]] = rng.uniform(0.0, 1.0, size=(rows, 2))  # grippers in their robot range
    return chunk


@pytest.mark.parametrize("name", sorted(POLICY_CONFIGS))
def test_inverse_then_forward_gives_back_the_robot_chunk(name: str) -> None:
    config = POLICY_CONFIGS[name]
    rng = np.random.default_rng(len(name))
    width = config.embodiment.action_dim
    stats = {"actions": synthetic_stats(rng, width), "state": synthetic_stats(rng, width)}
    chain = output_transforms.output_chain(config, stats)
    state = np.zeros(config.action_dim)
    state[:width] = rng.uniform(-1.0, 1.0, size=width)
    robot = robot_chunk(rng, config, 17)
    model = output_transforms.invert_outputs(chain, robot, state, config.action_dim)
    assert model.shape == (17, config.action_dim)
    np.testing.assert_array_equal(model[:, width:], 0.0)  # dims the robot never sees stay unguided zeros
    np.testing.assert_allclose(output_transforms.apply_outputs(chain, model, state), robot, atol=1e-9)


@pytest.mark.parametrize("name", [n for n, c in sorted(POLICY_CONFIGS.items()) if c.delta_action_mask is not None])
def test_the_previous_chunk_is_re_anchored_on_the_current_state(name: str) -> None:
    config = POLICY_CONFIGS[name]
    assert config.delta_action_mask is not None
    rng = np.random.default_rng(1)
    stats = {"actions": synthetic_stats(rng, config.embodiment.action_dim)}
    before_normalisation = output_transforms.output_chain(config, stats)[1:]  # AbsoluteActions, robot format
    state = rng.uniform(-1.0, 1.0, size=config.action_dim)
    shift = rng.uniform(-0.5, 0.5, size=config.action_dim)
    robot = robot_chunk(rng, config, 9)
    old = output_transforms.invert_outputs(before_normalisation, robot, state, config.action_dim)
    new = output_transforms.invert_outputs(before_normalisation, robot, state + shift, config.action_dim)
    mask = np.zeros(config.action_dim, bool)
    mask[: len(config.delta_action_mask)] = config.delta_action_mask
    np.testing.assert_allclose(new[:, mask] - old[:, mask], np.broadcast_to(-shift[mask], (9, int(mask.sum()))))
    np.testing.assert_array_equal(new[:, ~mask], old[:, ~mask])  # absolute dims (grippers) do not move


def test_the_normalisation_step_is_undone_with_the_configs_own_statistics() -> None:
    config = POLICY_CONFIGS["pi05_droid"]
    rng = np.random.default_rng(2)
    stats = {"actions": synthetic_stats(rng, 8)}
    chain = output_transforms.output_chain(config, stats)
    robot = robot_chunk(rng, config, 4)
    model = output_transforms.invert_outputs(chain, robot, np.zeros(32), 32)
    np.testing.assert_allclose(model[:, :8], normalize(robot, stats["actions"], use_quantiles=True))


class Unregistered(Embodiment):
    name = "unregistered_arm"
    state_fields = (StateField(("state",), 6),)
    action_dim = 6


def test_a_transform_without_a_registered_inverse_refuses_rtc() -> None:
    chain = (output_transforms.RobotOutputs(Unregistered()),)
    assert "unregistered_arm" in str(output_transforms.check_invertible(chain))
    with pytest.raises(rtc.RtcUnsupportedError, match="no registered inverse"):
        output_transforms.invert_outputs(chain, np.zeros((3, 6)), np.zeros(32), 32)


def test_a_policy_whose_outputs_cannot_be_inverted_refuses_rtc_requests(tiny_policy: NativePolicy) -> None:
    obs = tiny_policy.config.embodiment.example(np.random.default_rng(0))
    obs["rtc"] = {"prev_actions": np.zeros((10, 14)), "inference_delay": 2}
    refusing = object.__new__(NativePolicy)
    refusing.__dict__.update(tiny_policy.__dict__)
    refusing.rtc_refusal = "the output transform of embodiment 'x' has no registered inverse"
    with pytest.raises(rtc.RtcUnsupportedError, match="RTC is refused for this policy"):
        refusing.prepare(obs)
    del obs["rtc"]
    refusing.prepare(obs)  # plain requests are still served


# ----- the request -------------------------------------------------------------------------------------------


def parse(**fields: Any) -> rtc.RtcRequest | None:
    return rtc.parse_rtc(fields, horizon=50, robot_action_dim=14)


def test_defaults_and_triton_shaped_values() -> None:
    request = parse(prev_actions=np.zeros((25, 14)), inference_delay=5)
    assert request is not None
    assert (request.guided_horizon, request.max_guidance_weight, request.schedule, request.mode) == (
        25,
        rtc.DEFAULT_MAX_GUIDANCE_WEIGHT,
        "exp",
        "vjp",
    )
    # Through Triton every scalar is a one-element array and strings arrive decoded.
    request = parse(
        prev_actions=np.zeros((25, 14), np.float32),
        inference_delay=np.array([5], np.int32),
        guided_horizon=np.array([10], np.int32),
        max_guidance_weight=np.array([2.5], np.float32),
        schedule="linear",
        mode=np.array([b"identity"], dtype=object),
    )
    assert request is not None
    assert (request.inference_delay, request.guided_horizon, request.max_guidance_weight) == (5, 10, 2.5)
    assert (request.schedule, request.mode, request.frozen_rows) == ("linear", "identity", 5)
    assert rtc.parse_rtc(None, horizon=50, robot_action_dim=14) is None
    empty = parse(prev_actions=np.zeros((0, 14)), inference_delay=3)
    assert empty is not None and not empty.applied


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"inference_delay": 2}, r"'rtc/prev_actions': required"),
        ({"prev_actions": np.zeros((5, 7)), "inference_delay": 2}, r"'rtc/prev_actions': expected float \[K, 14\]"),
        ({"prev_actions": np.zeros((51, 14)), "inference_delay": 2}, r"0 <= K <= 50.*got shape \[51, 14\]"),
        (
            {"prev_actions": np.full((5, 14), np.nan), "inference_delay": 2},
            r"'rtc/prev_actions': values must be finite",
        ),
        ({"prev_actions": np.array([["a"] * 14]), "inference_delay": 2}, r"got a ragged or non-numeric value"),
        ({"prev_actions": np.zeros((5, 14))}, r"'rtc/inference_delay': required"),
        ({"prev_actions": np.zeros((5, 14)), "inference_delay": 2.5}, r"'rtc/inference_delay': expected an integer"),
        ({"prev_actions": np.zeros((5, 14)), "inference_delay": -1}, r"in \[0, 50\].*got -1"),
        ({"prev_actions": np.zeros((5, 14)), "inference_delay": True}, r"expected an integer"),
        ({"prev_actions": np.zeros((5, 14)), "inference_delay": 6}, r"6 ticks but 'rtc/prev_actions' has only 5 rows"),
        ({"prev_actions": np.zeros((5, 14)), "inference_delay": 2, "guided_horizon": 6}, r"guided_horizon.*\[1, 5\]"),
        ({"prev_actions": np.zeros((5, 14)), "inference_delay": 2, "max_guidance_weight": -1}, r"0 <= β <= 100"),
        (
            {"prev_actions": np.zeros((5, 14)), "inference_delay": 2, "max_guidance_weight": float("inf")},
            r"max_guidance_weight': expected a finite number",
        ),
        ({"prev_actions": np.zeros((5, 14)), "inference_delay": 2, "schedule": "cosine"}, r"\['exp', 'linear'"),
        ({"prev_actions": np.zeros((5, 14)), "inference_delay": 2, "mode": "jacobian"}, r"\['vjp', 'identity'\]"),
        ({"prev_actions": np.zeros((5, 14)), "inference_delay": 2, "delay": 3}, r"unknown keys \['delay'\]"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(**fields)


def test_rtc_must_be_a_dict() -> None:
    with pytest.raises(ValueError, match=r"'rtc': expected a dict"):
        rtc.parse_rtc([1, 2], horizon=50, robot_action_dim=14)


def test_a_bad_rtc_key_is_the_requests_error_in_prepare(tiny_policy: NativePolicy) -> None:
    obs = tiny_policy.config.embodiment.example(np.random.default_rng(0))
    obs["rtc"] = {"prev_actions": np.zeros((10, 7)), "inference_delay": 2}
    with pytest.raises(ValueError, match=r"'rtc/prev_actions': expected float \[K, 14\]"):
        tiny_policy.prepare(obs)


def test_rtc_turned_off_compiles_no_rtc_program_and_refuses_requests(embedded_default: EmbeddedDefault) -> None:
    options = PolicyOptions(tokenizer_path=str(embedded_default.tokenizer_path), batch_buckets=(1,), rtc=False)
    policy = load_policy(embedded_default.config_name, embedded_default.checkpoint_dir, options)
    policy.warmup()
    assert policy.compiled_programs == {("plain", 1)}
    obs = policy.config.embodiment.example(np.random.default_rng(0))
    obs["rtc"] = {"prev_actions": np.zeros((10, 14)), "inference_delay": 2}
    with pytest.raises(rtc.RtcUnsupportedError, match=r"RTC is turned off for this model \(config.pbtxt parameter"):
        policy.prepare(obs)
    empty = {**obs, "rtc": {"prev_actions": np.zeros((0, 14)), "inference_delay": 0}}
    assert policy.infer(empty)["rtc"]["applied"] is False  # nothing to guide: plain sampling, not refused


def test_a_remainder_beyond_the_normalised_limit_is_refused_naming_its_robot_space_range(
    tiny_policy: NativePolicy,
) -> None:
    obs = tiny_policy.config.embodiment.example(np.random.default_rng(0))
    state = tiny_policy.prepare(obs).state
    config = tiny_policy.config
    robot_state = unnormalize(state, tiny_policy.norm_stats["state"], use_quantiles=config.use_quantile_norm)
    limit = rtc.MAX_NORMALIZED_ABS

    def robot_values(normalised: float) -> np.ndarray:
        """Every dim's robot-space value for this model-space value (the forward output transforms)."""
        return output_transforms.apply_outputs(tiny_policy.output_chain, np.full((1, 32), normalised), robot_state)[0]

    inside = np.zeros((10, 14))
    inside[3] = robot_values(0.999 * limit)
    assert tiny_policy._prepare_rtc({"prev_actions": inside, "inference_delay": 2}, state) is not None
    for value in (1e20, robot_values(1.01 * limit)[2]):
        outside = np.zeros((10, 14))
        outside[3, 2] = value
        with pytest.raises(ValueError, match=r"'rtc/prev_actions': row 3, dim 2 is .*, expected a value in \[") as err:
            tiny_policy._prepare_rtc({"prev_actions": outside, "inference_delay": 2}, state)
        assert f"|normalised| <= {limit:g}" in str(err.value)
