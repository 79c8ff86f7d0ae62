"""``config.pbtxt`` parameters of the three models, parsed and validated once at load.

Every value in ``config.pbtxt`` is a string. Empty strings mean "use the default"; in particular an empty
``checkpoint_dir`` selects the embedded default model (built on first use).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from openpi_triton.domain.batching import DEFAULT_BATCH_BUCKETS, parse_buckets
from openpi_triton.domain.configs import POLICY_CONFIGS, PolicyConfig, get_policy_config
from openpi_triton.limits import DEFAULT_INPUT_LIMITS, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_PROMPT_BYTES, InputLimits
from openpi_triton.prompt_format import DEFAULT_GENERATION_PROMPT_FORMAT, validate_prompt_format
from openpi_triton.runtime_api import RuntimeSpec, get_runtime, runtime_names

DEFAULT_ACTION_PROMPT_TEMPLATE = "{task}. Subtask: {subtask}"


class ParameterError(ValueError):
    """A bad ``config.pbtxt`` parameter; the message names it and says what is expected."""


def read_parameters(model_config: Mapping[str, Any] | str) -> dict[str, str]:
    """``{"key": {"string_value": "v"}}`` -> ``{"key": "v"}`` (whitespace stripped)."""
    config = json.loads(model_config) if isinstance(model_config, str) else model_config
    return {k: str(v.get("string_value", "")).strip() for k, v in (config.get("parameters") or {}).items()}


def _int(params: Mapping[str, str], key: str, default: int, minimum: int = 1) -> int:
    raw = params.get(key, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParameterError(f"parameter '{key}': expected an integer >= {minimum}, got {raw!r}") from None
    if value < minimum:
        raise ParameterError(f"parameter '{key}': expected an integer >= {minimum}, got {value}")
    return value


def _choice(params: Mapping[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    value = params.get(key, "") or default
    if value not in choices:
        raise ParameterError(f"parameter '{key}': expected one of {list(choices)}, got {value!r}")
    return value


def _policy_config(params: Mapping[str, str]) -> PolicyConfig:
    name = params.get("model_config_name", "")
    if not name:
        raise ParameterError("parameter 'model_config_name' is required (an openpi config name, e.g. pi05_aloha)")
    try:
        return get_policy_config(name)
    except ValueError as exc:
        raise ParameterError(f"parameter 'model_config_name': {exc}") from None


def input_limits(params: Mapping[str, str]) -> InputLimits:
    """``max_image_pixels`` / ``max_prompt_bytes`` (empty: the defaults the bridge uses too)."""
    return InputLimits(
        max_image_pixels=_int(params, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
        max_prompt_bytes=_int(params, "max_prompt_bytes", DEFAULT_MAX_PROMPT_BYTES),
    )


@dataclasses.dataclass(frozen=True)
class ActionParams:
    runtime: str
    model_config_name: str
    # The native runtime's description of the config; None for openpi configs only runtime 'openpi' knows.
    config: PolicyConfig | None
    checkpoint_dir: str
    tokenizer_path: str
    default_prompt: str | None
    dtype: str
    num_steps: int
    batch_buckets: tuple[int, ...]
    # runtime 'openpi' only: the robot format for configs with their own input transform, and a Python file
    # run before the config is looked up (to register custom configs).
    embodiment: str = ""
    openpi_setup_script: str = ""
    limits: InputLimits = DEFAULT_INPUT_LIMITS
    # runtime 'simulated' only: the GPU cost curve its model calls wait for (a name or a .json path).
    cost_curve: str = ""
    # runtime 'native' only: serve Real-Time Chunking requests (one more compiled program per batch bucket).
    rtc: bool = True

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ActionParams:
        try:
            buckets = parse_buckets(params.get("batch_buckets", "") or DEFAULT_BATCH_BUCKETS)
        except ValueError as exc:
            raise ParameterError(f"parameter 'batch_buckets': {exc}") from None
        spec = _runtime(params)
        name = params.get("model_config_name", "")
        return cls(
            runtime=spec.name,
            model_config_name=name,
            config=_policy_config(params) if spec.needs_known_config else POLICY_CONFIGS.get(name),
            checkpoint_dir=params.get("checkpoint_dir", ""),
            tokenizer_path=params.get("tokenizer_path", ""),
            default_prompt=params.get("default_prompt", "") or None,
            dtype=_choice(params, "dtype", ("float32", "bfloat16"), spec.default_dtype),
            num_steps=_int(params, "num_steps", 10),
            batch_buckets=buckets,
            embodiment=params.get("embodiment", ""),
            openpi_setup_script=params.get("openpi_setup_script", ""),
            limits=input_limits(params),
            cost_curve=params.get("cost_curve", ""),
            rtc=_choice(params, "rtc", ("on", "off"), "on") == "on",
        )


def _runtime(params: Mapping[str, str]) -> RuntimeSpec:
    """The ``runtime`` parameter's spec, after its own rules and the rule that another runtime's parameters
    are not set."""
    try:
        spec = get_runtime(params.get("runtime", "") or "native")
    except ValueError as exc:
        raise ParameterError(f"parameter 'runtime': {exc}") from None
    spec.check_parameters(params)
    for other in runtime_names():
        if other == spec.name:
            continue
        for key in get_runtime(other).own_parameters:
            if params.get(key, ""):
                raise ParameterError(f"parameter '{key}': only used by runtime '{other}'")
    return spec


def validate_action_prompt_template(template: str) -> str:
    for field in ("{task}", "{subtask}"):
        if field not in template:
            raise ParameterError(f"parameter 'action_prompt_template': must contain {field}, got {template!r}")
    try:
        template.format(task="t", subtask="s")
    except (KeyError, IndexError, ValueError) as exc:
        raise ParameterError(
            f"parameter 'action_prompt_template': invalid format string {template!r} ({exc}); "
            "only {task} and {subtask} are allowed"
        ) from None
    return template


@dataclasses.dataclass(frozen=True)
class PlannerParams:
    config: PolicyConfig
    checkpoint_dir: str
    tokenizer_path: str
    dtype: str
    max_generation_tokens: int
    generation_prompt_format: str
    action_prompt_template: str
    batch_buckets: tuple[int, ...]
    limits: InputLimits = DEFAULT_INPUT_LIMITS

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> PlannerParams:
        fmt = params.get("generation_prompt_format", "") or DEFAULT_GENERATION_PROMPT_FORMAT
        try:
            validate_prompt_format(fmt)
        except ValueError as exc:
            raise ParameterError(f"parameter {exc}") from None
        try:
            buckets = parse_buckets(params.get("batch_buckets", "") or DEFAULT_BATCH_BUCKETS)
        except ValueError as exc:
            raise ParameterError(f"parameter 'batch_buckets': {exc}") from None
        return cls(
            config=_policy_config(params),
            checkpoint_dir=params.get("checkpoint_dir", ""),
            tokenizer_path=params.get("tokenizer_path", ""),
            dtype=_choice(params, "dtype", ("float32", "bfloat16"), "float32"),
            max_generation_tokens=_int(params, "max_generation_tokens", 20),
            generation_prompt_format=fmt,
            action_prompt_template=validate_action_prompt_template(
                params.get("action_prompt_template", "") or DEFAULT_ACTION_PROMPT_TEMPLATE
            ),
            batch_buckets=buckets,
            limits=input_limits(params),
        )


@dataclasses.dataclass(frozen=True)
class CombinedParams:
    """The ensemble's own parameters; its inputs and outputs follow its action model (see ``inherit``)."""

    action_model: str
    planner_model: str
    # A planner call that takes longer is abandoned: the action runs with the robot's own prompt.
    planner_timeout_ms: int = 10_000

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> CombinedParams:
        return cls(
            action_model=params.get("action_model", "") or "action",
            planner_model=params.get("planner_model", "") or "planner",
            planner_timeout_ms=_int(params, "planner_timeout_ms", 10_000),
        )
