"""Which openpi config an action model's parameters serve, as the runtime they name says (the native table,
or openpi's own TrainConfig). The action model's Triton I/O follows it, and so does the ensemble's."""

from __future__ import annotations

from collections.abc import Mapping

import triton_python_backend_utils as pb_utils

from openpi_triton.domain.configs import PolicyConfig
from openpi_triton.runtime_api import RuntimeUnavailableError, get_runtime
from openpi_triton.triton.model_params import ActionParams


def interface_config(raw: Mapping[str, str]) -> PolicyConfig:
    """The config whose robot inputs and outputs these (action model) parameters serve; load errors name the
    parameter."""
    try:
        params = ActionParams.parse(raw)
        return get_runtime(params.runtime).serving_config(params)
    except (ValueError, RuntimeUnavailableError) as exc:  # ParameterError included: it names the parameter
        raise pb_utils.TritonModelException(str(exc)) from None
