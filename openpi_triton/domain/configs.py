"""openpi's inference configs, by name: model type, embodiment, horizons, prompt length, norm-stats asset.

Only what inference needs is recorded; sizes of the networks come from the checkpoint itself.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from openpi_triton.contract.robot_metadata import POLICY_METADATA
from openpi_triton.domain.embodiments import EMBODIMENTS, Embodiment


def make_bool_mask(*dims: int) -> tuple[bool, ...]:
    """openpi's mask notation: positive n -> n Trues, negative n -> n Falses."""
    out: list[bool] = []
    for d in dims:
        out.extend([d > 0] * abs(d))
    return tuple(out)


ALOHA_DELTA_MASK = make_bool_mask(6, -1, 6, -1)
LIBERO_DELTA_MASK = make_bool_mask(6, -1)


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """What openpi's ``TrainConfig`` says about serving one model."""

    name: str
    pi05: bool
    embodiment_name: str
    asset_id: str
    action_horizon: int
    max_token_len: int
    action_dim: int = 32
    discrete_state_input: bool | None = None
    delta_action_mask: tuple[bool, ...] | None = None
    default_prompt: str | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def embodiment(self) -> Embodiment:
        return EMBODIMENTS[self.embodiment_name]

    @property
    def uses_discrete_state(self) -> bool:
        return self.pi05 if self.discrete_state_input is None else self.discrete_state_input

    @property
    def use_quantile_norm(self) -> bool:
        return self.pi05

    @property
    def model_type(self) -> str:
        return "pi05" if self.pi05 else "pi0"


# Per embodiment: openpi's norm-stats asset id and default delta-action mask.
_EMBODIMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "aloha": {"asset_id": "trossen", "delta_action_mask": ALOHA_DELTA_MASK},
    "droid": {"asset_id": "droid"},
    "libero": {"asset_id": "physical-intelligence/libero"},
}


def _config(name: str, embodiment: str, pi05: bool, horizon: int, **kw: Any) -> PolicyConfig:
    """openpi's defaults: max_token_len 200 for pi0.5 and 48 for pi0; keyword arguments override."""
    fields = {
        **_EMBODIMENT_DEFAULTS[embodiment],
        "max_token_len": 200 if pi05 else 48,
        "metadata": dict(POLICY_METADATA.get(name, {})),
        **kw,
    }
    return PolicyConfig(name=name, pi05=pi05, embodiment_name=embodiment, action_horizon=horizon, **fields)


def _aloha(name: str, pi05: bool, **kw: Any) -> PolicyConfig:
    return _config(name, "aloha", pi05, 50, **kw)


def _droid(name: str, pi05: bool, horizon: int, **kw: Any) -> PolicyConfig:
    return _config(name, "droid", pi05, horizon, **kw)


def _libero(name: str, pi05: bool, horizon: int, **kw: Any) -> PolicyConfig:
    return _config(name, "libero", pi05, horizon, **kw)


POLICY_CONFIGS: dict[str, PolicyConfig] = {
    c.name: c
    for c in (
        _aloha("pi0_aloha", False),
        _aloha("pi05_aloha", True),
        _aloha("pi0_aloha_towel", False, default_prompt="fold the towel"),
        _aloha(
            "pi0_aloha_tupperware",
            False,
            default_prompt="open the tupperware and put the food on the plate",
        ),
        _aloha("pi0_aloha_pen_uncap", False, default_prompt="uncap the pen"),
        _aloha("pi05_aloha_pen_uncap", True, default_prompt="uncap the pen"),
        _aloha(
            "pi0_aloha_sim",
            False,
            asset_id="lerobot/aloha_sim_transfer_cube_human",
            default_prompt="Transfer cube",
            delta_action_mask=None,
        ),
        _droid("pi0_droid", False, 10),
        _droid("pi05_droid", True, 15),
        _droid("pi05_droid_finetune", True, 16),
        _droid("pi05_full_droid_finetune", True, 16),
        _libero("pi0_libero", False, 50, delta_action_mask=LIBERO_DELTA_MASK),
        _libero("pi05_libero", True, 10, discrete_state_input=False),
    )
}


def get_policy_config(name: str) -> PolicyConfig:
    """The named config, or a ``ValueError`` listing close matches and every supported name."""
    if name in POLICY_CONFIGS:
        return POLICY_CONFIGS[name]
    close = difflib.get_close_matches(name, POLICY_CONFIGS, n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(
        f"model_config_name {name!r} is not supported by the native runtime.{hint} "
        f"Supported: {sorted(POLICY_CONFIGS)}. Other openpi configs (pi0-FAST, LoRA) need runtime 'openpi'."
    )
