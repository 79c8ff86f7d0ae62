"""An openpi ``TrainConfig`` as the serving description the Triton models and the bridge need.

The robot-facing tensors come from the embodiment (which observation keys a robot sends), the action chunk
shape from the model config. The embodiment is recognised from the config's robot input transform; a
config with a transform of its own names one with the ``embodiment`` parameter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from openpi_triton.domain.configs import POLICY_CONFIGS, PolicyConfig
from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.openpi_runtime import environment

# openpi's robot input transforms -> this project's embodiment with the same observation format.
EMBODIMENT_OF_TRANSFORM = {"AlohaInputs": "aloha", "DroidInputs": "droid", "LiberoInputs": "libero"}


def load_train_config(name: str, compile_mode: str | None) -> Any:
    """openpi's ``get_config(name)``, with the PyTorch compile mode replaced when one is given."""
    from openpi.training import config as openpi_config

    try:
        train = openpi_config.get_config(name)
    except ValueError as exc:
        raise ValueError(f"parameter 'model_config_name': {exc}") from None
    if compile_mode is not None and hasattr(train.model, "pytorch_compile_mode"):
        mode = None if compile_mode == "none" else compile_mode
        train = dataclasses.replace(train, model=dataclasses.replace(train.model, pytorch_compile_mode=mode))
    return train


def data_config_of(train: Any) -> Any:
    return train.data.create(train.assets_dirs, train.model)


def detect_embodiment(data_config: Any, override: str = "") -> str:
    if override:
        if override not in EMBODIMENTS:
            raise ValueError(f"parameter 'embodiment': expected one of {sorted(EMBODIMENTS)}, got {override!r}")
        return override
    for transform in data_config.data_transforms.inputs:
        found = EMBODIMENT_OF_TRANSFORM.get(type(transform).__name__)
        if found:
            return found
    names = [type(t).__name__ for t in data_config.data_transforms.inputs]
    raise ValueError(
        f"cannot tell the robot's observation format from the config's input transforms {names}; "
        f"set parameter 'embodiment' to one of {sorted(EMBODIMENTS)}"
    )


def serving_config(name: str, train: Any, embodiment_override: str = "") -> PolicyConfig:
    """What the Triton I/O and robot metadata need to know about one openpi config."""
    data_config = data_config_of(train)
    model = train.model
    model_type = str(getattr(model.model_type, "value", model.model_type))
    known = POLICY_CONFIGS.get(name)
    return PolicyConfig(
        name=name,
        pi05=model_type == "pi05",
        embodiment_name=detect_embodiment(data_config, embodiment_override),
        asset_id=data_config.asset_id or "",
        action_horizon=int(model.action_horizon),
        max_token_len=int(model.max_token_len),
        action_dim=int(model.action_dim),
        metadata=dict(train.policy_metadata or (known.metadata if known else {})),
    )


def resolve(name: str, *, embodiment: str = "", setup_script: str = "") -> tuple[Any, PolicyConfig]:
    """Imports openpi (clear error if absent), runs the setup script, returns (TrainConfig, serving config)."""
    compile_mode = environment.pytorch_compile_mode()
    environment.import_openpi()
    if setup_script:
        environment.run_setup_script(setup_script)
    train = load_train_config(name, compile_mode)
    return train, serving_config(name, train, embodiment)
