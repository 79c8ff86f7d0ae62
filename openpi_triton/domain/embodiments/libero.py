"""LIBERO (Franka sim, 8-dim state, 7-dim actions): openpi's ``LiberoInputs`` / ``LiberoOutputs`` for pi0 / pi0.5."""

from __future__ import annotations

from openpi_triton.domain.embodiments.base import Embodiment, ImageField, StateField


class Libero(Embodiment):
    name = "libero"
    image_fields = (
        ImageField(("observation/image",), "base_0_rgb", required=True, layout="HWC", strict_layout=False),
        ImageField(("observation/wrist_image",), "left_wrist_0_rgb", required=True, layout="HWC", strict_layout=False),
    )
    state_fields = (StateField(("observation/state",), 8),)
    action_dim = 7
