"""What robots receive on connect, derived from the served model's Triton config (read over gRPC).

openpi sends its policy metadata (``reset_pose`` for ALOHA configs) and openpi-flash adds
``action_horizon`` and ``image_specs``. Python-backend auto-completion cannot add parameters to a model
config, so the metadata is derived from what the served config does carry:

- ``action_horizon``: the first dim of the ``actions`` output;
- ``image_specs``: every UINT8 camera input, in declaration order; channels-first ``[3, -1, -1]`` inputs
  advertise ``[3, 224, 224]``, the others ``[224, 224, 3]``;
- policy metadata: openpi's for the ``model_config_name`` parameter (:data:`POLICY_METADATA`), overridden by an optional
  ``policy_metadata`` parameter (a JSON object) for configs openpi-triton does not know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from openpi_triton.contract.images import MODEL_IMAGE_SIZE
from openpi_triton.contract.io_names import ACTIONS
from openpi_triton.tensor_names import key_path

# openpi's policy metadata (``TrainConfig.policy_metadata``) of the configs that have one: the one home of it,
# for the native runtime's config table and for robots on connect.
ALOHA_RESET_POSE = [0, -1.5, 1.5, 0, 0, 0]
POLICY_METADATA: dict[str, dict[str, Any]] = {
    name: {"reset_pose": ALOHA_RESET_POSE}
    for name in ("pi0_aloha", "pi05_aloha", "pi0_aloha_towel", "pi0_aloha_tupperware")
}


def _dims(entry: Mapping[str, Any]) -> list[int]:
    return [int(d) for d in entry.get("dims", [])]


def robot_metadata(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """``model_config``: the JSON form of ``get_model_config(...).config`` for the action-slot model."""
    params = {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}
    metadata: dict[str, Any] = {}
    metadata.update(POLICY_METADATA.get(params.get("model_config_name", ""), {}))
    if params.get("policy_metadata"):
        try:
            extra = json.loads(params["policy_metadata"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"parameter 'policy_metadata': expected a JSON object ({exc})") from None
        if not isinstance(extra, dict):
            raise ValueError("parameter 'policy_metadata': expected a JSON object")
        metadata.update(extra)
    size = MODEL_IMAGE_SIZE
    metadata["image_specs"] = [
        {
            "path": list(key_path(entry["name"])),
            "target_shape": [3, size, size] if _dims(entry)[:1] == [3] else [size, size, 3],
            "dtype": "uint8",
        }
        for entry in model_config.get("input", [])
        if entry.get("data_type") == "TYPE_UINT8"
    ]
    actions = next((o for o in model_config.get("output", []) if o.get("name") == ACTIONS), None)
    if actions is not None and _dims(actions) and _dims(actions)[0] > 0:
        metadata["action_horizon"] = _dims(actions)[0]
    return metadata


def unpublished_metadata(policy_metadata: Mapping[str, Any], model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The served policy's metadata keys robots would not receive from ``model_config`` (an openpi config
    this project's table does not know, whose metadata only openpi has: the model must not load silently
    without it)."""
    published = robot_metadata(model_config)
    return {key: value for key, value in policy_metadata.items() if key not in published}


def publish_instruction(missing: Mapping[str, Any]) -> str:
    """The config.pbtxt line that publishes ``missing`` to robots."""
    # A protobuf text string: backslashes first, then quotes.
    value = json.dumps(dict(missing)).replace("\\", "\\\\").replace('"', '\\"')
    return f'parameters {{ key: "policy_metadata" value: {{ string_value: "{value}" }} }}'
