"""Bad robot input is a ValueError naming the field, the expectation and what arrived; openpi's lenient cases pass."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest

from openpi_triton.domain.configs import get_policy_config
from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.native.checkpoint import CheckpointError, resolve_checkpoint_dir
from openpi_triton.native.image import resize_with_pad
from openpi_triton.native.policy import NativePolicy, PolicyOptions

PROMPT = "fold the towel"


def aloha_obs(policy: NativePolicy, seed: int = 0) -> dict[str, Any]:
    """A valid ALOHA observation: state [14], four uint8 [3, 224, 224] cameras, a prompt."""
    return policy.config.embodiment.example(np.random.default_rng(seed), PROMPT)


def with_image(obs: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    """A copy of ``obs`` whose camera ``name`` is ``value`` (``None``: the camera is removed)."""
    out = dict(obs)
    out["images"] = dict(obs["images"])
    if value is None:
        out["images"].pop(name)
    else:
        out["images"][name] = value
    return out


def with_field(obs: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A shallow copy of ``obs`` with a top-level key replaced (``None``: removed)."""
    out = dict(obs)
    if value is None:
        out.pop(key, None)
    else:
        out[key] = value
    return out


def error_of(policy: NativePolicy, obs: dict[str, Any], noise: Any = None) -> str:
    with pytest.raises(ValueError) as info:
        policy.prepare(obs, noise)
    return str(info.value)


# ----- ALOHA: errors -----------------------------------------------------------------------------------------


def test_missing_required_camera_names_it(tiny_policy: NativePolicy) -> None:
    message = error_of(tiny_policy, with_image(aloha_obs(tiny_policy), "cam_high", None))
    assert "images/cam_high" in message
    assert "missing" in message
    assert "[3, H, W]" in message


def test_unknown_camera_is_rejected(tiny_policy: NativePolicy) -> None:
    obs = aloha_obs(tiny_policy)
    message = error_of(tiny_policy, with_image(obs, "cam_side", obs["images"]["cam_high"]))
    assert "'images'" in message
    assert "cam_side" in message
    assert "cam_high" in message  # the expected names are listed


def test_int32_image_dtype_is_rejected(tiny_policy: NativePolicy) -> None:
    image = np.zeros((3, 224, 224), np.int32)
    message = error_of(tiny_policy, with_image(aloha_obs(tiny_policy), "cam_high", image))
    assert "images/cam_high" in message
    assert "uint8 or float" in message
    assert "int32" in message


def test_wrong_image_rank_is_rejected(tiny_policy: NativePolicy) -> None:
    image = np.zeros((224, 224), np.uint8)
    message = error_of(tiny_policy, with_image(aloha_obs(tiny_policy), "cam_left_wrist", image))
    assert "images/cam_left_wrist" in message
    assert "3 dimensions" in message
    assert "[224, 224]" in message


def test_channels_last_image_is_rejected_for_aloha(tiny_policy: NativePolicy) -> None:
    image = np.zeros((224, 224, 3), np.uint8)
    message = error_of(tiny_policy, with_image(aloha_obs(tiny_policy), "cam_high", image))
    assert "images/cam_high" in message
    assert "channels first" in message
    assert "[224, 224, 3]" in message


def test_float_image_outside_unit_range_is_rejected(tiny_policy: NativePolicy) -> None:
    image = np.full((3, 224, 224), 200.0, np.float32)
    image[0, 0, 0] = 0.0
    message = error_of(tiny_policy, with_image(aloha_obs(tiny_policy), "cam_right_wrist", image))
    assert "images/cam_right_wrist" in message
    assert "[0, 1]" in message
    assert "[0.0, 200.0]" in message


def test_state_of_wrong_length_is_rejected(tiny_policy: NativePolicy) -> None:
    message = error_of(tiny_policy, with_field(aloha_obs(tiny_policy), "state", np.zeros(13)))
    assert "'state'" in message
    assert "[14]" in message
    assert "[13]" in message


def test_state_with_nan_is_rejected(tiny_policy: NativePolicy) -> None:
    state = np.zeros(14)
    state[3] = np.nan
    message = error_of(tiny_policy, with_field(aloha_obs(tiny_policy), "state", state))
    assert "'state'" in message
    assert "finite" in message
    assert "nan" in message


def test_non_numeric_state_is_rejected(tiny_policy: NativePolicy) -> None:
    message = error_of(tiny_policy, with_field(aloha_obs(tiny_policy), "state", ["a"] * 14))
    assert "'state'" in message
    assert "float [14]" in message
    assert "<U1" in message


