"""The bridge's check that combined_ensemble and its children serve one interface (a half-done swap)."""

from __future__ import annotations

from openpi_bridge import consistency
from openpi_bridge.triton_gateway import ModelInterface, interface_from_config
from openpi_triton.domain.configs import get_policy_config
from openpi_triton.triton import io_spec


def _interface(name: str, config_name: str, inputs: list[io_spec.TensorSpec]) -> ModelInterface:
    config = {
        "input": [s.as_config() for s in inputs],
        "parameters": {"model_config_name": {"string_value": config_name}},
    }
    return interface_from_config(name, config)


def test_a_matching_pair_passes_and_a_swapped_action_model_is_named() -> None:
    aloha, droid = get_policy_config("pi05_aloha"), get_policy_config("pi05_droid")
    ensemble = _interface("combined_ensemble", "pi05_aloha", io_spec.combined_inputs(aloha))
    assert (
        consistency.action_mismatch(ensemble, _interface("action", "pi05_aloha", io_spec.action_inputs(aloha))) is None
    )
    problem = consistency.action_mismatch(ensemble, _interface("action", "pi05_droid", io_spec.action_inputs(droid)))
    assert problem is not None
    assert "now serves 'pi05_droid' (model 'action'), but 'combined_ensemble' still declares" in problem
    assert "images.cam_high" in problem


def test_planner_cameras_must_be_the_ensembles() -> None:
    aloha, droid = get_policy_config("pi05_aloha"), get_policy_config("pi05_droid")
    ensemble = _interface("combined_ensemble", "pi05_aloha", io_spec.combined_inputs(aloha))
    assert (
        consistency.planner_mismatch(ensemble, _interface("planner", "pi05_aloha", io_spec.planner_inputs(aloha)))
        is None
    )
    problem = consistency.planner_mismatch(ensemble, _interface("planner", "pi05_droid", io_spec.planner_inputs(droid)))
    assert problem is not None and "observation/exterior_image_1_left" in problem
