"""The native policy: openpi's input transforms per observation, one batched jitted ``sample_actions``, outputs.

``NativePolicy.infer_batch`` is the batched equivalent of openpi's ``Policy.infer``. For serving layers
that must give each request its own error, the three stages are public: ``prepare`` (validation and input
transforms for one observation, raises ``ValueError``), ``sample`` (one model call for many prepared
observations) and ``finish`` (output transforms for one row).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from openpi_triton import staged_policy
from openpi_triton.domain import batching, normalize, output_transforms, rtc
from openpi_triton.domain.configs import PolicyConfig, get_policy_config
from openpi_triton.domain.embodiments.base import MODEL_IMAGE_SIZE, RobotFrame
from openpi_triton.native import checkpoint, pi0, tokenizer
from openpi_triton.native import rtc as guided
from openpi_triton.native.image import resize_with_pad
from openpi_triton.native.variants import ModelSpec, infer_spec

logger = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class PolicyOptions:
    """Serving choices that are not part of openpi's config."""

    dtype: str = "float32"
    num_steps: int = 10
    batch_buckets: tuple[int, ...] = batching.DEFAULT_BATCH_BUCKETS
    default_prompt: str | None = None
    tokenizer_path: str | None = None
    # Real-Time Chunking: off saves its compiled programs (warm-up time, memory) and refuses rtc requests.
    rtc: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.num_steps, int) or isinstance(self.num_steps, bool) or self.num_steps < 1:
            raise ValueError(f"num_steps: expected a positive integer, got {self.num_steps!r}")
        object.__setattr__(self, "batch_buckets", batching.parse_buckets(self.batch_buckets))


@dataclasses.dataclass
class PreparedObservation:
    """One observation after openpi's input transforms, ready to be stacked into a batch."""

    frame: RobotFrame
    normalized_state: np.ndarray
    images: np.ndarray  # uint8 [3, 224, 224, 3], slots in pi0.IMAGE_KEYS order
    image_masks: np.ndarray  # bool [3]
    state: np.ndarray  # float32 [action_dim], what the model and the output transforms see
    tokens: np.ndarray
    token_mask: np.ndarray
    noise: np.ndarray | None
    rtc: PreparedRtc | None = None


@dataclasses.dataclass
class PreparedRtc:
    """A row's RTC request with its previous chunk mapped into model space (re-anchored on this row's state)."""

    request: rtc.RtcRequest
    target: np.ndarray  # float32 [H, action_dim]: normalised, delta, zero rows from K on and on the padded dims


def checked_norm_stats(config: PolicyConfig, norm_stats: Mapping[str, checkpoint.NormStats]) -> dict[str, Any]:
    """The statistics the input and output transforms of ``config`` need, checked once at load."""
    for key in ("state", "actions"):
        if key not in norm_stats:
            raise ValueError(f"norm stats for config {config.name!r} lack {key!r}")
    if config.use_quantile_norm:
        normalize.check_quantiles(dict(norm_stats), config.name)
    return dict(norm_stats)


