"""openpi's ``Policy``, batched: its input transforms per observation, one ``sample_actions`` call on the stacked
batch, its output transforms per row.

``Policy.infer`` takes one observation. Serving a batch by looping over it would cost one model call per
robot; instead this reuses the policy's own pieces (the composed transforms and the model) around a
single batched call, padded to the same fixed buckets as the native runtime so nothing compiles after
warm-up. The stage API (``prepare`` / ``sample`` / ``finish``) is the native runtime's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from openpi_triton import staged_policy
from openpi_triton.domain import batching
from openpi_triton.domain.configs import PolicyConfig
from openpi_triton.openpi_runtime import environment, train_config

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class OpenpiOptions:
    """Serving choices around openpi's policy factory."""

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


@dataclasses.dataclass
class OpenpiPrepared:
    """One observation after openpi's input transforms (a dict of arrays, unbatched)."""

    inputs: dict[str, Any]
    noise: np.ndarray | None


class OpenpiPolicy:
    """A policy built by openpi's ``create_trained_policy``, run batched."""

    def __init__(self, policy: Any, config: PolicyConfig, options: OpenpiOptions) -> None:
        for attribute in ("_input_transform", "_output_transform", "_model", "_sample_actions", "_is_pytorch_model"):
            if not hasattr(policy, attribute):
                raise RuntimeError(
                    f"the installed openpi's Policy has no {attribute!r}: this adapter supports openpi at commit "
                    "15a9616 and compatible versions"
                )
        self.config = config
        self.options = options
        self.model_name = config.name
        self.is_pytorch = bool(policy._is_pytorch_model)
        self._input_transform = policy._input_transform
        self._output_transform = policy._output_transform
        self._sample_actions = policy._sample_actions
        self._sample_kwargs = dict(getattr(policy, "_sample_kwargs", {}) or {})
        self._model = policy._model
        sample_parameters = inspect.signature(self._model.sample_actions).parameters
        self.takes_noise = "noise" in sample_parameters
        if options.num_steps is not None and "num_steps" in sample_parameters:
            self._sample_kwargs["num_steps"] = options.num_steps
        self._noise_rng = np.random.default_rng()
        if not self.is_pytorch:
            import jax

            self._rng = jax.random.key(0)
        self.compiled_buckets: set[int] = set()
        self._layout: dict[str, tuple[tuple[int, ...], str]] | None = None

    @property
    def action_horizon(self) -> int:
        return self.config.action_horizon

    def describe(self) -> str:
        backend = "PyTorch" if self.is_pytorch else "JAX"
        return f"openpi {self.model_name} ({backend}, {type(self._model).__name__})"

    # ----- stages -----------------------------------------------------------------------------------------------

    def prepare(self, obs: Mapping[str, Any], noise: Any = None) -> OpenpiPrepared:
        """Checks the robot format (errors name the field), then runs openpi's input transforms."""
        self.config.embodiment.inputs(obs)
        checked_noise = self.check_noise(noise)
        # Transforms may modify their input in place: give them a copy of the containers.
        copied = _copy_tree(obs)
        try:
            inputs = self._input_transform(copied)
        except Exception as exc:
            raise ValueError(f"observation rejected by openpi's input transforms: {type(exc).__name__}: {exc}") from exc
        self._check_layout(inputs)
        return OpenpiPrepared(inputs=inputs, noise=checked_noise)

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
            raise ValueError(f"'noise': model {self.model_name} ({type(self._model).__name__}) does not take noise")
        return staged_policy.check_noise(noise, (self.config.action_horizon, self.config.action_dim))

    def sample(self, prepared: Sequence[OpenpiPrepared]) -> list[dict[str, np.ndarray]]:
        """One model call per bucket-sized chunk; per row ``{"state", "actions"}`` as openpi's outputs hold them."""
        rows: list[dict[str, np.ndarray]] = []
        for start, stop, bucket in batching.split_into_buckets(len(prepared), self.options.batch_buckets):
            chunk = list(prepared[start:stop])
            padded = chunk + [chunk[0]] * (bucket - len(chunk))
            if bucket not in self.compiled_buckets:
                logger.info("openpi %s: first call with batch %d (compiles)", self.model_name, bucket)
            state, actions = self._call(padded)
            self.compiled_buckets.add(bucket)
            rows += [{"state": state[i], "actions": actions[i]} for i in range(len(chunk))]
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

    def _call(self, padded: Sequence[OpenpiPrepared]) -> tuple[np.ndarray, np.ndarray]:
        from openpi.models import model as openpi_model

        stacked = _stack_trees([p.inputs for p in padded])
        noise = self._batched_noise(padded)
        kwargs = dict(self._sample_kwargs)
        if self.is_pytorch:
            import torch

            def to_torch(x: Any) -> Any:
                return torch.from_numpy(np.asarray(x)).to(self.options.torch_device)

            inputs = _map_tree(to_torch, stacked)
            if noise is not None:
                kwargs["noise"] = to_torch(noise)
            with torch.inference_mode():
                actions = self._sample_actions(
                    self.options.torch_device, openpi_model.Observation.from_dict(inputs), **kwargs
                )
            return inputs["state"].detach().cpu().numpy(), actions.detach().cpu().numpy()
        import jax
        import jax.numpy as jnp

        inputs = _map_tree(jnp.asarray, stacked)
        if noise is not None:
            kwargs["noise"] = jnp.asarray(noise)
        self._rng, key = jax.random.split(self._rng)
        actions = self._sample_actions(key, openpi_model.Observation.from_dict(inputs), **kwargs)
        return np.asarray(inputs["state"]), np.asarray(actions)

    def finish(self, prepared: OpenpiPrepared, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """openpi's output transforms for one row; returns the robot's actions as float32."""
        outputs = self._output_transform(dict(raw))
        return np.asarray(outputs["actions"], dtype=np.float32)

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


def _map_tree(fn: Any, tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _map_tree(fn, v) for k, v in tree.items()}
    return fn(tree)


def _stack_trees(trees: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = trees[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, Mapping):
            out[key] = _stack_trees([t[key] for t in trees])
        else:
            out[key] = np.stack([np.asarray(t[key]) for t in trees])
    return out


@contextlib.contextmanager
def _float32_weights(policy_config: Any) -> Iterator[None]:
    """openpi's factory restores weights as bfloat16; this keeps the checkpoint's dtype for the call."""
    model_module = policy_config._model
    original = model_module.restore_params

    def restore_keeping_dtype(path: Any, **kwargs: Any) -> Any:
        kwargs.pop("dtype", None)
        return original(path, **kwargs)

    model_module.restore_params = restore_keeping_dtype
    try:
        yield
    finally:
        model_module.restore_params = original


@contextlib.contextmanager
def _pytorch_precision(weight_dtype: str) -> Iterator[None]:
    """openpi's factory casts PyTorch weights to bfloat16 after loading; this casts to ``weight_dtype`` instead.

    The model is built in the config's dtype and the checkpoint copied into it; with float32 the build must
    be float32 too, or the weights would be rounded to bfloat16 before the cast back.
    """
    from openpi.models_pytorch import gemma_pytorch

    model_class = gemma_pytorch.PaliGemmaWithExpertModel
    original_init = model_class.__init__
    original_cast = model_class.to_bfloat16_for_selected_params

    def init_in_dtype(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **{**kwargs, "precision": weight_dtype})

    def cast_to_dtype(self: Any, precision: str = "bfloat16") -> None:
        original_cast(self, weight_dtype)

    model_class.__init__ = init_in_dtype
    model_class.to_bfloat16_for_selected_params = cast_to_dtype
    try:
        yield
    finally:
        model_class.__init__ = original_init
        model_class.to_bfloat16_for_selected_params = original_cast


def load_openpi_policy(
    config_name: str, checkpoint_dir: str | pathlib.Path, options: OpenpiOptions | None = None
) -> OpenpiPolicy:
    """``create_trained_policy(get_config(config_name), checkpoint_dir, default_prompt=...)``, batched."""
    options = options or OpenpiOptions()
    train, serving = train_config.resolve(config_name, embodiment=options.embodiment, setup_script=options.setup_script)
    policy_config = environment.import_openpi()
    if str(checkpoint_dir).startswith("gs://"):
        # openpi downloads it into $OPENPI_DATA_HOME itself (PyTorch checkpoints are local only).
        return _create(policy_config, train, str(checkpoint_dir), serving, options, torch_weights=False)
    checkpoint = pathlib.Path(checkpoint_dir)
    if not checkpoint.is_dir():
        raise ValueError(f"parameter 'checkpoint_dir': {str(checkpoint)!r} is not a directory")
    has_torch_weights = (checkpoint / "model.safetensors").is_file()
    if not has_torch_weights and not (checkpoint / "params").is_dir():
        raise ValueError(
            f"parameter 'checkpoint_dir': {str(checkpoint)!r} has neither params/ (JAX) nor model.safetensors (PyTorch)"
        )
    return _create(policy_config, train, checkpoint, serving, options, torch_weights=has_torch_weights)


def _create(
    policy_config: Any,
    train: Any,
    checkpoint: str | pathlib.Path,
    serving: PolicyConfig,
    options: OpenpiOptions,
    *,
    torch_weights: bool,
) -> OpenpiPolicy:
    if torch_weights:
        patch = _pytorch_precision(options.weight_dtype)
    elif options.weight_dtype == "float32":
        patch = _float32_weights(policy_config)
    else:
        patch = contextlib.nullcontext()
    with patch:
        policy = policy_config.create_trained_policy(
            train,
            checkpoint,
            default_prompt=options.default_prompt,
            pytorch_device=options.torch_device if torch_weights else None,
        )
    return OpenpiPolicy(policy, serving, options)
