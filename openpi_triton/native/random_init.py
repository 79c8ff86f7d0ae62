"""Random-weight parameter trees with exactly openpi's layout, for any :class:`ModelSpec`.

Used for the embedded default model and for benchmarks of full-size architectures without downloading
weights. Every tensor is random (including norm scales and adaRMS modulation), so every parameter
influences the outputs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from openpi_triton.native.variants import GemmaConfig, ModelSpec


class _Keys:
    def __init__(self, seed: int) -> None:
        self._key = jax.random.key(seed)

    def next(self) -> jax.Array:
        self._key, sub = jax.random.split(self._key)
        return sub


def _normal(keys: _Keys, shape: tuple[int, ...], std: float, dtype: Any) -> jax.Array:
    return (jax.random.normal(keys.next(), shape, jnp.float32) * std).astype(dtype)


def _dense(keys: _Keys, fan_in: int, fan_out: int, dtype: Any, prefix: tuple[int, ...] = ()) -> dict[str, jax.Array]:
    return {
        "kernel": _normal(keys, (*prefix, fan_in, fan_out), fan_in**-0.5, dtype),
        "bias": _normal(keys, (*prefix, fan_out), 0.02, dtype),
    }


def _norm(keys: _Keys, depth: tuple[int, ...], width: int, adarms: bool, dtype: Any) -> dict[str, Any]:
    if adarms:
        return {"Dense_0": _dense(keys, width, 3 * width, dtype, depth)}
    return {"scale": _normal(keys, (*depth, width), 0.1, dtype)}


def _gemma_layers(keys: _Keys, configs: list[GemmaConfig], adarms: list[bool], dtype: Any) -> dict[str, Any]:
    depth = configs[0].depth
    attn: dict[str, Any] = {}
    layers: dict[str, Any] = {"attn": attn}
    for i, (c, ada) in enumerate(zip(configs, adarms, strict=True)):
        s = "" if i == 0 else f"_{i}"
        w, h = c.width, c.head_dim
        attn[f"q_einsum{s}"] = {"w": _normal(keys, (depth, c.num_heads, w, h), w**-0.5, dtype)}
        attn[f"kv_einsum{s}"] = {"w": _normal(keys, (depth, 2, c.num_kv_heads, w, h), w**-0.5, dtype)}
        attn[f"attn_vec_einsum{s}"] = {"w": _normal(keys, (depth, c.num_heads, h, w), (c.num_heads * h) ** -0.5, dtype)}
        layers[f"mlp{s}"] = {
            "gating_einsum": _normal(keys, (depth, 2, w, c.mlp_dim), w**-0.5, dtype),
            "linear": _normal(keys, (depth, c.mlp_dim, w), c.mlp_dim**-0.5, dtype),
        }
        layers[f"pre_attention_norm{s}"] = _norm(keys, (depth,), w, ada, dtype)
        layers[f"pre_ffw_norm{s}"] = _norm(keys, (depth,), w, ada, dtype)
    return layers


def random_params(spec: ModelSpec, seed: int = 0, dtype: Any = jnp.float32) -> dict[str, Any]:
    """A parameter tree openpi's ``Pi0Config(...).load`` would accept for this spec, filled with random values."""
    keys = _Keys(seed)
    s = spec.siglip
    d = (s.depth,)
    img = {
        "embedding": {
            "kernel": _normal(keys, (s.patch_size, s.patch_size, 3, s.width), (3 * s.patch_size**2) ** -0.5, dtype),
            "bias": _normal(keys, (s.width,), 0.02, dtype),
        },
        "pos_embedding": _normal(keys, (1, s.tokens_per_image, s.width), s.width**-0.5, dtype),
        "Transformer": {
            "encoderblock": {
                "LayerNorm_0": {
                    "scale": 1 + _normal(keys, (*d, s.width), 0.1, dtype),
                    "bias": _normal(keys, (*d, s.width), 0.02, dtype),
                },
                "LayerNorm_1": {
                    "scale": 1 + _normal(keys, (*d, s.width), 0.1, dtype),
                    "bias": _normal(keys, (*d, s.width), 0.02, dtype),
                },
                "MlpBlock_0": {
                    "Dense_0": _dense(keys, s.width, s.mlp_dim, dtype, d),
                    "Dense_1": _dense(keys, s.mlp_dim, s.width, dtype, d),
                },
                "MultiHeadDotProductAttention_0": {
                    **{
                        name: {
                            "kernel": _normal(keys, (*d, s.width, s.num_heads, s.head_dim), s.width**-0.5, dtype),
                            "bias": _normal(keys, (*d, s.num_heads, s.head_dim), 0.02, dtype),
                        }
                        for name in ("query", "key", "value")
                    },
                    "out": {
                        "kernel": _normal(keys, (*d, s.num_heads, s.head_dim, s.width), s.width**-0.5, dtype),
                        "bias": _normal(keys, (*d, s.width), 0.02, dtype),
                    },
                },
            },
            "encoder_norm": {
                "scale": 1 + _normal(keys, (s.width,), 0.1, dtype),
                "bias": _normal(keys, (s.width,), 0.02, dtype),
            },
        },
        "head": _dense(keys, s.width, spec.llm.width, dtype),
    }
    embedding = _normal(keys, (spec.vocab_size, spec.llm.width), 0.15, dtype)
    # A stronger EOS row lets greedy decoding of random weights stop now and then.
    embedding = embedding.at[1].multiply(3.0)
    llm = {
        "embedder": {"input_embedding": embedding},
        "layers": _gemma_layers(keys, [spec.llm, spec.expert], [False, spec.pi05], dtype),
        "final_norm": {"scale": _normal(keys, (spec.llm.width,), 1.0, dtype)},
        "final_norm_1": _norm(keys, (), spec.expert.width, spec.pi05, dtype),
    }
    w = spec.expert.width
    params: dict[str, Any] = {
        "PaliGemma": {"img": img, "llm": llm},
        "action_in_proj": _dense(keys, spec.action_dim, w, dtype),
        "action_out_proj": _dense(keys, w, spec.action_dim, dtype),
    }
    if spec.pi05:
        params["time_mlp_in"] = _dense(keys, w, w, dtype)
        params["time_mlp_out"] = _dense(keys, w, w, dtype)
    else:
        params["state_proj"] = _dense(keys, spec.action_dim, w, dtype)
        params["action_time_mlp_in"] = _dense(keys, 2 * w, w, dtype)
        params["action_time_mlp_out"] = _dense(keys, w, w, dtype)
    return params


def to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)
