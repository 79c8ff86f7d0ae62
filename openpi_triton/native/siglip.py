"""SigLIP ViT image encoder as openpi uses it: patch conv + learned posemb (float32), pre-LN blocks, head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from openpi_triton.native.variants import SiglipConfig

Params = Mapping[str, Any]


def _layer_norm(x: jax.Array, params: Params, dtype: jnp.dtype, eps: float = 1e-6) -> jax.Array:
    """Flax LayerNorm: statistics in float32 with the fast variance E[x^2] - E[x]^2."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    mean2 = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
    var = jnp.maximum(0.0, mean2 - jnp.square(mean))
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    y = y * params["scale"].astype(jnp.float32) + params["bias"].astype(jnp.float32)
    return y.astype(dtype)


def _dense(x: jax.Array, params: Params, dtype: jnp.dtype) -> jax.Array:
    return jnp.dot(x.astype(dtype), params["kernel"].astype(dtype)) + params["bias"].astype(dtype)


def _self_attention(x: jax.Array, params: Params, config: SiglipConfig, dtype: jnp.dtype) -> jax.Array:
    def project(name: str) -> jax.Array:
        p = params[name]
        return jnp.einsum("BLD,DNH->BLNH", x, p["kernel"].astype(dtype)) + p["bias"].astype(dtype)

    q, k, v = project("query"), project("key"), project("value")
    q = q / jnp.sqrt(config.head_dim).astype(dtype)
    logits = jnp.einsum("BQNH,BKNH->BNQK", q, k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    encoded = jnp.einsum("BNQK,BKNH->BQNH", probs, v)
    out = params["out"]
    return jnp.einsum("BQNH,NHD->BQD", encoded, out["kernel"].astype(dtype)) + out["bias"].astype(dtype)


def encode_images(img: Params, config: SiglipConfig, images: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """``images`` [N, H, W, 3] float in [-1, 1] -> tokens [N, (H/p)*(W/p), head width]."""
    x = images.astype(jnp.float32)
    kernel = img["embedding"]["kernel"].astype(jnp.float32)
    x = jax.lax.conv_general_dilated(
        x, kernel, window_strides=kernel.shape[:2], padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    x = x + img["embedding"]["bias"].astype(jnp.float32)
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c) + img["pos_embedding"].astype(jnp.float32)
    x = x.astype(dtype)

    def block(x: jax.Array, layer: Params) -> tuple[jax.Array, None]:
        y = _layer_norm(x, layer["LayerNorm_0"], dtype)
        x = x + _self_attention(y, layer["MultiHeadDotProductAttention_0"], config, dtype)
        y = _layer_norm(x, layer["LayerNorm_1"], dtype)
        mlp = layer["MlpBlock_0"]
        y = _dense(jax.nn.gelu(_dense(y, mlp["Dense_0"], dtype), approximate=True), mlp["Dense_1"], dtype)
        return x + y, None

    x, _ = jax.lax.scan(block, x, img["Transformer"]["encoderblock"])
    x = _layer_norm(x, img["Transformer"]["encoder_norm"], dtype)
    return _dense(x, img["head"], dtype)
