"""The ``rtc.*`` inputs a request to the action model carries, completed so that every request carries all six.

Triton's dynamic batcher groups requests to a model with optional inputs only when they carry the same set of
inputs (and equal shapes, except ragged ``rtc.prev_actions``). A robot without ``rtc`` therefore gets an empty
remainder (zero rows: plain sampling), and the optional fields a robot left out get their defaults written out,
which is exactly what the action model would have used. ``combined_ensemble`` sends its child requests this way.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from openpi_triton.domain import rtc
from openpi_triton.tensor_names import tensor_name

PREV_ACTIONS = tensor_name((rtc.RTC_KEY, rtc.PREV_ACTIONS))
INFERENCE_DELAY = tensor_name((rtc.RTC_KEY, rtc.INFERENCE_DELAY))
GUIDED_HORIZON = tensor_name((rtc.RTC_KEY, rtc.GUIDED_HORIZON))
MAX_GUIDANCE_WEIGHT = tensor_name((rtc.RTC_KEY, rtc.MAX_GUIDANCE_WEIGHT))
SCHEDULE = tensor_name((rtc.RTC_KEY, rtc.SCHEDULE))
MODE = tensor_name((rtc.RTC_KEY, rtc.MODE))
NAMES = (PREV_ACTIONS, INFERENCE_DELAY, GUIDED_HORIZON, MAX_GUIDANCE_WEIGHT, SCHEDULE, MODE)


def _column(rows: int, value: object, dtype: object) -> np.ndarray:
    return np.full((rows, 1), value, dtype=dtype)


def complete(sent: Mapping[str, np.ndarray], rows: int, robot_action_dim: int) -> dict[str, np.ndarray]:
    """``sent``: the request's rtc tensors (batch first, any subset). Returns all six.

    Nothing sent: an empty remainder and delay 0. Some sent: the required ones (``prev_actions``,
    ``inference_delay``) are left to the model to refuse when missing, only the optional ones are defaulted,
    ``guided_horizon`` to the remainder's length K as the model does.
    """
    completed = {name: np.asarray(value) for name, value in sent.items() if name in NAMES}
    if not completed:
        completed[PREV_ACTIONS] = np.zeros((rows, 0, robot_action_dim), np.float32)
        completed[INFERENCE_DELAY] = _column(rows, 0, np.int32)
    elif PREV_ACTIONS not in completed or INFERENCE_DELAY not in completed:
        return completed  # the model's error names the missing field
    remainder = completed[PREV_ACTIONS].shape[1] if completed[PREV_ACTIONS].ndim == 3 else 0
    completed.setdefault(GUIDED_HORIZON, _column(rows, remainder, np.int32))
    completed.setdefault(MAX_GUIDANCE_WEIGHT, _column(rows, rtc.DEFAULT_MAX_GUIDANCE_WEIGHT, np.float32))
    completed.setdefault(SCHEDULE, _column(rows, rtc.DEFAULT_SCHEDULE.encode(), np.object_))
    completed.setdefault(MODE, _column(rows, rtc.DEFAULT_MODE.encode(), np.object_))
    return completed
