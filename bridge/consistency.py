"""Does an ensemble's declared interface match what its child models serve right now?

``combined_ensemble`` declares the action model's robot inputs at its own load. When the action model is
swapped (another embodiment, a bad edit) and the ensemble has not followed yet, every request would fail
with a per-tensor error from deep inside Triton. The bridge checks the pair instead and reports one
mismatch, in health and on each request, until both agree again.
"""

from __future__ import annotations

from openpi_bridge.triton_gateway import InputSpec, ModelInterface

# Inputs the ensemble adds to the action model's own.
ENSEMBLE_ONLY_INPUTS = frozenset({"mode", "generation_prompt_format"})


def _signature(inputs: dict[str, InputSpec], skip: frozenset[str] = frozenset()) -> dict[str, tuple[str, tuple]]:
    return {name: (spec.datatype, spec.dims) for name, spec in inputs.items() if name not in skip}


def _served(interface: ModelInterface) -> str:
    return repr(interface.parameters.get("model_config_name") or "the config it inherited at load")


def action_mismatch(ensemble: ModelInterface, action: ModelInterface) -> str | None:
    """Why ``ensemble`` cannot serve through ``action`` now, or None when their robot inputs agree."""
    expected = _signature(ensemble.inputs, ENSEMBLE_ONLY_INPUTS)
    served = _signature(action.inputs)
    if expected == served:
        return None
    differing = sorted(set(expected) ^ set(served)) or sorted(n for n in expected if expected[n] != served[n])
    return (
        f"the models are being swapped (or were edited apart): this server now serves {_served(action)} "
        f"(model '{action.name}'), but '{ensemble.name}' still declares the inputs of {_served(ensemble)} "
        f"(inputs differ: {differing[:6]}); requests on this slot fail until both serve the same config"
    )


def planner_mismatch(ensemble: ModelInterface, planner: ModelInterface) -> str | None:
    """The planner's camera inputs must be ones the ensemble declares (it forwards only those)."""
    cameras = {n for n, spec in planner.inputs.items() if spec.datatype == "UINT8"}
    unknown = sorted(cameras - set(ensemble.inputs))
    if not unknown:
        return None
    return (
        f"the models are being swapped (or were edited apart): the planner '{planner.name}' serves cameras "
        f"{unknown[:6]} that '{ensemble.name}' does not take; requests that need a subtask fail until both "
        "serve the same config (mode 'action_only' does not need the planner)"
    )
