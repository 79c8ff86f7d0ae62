"""pi0 / pi0.5 flow-matching action sampling (openpi's ``Pi0.sample_actions``), batched, as pure JAX functions.

The prefix (3 images x SigLIP tokens + prompt tokens) runs once per call and fills the KV cache; then
``num_steps`` Euler steps run only the action expert over the suffix, from t=1 (noise) to t=0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from openpi_triton.native import gemma, siglip
from openpi_triton.native.variants import ModelSpec

Params = Mapping[str, Any]

# Model image slots in the order openpi embeds them.
IMAGE_KEYS: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """A batch of model inputs after openpi's input transforms.

    images: float [B, 3, H, W, 3] in [-1, 1], slots in ``IMAGE_KEYS`` order; image_masks: bool [B, 3];
    state: float32 [B, action_dim] (normalised, zero-padded); tokens: int32 [B, L]; token_mask: bool [B, L].
    """

    images: jax.Array
    image_masks: jax.Array
    state: jax.Array
    tokens: jax.Array
    token_mask: jax.Array


def uint8_images_to_float(images: jax.Array) -> jax.Array:
    """openpi's ``Observation.from_dict`` conversion: ``x / 255 * 2 - 1`` in float32."""
    return images.astype(jnp.float32) / 255.0 * 2.0 - 1.0


