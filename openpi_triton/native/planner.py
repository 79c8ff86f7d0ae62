"""pi0.5 subtask planner: greedy text generation from the PaliGemma half of a pi0.5 checkpoint.

Behaviour follows openpi-flash's ``SubtaskGenerator`` (prompt cleaning, ``generation_prompt_format``,
printable-ASCII vocabulary mask, greedy argmax, ids 0/1 dropped from the text), generalised to batches:
every row decodes independently, and the loop stops once every row has emitted EOS. After EOS a row's
buffer holds 0, so stopping early yields exactly the tokens a full-length run yields.

The KV cache is a fixed buffer of ``prefix + max_generation_tokens`` slots written in place, so one
compiled graph serves every step (openpi-flash unrolls a growing cache into one graph per length).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import string
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from openpi_triton.domain import batching
from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.domain.embodiments.base import parse_prompt
from openpi_triton.native import checkpoint, gemma, pi0, tokenizer
from openpi_triton.native.variants import ModelSpec, infer_spec
from openpi_triton.prompt_format import DEFAULT_GENERATION_PROMPT_FORMAT, validate_prompt_format

logger = logging.getLogger(__name__)

PLANNER_MAX_LEN = 200
MASKED_LOGIT = -1e9


def _camera_slots(embodiment: str) -> dict[str, str]:
    """An embodiment's camera keys (the last step of each image path) -> the model image slot they feed."""
    return {field.path[-1]: field.slot for field in EMBODIMENTS[embodiment].image_fields if field.slot}


# openpi-flash's camera-name mappings, tried in this order; the first whose keys overlap the robot's wins.
# ALOHA's and DROID's are their embodiments' own; Galaxea R1 has no embodiment here, only this mapping.
CAMERA_NAME_MAPPINGS: dict[str, dict[str, str]] = {
    "aloha": _camera_slots("aloha"),
    "droid": _camera_slots("droid"),
    "galaxea_r1": {
        "head_camera": "base_0_rgb",
        "left_wrist_camera": "left_wrist_0_rgb",
        "right_wrist_camera": "right_wrist_0_rgb",
    },
}


def clean_task(task: str) -> str:
    """openpi-flash's cleaning: lower-case, strip, '_'/newline -> space, drop one trailing punctuation mark."""
    cleaned = task.lower().strip().replace("_", " ").replace("\n", " ")
    if cleaned and cleaned[-1] in string.punctuation:
        cleaned = cleaned[:-1]
    return cleaned


def build_vocab_mask(sp: Any) -> np.ndarray:
    """Allowed ids: PAD, EOS, and every piece that is printable ASCII (the word marker counts as a space)."""
    size = sp.vocab_size()
    mask = np.zeros(size, dtype=bool)
    mask[tokenizer.PAD_ID] = True
    mask[tokenizer.EOS_ID] = True
    for token_id in range(2, size):
        piece = sp.id_to_piece(token_id).replace("\u2581", " ")
        mask[token_id] = bool(piece) and piece.isascii() and piece.isprintable()
    return mask


def extract_images(obs: Mapping[str, Any]) -> dict[str, Any]:
    """Robot cameras by their own names: ``obs['images']`` if it is a dict, else DROID-style flat image keys."""
    images = obs.get("images")
    if isinstance(images, Mapping):
        return {k: v for k, v in images.items() if v is not None}
    return {k: v for k, v in obs.items() if k.startswith("observation/") and "image" in k}


def map_camera_names(images: Mapping[str, Any]) -> dict[str, Any]:
    for mapping in CAMERA_NAME_MAPPINGS.values():
        if set(images) & set(mapping):
            return {slot: images[name] for name, slot in mapping.items() if name in images}
    return dict(images)


