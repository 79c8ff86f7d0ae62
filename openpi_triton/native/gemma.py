"""Gemma transformer with two experts sharing one attention (PaliGemma LLM + action expert), as openpi runs it.

Parameters are the checkpoint's nested dict under ``PaliGemma/llm``; layers are stacked on axis 0 and
run with ``lax.scan``. Expert 0 weights have no suffix, expert 1 weights end in ``_1``. An expert whose
input is ``None`` is skipped (prefix passes run expert 0 only, suffix passes expert 1 only).

KV cache: a pair ``(k, v)`` of shape ``[layers, batch, seq, kv_heads, head_dim]``. Two ways to extend it:
append (openpi's semantics: keys of this call are concatenated after the cache) or write in place at
``write_index`` into a pre-allocated buffer (fixed shapes for jitted decode loops; unwritten slots must be
masked out by the caller).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from openpi_triton.native.variants import GemmaConfig

Params = Mapping[str, Any]
KVCache = tuple[jax.Array, jax.Array]

# Same large negative as Gemma's reference code: exp() underflows to exactly 0 against any real logit.
_BIG_NEG = -2.3819763e38


def _suffix(expert: int) -> str:
    return "" if expert == 0 else f"_{expert}"


def rms_norm(x: jax.Array, params: Params, cond: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    """RMSNorm (variance in float32); with ``cond`` it is adaRMSNorm and also returns the residual gate."""
    dtype = x.dtype
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    normed = x * jnp.reciprocal(jnp.sqrt(var + 1e-06))
    if cond is None:
        return (normed * (1 + params["scale"])).astype(dtype), None
    dense = params["Dense_0"]
    modulation = jnp.dot(cond.astype(dtype), dense["kernel"].astype(dtype)) + dense["bias"].astype(dtype)
    scale, shift, gate = jnp.split(modulation[:, None, :], 3, axis=-1)
    return (normed * (1 + scale) + shift).astype(dtype), gate


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotary position embedding of ``x`` [B, L, H, D] at integer ``positions`` [B, L] (computed in float32)."""
    freq_exponents = (2.0 / x.shape[-1]) * jnp.arange(x.shape[-1] // 2, dtype=jnp.float32)
    timescale = max_wavelength**freq_exponents
    radians = positions[..., None] / timescale[None, None, :]
    radians = radians[..., None, :]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


def _feed_forward(x: jax.Array, params: Params) -> jax.Array:
    dtype = x.dtype
    w_gating = params["gating_einsum"].astype(dtype)
    gate = _gelu(jnp.dot(x, w_gating[0]))
    activations = gate * jnp.dot(x, w_gating[1])
    return jnp.dot(activations, params["linear"].astype(dtype))


def _attention(
    layer: Params,
    config: GemmaConfig,
    xs: Sequence[jax.Array | None],
    positions: jax.Array,
    mask: jax.Array,
    cache: KVCache | None,
    write_index: jax.Array | None,
) -> tuple[list[jax.Array | None], KVCache]:
    attn = layer["attn"]
    dtype = next(x.dtype for x in xs if x is not None)
    qs, ks, vs = [], [], []
    for i, x in enumerate(xs):
        if x is None:
            continue
        qs.append(jnp.einsum("BTD,NDH->BTNH", x, attn[f"q_einsum{_suffix(i)}"]["w"].astype(dtype)))
        k, v = jnp.einsum("BSD,2KDH->2BSKH", x, attn[f"kv_einsum{_suffix(i)}"]["w"].astype(dtype))
        ks.append(k)
        vs.append(v)
    q, k, v = (jnp.concatenate(y, axis=1) for y in (qs, ks, vs))
    q = apply_rope(q, positions) * config.head_dim**-0.5
    k = apply_rope(k, positions)

    if cache is not None:
        cache_k, cache_v = cache
        if write_index is None:
            k = jnp.concatenate([cache_k, k], axis=1)
            v = jnp.concatenate([cache_v, v], axis=1)
        else:
            k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), write_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), write_index, axis=1)

    batch, queries = q.shape[:2]
    kv_heads, group = config.num_kv_heads, config.num_heads // config.num_kv_heads
    if mask.shape != (batch, 1, queries, k.shape[1]):
        raise ValueError(f"attention mask {mask.shape} does not match queries {q.shape} and keys {k.shape}")
    # Grouped-query attention as plain batched matmuls [B, K] x [G*T, H] @ [H, S]: the query heads of a
    # KV head are stacked along the query axis. XLA:CPU runs a dot whose batch dimensions lead as one fast
    # batched GEMM, where the 5-d einsum "BTKGH,BSKH->BKGTS" fell back to a naive loop (10x slower here).
    q = q.reshape(batch, queries, kv_heads, group, config.head_dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch, kv_heads, group * queries, config.head_dim)
    keys = k.astype(dtype).transpose(0, 2, 1, 3)  # [B, K, S, H]
    values = v.astype(dtype).transpose(0, 2, 1, 3)
    logits = jnp.matmul(q, keys.swapaxes(-1, -2), preferred_element_type=jnp.float32)  # [B, K, G*T, S]
    logits = logits.reshape(batch, kv_heads, group, queries, -1)
    logits = jnp.where(mask[:, :, None, :, :], logits, _BIG_NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype).reshape(batch, kv_heads, group * queries, -1)
    encoded = jnp.matmul(probs, values)  # [B, K, G*T, H]
    encoded = encoded.reshape(batch, kv_heads, group, queries, config.head_dim).transpose(0, 3, 1, 2, 4)
    encoded = encoded.reshape(batch, queries, config.num_heads, config.head_dim)

    out: list[jax.Array | None] = []
    start = 0
    for i, x in enumerate(xs):
        if x is None:
            out.append(None)
            continue
        end = start + x.shape[1]
        w = attn[f"attn_vec_einsum{_suffix(i)}"]["w"].astype(dtype)
        out.append(jnp.einsum("BTNH,NHD->BTD", encoded[:, start:end], w))
        start = end
    return out, (k, v)


