"""openpi's output transforms as an explicit chain, and a registry of their inverses.

Forward (every served answer): model actions (normalised, delta, padded to the model width) -> ``Unnormalize``
-> ``AbsoluteActions`` (where the config has a delta mask) -> the embodiment's output format (robot space).

Inverse (RTC): a previous chunk arrives in robot space and must be compared with the sampler's predictions in
model space. Each step's inverse is registered by step type (and the robot format by embodiment name); a chain
with a step that has no registered inverse refuses RTC (:class:`RtcUnsupportedError`) instead of guiding the
sampler toward a wrong target. ``AbsoluteActions`` is undone with the *current* request's state, which
re-anchors a chunk computed relative to an older state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from openpi_triton.domain import normalize
from openpi_triton.domain.configs import PolicyConfig
from openpi_triton.domain.embodiments import aloha
from openpi_triton.domain.embodiments.base import Embodiment
from openpi_triton.domain.rtc import RtcUnsupportedError


@dataclasses.dataclass(frozen=True)
class Unnormalize:
    stats: normalize.NormStats
    use_quantiles: bool

    def forward(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        return normalize.unnormalize(actions, self.stats, use_quantiles=self.use_quantiles)


@dataclasses.dataclass(frozen=True)
class AbsoluteActions:
    """Delta joints become absolute by adding the (un-normalised) state on the mask's dims."""

    mask: tuple[bool, ...]

    def offset(self, state: np.ndarray) -> np.ndarray:
        dims = len(self.mask)
        return np.where(np.asarray(self.mask), state[..., :dims], 0)

    def forward(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        actions = np.array(actions, copy=True)
        actions[..., : len(self.mask)] += np.expand_dims(self.offset(state), axis=-2)
        return actions


@dataclasses.dataclass(frozen=True)
class RobotOutputs:
    """The embodiment's ``*Outputs``: model width -> the robot's action format."""

    embodiment: Embodiment

    def forward(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        return self.embodiment.outputs(actions)


OutputStep = Unnormalize | AbsoluteActions | RobotOutputs


def output_chain(config: PolicyConfig, norm_stats: Mapping[str, normalize.NormStats]) -> tuple[OutputStep, ...]:
    steps: list[OutputStep] = [Unnormalize(norm_stats["actions"], config.use_quantile_norm)]
    if config.delta_action_mask is not None:
        steps.append(AbsoluteActions(config.delta_action_mask))
    steps.append(RobotOutputs(config.embodiment))
    return tuple(steps)


def apply_outputs(chain: Sequence[OutputStep], actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Model actions [..., H, model width] -> robot actions; ``state``: the un-normalised model state."""
    for step in chain:
        actions = step.forward(actions, state)
    return actions


# ----- inverses ---------------------------------------------------------------------------------------------------


def _pad_to_model_width(actions: np.ndarray, model_width: int) -> np.ndarray:
    """Inverse of the ``[:, :D_r]`` slice every robot format ends with: the lost dims come back as zeros and
    are never guided (their true values are unknown)."""
    padded = np.zeros((*actions.shape[:-1], model_width), dtype=np.float64)
    padded[..., : actions.shape[-1]] = actions
    return padded


def _aloha_to_model(actions: np.ndarray, model_width: int) -> np.ndarray:
    return _pad_to_model_width(aloha.outputs_inverse(actions), model_width)


# Robot formats by embodiment name: an embodiment missing here cannot serve RTC.
ROBOT_OUTPUT_INVERSES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "aloha": _aloha_to_model,
    "droid": _pad_to_model_width,
    "libero": _pad_to_model_width,
}


def _invert_robot(step: RobotOutputs, actions: np.ndarray, state: np.ndarray, model_width: int) -> np.ndarray:
    inverse = ROBOT_OUTPUT_INVERSES.get(step.embodiment.name)
    if inverse is None:
        raise RtcUnsupportedError(
            f"'rtc': the output transform of embodiment {step.embodiment.name!r} has no registered inverse, so a "
            "previous chunk cannot be mapped back to the model (RTC is refused for this policy)"
        )
    return inverse(actions, model_width)


def _invert_absolute(step: AbsoluteActions, actions: np.ndarray, state: np.ndarray, model_width: int) -> np.ndarray:
    actions = np.array(actions, copy=True)
    actions[..., : len(step.mask)] -= np.expand_dims(step.offset(state), axis=-2)
    return actions


def _invert_unnormalize(step: Unnormalize, actions: np.ndarray, state: np.ndarray, model_width: int) -> np.ndarray:
    # Only the stats' own dims are real; the padded ones stay zero (unguided).
    dims = min(step.stats.mean.shape[-1], actions.shape[-1])
    out = np.zeros_like(actions)
    out[..., :dims] = normalize.normalize(actions[..., :dims], step.stats, use_quantiles=step.use_quantiles)
    return out


_INVERSES: dict[type, Callable[[Any, np.ndarray, np.ndarray, int], np.ndarray]] = {
    Unnormalize: _invert_unnormalize,
    AbsoluteActions: _invert_absolute,
    RobotOutputs: _invert_robot,
}


def check_invertible(chain: Sequence[OutputStep]) -> str | None:
    """Why this chain cannot be inverted, or ``None`` when every step has a registered inverse."""
    for step in chain:
        if type(step) not in _INVERSES:
            return f"output transform {type(step).__name__} has no registered inverse"
        if isinstance(step, RobotOutputs) and step.embodiment.name not in ROBOT_OUTPUT_INVERSES:
            return f"the output transform of embodiment {step.embodiment.name!r} has no registered inverse"
    return None


def invert_outputs(
    chain: Sequence[OutputStep], robot_actions: np.ndarray, state: np.ndarray, model_width: int
) -> np.ndarray:
    """Robot actions [K, D_r] -> model space [K, model width] (float64), undoing the chain in reverse order."""
    problem = check_invertible(chain)
    if problem is not None:
        raise RtcUnsupportedError(f"'rtc': {problem}, so RTC is refused for this policy")
    actions = np.asarray(robot_actions, dtype=np.float64)
    for step in reversed(chain):
        actions = _INVERSES[type(step)](step, actions, state, model_width)
    return actions
