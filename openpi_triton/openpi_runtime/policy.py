"""openpi's policy, batched: its input transforms per observation, one model call on the stacked batch,
its output transforms per row.

``Policy.infer`` takes one observation. Serving a batch by looping over it would cost one model call per
robot; instead the same pieces openpi's policy is made of (the composed transforms and the model's
``sample_actions``, see :mod:`openpi_triton.openpi_runtime.loader`) run around a single batched call,
padded to the same fixed buckets as the native runtime so nothing compiles after warm-up. The stages
(``prepare`` / ``sample`` / ``finish``) are the runtime interface of :mod:`openpi_triton.runtime_api`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from openpi_triton import staged_policy
from openpi_triton.domain import batching, rtc
from openpi_triton.domain.configs import PolicyConfig

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class OpenpiOptions:
    """Serving choices around openpi's model and transforms."""

    # bfloat16: what openpi's create_trained_policy does; float32 keeps the checkpoint's float32 weights.
    weight_dtype: str = "bfloat16"
    batch_buckets: tuple[int, ...] = batching.DEFAULT_BATCH_BUCKETS
    default_prompt: str | None = None
    # Flow-matching steps for models that take them (pi0 / pi0.5); None keeps openpi's default (10).
    num_steps: int | None = None
    embodiment: str = ""
    setup_script: str = ""
    torch_device: str = "cpu"

    def __post_init__(self) -> None:
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"dtype: expected one of {list(WEIGHT_DTYPES)}, got {self.weight_dtype!r}")
        object.__setattr__(self, "batch_buckets", batching.parse_buckets(self.batch_buckets))


