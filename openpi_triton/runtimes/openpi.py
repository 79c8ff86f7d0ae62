"""Runtime ``openpi``: an installed openpi's own model and transforms, batched
(:mod:`openpi_triton.openpi_runtime`). Serves every openpi config, its own registered ones included."""

from __future__ import annotations

from collections.abc import Mapping

from openpi_triton.domain.configs import PolicyConfig
from openpi_triton.runtime_api import Placement, PolicyRuntime, RuntimeSpec
from openpi_triton.triton.model_params import ActionParams, ParameterError


def _check_parameters(params: Mapping[str, str]) -> None:
    if not params.get("model_config_name", ""):
        raise ParameterError("parameter 'model_config_name' is required (an openpi config name)")
    if params.get("tokenizer_path", ""):
        raise ParameterError(
            "parameter 'tokenizer_path': not used by runtime 'openpi' (openpi reads its tokenizer from "
            "$OPENPI_DATA_HOME/big_vision); leave it empty"
        )
    if not params.get("checkpoint_dir", ""):
        raise ParameterError(
            "parameter 'checkpoint_dir': runtime 'openpi' needs a checkpoint (a local directory, or a "
            "gs:// URI openpi downloads itself); the embedded default is for runtime 'native'"
        )


def _serving_config(params: ActionParams) -> PolicyConfig:
    from openpi_triton.openpi_runtime import train_config

    try:
        return train_config.resolve(
            params.model_config_name, embodiment=params.embodiment, setup_script=params.openpi_setup_script
        )[1]
    except ValueError as exc:
        raise ValueError(f"runtime 'openpi': {exc}") from None


def _load(params: ActionParams, placement: Placement) -> PolicyRuntime:
    from openpi_triton.openpi_runtime import environment
    from openpi_triton.openpi_runtime.loader import load_openpi_policy
    from openpi_triton.openpi_runtime.policy import OpenpiOptions

    # Before JAX or torch start in this stub process: see only this instance's device.
    torch_device = environment.pin_device(placement.kind, placement.device_id)
    options = OpenpiOptions(
        weight_dtype=params.dtype,
        batch_buckets=params.batch_buckets,
        default_prompt=params.default_prompt,
        num_steps=params.num_steps,
        embodiment=params.embodiment,
        setup_script=params.openpi_setup_script,
        torch_device=torch_device,
    )
    return load_openpi_policy(params.model_config_name, params.checkpoint_dir, options)


RUNTIME = RuntimeSpec(
    name="openpi",
    own_parameters=("embodiment", "openpi_setup_script"),
    # openpi's own loader keeps weights in bfloat16.
    default_dtype="bfloat16",
    needs_known_config=False,
    check_parameters=_check_parameters,
    serving_config=_serving_config,
    load=_load,
)
