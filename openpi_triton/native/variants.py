"""Architecture hyper-parameters: openpi's named variants and inference from checkpoint array shapes.

Every size is read off the checkpoint, so shrunken test models (tiny widths, a 1024-token vocabulary)
load exactly like full-size ones; the named variants exist to describe and build random-weight models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """One Gemma expert (PaliGemma's LLM or the action expert)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """SigLIP ViT image encoder (pool 'none', learned position embedding, head to the LLM width)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int = 14
    image_size: int = 224

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2


GEMMA_VARIANTS: dict[str, GemmaConfig] = {
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
}

SIGLIP_VARIANTS: dict[str, SiglipConfig] = {
    "mu/14": SiglipConfig(width=32, depth=1, mlp_dim=128, num_heads=2),
    # Not an openpi variant: mu with 56-pixel patches (16 tokens per image), used by the embedded default
    # so that a CPU call stays in the tens of milliseconds.
    "mu/56": SiglipConfig(width=32, depth=1, mlp_dim=128, num_heads=2, patch_size=56),
    "Ti/14": SiglipConfig(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S/14": SiglipConfig(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B/14": SiglipConfig(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "So400m/14": SiglipConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16),
}

PALIGEMMA_VOCAB_SIZE = 257_152


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything the forward pass needs to know about a pi0 / pi0.5 model's shape."""

    siglip: SiglipConfig
    llm: GemmaConfig
    expert: GemmaConfig
    vocab_size: int
    action_dim: int
    pi05: bool

    def describe(self) -> str:
        def gemma(c: GemmaConfig) -> str:
            return f"width {c.width} depth {c.depth} mlp {c.mlp_dim} heads {c.num_heads}/{c.num_kv_heads}x{c.head_dim}"

        s = self.siglip
        return (
            f"{'pi0.5' if self.pi05 else 'pi0'}: SigLIP width {s.width} depth {s.depth} heads {s.num_heads} "
            f"patch {s.patch_size}; LLM {gemma(self.llm)} vocab {self.vocab_size}; expert {gemma(self.expert)}; "
            f"action_dim {self.action_dim}"
        )


def named_spec(
    *,
    paligemma: str = "gemma_2b",
    action_expert: str = "gemma_300m",
    siglip: str = "So400m/14",
    vocab_size: int = PALIGEMMA_VOCAB_SIZE,
    action_dim: int = 32,
    pi05: bool = True,
) -> ModelSpec:
    """A spec from openpi's variant names (used to build random-weight models of a known size)."""
    for name, table in (("paligemma", GEMMA_VARIANTS), ("action_expert", GEMMA_VARIANTS), ("siglip", SIGLIP_VARIANTS)):
        value = {"paligemma": paligemma, "action_expert": action_expert, "siglip": siglip}[name]
        if value not in table:
            raise ValueError(f"unknown {name} variant {value!r}; expected one of {sorted(table)}")
    return ModelSpec(
        siglip=SIGLIP_VARIANTS[siglip],
        llm=GEMMA_VARIANTS[paligemma],
        expert=GEMMA_VARIANTS[action_expert],
        vocab_size=vocab_size,
        action_dim=action_dim,
        pi05=pi05,
    )


def _shape(params: Mapping[str, Any], path: str) -> tuple[int, ...]:
    node: Any = params
    for key in path.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"checkpoint is missing parameter '{path}' (is this an openpi pi0 / pi0.5 checkpoint?)")
        node = node[key]
    return tuple(node.shape)


def _gemma_from_params(layers: Mapping[str, Any], suffix: str, width: int) -> GemmaConfig:
    q_shape = tuple(layers["attn"][f"q_einsum{suffix}"]["w"].shape)  # (depth, heads, width, head_dim)
    kv_shape = tuple(layers["attn"][f"kv_einsum{suffix}"]["w"].shape)  # (depth, 2, kv_heads, width, head_dim)
    mlp_shape = tuple(layers[f"mlp{suffix}"]["linear"].shape)  # (depth, mlp_dim, width)
    depth, heads, w, head_dim = q_shape
    if w != width:
        raise ValueError(f"expert{suffix or ' 0'} q_einsum width {w} does not match its norm width {width}")
    return GemmaConfig(
        width=width, depth=depth, mlp_dim=mlp_shape[1], num_heads=heads, num_kv_heads=kv_shape[2], head_dim=head_dim
    )


def infer_spec(params: Mapping[str, Any]) -> ModelSpec:
    """Reads every hyper-parameter off the parameter tree's array shapes."""
    attn = params.get("PaliGemma", {}).get("llm", {}).get("layers", {}).get("attn", {})
    if "qkv_einsum" in attn:
        raise ValueError("checkpoints with num_kv_heads == num_heads (qkv_einsum) are not supported by openpi's pi0")
    llm_width = _shape(params, "PaliGemma/llm/layers/pre_attention_norm/scale")[1]
    layers = params["PaliGemma"]["llm"]["layers"]
    pi05 = "time_mlp_in" in params
    expert_norm = layers["pre_attention_norm_1"]
    expert_width = (
        expert_norm["Dense_0"]["kernel"].shape[1] if "Dense_0" in expert_norm else expert_norm["scale"].shape[1]
    )
    vocab_size, _ = _shape(params, "PaliGemma/llm/embedder/input_embedding")
    patch, _, _, siglip_width = _shape(params, "PaliGemma/img/embedding/kernel")
    siglip_depth, _, siglip_mlp = _shape(params, "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel")
    siglip_heads = _shape(params, "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel")[
        2
    ]
    num_pos = _shape(params, "PaliGemma/img/pos_embedding")[1]
    action_dim = _shape(params, "action_in_proj/kernel")[0]
    side = round(num_pos**0.5)
    if side * side != num_pos:
        raise ValueError(f"SigLIP pos_embedding has {num_pos} positions, not a square grid")
    spec = ModelSpec(
        siglip=SiglipConfig(
            width=siglip_width,
            depth=siglip_depth,
            mlp_dim=siglip_mlp,
            num_heads=siglip_heads,
            patch_size=patch,
            image_size=side * patch,
        ),
        llm=_gemma_from_params(layers, "", llm_width),
        expert=_gemma_from_params(layers, "_1", expert_width),
        vocab_size=vocab_size,
        action_dim=action_dim,
        pi05=pi05,
    )
    a, b = spec.llm, spec.expert
    if (a.depth, a.num_heads, a.num_kv_heads, a.head_dim) != (b.depth, b.num_heads, b.num_kv_heads, b.head_dim):
        raise ValueError(f"the two experts must share depth and head layout: {a} vs {b}")
    if any(k.endswith("lora_a") for k in _flat_keys(params)):
        raise ValueError("LoRA checkpoints are not supported by the native runtime yet; use runtime 'openpi'")
    return spec


def _flat_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        keys.extend(_flat_keys(v, path) if isinstance(v, Mapping) else [path])
    return keys