class NativePolicy:
    """pi0 / pi0.5 for one openpi config and checkpoint, batched over observations."""

    def __init__(
        self,
        config: PolicyConfig,
        params: Mapping[str, Any],
        norm_stats: Mapping[str, normalize.NormStats],
        sp_tokenizer: Any,
        options: PolicyOptions,
        device: jax.Device | None = None,
    ) -> None:
        self.config = config
        self.options = options
        self.spec: ModelSpec = infer_spec(params)
        if self.spec.pi05 != config.pi05:
            kind = "pi0.5" if self.spec.pi05 else "pi0"
            raise ValueError(
                f"model_config_name {config.name!r} expects {config.model_type} but the checkpoint is {kind}"
            )
        if self.spec.action_dim != config.action_dim:
            raise ValueError(f"checkpoint action_dim {self.spec.action_dim} != config action_dim {config.action_dim}")
        self.norm_stats = checked_norm_stats(config, norm_stats)
        self.tokenizer = tokenizer.PromptTokenizer(sp_tokenizer, config.max_token_len)
        if sp_tokenizer.vocab_size() > self.spec.vocab_size:
            raise ValueError(
                f"tokenizer has {sp_tokenizer.vocab_size()} pieces but the checkpoint embeds {self.spec.vocab_size}: "
                "wrong tokenizer for this checkpoint"
            )
        self.device = device or jax.devices()[0]
        self.dtype = DTYPES[options.dtype]
        self.params = jax.device_put(params, self.device)
        self._rng = jax.device_put(jax.random.key(0), self.device)
        shape = (1, config.action_horizon, config.action_dim)

        def next_noise(key: jax.Array) -> tuple[jax.Array, jax.Array]:
            key, sample_key = jax.random.split(key)
            return key, jax.random.normal(sample_key, shape)

        self._noise_fn = jax.jit(next_noise)
        self._sample = jax.jit(
            functools.partial(self._sample_impl, spec=self.spec, num_steps=options.num_steps, dtype=self.dtype)
        )
        # RTC: one program per bucket beside the plain one; every per-request value (d, ℓ, β, schedule, mode) is
        # traced, so no request compiles. ``identity`` rows share the program; a batch without ``vjp`` rows skips
        # the backward pass at run time.
        self._sample_guided = jax.jit(
            functools.partial(self._guided_impl, spec=self.spec, num_steps=options.num_steps, dtype=self.dtype)
        )
        self.output_chain = output_transforms.output_chain(config, self.norm_stats)
        self.rtc_refusal = output_transforms.check_invertible(self.output_chain)
        if not options.rtc:
            self.rtc_refusal = 'RTC is turned off for this model (config.pbtxt parameter rtc: "off")'
        self.guided_dims = np.zeros(config.action_dim, np.float32)
        self.guided_dims[: config.embodiment.action_dim] = 1.0
        self.compiled_buckets: set[int] = set()
        self.compiled_programs: set[tuple[str, int]] = set()

    # ----- metadata ---------------------------------------------------------------------------------------------

    @property
    def action_horizon(self) -> int:
        return self.config.action_horizon

    def describe(self) -> str:
        return self.spec.describe()

    @property
    def metadata(self) -> dict[str, Any]:
        """What robots receive on connect (openpi's policy metadata + openpi-flash's fields)."""
        return {
            **self.config.metadata,
            "action_horizon": self.config.action_horizon,
            "image_specs": self.config.embodiment.image_specs(),
        }

    # ----- stages -----------------------------------------------------------------------------------------------

    def prepare(self, obs: Mapping[str, Any], noise: Any = None) -> PreparedObservation:
        """Validates one robot observation and applies openpi's input transforms (``ValueError`` on bad input)."""
        frame = self.config.embodiment.inputs(obs)
        prompt = frame.prompt
        if prompt is None:
            prompt = (
                self.options.default_prompt if self.options.default_prompt is not None else self.config.default_prompt
            )
        if prompt is None:
            raise ValueError("'prompt': required (a string); this model has no default prompt")
        normalized = normalize.normalize(
            frame.state, self.norm_stats["state"], use_quantiles=self.config.use_quantile_norm
        )
        tokens, token_mask = self.tokenizer.tokenize(prompt, normalized if self.config.uses_discrete_state else None)
        images = np.stack(
            [resize_with_pad(frame.images[k], MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE) for k in pi0.IMAGE_KEYS]
        )
        masks = np.asarray([frame.image_masks[k] for k in pi0.IMAGE_KEYS], dtype=bool)
        padded = np.zeros(self.config.action_dim, dtype=normalized.dtype)
        padded[: normalized.shape[-1]] = normalized
        with np.errstate(over="ignore"):
            model_state = padded.astype(np.float32)
        if not np.all(np.isfinite(model_state)):
            raise ValueError(
                "'state': values too large for this checkpoint's normalisation (they overflow float32 once "
                f"normalised); got max |state| = {float(np.max(np.abs(frame.state)))!r}"
            )
        return PreparedObservation(
            frame=frame,
            normalized_state=normalized,
            images=images,
            image_masks=masks,
            state=model_state,
            tokens=tokens,
            token_mask=token_mask,
            noise=self.check_noise(noise),
            rtc=self._prepare_rtc(obs.get(rtc.RTC_KEY), model_state),
        )

    def _prepare_rtc(self, value: Any, model_state: np.ndarray) -> PreparedRtc | None:
        request = rtc.parse_rtc(
            value, horizon=self.config.action_horizon, robot_action_dim=self.config.embodiment.action_dim
        )
        if request is None:
            return None
        target = np.zeros((self.config.action_horizon, self.config.action_dim), np.float32)
        if not request.applied:
            # An empty remainder guides nothing: plain sampling, also where RTC is refused (the Triton models
            # send one for robots without ``rtc`` so that they share batches with robots that use it).
            return PreparedRtc(request, target)
        if self.rtc_refusal is not None:
            raise rtc.RtcUnsupportedError(f"'{rtc.RTC_KEY}': {self.rtc_refusal}, so RTC is refused for this policy")
        state = normalize.unnormalize(
            model_state, self.norm_stats["state"], use_quantiles=self.config.use_quantile_norm
        )
        model_space = output_transforms.invert_outputs(
            self.output_chain, request.prev_actions, state, self.config.action_dim
        )
        self._check_normalized_range(request.prev_actions, model_space, state)
        target[: model_space.shape[0]] = model_space
        return PreparedRtc(request, target)

    def _check_normalized_range(self, prev: np.ndarray, model_space: np.ndarray, state: np.ndarray) -> None:
        """Refuses a remainder the sampler could not be guided toward (finite but huge values would make the
        guided chunk diverge), naming the first bad element and its allowed range in robot space."""
        limit = rtc.MAX_NORMALIZED_ABS
        width = self.config.embodiment.action_dim
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(model_space[:, :width]) <= limit)  # NaN/inf count as bad
        if not bad.any():
            return
        row, dim = (int(i) for i in np.argwhere(bad)[0])
        # The output transforms are affine per dim: the model-space bounds map to this dim's robot-space range.
        edges = [
            output_transforms.apply_outputs(self.output_chain, np.full((1, self.config.action_dim), v), state)[0, dim]
            for v in (-limit, limit)
        ]
        low, high = sorted(float(e) for e in edges)
        raise ValueError(
            f"'{rtc.RTC_KEY}/{rtc.PREV_ACTIONS}': row {row}, dim {dim} is {float(prev[row, dim]):.6g}, expected a "
            f"value in [{low:.6g}, {high:.6g}] for this dim at the current state (|normalised| <= {limit:g}, far "
            f"beyond any chunk the model produces); got {float(model_space[row, dim]):.3g} once normalised"
        )

    def check_noise(self, noise: Any) -> np.ndarray | None:
        return staged_policy.check_noise(noise, (self.config.action_horizon, self.config.action_dim))

    def _draw_noise(self) -> np.ndarray:
        # Same key sequence as openpi's Policy (key(0), split per call), so a fresh policy's first
        # noise-less call reproduces openpi's first call.
        self._rng, noise = self._noise_fn(self._rng)
        return np.asarray(noise)[0]

    def sample(self, prepared: Sequence[PreparedObservation]) -> np.ndarray:
        """One model pass per bucket-sized chunk; returns raw model actions float32 [N, H, action_dim]."""
        if not prepared:
            return np.zeros((0, self.config.action_horizon, self.config.action_dim), np.float32)
        noise = np.stack([p.noise if p.noise is not None else self._draw_noise() for p in prepared])
        stacked = {
            "images": np.stack([p.images for p in prepared]),
            "image_masks": np.stack([p.image_masks for p in prepared]),
            "state": np.stack([p.state for p in prepared]),
            "tokens": np.stack([p.tokens for p in prepared]),
            "token_mask": np.stack([p.token_mask for p in prepared]),
        }
        outputs = []
        for start, stop, bucket in batching.split_into_buckets(len(prepared), self.options.batch_buckets):
            chunk = {k: batching.pad_rows(v[start:stop], bucket) for k, v in stacked.items()}
            chunk_noise = batching.pad_rows(noise[start:stop], bucket)
            rows = prepared[start:stop]
            if any(p.rtc is not None and p.rtc.request.applied for p in rows):
                result = self._run_guided_bucket(chunk, chunk_noise, rows, bucket)
            else:
                result = self._run_bucket(chunk, chunk_noise)
            outputs.append(result[: stop - start])
        return np.concatenate(outputs, axis=0)

    def _run_bucket(self, chunk: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        bucket = noise.shape[0]
        if bucket not in self.compiled_buckets:
            logger.info("compiling %s for batch %d (not warmed up)", self.config.name, bucket)
        placed = jax.device_put((chunk, noise), self.device)
        result = np.asarray(self._sample(self.params, placed[0], placed[1]))
        self.compiled_buckets.add(bucket)
        self.compiled_programs.add(("plain", bucket))
        return result

    def _run_guided_bucket(
        self, chunk: dict[str, np.ndarray], noise: np.ndarray, rows: Sequence[PreparedObservation], bucket: int
    ) -> np.ndarray:
        """Rows without RTC ride along with zero weights (exactly their plain trajectory, up to rounding)."""
        horizon, width = self.config.action_horizon, self.config.action_dim
        requests = [p.rtc.request if p.rtc is not None and p.rtc.request.applied else None for p in rows]
        zeros = np.zeros((horizon, width), np.float32)
        columns = {
            "target": np.stack(
                [
                    p.rtc.target if r is not None and p.rtc is not None else zeros
                    for p, r in zip(rows, requests, strict=True)
                ]
            ),
            "delay": np.asarray([r.inference_delay if r else 0 for r in requests], np.int32),
            "horizon": np.asarray([r.guided_horizon if r else 0 for r in requests], np.int32),
            "schedule": np.asarray([r.schedule_index if r else 0 for r in requests], np.int32),
            "max_weight": np.asarray([r.max_guidance_weight if r else 0.0 for r in requests], np.float32),
            "identity": np.asarray([r is not None and r.mode == "identity" for r in requests], bool),
        }
        padded = {k: batching.pad_rows(v, bucket) for k, v in columns.items()}
        guidance = guided.Guidance(**padded, dims=self.guided_dims)
        if ("rtc", bucket) not in self.compiled_programs:
            logger.info("compiling %s with RTC for batch %d (not warmed up)", self.config.name, bucket)
        placed = jax.device_put((chunk, noise, guidance), self.device)
        result = np.asarray(self._sample_guided(self.params, *placed))
        self.compiled_programs.add(("rtc", bucket))
        return result

    @staticmethod
    def _sample_impl(
        params: Any, chunk: dict[str, jax.Array], noise: jax.Array, *, spec: ModelSpec, num_steps: int, dtype: Any
    ) -> jax.Array:
        inputs = _model_inputs(chunk)
        return pi0.sample_actions(params, spec, inputs, noise, num_steps=num_steps, dtype=dtype)

    @staticmethod
    def _guided_impl(
        params: Any,
        chunk: dict[str, jax.Array],
        noise: jax.Array,
        guidance: guided.Guidance,
        *,
        spec: ModelSpec,
        num_steps: int,
        dtype: Any,
    ) -> jax.Array:
        inputs = _model_inputs(chunk)
        return guided.guided_sample_actions(params, spec, inputs, noise, guidance, num_steps=num_steps, dtype=dtype)

    def finish(self, prepared: PreparedObservation, raw_actions: np.ndarray) -> np.ndarray:
        """openpi's output transforms for one row: un-normalise, absolute joints, robot action format."""
        state = normalize.unnormalize(
            prepared.state, self.norm_stats["state"], use_quantiles=self.config.use_quantile_norm
        )
        return output_transforms.apply_outputs(self.output_chain, raw_actions, state)

    def rtc_echo(self, prepared: PreparedObservation, robot_actions: np.ndarray) -> dict[str, Any] | None:
        """The response's ``rtc`` report for a row that sent ``rtc`` (``None`` for one that did not)."""
        return None if prepared.rtc is None else prepared.rtc.request.echo(robot_actions)

    # ----- whole calls ------------------------------------------------------------------------------------------

    def infer_batch(
        self, observations: Sequence[Mapping[str, Any]], noise: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        """openpi's ``Policy.infer`` for many observations in one model call; raises on the first bad one."""
        return staged_policy.infer_batch(self, observations, noise)

    def infer(self, obs: Mapping[str, Any], noise: Any = None) -> dict[str, Any]:
        return self.infer_batch([obs], None if noise is None else [noise])[0]

    def warmup(self) -> dict[int, float]:
        """Compiles every batch bucket (seconds per bucket); serving never compiles after this."""
        rng = np.random.default_rng(0)
        example = self.prepare(
            self.config.embodiment.example(rng),
            np.zeros((self.config.action_horizon, self.config.action_dim), np.float32),
        )
        self._noise_fn(
            jax.device_put(jax.random.key(1), self.device)
        )  # compiles noise drawing without advancing the policy's keys
        seconds = staged_policy.warm_buckets(self, example, self.options.batch_buckets, self.config.name)
        if self.rtc_refusal is None:
            horizon = self.config.action_horizon
            request = rtc.RtcRequest(np.zeros((horizon, 1)), 1, horizon, 1.0, rtc.DEFAULT_SCHEDULE, rtc.DEFAULT_MODE)
            target = np.zeros((horizon, self.config.action_dim), np.float32)
            guided_example = dataclasses.replace(example, rtc=PreparedRtc(request, target))
            label = f"{self.config.name} with RTC"
            for bucket, s in staged_policy.warm_buckets(
                self, guided_example, self.options.batch_buckets, label
            ).items():
                seconds[bucket] += s
        return seconds


def _model_inputs(chunk: dict[str, jax.Array]) -> pi0.ModelInputs:
    return pi0.ModelInputs(
        images=pi0.uint8_images_to_float(chunk["images"]),
        image_masks=chunk["image_masks"],
        state=chunk["state"],
        tokens=chunk["tokens"],
        token_mask=chunk["token_mask"],
    )


def load_policy(
    config_name: str,
    checkpoint_dir: str | pathlib.Path,
    options: PolicyOptions | None = None,
    device: jax.Device | None = None,
) -> NativePolicy:
    """Builds a :class:`NativePolicy` from an openpi config name and a local checkpoint directory."""
    options = options or PolicyOptions()
    config = get_policy_config(config_name)
    ckpt = checkpoint.resolve_checkpoint_dir(checkpoint_dir)
    params = checkpoint.load_params(ckpt, options.dtype)
    norm_stats = checkpoint.load_norm_stats(ckpt, config.asset_id)
    sp = tokenizer.load_sentencepiece(options.tokenizer_path)
    return NativePolicy(config, params, norm_stats, sp, options, device)