def _resize_float_with_pad(image: np.ndarray, size: int) -> np.ndarray:
    """openpi's JAX ``resize_with_pad`` for float images in [-1, 1] (linear, clipped, padded with -1)."""
    height, width = image.shape[:2]
    ratio = max(width / size, height / size)
    new_h, new_w = int(height / ratio), int(width / ratio)
    resized = np.asarray(jax.image.resize(jnp.asarray(image), (new_h, new_w, image.shape[2]), method="linear"))
    resized = np.clip(resized, -1.0, 1.0)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out = np.full((size, size, image.shape[2]), -1.0, dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = resized
    return out


def normalize_planner_image(value: Any, name: str, size: int = 224) -> np.ndarray:
    """openpi-flash's image rule: CHW -> HWC; uint8 -> x/127.5-1; float in [0,1] -> 2x-1; other floats as is."""
    image = np.asarray(value)
    if image.ndim != 3:
        raise ValueError(f"image '{name}': expected 3 dimensions (HWC or CHW), got shape {list(image.shape)}")
    if image.shape[0] == 3 and image.shape[1] > 3:
        image = np.transpose(image, (1, 2, 0))
    if image.shape[2] != 3:
        raise ValueError(f"image '{name}': expected 3 channels, got shape {list(image.shape)}")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 127.5 - 1.0
    elif np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
        if not np.all(np.isfinite(image)):
            raise ValueError(f"image '{name}': values must be finite")
        if image.min() >= -0.01 and image.max() <= 1.01:
            image = image * 2.0 - 1.0
    else:
        raise ValueError(f"image '{name}': expected dtype uint8 or float, got {image.dtype}")
    if image.shape[:2] != (size, size):
        image = _resize_float_with_pad(image, size)
    return image


@dataclasses.dataclass(frozen=True)
class PlannerOptions:
    max_generation_tokens: int = 20
    generation_prompt_format: str = DEFAULT_GENERATION_PROMPT_FORMAT
    dtype: str = "float32"
    batch_buckets: tuple[int, ...] = batching.DEFAULT_BATCH_BUCKETS
    tokenizer_path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_generation_tokens, int) or self.max_generation_tokens < 1:
            raise ValueError(f"max_generation_tokens: expected a positive integer, got {self.max_generation_tokens!r}")
        validate_prompt_format(self.generation_prompt_format)
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype: expected 'float32' or 'bfloat16', got {self.dtype!r}")
        object.__setattr__(self, "batch_buckets", batching.parse_buckets(self.batch_buckets))


@dataclasses.dataclass
class PlannerInput:
    images: np.ndarray  # float32 [3, 224, 224, 3] in [-1, 1]
    tokens: np.ndarray  # int32 [200]
    token_mask: np.ndarray  # bool [200]
    prefix_text: str


@dataclasses.dataclass
class Subtask:
    text: str
    token_ids: list[int]  # the token buffer: 0 after the first EOS
    ms: float