def test_missing_state_is_rejected(tiny_policy: NativePolicy) -> None:
    message = error_of(tiny_policy, with_field(aloha_obs(tiny_policy), "state", None))
    assert "missing 'state'" in message
    assert "[14]" in message


def test_non_string_prompt_is_rejected(tiny_policy: NativePolicy) -> None:
    message = error_of(tiny_policy, with_field(aloha_obs(tiny_policy), "prompt", 7))
    assert "'prompt'" in message
    assert "string" in message
    assert "int" in message


def test_undecodable_bytes_prompt_is_rejected(tiny_policy: NativePolicy) -> None:
    message = error_of(tiny_policy, with_field(aloha_obs(tiny_policy), "prompt", b"fold \xff\xfe"))
    assert "'prompt'" in message
    assert "UTF-8" in message
    assert "undecodable bytes" in message


def test_missing_prompt_without_default_is_rejected(tiny_policy: NativePolicy) -> None:
    assert tiny_policy.config.default_prompt is None and tiny_policy.options.default_prompt is None
    message = error_of(tiny_policy, with_field(aloha_obs(tiny_policy), "prompt", None))
    assert "'prompt'" in message
    assert "required" in message
    assert "no default prompt" in message


def test_wrong_noise_shape_is_rejected(tiny_policy: NativePolicy) -> None:
    message = error_of(tiny_policy, aloha_obs(tiny_policy), np.zeros((50, 31), np.float32))
    assert "'noise'" in message
    assert "[50, 32]" in message
    assert "float32 [50, 31]" in message


def test_integer_noise_is_rejected(tiny_policy: NativePolicy) -> None:
    message = error_of(tiny_policy, aloha_obs(tiny_policy), np.zeros((50, 32), np.int64))
    assert "'noise'" in message
    assert "int64 [50, 32]" in message


def test_non_finite_noise_is_rejected(tiny_policy: NativePolicy) -> None:
    noise = np.zeros((50, 32), np.float32)
    noise[1, 2] = np.inf
    message = error_of(tiny_policy, aloha_obs(tiny_policy), noise)
    assert "'noise'" in message
    assert "finite" in message


def test_non_dict_observation_is_rejected(tiny_policy: NativePolicy) -> None:
    message = error_of(tiny_policy, ["not", "a", "dict"])  # type: ignore[arg-type]
    assert "observation" in message
    assert "list" in message


# ----- ALOHA: accepted the way openpi accepts them ----------------------------------------------------------


def test_missing_wrist_cameras_give_zero_images_and_false_masks(tiny_policy: NativePolicy) -> None:
    obs = with_image(with_image(aloha_obs(tiny_policy), "cam_left_wrist", None), "cam_right_wrist", None)
    prepared = tiny_policy.prepare(obs)
    assert prepared.image_masks.tolist() == [True, False, False]
    assert prepared.images.shape == (3, 224, 224, 3)
    assert not prepared.images[1].any() and not prepared.images[2].any()
    np.testing.assert_array_equal(prepared.images[0], obs["images"]["cam_high"].transpose(1, 2, 0))


def test_one_missing_wrist_camera_masks_only_that_slot(tiny_policy: NativePolicy) -> None:
    prepared = tiny_policy.prepare(with_image(aloha_obs(tiny_policy), "cam_left_wrist", None))
    assert prepared.image_masks.tolist() == [True, False, True]


def test_cam_low_is_accepted_and_unused(tiny_policy: NativePolicy) -> None:
    obs = aloha_obs(tiny_policy)
    reference = tiny_policy.prepare(obs)
    changed = tiny_policy.prepare(with_image(obs, "cam_low", np.full((3, 224, 224), 9, np.uint8)))
    removed = tiny_policy.prepare(with_image(obs, "cam_low", None))
    for prepared in (changed, removed):
        np.testing.assert_array_equal(prepared.images, reference.images)
        np.testing.assert_array_equal(prepared.image_masks, reference.image_masks)


def test_float_image_is_converted_to_uint8_by_truncation(tiny_policy: NativePolicy) -> None:
    image = np.random.default_rng(1).uniform(0.0, 1.0, (3, 224, 224)).astype(np.float32)
    image[:, 0, 0] = [0.999, 0.5, 1.0]  # truncation: 254, 127, 255 (rounding would give 255, 128, 255)
    prepared = tiny_policy.prepare(with_image(aloha_obs(tiny_policy), "cam_high", image))
    expected = (255 * image).astype(np.uint8).transpose(1, 2, 0)
    assert prepared.images.dtype == np.uint8
    np.testing.assert_array_equal(prepared.images[0], expected)
    assert prepared.images[0, 0, 0].tolist() == [254, 127, 255]