def _gated_residual(x: jax.Array | None, y: jax.Array | None, gate: jax.Array | None) -> jax.Array | None:
    if x is None or y is None:
        return None
    return x + y if gate is None else x + y * gate


def _norm_each(
    xs: Sequence[jax.Array | None], layer: Params, name: str, adarms_cond: Sequence[jax.Array | None]
) -> tuple[list[jax.Array | None], list[jax.Array | None]]:
    """The named (ada)RMSNorm of every present expert; absent experts stay ``None``."""
    normed: list[jax.Array | None] = []
    gates: list[jax.Array | None] = []
    for i, x in enumerate(xs):
        y, gate = (None, None) if x is None else rms_norm(x, layer[f"{name}{_suffix(i)}"], adarms_cond[i])
        normed.append(y)
        gates.append(gate)
    return normed, gates


def _block(
    layer: Params,
    config: GemmaConfig,
    xs: Sequence[jax.Array | None],
    positions: jax.Array,
    mask: jax.Array,
    adarms_cond: Sequence[jax.Array | None],
    cache: KVCache | None,
    write_index: jax.Array | None,
) -> tuple[list[jax.Array | None], KVCache]:
    normed, gates = _norm_each(xs, layer, "pre_attention_norm", adarms_cond)
    attn_out, new_cache = _attention(layer, config, normed, positions, mask, cache, write_index)
    xs = [_gated_residual(x, y, g) for x, y, g in zip(xs, attn_out, gates, strict=True)]

    normed, gates = _norm_each(xs, layer, "pre_ffw_norm", adarms_cond)
    ffn_out = [None if y is None else _feed_forward(y, layer[f"mlp{_suffix(i)}"]) for i, y in enumerate(normed)]
    return [_gated_residual(x, y, g) for x, y, g in zip(xs, ffn_out, gates, strict=True)], new_cache


def embed_tokens(llm: Params, tokens: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Token embedding scaled by sqrt(width), as Gemma does."""
    table = llm["embedder"]["input_embedding"]
    x = table[(tokens,)]
    x = x * jnp.sqrt(table.shape[-1]).astype(x.dtype)
    return x.astype(dtype)


def logits_from_hidden(llm: Params, hidden: jax.Array) -> jax.Array:
    """Tied LM head: hidden [..., D] times the embedding table, in float32."""
    table = llm["embedder"]["input_embedding"]
    return jnp.dot(hidden.astype(jnp.float32), table.T.astype(jnp.float32))


def transformer(
    llm: Params,
    config: GemmaConfig,
    xs: Sequence[jax.Array | None],
    positions: jax.Array,
    mask: jax.Array,
    *,
    adarms_cond: Sequence[jax.Array | None] | None = None,
    kv_cache: KVCache | None = None,
    write_index: jax.Array | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[list[jax.Array | None], KVCache]:
    """Runs all layers; returns the final-normed outputs per expert and the per-layer K/V.

    ``mask`` is ``[B, T, S]`` (query i may attend key j); ``config`` is expert 0's (heads are shared).
    """
    xs = [None if x is None else x.astype(dtype) for x in xs]
    if adarms_cond is None:
        adarms_cond = [None] * len(xs)
    mask4 = jnp.asarray(mask)[:, None, :, :]
    present = [x is not None for x in xs]

    def body(carry: list[jax.Array], scanned: tuple[Params, KVCache | None]) -> tuple[list[jax.Array], KVCache]:
        layer, cache = scanned
        full = iter(carry)
        layer_xs = [next(full) if p else None for p in present]
        out, new_cache = _block(layer, config, layer_xs, positions, mask4, adarms_cond, cache, write_index)
        return [x for x in out if x is not None], new_cache

    carry = [x for x in xs if x is not None]
    carry, new_cache = jax.lax.scan(body, carry, (llm["layers"], kv_cache))
    outs = iter(carry)
    finals: list[jax.Array | None] = []
    for i, p in enumerate(present):
        if not p:
            finals.append(None)
            continue
        y, _ = rms_norm(next(outs), llm[f"final_norm{_suffix(i)}"], adarms_cond[i])
        finals.append(y)
    return finals, new_cache


def make_attn_mask(input_mask: jax.Array, ar_mask: jax.Array) -> jax.Array:
    """big_vision's prefix-LM rule: i attends j iff cumsum(ar)[j] <= cumsum(ar)[i] and both are valid."""
    ar_mask = jnp.broadcast_to(ar_mask, input_mask.shape)
    cumsum = jnp.cumsum(ar_mask, axis=1)
    attn_mask = cumsum[:, None, :] <= cumsum[:, :, None]
    valid_mask = input_mask[:, None, :] * input_mask[:, :, None]
    return jnp.logical_and(attn_mask, valid_mask)
