"""Which openpi config an action model's parameters serve: the native runtime's table, or openpi's own
TrainConfig (runtime ``openpi``). The action model's Triton I/O follows it, and so does the ensemble's."""

from __future__ import annotations

from collections.abc import Mapping

import triton_python_backend_utils as pb_utils

from openpi_triton.domain.configs import PolicyConfig, get_policy_config
from openpi_triton.triton.model_params import ActionParams, ParameterError


def serving_config(params: ActionParams) -> PolicyConfig:
    if params.runtime == "native":
        assert params.config is not None  # ActionParams.parse guarantees it
        return params.config
    from openpi_triton.openpi_runtime import environment, train_config

    try:
        return train_config.resolve(
            params.model_config_name, embodiment=params.embodiment, setup_script=params.openpi_setup_script
        )[1]
    except environment.OpenpiUnavailableError as exc:
        raise pb_utils.TritonModelException(str(exc)) from None
    except ValueError as exc:
        raise pb_utils.TritonModelException(f"runtime 'openpi': {exc}") from None


def interface_config(raw: Mapping[str, str]) -> PolicyConfig:
    """The config whose robot inputs and outputs these (action model) parameters serve; load errors name the
    parameter."""
    if raw.get("runtime", "") == "openpi":
        try:
            return serving_config(ActionParams.parse(raw))
        except ParameterError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
    try:
        return get_policy_config(raw.get("model_config_name", ""))
    except ValueError as exc:
        raise pb_utils.TritonModelException(f"parameter 'model_config_name': {exc}") from None