def test_non_224_image_is_resized_with_pad(tiny_policy: NativePolicy) -> None:
    image = np.random.default_rng(2).integers(0, 256, (3, 240, 320), dtype=np.uint8)
    prepared = tiny_policy.prepare(with_image(aloha_obs(tiny_policy), "cam_left_wrist", image))
    assert prepared.images.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(prepared.images[1], resize_with_pad(image.transpose(1, 2, 0), 224, 224))
    assert prepared.image_masks[1]


def test_bytes_prompt_is_decoded(tiny_policy: NativePolicy) -> None:
    obs = aloha_obs(tiny_policy)
    reference = tiny_policy.prepare(obs)
    prepared = tiny_policy.prepare(with_field(obs, "prompt", PROMPT.encode()))
    assert prepared.frame.prompt == PROMPT
    np.testing.assert_array_equal(prepared.tokens, reference.tokens)


@pytest.mark.parametrize("prompt", [np.array(PROMPT), np.array(PROMPT.encode())], ids=["str", "bytes"])
def test_zero_dim_numpy_string_prompt_works(tiny_policy: NativePolicy, prompt: np.ndarray) -> None:
    obs = aloha_obs(tiny_policy)
    reference = tiny_policy.prepare(obs)
    prepared = tiny_policy.prepare(with_field(obs, "prompt", prompt))
    assert prepared.frame.prompt == PROMPT
    np.testing.assert_array_equal(prepared.tokens, reference.tokens)
    np.testing.assert_array_equal(prepared.token_mask, reference.token_mask)


def test_default_prompt_option_fills_a_missing_prompt(tiny_policy: NativePolicy) -> None:
    options = PolicyOptions(default_prompt="fold", batch_buckets=tiny_policy.options.batch_buckets)
    policy = NativePolicy(
        tiny_policy.config, tiny_policy.params, tiny_policy.norm_stats, tiny_policy.tokenizer.sp, options
    )
    obs = aloha_obs(tiny_policy)
    prepared = policy.prepare(with_field(obs, "prompt", None))
    explicit = policy.prepare(with_field(obs, "prompt", "fold"))
    np.testing.assert_array_equal(prepared.tokens, explicit.tokens)
    np.testing.assert_array_equal(prepared.token_mask, explicit.token_mask)
    # An explicit prompt still wins over the default.
    other = policy.prepare(obs)
    assert other.frame.prompt == PROMPT
    assert not np.array_equal(other.tokens, prepared.tokens)


def test_noise_with_leading_batch_axis_is_accepted(tiny_policy: NativePolicy) -> None:
    noise = np.random.default_rng(3).standard_normal((1, 50, 32))
    prepared = tiny_policy.prepare(aloha_obs(tiny_policy), noise)
    assert prepared.noise is not None
    assert prepared.noise.shape == (50, 32) and prepared.noise.dtype == np.float32


# ----- DROID and LIBERO ----------------------------------------------------------------------------------------


def droid_obs(seed: int = 0) -> dict[str, Any]:
    return EMBODIMENTS["droid"].example(np.random.default_rng(seed), PROMPT)


def libero_obs(seed: int = 0) -> dict[str, Any]:
    return EMBODIMENTS["libero"].example(np.random.default_rng(seed), PROMPT)


def test_droid_missing_joint_position_is_rejected() -> None:
    obs = droid_obs()
    del obs["observation/joint_position"]
    with pytest.raises(ValueError) as info:
        EMBODIMENTS["droid"].inputs(obs)
    message = str(info.value)
    assert "observation/joint_position" in message
    assert "missing" in message
    assert "[7]" in message


@pytest.mark.parametrize("gripper", [np.float64(0.25), np.array(0.25), 0.25], ids=["np-scalar", "0-d", "float"])
def test_droid_scalar_gripper_position_is_accepted(gripper: Any) -> None:
    obs = droid_obs()
    obs["observation/gripper_position"] = gripper
    frame = EMBODIMENTS["droid"].inputs(obs)
    assert frame.state.shape == (8,)
    assert frame.state[-1] == pytest.approx(0.25)
    np.testing.assert_array_equal(frame.state[:7], obs["observation/joint_position"])


