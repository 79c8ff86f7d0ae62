"""ALOHA (bimanual, 14-dim): openpi's ``AlohaInputs`` / ``AlohaOutputs`` with ``adapt_to_pi=True``.

Cameras arrive channels-first under ``images``; ``cam_low`` is accepted and ignored. The model's joint
space differs from ALOHA's: some joints flip sign, and grippers convert between linear position and a
normalised angle. The output gripper mapping is openpi's, which is not the inverse of the input one.
"""

from __future__ import annotations

import numpy as np

from openpi_triton.domain.embodiments.base import Embodiment, ImageField, StateField

JOINT_FLIP_MASK = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1])
GRIPPER_DIMS = [6, 13]


def _normalize(x: np.ndarray, min_val: float, max_val: float) -> np.ndarray:
    return (x - min_val) / (max_val - min_val)


def _unnormalize(x: np.ndarray, min_val: float, max_val: float) -> np.ndarray:
    return x * (max_val - min_val) + min_val


def gripper_to_angular(value: np.ndarray) -> np.ndarray:
    """Linear gripper position -> normalised gripper angle (the Trossen gripper's horn geometry)."""
    value = _unnormalize(value, min_val=0.01844, max_val=0.05800)
    arm_length, horn_radius = 0.036, 0.022
    ratio = (horn_radius**2 + value**2 - arm_length**2) / (2 * horn_radius * value)
    return _normalize(np.arcsin(np.clip(ratio, -1.0, 1.0)), min_val=0.5476, max_val=1.6296)


def gripper_from_angular(value: np.ndarray) -> np.ndarray:
    return _normalize(value + 0.5476, min_val=-0.6213, max_val=1.4910)


def gripper_from_angular_inverse(value: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`gripper_from_angular` (affine), used to map a robot chunk back for RTC."""
    return _unnormalize(value, min_val=-0.6213, max_val=1.4910) - 0.5476


def outputs_inverse(actions: np.ndarray) -> np.ndarray:
    """Exact inverse of :meth:`Aloha.outputs` on the 14 robot dims (the flip is its own inverse)."""
    actions = np.array(actions, dtype=np.float64, copy=True)
    actions[..., GRIPPER_DIMS] = gripper_from_angular_inverse(actions[..., GRIPPER_DIMS])
    return JOINT_FLIP_MASK * actions


class Aloha(Embodiment):
    name = "aloha"
    image_fields = (
        ImageField(("images", "cam_high"), "base_0_rgb", required=True, layout="CHW"),
        ImageField(("images", "cam_left_wrist"), "left_wrist_0_rgb", required=False, layout="CHW"),
        ImageField(("images", "cam_right_wrist"), "right_wrist_0_rgb", required=False, layout="CHW"),
        ImageField(("images", "cam_low"), None, required=False, layout="CHW"),
    )
    state_fields = (StateField(("state",), 14),)
    action_dim = 14
    closed_image_dict = ("images",)

    def image_specs(self) -> list[dict]:
        # openpi-flash advertises the four cameras in this order.
        order = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
        specs = {f.path[-1]: f.spec() for f in self.image_fields}
        return [specs[name] for name in order]

    def assemble_state(self, parts: list[np.ndarray]) -> np.ndarray:
        state = JOINT_FLIP_MASK * parts[0]
        state[GRIPPER_DIMS] = gripper_to_angular(state[GRIPPER_DIMS])
        return state

    def outputs(self, actions: np.ndarray) -> np.ndarray:
        actions = JOINT_FLIP_MASK * np.asarray(actions[..., :14])
        actions[..., GRIPPER_DIMS] = gripper_from_angular(actions[..., GRIPPER_DIMS])
        return actions
