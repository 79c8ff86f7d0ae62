"""Triton inputs and outputs of the models, derived from an openpi config (so swapping the embodiment is an
edit of ``model_config_name``, never a hand-written tensor list).

Conventions (all robot-facing tensors carry the batch dimension first; ``max_batch_size`` > 0):
- camera ``<key path>``: UINT8, ``[3, -1, -1]`` for channels-first robots (ALOHA) else ``[-1, -1, -1]``;
  float images are converted to uint8 by the client side (openpi's ``(255 * x).astype(uint8)``);
- state ``<key path>``: FP64 ``[width]`` (float64 keeps pi0.5's state bins bit-identical to openpi);
- ``prompt``: BYTES ``[1]`` UTF-8, optional; ``noise``: FP32 ``[action_horizon, 32]``, optional;
- ``rtc.*`` (the observation's optional ``rtc`` key, docs/rtc.md): ``rtc.prev_actions`` FP32 ``[-1, robot action
  dim]`` (ragged: any K per request in one batch), ``rtc.inference_delay`` / ``rtc.guided_horizon`` INT32 ``[1]``,
  ``rtc.max_guidance_weight`` FP32 ``[1]``, ``rtc.schedule`` / ``rtc.mode`` BYTES ``[1]``, all optional;
- out: ``actions`` FP32 ``[action_horizon, robot action dim]``, ``policy_infer_ms`` FP32 ``[1]``, ``model_timing``
  FP64 ``[6]`` (where the time went, see ``contract.io_names``), and ``rtc_echo`` BYTES ``[1]`` (JSON) only for
  requests that sent ``rtc``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from openpi_triton.contract.io_names import (  # noqa: F401 - the models' names, re-exported
    ACTION_PROMPT,
    ACTIONS,
    GENERATION_PROMPT_FORMAT,
    MODE,
    MODEL_TIMING,
    MODEL_TIMING_FIELDS,
    MODES,
    NOISE,
    POLICY_INFER_MS,
    PROMPT,
    RTC_ECHO,
    SUBTASK,
    SUBTASK_MS,
)
from openpi_triton.domain import rtc
from openpi_triton.domain.configs import PolicyConfig
from openpi_triton.tensor_names import tensor_name


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton config type, e.g. "TYPE_UINT8"
    dims: tuple[int, ...]
    optional: bool = False
    # Triton's dynamic batcher groups only requests whose inputs have equal shapes; a ragged input may differ
    # (the Python backend reads each request of a batch on its own, so nothing is concatenated).
    ragged: bool = False

    def as_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "data_type": self.data_type, "dims": list(self.dims)}
        if self.optional:
            entry["optional"] = True
        if self.ragged:
            entry["allow_ragged_batch"] = True
        return entry


def observation_inputs(config: PolicyConfig, *, all_images_optional: bool = False) -> list[TensorSpec]:
    """Cameras and state vectors of the config's embodiment."""
    embodiment = config.embodiment
    specs = [
        TensorSpec(
            tensor_name(f.path),
            "TYPE_UINT8",
            (3, -1, -1) if f.layout == "CHW" and f.strict_layout else (-1, -1, -1),
            optional=all_images_optional or not f.required,
        )
        for f in embodiment.image_fields
    ]
    specs += [TensorSpec(tensor_name(s.path), "TYPE_FP64", (s.width,)) for s in embodiment.state_fields]
    return specs


def rtc_inputs(config: PolicyConfig) -> list[TensorSpec]:
    """The ``rtc`` request's fields; ``prev_actions`` has as many rows as the robot has left (<= horizon), and is
    ragged so that robots with different remainders (or none: zero rows) share a batch."""
    types = {
        rtc.PREV_ACTIONS: ("TYPE_FP32", (-1, config.embodiment.action_dim)),
        rtc.INFERENCE_DELAY: ("TYPE_INT32", (1,)),
        rtc.GUIDED_HORIZON: ("TYPE_INT32", (1,)),
        rtc.MAX_GUIDANCE_WEIGHT: ("TYPE_FP32", (1,)),
        rtc.SCHEDULE: ("TYPE_STRING", (1,)),
        rtc.MODE: ("TYPE_STRING", (1,)),
    }
    return [
        TensorSpec(tensor_name((rtc.RTC_KEY, field)), data_type, dims, optional=True, ragged=field == rtc.PREV_ACTIONS)
        for field, (data_type, dims) in types.items()
    ]


def action_inputs(config: PolicyConfig) -> list[TensorSpec]:
    return [
        *observation_inputs(config),
        TensorSpec(PROMPT, "TYPE_STRING", (1,), optional=True),
        TensorSpec(NOISE, "TYPE_FP32", (config.action_horizon, config.action_dim), optional=True),
        *rtc_inputs(config),
    ]


def action_outputs(config: PolicyConfig) -> list[TensorSpec]:
    return [
        TensorSpec(ACTIONS, "TYPE_FP32", (config.action_horizon, config.embodiment.action_dim)),
        TensorSpec(POLICY_INFER_MS, "TYPE_FP32", (1,)),
        TensorSpec(MODEL_TIMING, "TYPE_FP64", (len(MODEL_TIMING_FIELDS),)),
        TensorSpec(RTC_ECHO, "TYPE_STRING", (1,)),
    ]


def planner_inputs(config: PolicyConfig) -> list[TensorSpec]:
    images = [s for s in observation_inputs(config, all_images_optional=True) if s.data_type == "TYPE_UINT8"]
    return [
        *images,
        TensorSpec(PROMPT, "TYPE_STRING", (1,), optional=True),
        TensorSpec(GENERATION_PROMPT_FORMAT, "TYPE_STRING", (1,), optional=True),
    ]


def planner_outputs() -> list[TensorSpec]:
    return [
        TensorSpec(SUBTASK, "TYPE_STRING", (1,)),
        TensorSpec(SUBTASK_MS, "TYPE_FP32", (1,)),
        TensorSpec(ACTION_PROMPT, "TYPE_STRING", (1,)),
    ]


def combined_inputs(config: PolicyConfig) -> list[TensorSpec]:
    return [
        *action_inputs(config),
        TensorSpec(MODE, "TYPE_STRING", (1,), optional=True),
        TensorSpec(GENERATION_PROMPT_FORMAT, "TYPE_STRING", (1,), optional=True),
    ]


def combined_outputs(config: PolicyConfig) -> list[TensorSpec]:
    return [
        *action_outputs(config),
        TensorSpec(SUBTASK, "TYPE_STRING", (1,)),
        TensorSpec(SUBTASK_MS, "TYPE_FP32", (1,)),
    ]