def test_droid_gripper_position_of_wrong_shape_is_rejected() -> None:
    obs = droid_obs()
    obs["observation/gripper_position"] = np.zeros((1, 1))
    with pytest.raises(ValueError) as info:
        EMBODIMENTS["droid"].inputs(obs)
    assert "observation/gripper_position" in str(info.value)
    assert "[1, 1]" in str(info.value)


def test_droid_chw_images_are_transposed() -> None:
    obs = droid_obs()
    chw = np.random.default_rng(4).integers(0, 256, (3, 224, 224), dtype=np.uint8)
    obs["observation/exterior_image_1_left"] = chw
    frame = EMBODIMENTS["droid"].inputs(obs)
    np.testing.assert_array_equal(frame.images["base_0_rgb"], chw.transpose(1, 2, 0))
    np.testing.assert_array_equal(frame.images["left_wrist_0_rgb"], obs["observation/wrist_image_left"])
    assert frame.image_masks == {"base_0_rgb": True, "left_wrist_0_rgb": True, "right_wrist_0_rgb": False}
    assert not frame.images["right_wrist_0_rgb"].any()


def test_droid_image_with_four_channels_is_rejected() -> None:
    obs = droid_obs()
    obs["observation/wrist_image_left"] = np.zeros((224, 224, 4), np.uint8)
    with pytest.raises(ValueError) as info:
        EMBODIMENTS["droid"].inputs(obs)
    assert "observation/wrist_image_left" in str(info.value)
    assert "[224, 224, 4]" in str(info.value)


def test_libero_chw_images_are_transposed() -> None:
    obs = libero_obs()
    chw = np.random.default_rng(5).integers(0, 256, (3, 224, 224), dtype=np.uint8)
    obs["observation/wrist_image"] = chw
    frame = EMBODIMENTS["libero"].inputs(obs)
    np.testing.assert_array_equal(frame.images["left_wrist_0_rgb"], chw.transpose(1, 2, 0))
    np.testing.assert_array_equal(frame.images["base_0_rgb"], obs["observation/image"])
    assert frame.state.shape == (8,)


def test_libero_state_of_wrong_length_is_rejected() -> None:
    obs = libero_obs()
    obs["observation/state"] = np.zeros(7)
    with pytest.raises(ValueError) as info:
        EMBODIMENTS["libero"].inputs(obs)
    assert "observation/state" in str(info.value)
    assert "[8]" in str(info.value) and "[7]" in str(info.value)


# ----- checkpoints, configs, options -------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["gs://bucket/x", "hf://x"])
def test_remote_checkpoint_uri_asks_for_a_local_copy(uri: str) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint_dir(uri)
    assert isinstance(info.value, ValueError)
    assert uri in str(info.value)
    assert "local copy" in str(info.value)


def test_missing_checkpoint_dir_is_reported(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint_dir(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_pytorch_checkpoint_points_to_openpi_runtime(tmp_path: pathlib.Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint_dir(tmp_path)
    assert "PyTorch" in str(info.value)
    assert "runtime 'openpi'" in str(info.value)


def test_params_folder_itself_points_to_its_parent(tmp_path: pathlib.Path) -> None:
    params = tmp_path / "params"
    params.mkdir()
    (params / "_METADATA").write_text("{}")
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint_dir(params)
    assert "params/ folder itself" in str(info.value)
    assert "parent" in str(info.value)
    assert resolve_checkpoint_dir(tmp_path) == tmp_path.resolve()


def test_empty_dir_is_not_a_checkpoint(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint_dir(tmp_path)
    assert "params/_METADATA" in str(info.value)


def test_misspelled_config_name_suggests_the_close_match() -> None:
    with pytest.raises(ValueError) as info:
        get_policy_config("pi05_alloha")
    message = str(info.value)
    assert "'pi05_alloha'" in message
    assert "Did you mean" in message
    suggestion = message.split("Did you mean", 1)[1].split("?", 1)[0]
    assert "pi05_aloha" in suggestion


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"dtype": "float16"}, "'float16'"),
        ({"num_steps": 0}, "num_steps: expected a positive integer, got 0"),
        ({"batch_buckets": "1,x"}, "'1,x'"),
    ],
    ids=["dtype", "num_steps", "batch_buckets"],
)
def test_bad_policy_options_are_rejected(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match="expected") as info:
        PolicyOptions(**kwargs)
    assert fragment in str(info.value)
