"""Runtime ``native``: this project's JAX implementation of pi0 / pi0.5 (:mod:`openpi_triton.native`)."""

from __future__ import annotations

from collections.abc import Mapping

from openpi_triton.domain.configs import PolicyConfig
from openpi_triton.runtime_api import Placement, PolicyRuntime, RuntimeSpec
from openpi_triton.triton.model_params import ActionParams


def _check_parameters(params: Mapping[str, str]) -> None:
    """Nothing beyond the shared rules: every parameter has a default (an empty checkpoint_dir serves the
    embedded default model)."""


def _serving_config(params: ActionParams) -> PolicyConfig:
    assert params.config is not None  # needs_known_config: ActionParams.parse looked it up
    return params.config


def _load(params: ActionParams, placement: Placement) -> PolicyRuntime:
    from openpi_triton.native.policy import PolicyOptions, load_policy
    from openpi_triton.triton import backend

    checkpoint_dir, tokenizer_path = backend.resolve_weights(params.checkpoint_dir, params.tokenizer_path)
    options = PolicyOptions(
        dtype=params.dtype,
        num_steps=params.num_steps,
        batch_buckets=params.batch_buckets,
        default_prompt=params.default_prompt,
        tokenizer_path=tokenizer_path,
        rtc=params.rtc,
    )
    device = backend.jax_device(placement)
    return load_policy(_serving_config(params).name, checkpoint_dir, options, device)


RUNTIME = RuntimeSpec(
    name="native",
    own_parameters=("rtc",),
    default_dtype="float32",
    needs_known_config=True,
    check_parameters=_check_parameters,
    serving_config=_serving_config,
    load=_load,
)
