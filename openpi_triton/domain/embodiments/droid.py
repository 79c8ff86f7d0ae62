"""DROID (single arm, 7 joints + gripper): openpi's ``DroidInputs`` / ``DroidOutputs`` for pi0 / pi0.5.

Keys are flat and contain '/' (``observation/joint_position``); images are HWC (CHW is transposed).
The right-wrist slot is always a zero image with mask False.
"""

from __future__ import annotations

from openpi_triton.domain.embodiments.base import Embodiment, ImageField, StateField


class Droid(Embodiment):
    name = "droid"
    image_fields = (
        ImageField(
            ("observation/exterior_image_1_left",), "base_0_rgb", required=True, layout="HWC", strict_layout=False
        ),
        ImageField(
            ("observation/wrist_image_left",), "left_wrist_0_rgb", required=True, layout="HWC", strict_layout=False
        ),
    )
    state_fields = (
        StateField(("observation/joint_position",), 7),
        StateField(("observation/gripper_position",), 1, allow_scalar=True),
    )
    action_dim = 8