def _generate_impl(
    params: Any,
    images: jax.Array,
    tokens: jax.Array,
    token_mask: jax.Array,
    vocab_mask: jax.Array,
    *,
    spec: ModelSpec,
    max_tokens: int,
    dtype: Any,
    full_trace: bool,
    early_exit: bool,
) -> dict[str, jax.Array]:
    batch = tokens.shape[0]
    inputs = pi0.ModelInputs(
        images=images,
        image_masks=jnp.ones((batch, images.shape[1]), dtype=jnp.bool_),
        state=jnp.zeros((batch, spec.action_dim), jnp.float32),
        tokens=tokens,
        token_mask=token_mask,
    )
    _, prefix_mask, hidden, (cache_k, cache_v) = pi0.prefix_pass(params, spec, inputs, dtype)
    prefix_len = prefix_mask.shape[1]
    llm = params["PaliGemma"]["llm"]
    last_position = jnp.max(jnp.where(prefix_mask, jnp.arange(prefix_len)[None, :], -1), axis=1).astype(jnp.int32)
    first_logits = gemma.logits_from_hidden(llm, hidden[jnp.arange(batch), last_position])

    pad = jnp.zeros((*cache_k.shape[:2], max_tokens, *cache_k.shape[3:]), cache_k.dtype)
    cache = (jnp.concatenate([cache_k, pad], axis=2), jnp.concatenate([cache_v, pad], axis=2))
    slots = jnp.arange(max_tokens)

    def step(carry: dict[str, Any]) -> dict[str, Any]:
        s = carry["step"]
        logits = carry["logits"]
        token = jnp.argmax(jnp.where(vocab_mask, logits, MASKED_LOGIT), axis=-1).astype(jnp.int32)
        buffer = carry["buffer"].at[:, s].set(jnp.where(carry["done"], 0, token))
        done = carry["done"] | (token == tokenizer.EOS_ID)
        embedded = gemma.embed_tokens(llm, token[:, None], dtype)
        mask = jnp.concatenate([prefix_mask, jnp.broadcast_to(slots[None, :] <= s, (batch, max_tokens))], axis=1)
        (out, _), new_cache = gemma.transformer(
            llm,
            spec.llm,
            [embedded, None],
            (last_position + 1 + s)[:, None],
            mask[:, None, :],
            kv_cache=carry["cache"],
            write_index=prefix_len + s,
            dtype=dtype,
        )
        result = {
            "step": s + 1,
            "logits": gemma.logits_from_hidden(llm, out[:, -1]),
            "buffer": buffer,
            "done": done,
            "cache": new_cache,
        }
        if full_trace:
            result["trace"] = carry["trace"].at[:, s].set(logits)
        return result

    def cond(carry: dict[str, Any]) -> jax.Array:
        running = carry["step"] < max_tokens
        return running & ~jnp.all(carry["done"]) if early_exit else running

    init: dict[str, Any] = {
        "step": jnp.int32(0),
        "logits": first_logits,
        "buffer": jnp.zeros((batch, max_tokens), jnp.int32),
        "done": jnp.zeros((batch,), jnp.bool_),
        "cache": cache,
    }
    if full_trace:
        init["trace"] = jnp.zeros((batch, max_tokens, first_logits.shape[-1]), jnp.float32)
    final = jax.lax.while_loop(cond, step, init)
    out = {"buffer": final["buffer"], "steps": final["step"], "done": final["done"], "last_position": last_position}
    if full_trace:
        out["logits"] = final["trace"]
    return out