def embed_prefix(
    params: Params, spec: ModelSpec, inputs: ModelInputs, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Image + prompt embeddings [B, S, D], their validity mask [B, S] and autoregressive mask [S] (all False)."""
    batch, num_images = inputs.images.shape[:2]
    flat = inputs.images.reshape(batch * num_images, *inputs.images.shape[2:])
    image_tokens = siglip.encode_images(params["PaliGemma"]["img"], spec.siglip, flat, dtype)
    per_image = image_tokens.shape[1]
    image_tokens = image_tokens.reshape(batch, num_images * per_image, image_tokens.shape[-1])
    image_mask = jnp.repeat(inputs.image_masks, per_image, axis=1)
    text = gemma.embed_tokens(params["PaliGemma"]["llm"], inputs.tokens, dtype)
    tokens = jnp.concatenate([image_tokens.astype(dtype), text], axis=1)
    input_mask = jnp.concatenate([image_mask, inputs.token_mask], axis=1)
    ar_mask = jnp.zeros((tokens.shape[1],), dtype=jnp.bool_)
    return tokens, input_mask, ar_mask


def _linear(x: jax.Array, params: Params) -> jax.Array:
    return jnp.dot(x, params["kernel"].astype(x.dtype)) + params["bias"].astype(x.dtype)


def posemb_sincos(pos: jax.Array, embedding_dim: int, min_period: float, max_period: float) -> jax.Array:
    """Sine-cosine embedding of scalar positions (the flow-matching time)."""
    fraction = jnp.linspace(0.0, 1.0, embedding_dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    sinusoid = jnp.einsum("i,j->ij", pos, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(sinusoid), jnp.cos(sinusoid)], axis=-1)


def embed_suffix(
    params: Params, spec: ModelSpec, state: jax.Array, noisy_actions: jax.Array, timestep: jax.Array, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Suffix tokens, masks and (pi0.5) the adaRMS conditioning vector."""
    horizon = noisy_actions.shape[1]
    tokens, ar = [], []
    if not spec.pi05:
        tokens.append(_linear(state.astype(dtype), params["state_proj"])[:, None, :])
        ar.append(True)
    action_tokens = _linear(noisy_actions.astype(dtype), params["action_in_proj"])
    time_emb = posemb_sincos(timestep, spec.expert.width, min_period=4e-3, max_period=4.0).astype(dtype)
    if spec.pi05:
        time_emb = jax.nn.swish(_linear(time_emb, params["time_mlp_in"]))
        adarms_cond = jax.nn.swish(_linear(time_emb, params["time_mlp_out"]))
        expert_tokens = action_tokens
    else:
        time_tokens = jnp.broadcast_to(time_emb[:, None, :], (time_emb.shape[0], horizon, time_emb.shape[-1]))
        mixed = jnp.concatenate([action_tokens, time_tokens], axis=-1)
        mixed = jax.nn.swish(_linear(mixed, params["action_time_mlp_in"]))
        expert_tokens = _linear(mixed, params["action_time_mlp_out"])
        adarms_cond = None
    tokens.append(expert_tokens)
    ar += [True] + [False] * (horizon - 1)
    suffix = jnp.concatenate(tokens, axis=1)
    input_mask = jnp.ones(suffix.shape[:2], dtype=jnp.bool_)
    return suffix, input_mask, jnp.asarray(ar), adarms_cond


def prefix_pass(
    params: Params, spec: ModelSpec, inputs: ModelInputs, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array, gemma.KVCache]:
    """Embeds the prefix and runs expert 0 over it: (prefix embeddings, mask, final-normed output, KV cache)."""
    tokens, input_mask, ar_mask = embed_prefix(params, spec, inputs, dtype)
    attn_mask = gemma.make_attn_mask(input_mask, ar_mask)
    positions = jnp.cumsum(input_mask, axis=1) - 1
    (out, _), kv_cache = gemma.transformer(
        params["PaliGemma"]["llm"], spec.llm, [tokens, None], positions, attn_mask, dtype=dtype
    )
    return tokens, input_mask, out, kv_cache


def suffix_velocity(
    params: Params,
    spec: ModelSpec,
    inputs: ModelInputs,
    prefix_mask: jax.Array,
    kv_cache: gemma.KVCache,
    x_t: jax.Array,
    time: jax.Array,
    dtype: jnp.dtype,
) -> jax.Array:
    """The action expert's velocity v(x_t, t) [B, H, action_dim] over the suffix, given the prefix's KV cache."""
    batch, horizon = x_t.shape[:2]
    llm = params["PaliGemma"]["llm"]
    suffix, suffix_mask, suffix_ar, adarms_cond = embed_suffix(
        params, spec, inputs.state, x_t, jnp.broadcast_to(time, (batch,)), dtype
    )
    suffix_attn = gemma.make_attn_mask(suffix_mask, suffix_ar)
    prefix_attn = jnp.broadcast_to(prefix_mask[:, None, :], (batch, suffix.shape[1], prefix_mask.shape[1]))
    full_attn = jnp.concatenate([prefix_attn, suffix_attn], axis=-1)
    positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
    (_, suffix_out), _ = gemma.transformer(
        llm,
        spec.llm,
        [None, suffix],
        positions,
        full_attn,
        adarms_cond=[None, adarms_cond],
        kv_cache=kv_cache,
        dtype=dtype,
    )
    return _linear(suffix_out[:, -horizon:], params["action_out_proj"])


def sample_actions(
    params: Params,
    spec: ModelSpec,
    inputs: ModelInputs,
    noise: jax.Array,
    *,
    num_steps: int = 10,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Flow matching from ``noise`` [B, H, action_dim] at t=1 to actions at t=0 in ``num_steps`` Euler steps."""
    dt = -1.0 / num_steps
    _, prefix_mask, _, kv_cache = prefix_pass(params, spec, inputs, dtype)

    def step(carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x_t, time = carry
        v_t = suffix_velocity(params, spec, inputs, prefix_mask, kv_cache, x_t, time, dtype)
        return (x_t + dt * v_t).astype(jnp.float32), time + dt

    def cond(carry: tuple[jax.Array, jax.Array]) -> jax.Array:
        # Same float32 time arithmetic as openpi, robust to rounding.
        return carry[1] >= -dt / 2

    x_0, _ = jax.lax.while_loop(cond, step, (noise.astype(jnp.float32), jnp.asarray(1.0, jnp.float32)))
    return x_0
