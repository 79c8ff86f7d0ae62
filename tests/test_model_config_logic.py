"""Pure logic behind the Triton models: tensor naming, I/O declarations, parameters, robot metadata."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from openpi_triton import tensor_names
from openpi_triton.contract.robot_metadata import robot_metadata
from openpi_triton.domain.configs import get_policy_config
from openpi_triton.triton import io_spec
from openpi_triton.triton.model_params import ActionParams, ParameterError, PlannerParams, read_parameters


def test_key_path_rule_round_trips_nested_and_slash_keys() -> None:
    obs = {"images": {"cam_high": 1, "cam_low": 2}, "observation/joint_position": 3, "prompt": "x"}
    flat = tensor_names.flatten(obs)
    assert flat == {"images.cam_high": 1, "images.cam_low": 2, "observation/joint_position": 3, "prompt": "x"}
    assert tensor_names.unflatten(flat) == obs


def test_key_with_the_separator_is_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape("observation.state")):
        tensor_names.flatten({"observation.state": np.zeros(3)})


def test_droid_io_uses_its_flat_keys() -> None:
    specs = {s.name: s for s in io_spec.action_inputs(get_policy_config("pi05_droid"))}
    assert specs["observation/exterior_image_1_left"].dims == (-1, -1, -1)
    assert specs["observation/gripper_position"].dims == (1,)
    assert specs["noise"].dims == (15, 32)
    assert {s.name: s.dims for s in io_spec.action_outputs(get_policy_config("pi05_droid"))}["actions"] == (15, 8)


def _config(params: dict[str, str], inputs: list[dict], actions_dims: list[int]) -> dict:
    return {
        "parameters": {k: {"string_value": v} for k, v in params.items()},
        "input": inputs,
        "output": [{"name": "actions", "data_type": "TYPE_FP32", "dims": [str(d) for d in actions_dims]}],
    }


def test_metadata_for_droid_and_an_override() -> None:
    inputs = [s.as_config() for s in io_spec.action_inputs(get_policy_config("pi05_droid"))]
    metadata = robot_metadata(_config({"model_config_name": "pi05_droid"}, inputs, [15, 8]))
    assert metadata == {
        "image_specs": [
            {"path": ["observation/exterior_image_1_left"], "target_shape": [224, 224, 3], "dtype": "uint8"},
            {"path": ["observation/wrist_image_left"], "target_shape": [224, 224, 3], "dtype": "uint8"},
        ],
        "action_horizon": 15,
    }
    custom = robot_metadata(
        _config({"model_config_name": "x", "policy_metadata": json.dumps({"reset_pose": [1, 2]})}, inputs, [15, 8])
    )
    assert custom["reset_pose"] == [1, 2]
    with pytest.raises(ValueError, match="policy_metadata"):
        robot_metadata(_config({"policy_metadata": "[1"}, inputs, [15, 8]))


def test_action_parameters_defaults_and_errors() -> None:
    params = ActionParams.parse({"model_config_name": "pi05_aloha"})
    assert (params.runtime, params.dtype, params.num_steps, params.batch_buckets) == (
        "native",
        "float32",
        10,
        (1, 2, 4, 8),
    )
    assert params.checkpoint_dir == "" and params.default_prompt is None
    for bad, needle in [
        ({}, "model_config_name"),
        ({"model_config_name": "pi05_alohaa"}, "Did you mean"),
        ({"model_config_name": "pi05_aloha", "runtime": "torch"}, "runtime"),
        ({"model_config_name": "pi05_aloha", "num_steps": "ten"}, "num_steps"),
        ({"model_config_name": "pi05_aloha", "batch_buckets": "1,a"}, "batch_buckets"),
        ({"model_config_name": "pi05_aloha", "dtype": "float16"}, "dtype"),
    ]:
        with pytest.raises(ParameterError, match=re.escape(needle)):
            ActionParams.parse(bad)


def test_planner_templates_are_validated_at_load() -> None:
    base = {"model_config_name": "pi05_aloha"}
    assert PlannerParams.parse(base).action_prompt_template == "{task}. Subtask: {subtask}"
    for bad, needle in [
        ({"action_prompt_template": "{task} only"}, "{subtask}"),
        ({"action_prompt_template": "{task} {subtask} {x}"}, "action_prompt_template"),
        ({"generation_prompt_format": "no task"}, "generation_prompt_format"),
        ({"max_generation_tokens": "0"}, "max_generation_tokens"),
    ]:
        with pytest.raises(ParameterError, match=re.escape(needle)):
            PlannerParams.parse({**base, **bad})


def test_read_parameters_strips_values() -> None:
    assert read_parameters({"parameters": {"a": {"string_value": " x "}}}) == {"a": "x"}
    assert read_parameters(json.dumps({"parameters": {}})) == {}


def test_the_rtc_parameter_is_on_by_default_and_native_only() -> None:
    assert ActionParams.parse({"model_config_name": "pi05_aloha"}).rtc is True
    assert ActionParams.parse({"model_config_name": "pi05_aloha", "rtc": "off"}).rtc is False
    with pytest.raises(ParameterError, match=re.escape("parameter 'rtc': expected one of ['on', 'off']")):
        ActionParams.parse({"model_config_name": "pi05_aloha", "rtc": "yes"})
    with pytest.raises(ParameterError, match=re.escape("parameter 'rtc': only used by runtime 'native'")):
        ActionParams.parse({"model_config_name": "pi05_aloha", "runtime": "simulated", "rtc": "off"})