def _planner_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Keeps only what the planner runs: SigLIP and expert 0 of the LLM (drops the action expert)."""
    llm = params["PaliGemma"]["llm"]
    layers = {k: v for k, v in llm["layers"].items() if not k.endswith("_1")}
    layers["attn"] = {k: v for k, v in llm["layers"]["attn"].items() if not k.endswith("_1")}
    kept_llm = {"embedder": llm["embedder"], "final_norm": llm["final_norm"], "layers": layers}
    return {"PaliGemma": {"img": params["PaliGemma"]["img"], "llm": kept_llm}}


class SubtaskPlanner:
    """Batched greedy subtask generation."""

    def __init__(
        self, params: Mapping[str, Any], sp: Any, options: PlannerOptions, device: jax.Device | None = None
    ) -> None:
        self.spec = infer_spec(params)
        self.options = options
        self.sp = sp
        if sp.vocab_size() > self.spec.vocab_size:
            raise ValueError(f"tokenizer has {sp.vocab_size()} pieces but the checkpoint embeds {self.spec.vocab_size}")
        self.vocab_mask = build_vocab_mask(sp)
        logger.info("planner vocabulary mask: %d/%d tokens allowed", int(self.vocab_mask.sum()), self.vocab_mask.size)
        full_mask = np.zeros(self.spec.vocab_size, dtype=bool)
        full_mask[: self.vocab_mask.size] = self.vocab_mask
        self.device = device or jax.devices()[0]
        self.params = jax.device_put(_planner_params(params), self.device)
        self._vocab_mask = jax.device_put(full_mask, self.device)
        self.dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[options.dtype]
        # (full_trace, early_exit) -> compiled generate; serving uses (False, True).
        self._generate = {
            mode: jax.jit(
                functools.partial(
                    _generate_impl,
                    spec=self.spec,
                    max_tokens=options.max_generation_tokens,
                    dtype=self.dtype,
                    full_trace=mode[0],
                    early_exit=mode[1],
                )
            )
            for mode in ((False, True), (False, False), (True, False))
        }
        self.compiled_buckets: set[int] = set()

    def prepare(self, task: Any, images: Mapping[str, Any] | None, prompt_format: str | None = None) -> PlannerInput:
        """One request: task text, robot cameras (any of the mapped names), optional per-call prompt format."""
        task = parse_prompt(task) or ""
        fmt = (
            validate_prompt_format(prompt_format)
            if prompt_format is not None
            else self.options.generation_prompt_format
        )
        text = fmt.format(task=clean_task(task))
        ids = self.sp.encode(text, add_bos=True)[:PLANNER_MAX_LEN]
        tokens = np.zeros(PLANNER_MAX_LEN, np.int32)
        tokens[: len(ids)] = ids
        mask = np.zeros(PLANNER_MAX_LEN, bool)
        mask[: len(ids)] = True
        mapped = map_camera_names(images or {})
        slots = []
        for slot in pi0.IMAGE_KEYS:
            if slot in mapped:
                slots.append(normalize_planner_image(mapped[slot], slot))
            else:
                # openpi-flash: a missing camera is a mid-grey image that the model still attends to.
                slots.append(np.zeros((224, 224, 3), np.float32))
        return PlannerInput(images=np.stack(slots), tokens=tokens, token_mask=mask, prefix_text=text)

    def prepare_observation(self, obs: Mapping[str, Any], prompt_format: str | None = None) -> PlannerInput:
        return self.prepare(obs.get("prompt", ""), extract_images(obs), prompt_format)

    def run(
        self, prepared: Sequence[PlannerInput], *, full_trace: bool = False, early_exit: bool = True
    ) -> dict[str, np.ndarray]:
        """Model call(s) for many prepared inputs.

        ``full_trace`` runs every step and also returns the per-step logits; ``early_exit=False`` runs every
        step (benchmarks of the worst case). Both give the same tokens as the default.
        """
        mode = (True, False) if full_trace else (False, early_exit)
        pieces: list[dict[str, np.ndarray]] = []
        stacked = {
            "images": np.stack([p.images for p in prepared]),
            "tokens": np.stack([p.tokens for p in prepared]),
            "token_mask": np.stack([p.token_mask for p in prepared]),
        }
        for start, stop, bucket in batching.split_into_buckets(len(prepared), self.options.batch_buckets):
            chunk = {k: batching.pad_rows(v[start:stop], bucket) for k, v in stacked.items()}
            if bucket not in self.compiled_buckets:
                logger.info("compiling planner for batch %d (not warmed up)", bucket)
            placed = jax.device_put(chunk, self.device)
            out = self._generate[mode](
                self.params, placed["images"], placed["tokens"], placed["token_mask"], self._vocab_mask
            )
            self.compiled_buckets.add(bucket)
            pieces.append({k: np.asarray(v)[: stop - start] if np.ndim(v) else np.asarray(v) for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in pieces]) if pieces[0][k].ndim else pieces[-1][k] for k in pieces[0]}

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(t) for t in ids if t not in (tokenizer.PAD_ID, tokenizer.EOS_ID)])

    def generate_batch(self, prepared: Sequence[PlannerInput], *, early_exit: bool = True) -> list[Subtask]:
        start = time.perf_counter()
        out = self.run(prepared, early_exit=early_exit)
        ms = (time.perf_counter() - start) * 1000.0
        return [Subtask(text=self.detokenize(row), token_ids=[int(t) for t in row], ms=ms) for row in out["buffer"]]

    def generate(self, task: str, images: Mapping[str, Any] | None = None, prompt_format: str | None = None) -> Subtask:
        return self.generate_batch([self.prepare(task, images, prompt_format)])[0]

    def warmup(self, *, early_exit: bool = True) -> dict[int, float]:
        """Compiles every bucket with openpi-flash's warm-up prompt and no images."""
        example = self.prepare("warmup test prompt", None)
        seconds: dict[int, float] = {}
        for bucket in self.options.batch_buckets:
            start = time.perf_counter()
            self.run([example] * bucket, early_exit=early_exit)
            seconds[bucket] = time.perf_counter() - start
            logger.info("planner warm-up batch %d: %.2f s", bucket, seconds[bucket])
        return seconds


def load_planner(
    checkpoint_dir: str | pathlib.Path, options: PlannerOptions | None = None, device: jax.Device | None = None
) -> SubtaskPlanner:
    options = options or PlannerOptions()
    params = checkpoint.load_params(checkpoint_dir, options.dtype)
    sp = tokenizer.load_sentencepiece(options.tokenizer_path)
    return SubtaskPlanner(params, sp, options, device)
