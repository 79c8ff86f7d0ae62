"""Real-Time Chunking (RTC) requests: the optional ``rtc`` key of an observation, checked in the robot's terms.

A robot that keeps executing its current chunk while the server computes the next one sends the not yet
executed remainder of that chunk (robot space, exactly as the server returned it) and how many control ticks
the call will take. The flow-matching sampler then pins the first ``inference_delay`` actions of the new
chunk to that remainder and steers the following ones toward it with decaying weights (docs/rtc.md).

This module only parses and validates; runtimes decide whether they can honour the request.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

RTC_KEY = "rtc"
PREV_ACTIONS = "prev_actions"
INFERENCE_DELAY = "inference_delay"
GUIDED_HORIZON = "guided_horizon"
MAX_GUIDANCE_WEIGHT = "max_guidance_weight"
SCHEDULE = "schedule"
MODE = "mode"
FIELDS = (PREV_ACTIONS, INFERENCE_DELAY, GUIDED_HORIZON, MAX_GUIDANCE_WEIGHT, SCHEDULE, MODE)

# Order matters: the index is what the compiled sampler receives.
SCHEDULES = ("exp", "linear", "ones", "zeros")
MODES = ("vjp", "identity")
DEFAULT_SCHEDULE = "exp"
DEFAULT_MODE = "vjp"
# The paper's and the reference implementation's value.
DEFAULT_MAX_GUIDANCE_WEIGHT = 5.0
# Far above any useful value (about the number of denoising steps); larger ones make few-step sampling diverge.
MAX_GUIDANCE_WEIGHT_LIMIT = 100.0
# Largest |value| of a remainder once mapped into the model's normalised action space (where the sampler's noise
# is N(0, 1) and the training actions lie about in [-1, 1]: quantile norm maps q01..q99 there, z-score one σ).
# 100 is far beyond any chunk a model produces, and well below where guidance toward it overflows float32.
MAX_NORMALIZED_ABS = 100.0


class RtcUnsupportedError(ValueError):
    """The served policy cannot honour an ``rtc`` request (a refusal of the request, never a silent fallback)."""


@dataclasses.dataclass(frozen=True)
class RtcRequest:
    """One row's RTC request, defaults applied.

    ``prev_actions``: float64 [K, robot action dim], row 0 = the action of the first control tick after the
    observation was captured; ``guided_horizon`` (ℓ) <= K rows are guided, the first ``frozen_rows`` = min(d, ℓ)
    of them with full weight.
    """

    prev_actions: np.ndarray
    inference_delay: int
    guided_horizon: int
    max_guidance_weight: float
    schedule: str
    mode: str

    @property
    def applied(self) -> bool:
        """Whether this request changes sampling at all (an empty remainder guides nothing)."""
        return self.guided_horizon > 0

    @property
    def frozen_rows(self) -> int:
        return min(self.inference_delay, self.guided_horizon)

    @property
    def schedule_index(self) -> int:
        return SCHEDULES.index(self.schedule)

    def echo(self, robot_actions: np.ndarray) -> dict[str, Any]:
        """What the response's ``rtc`` key reports back: the effective values, and how far the new chunk's
        frozen rows are from the previous chunk in robot space (for the robot's monitoring)."""
        return {
            "applied": self.applied,
            INFERENCE_DELAY: self.inference_delay,
            GUIDED_HORIZON: self.guided_horizon,
            MAX_GUIDANCE_WEIGHT: self.max_guidance_weight,
            SCHEDULE: self.schedule,
            MODE: self.mode,
            "prefix_max_abs_err": prefix_max_abs_err(self, robot_actions),
        }


def _field(name: str) -> str:
    return f"'{RTC_KEY}/{name}'"


def _scalar(value: Any, name: str, expected: str) -> Any:
    """A Python scalar from a scalar, a 0-d array or a one-element array (Triton inputs carry shape [1])."""
    if isinstance(value, np.ndarray | list | tuple):
        array = np.asarray(value)
        if array.size != 1:
            raise ValueError(f"{_field(name)}: expected {expected}, got shape {list(array.shape)}")
        value = array.reshape(-1)[0]
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _integer(value: Any, name: str, low: int, high: int, what: str) -> int:
    expected = f"an integer in [{low}, {high}] ({what})"
    value = _scalar(value, name, expected)
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise ValueError(f"{_field(name)}: expected {expected}, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{_field(name)}: expected {expected}, got {value}")
    return value


def _text(value: Any, name: str, choices: tuple[str, ...]) -> str:
    value = _scalar(value, name, f"one of {list(choices)}")
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value not in choices:
        raise ValueError(f"{_field(name)}: expected one of {list(choices)}, got {value!r}")
    return str(value)


def _prev_actions(value: Any, horizon: int, width: int) -> np.ndarray:
    expected = f"float [K, {width}] with 0 <= K <= {horizon} (the unexecuted rest of the previous chunk)"
    if value is None:
        raise ValueError(f"{_field(PREV_ACTIONS)}: required, expected {expected}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{_field(PREV_ACTIONS)}: expected {expected}, got a ragged or non-numeric value") from None
    if array.ndim != 2 or array.shape[1] != width or array.shape[0] > horizon:
        raise ValueError(f"{_field(PREV_ACTIONS)}: expected {expected}, got shape {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"{_field(PREV_ACTIONS)}: values must be finite, got {int(np.sum(~np.isfinite(array)))} NaN/inf"
        )
    return array


def parse_rtc(value: Any, *, horizon: int, robot_action_dim: int) -> RtcRequest | None:
    """The ``rtc`` value of one observation -> a request (``None`` when absent); K = 0 gives a request that
    guides nothing (plain sampling, reported as not applied).

    Raises ``ValueError`` naming the field, what was expected and what arrived.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"'{RTC_KEY}': expected a dict with {list(FIELDS)}, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in FIELDS)
    if unknown:
        raise ValueError(f"'{RTC_KEY}': unknown keys {unknown}; expected some of {list(FIELDS)}")
    prev = _prev_actions(value.get(PREV_ACTIONS), horizon, robot_action_dim)
    remainder = prev.shape[0]
    if INFERENCE_DELAY not in value:
        raise ValueError(f"{_field(INFERENCE_DELAY)}: required, expected an integer >= 0 (control ticks)")
    delay = _integer(value[INFERENCE_DELAY], INFERENCE_DELAY, 0, horizon, "control ticks until the new chunk is used")
    if remainder > 0 and delay > remainder:
        raise ValueError(
            f"{_field(INFERENCE_DELAY)}: {delay} ticks but {_field(PREV_ACTIONS)} has only {remainder} rows: the "
            "previous chunk must cover the delay (send a longer remainder, or start inference earlier)"
        )
    guided = value.get(GUIDED_HORIZON)
    if guided is None or remainder == 0:
        guided = remainder
    else:
        guided = _integer(guided, GUIDED_HORIZON, 1, remainder, "rows to guide, <= K")
    beta = value.get(MAX_GUIDANCE_WEIGHT)
    if beta is None:
        beta = DEFAULT_MAX_GUIDANCE_WEIGHT
    else:
        beta = _scalar(beta, MAX_GUIDANCE_WEIGHT, "a number")
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta):
            raise ValueError(f"{_field(MAX_GUIDANCE_WEIGHT)}: expected a finite number, got {beta!r}")
        if not 0.0 <= beta <= MAX_GUIDANCE_WEIGHT_LIMIT:
            raise ValueError(
                f"{_field(MAX_GUIDANCE_WEIGHT)}: expected 0 <= β <= {MAX_GUIDANCE_WEIGHT_LIMIT}, got {beta}"
            )
    schedule = DEFAULT_SCHEDULE if value.get(SCHEDULE) is None else _text(value[SCHEDULE], SCHEDULE, SCHEDULES)
    mode = DEFAULT_MODE if value.get(MODE) is None else _text(value[MODE], MODE, MODES)
    return RtcRequest(prev, delay, guided, float(beta), schedule, mode)


def prefix_max_abs_err(request: RtcRequest, robot_actions: np.ndarray) -> float:
    """How far the new chunk's frozen rows are from the previous chunk (robot space), for the echo."""
    rows = request.frozen_rows
    if rows == 0:
        return 0.0
    diff = np.asarray(robot_actions)[:rows] - request.prev_actions[:rows]
    return float(np.max(np.abs(diff)))
