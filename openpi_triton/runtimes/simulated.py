"""Runtime ``simulated``: openpi's transforms around a model call that waits what a GPU cost curve says
(:mod:`openpi_triton.simulated_policy`); parameter ``cost_curve`` names the curve (:mod:`openpi_triton.cost_curve`).
For benchmarks of the serving stack on machines without a GPU; its numbers are labelled simulated."""

from __future__ import annotations

from collections.abc import Mapping

from openpi_triton import cost_curve
from openpi_triton.runtime_api import Placement, PolicyRuntime, RuntimeSpec
from openpi_triton.runtimes.native import RUNTIME as NATIVE
from openpi_triton.triton.model_params import ActionParams, ParameterError


def _check_parameters(params: Mapping[str, str]) -> None:
    name = params.get("cost_curve", "") or cost_curve.DEFAULT_CURVE
    try:
        cost_curve.load(name)
    except cost_curve.CostCurveError as exc:
        raise ParameterError(f"parameter 'cost_curve': {exc}") from None


def _load(params: ActionParams, placement: Placement) -> PolicyRuntime:
    from openpi_triton.native.policy import PolicyOptions
    from openpi_triton.simulated_device import SimulatedDevice
    from openpi_triton.simulated_policy import load_simulated_policy
    from openpi_triton.triton import backend

    checkpoint_dir, tokenizer_path = backend.resolve_weights(params.checkpoint_dir, params.tokenizer_path)
    options = PolicyOptions(
        batch_buckets=params.batch_buckets, default_prompt=params.default_prompt, tokenizer_path=tokenizer_path
    )
    curve = cost_curve.load(params.cost_curve or cost_curve.DEFAULT_CURVE)
    # The instances of one server on one device take turns, as batches on one GPU do.
    device = SimulatedDevice.of_server(placement.device_id)
    return load_simulated_policy(NATIVE.serving_config(params).name, checkpoint_dir, options, curve, device)


RUNTIME = RuntimeSpec(
    name="simulated",
    own_parameters=("cost_curve",),
    default_dtype="float32",
    needs_known_config=True,
    check_parameters=_check_parameters,
    serving_config=NATIVE.serving_config,  # the same table of configs
    load=_load,
)
