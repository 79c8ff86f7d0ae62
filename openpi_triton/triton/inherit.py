"""One place names the served model: ``planner`` and ``combined_ensemble`` follow the action model's config.

Each model keeps its own ``config.pbtxt`` (Triton's convention), but a parameter that the planner or the
ensemble leaves empty is read from the action model's ``config.pbtxt`` (the model named by their
``action_model`` parameter, default ``action``) in the same model repository, when they load. So an operator
edits one file to change checkpoint, config or embodiment; a value set in the planner's or the ensemble's
own file still wins (a planner on another checkpoint, say). What makes them load again after that edit is
:mod:`openpi_triton.triton.follower`.

Needs the action model's folder beside the inheriting model's, as in a local repository (a cloud repository
that Triton copies model by model cannot be read this way: set the values in each model then).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

from openpi_triton.triton.model_params import ParameterError

# What the planner takes from the action model: the same pi0.5 checkpoint, config and dtype.
PLANNER_INHERITS = ("model_config_name", "checkpoint_dir", "tokenizer_path", "dtype")
# What the ensemble's inputs and outputs follow: the action model's robot interface.
ENSEMBLE_INHERITS = ("model_config_name", "runtime", "embodiment", "openpi_setup_script")
DEFAULT_ACTION_MODEL = "action"


def read_config_parameters(config_file: pathlib.Path) -> dict[str, str]:
    """``parameters`` of a ``config.pbtxt`` (Triton's text format), values stripped."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        config = text_format.Parse(config_file.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ParameterError(f"{config_file} is not a valid config.pbtxt: {exc}") from None
    return {key: value.string_value.strip() for key, value in config.parameters.items()}


def action_model_name(own: Mapping[str, str]) -> str:
    return own.get("action_model", "") or DEFAULT_ACTION_MODEL


def inherited(own: Mapping[str, str], model_dir: pathlib.Path, keys: tuple[str, ...]) -> dict[str, str]:
    """``own`` parameters with each empty one of ``keys`` filled from the action model's ``config.pbtxt``."""
    missing = [k for k in keys if not own.get(k, "")]
    if not missing:
        return dict(own)
    action = action_model_name(own)
    config_file = model_dir.parent / action / "config.pbtxt"
    if not config_file.is_file():
        raise ParameterError(
            f"parameters {missing} are empty, so they follow the action model '{action}', but {config_file} "
            "does not exist: set them in this model's config.pbtxt, or set 'action_model' to the action "
            "model of this repository"
        )
    source = read_config_parameters(config_file)
    return {**own, **{k: source[k] for k in missing if source.get(k, "")}}