# One batched model call: stacked transformed inputs (numpy, leading batch axis) and the batch's noise (None
# for models without) -> (state, actions) as numpy with the same leading axis.
BatchedSample = Callable[[dict[str, Any], "np.ndarray | None"], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class OpenpiParts:
    """What a loaded openpi model is made of, as plain callables (the loader builds them from openpi)."""

    input_transform: Callable[[dict[str, Any]], dict[str, Any]]
    output_transform: Callable[[dict[str, Any]], dict[str, Any]]
    sample: BatchedSample
    takes_noise: bool
    description: str


@dataclasses.dataclass
class OpenpiPrepared:
    """One observation after openpi's input transforms (a dict of arrays, unbatched)."""

    inputs: dict[str, Any]
    noise: np.ndarray | None


class OpenpiPolicy:
    """openpi's transforms and model, run batched."""

    def __init__(self, parts: OpenpiParts, config: PolicyConfig, options: OpenpiOptions) -> None:
        self.config = config
        self.options = options
        self.model_name = config.name
        self.parts = parts
        self.takes_noise = parts.takes_noise
        self._noise_rng = np.random.default_rng()
        self.compiled_buckets: set[int] = set()
        self._layout: dict[str, tuple[tuple[int, ...], str]] | None = None

    @property
    def action_horizon(self) -> int:
        return self.config.action_horizon

    def describe(self) -> str:
        return f"openpi {self.model_name} ({self.parts.description})"

    # ----- stages -----------------------------------------------------------------------------------------------

    def prepare(self, obs: Mapping[str, Any], noise: Any = None) -> OpenpiPrepared:
        """Checks the robot format (errors name the field), then runs openpi's input transforms."""
        request = rtc.parse_rtc(
            obs.get(rtc.RTC_KEY), horizon=self.config.action_horizon, robot_action_dim=self.config.embodiment.action_dim
        )
        if request is not None and request.applied:  # an empty remainder asks for nothing: plain sampling
            raise rtc.RtcUnsupportedError(self._rtc_refusal())
        self.config.embodiment.inputs(obs)
        checked_noise = self.check_noise(noise)
        # Transforms may modify their input in place: give them a copy of the containers.
        copied = _copy_tree({k: v for k, v in obs.items() if k != rtc.RTC_KEY})  # the server's key, not openpi's
        try:
            inputs = self.parts.input_transform(copied)
        except Exception as exc:
            raise ValueError(f"observation rejected by openpi's input transforms: {type(exc).__name__}: {exc}") from exc
        self._check_layout(inputs)
        return OpenpiPrepared(inputs=inputs, noise=checked_noise)

    def _rtc_refusal(self) -> str:
        if not self.takes_noise:  # pi0-FAST decodes tokens: no noise, no flow
            return f"'{rtc.RTC_KEY}': {self.model_name} is pi0-FAST, not a flow-matching model: RTC does not apply"
        return (
            f"'{rtc.RTC_KEY}': Real-Time Chunking is served by the native runtime; this model ({self.model_name}, "
            "runtime 'openpi') samples without guidance, so the request is refused rather than answered unguided"
        )

    def _check_layout(self, inputs: Mapping[str, Any]) -> None:
        """Rows are stacked into one batch: a row whose transformed arrays differ from the first one seen
        (the warm-up example) is this request's error, not the whole batch's."""
        layout = _layout(inputs)
        if self._layout is None:
            self._layout = layout
            return
        if layout != self._layout:
            differing = sorted(
                key for key in set(layout) | set(self._layout) if layout.get(key) != self._layout.get(key)
            )
            key = differing[0]
            raise ValueError(
                f"observation after openpi's input transforms: {key!r} is {_describe(layout.get(key))}, "
                f"expected {_describe(self._layout.get(key))} (as every other observation of this model)"
            )

    def check_noise(self, noise: Any) -> np.ndarray | None:
        if noise is not None and not self.takes_noise:
            raise ValueError(f"'noise': model {self.model_name} ({self.parts.description}) does not take noise")
        return staged_policy.check_noise(noise, (self.config.action_horizon, self.config.action_dim))

    def sample(self, prepared: Sequence[OpenpiPrepared]) -> list[dict[str, np.ndarray]]:
        """One model call per bucket-sized chunk; per row ``{"state", "actions"}`` as openpi's outputs hold them."""
        rows: list[dict[str, np.ndarray]] = []
        for start, stop, bucket in batching.split_into_buckets(len(prepared), self.options.batch_buckets):
            chunk = list(prepared[start:stop])
            padded = chunk + [chunk[0]] * (bucket - len(chunk))
            if bucket not in self.compiled_buckets:
                logger.info("openpi %s: first call with batch %d (compiles)", self.model_name, bucket)
            state, actions = self.parts.sample(_stack_trees([p.inputs for p in padded]), self._batched_noise(padded))
            self.compiled_buckets.add(bucket)
            rows += [{"state": np.asarray(state[i]), "actions": np.asarray(actions[i])} for i in range(len(chunk))]
        return rows

    def _batched_noise(self, padded: Sequence[OpenpiPrepared]) -> np.ndarray | None:
        # Always an argument for models that take it (drawn here for rows without): jit and torch.compile
        # specialise on whether ``noise`` is given, and warm-up passes it, so serving must too.
        if not self.takes_noise:
            return None
        shape = (self.config.action_horizon, self.config.action_dim)
        return np.stack(
            [p.noise if p.noise is not None else self._noise_rng.standard_normal(shape, np.float32) for p in padded]
        )

    def finish(self, prepared: OpenpiPrepared, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """openpi's output transforms for one row; returns the robot's actions as float32."""
        outputs = self.parts.output_transform(dict(raw))
        return np.asarray(outputs["actions"], dtype=np.float32)

    def rtc_echo(self, prepared: OpenpiPrepared, robot_actions: np.ndarray) -> None:
        return None  # ``prepare`` refuses every ``rtc`` request

    # ----- whole calls ------------------------------------------------------------------------------------------

    def infer_batch(
        self, observations: Sequence[Mapping[str, Any]], noise: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        """``Policy.infer`` for many observations in one model call per bucket; raises on the first bad one."""
        return staged_policy.infer_batch(self, observations, noise)

    def warmup(self) -> dict[int, float]:
        """Runs every bucket once so that serving never compiles (seconds per bucket)."""
        rng = np.random.default_rng(0)
        noise = np.zeros((self.config.action_horizon, self.config.action_dim), np.float32) if self.takes_noise else None
        example = self.prepare(self.config.embodiment.example(rng), noise)
        return staged_policy.warm_buckets(self, example, self.options.batch_buckets, f"openpi {self.model_name}")


def _layout(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[tuple[int, ...], str]]:
    """Every array of a transformed observation as ``{"image/base_0_rgb": (shape, dtype)}``."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_layout(value, f"{name}/"))
        else:
            array = np.asarray(value)
            out[name] = (tuple(array.shape), str(array.dtype))
    return out


def _describe(entry: tuple[tuple[int, ...], str] | None) -> str:
    return "absent" if entry is None else f"{entry[1]} {list(entry[0])}"


def _copy_tree(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _copy_tree(v) for k, v in tree.items()}
    return tree


def _stack_trees(trees: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = trees[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, Mapping):
            out[key] = _stack_trees([t[key] for t in trees])
        else:
            out[key] = np.stack([np.asarray(t[key]) for t in trees])
    return out
