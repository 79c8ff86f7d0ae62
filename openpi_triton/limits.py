"""Explicit limits on what one robot request may cost, shared by the bridge and the Triton models.

One home for the defaults: the bridge's config (``limits``) and the models' ``config.pbtxt`` parameters
(``max_image_pixels``, ``max_prompt_bytes``) both start from these. The defaults fit real robots with room
to spare (openpi resizes every camera to 224 x 224; a 1920 x 1200 camera still passes) and stop the requests
that would otherwise cost every other robot seconds (a 4600 x 4600 image, a 1 MB prompt).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Pixels per camera image (height x width). 1920 x 1200 passes.
DEFAULT_MAX_IMAGE_PIXELS = 1920 * 1200
# UTF-8 bytes of one text input (prompt, mode). openpi's pi0.5 prompt holds at most 200 tokens.
DEFAULT_MAX_PROMPT_BYTES = 2048
# msgpack values (every map, array, key and leaf) in one WebSocket frame; an openpi observation has ~40.
DEFAULT_MAX_FRAME_VALUES = 8192
# Nesting depth of containers in one frame; an openpi observation nests 3 deep (obs/images/ndarray).
DEFAULT_MAX_FRAME_DEPTH = 32
# UTF-8 bytes of a LocalFrame's scalar JSON (prompt, mode and other non-array values); a 2 KiB prompt fits
# eight times. JSON amplifies (``[]`` is two bytes but a 56-byte list), so its values count too.
DEFAULT_MAX_SCALAR_JSON_BYTES = 16 * 1024


@dataclasses.dataclass(frozen=True)
class FrameLimits:
    """What decoding one frame may build: bounds the decoder's memory and CPU to a small multiple of the frame."""

    max_values: int = DEFAULT_MAX_FRAME_VALUES
    max_depth: int = DEFAULT_MAX_FRAME_DEPTH
    max_scalar_json_bytes: int = DEFAULT_MAX_SCALAR_JSON_BYTES


@dataclasses.dataclass(frozen=True)
class InputLimits:
    """What one observation may ask of the model's preprocessing (checked before any conversion)."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES

    def check_image(self, name: str, shape: tuple[int, ...]) -> None:
        """``shape`` is one camera's array shape (3 axes, one of them the 3 colour channels)."""
        pixels = int(np.prod(shape, dtype=np.int64)) // 3 if len(shape) == 3 else 0
        if pixels > self.max_image_pixels:
            raise ValueError(
                f"image '{name}': {pixels} pixels (shape {list(shape)}) is over the limit of "
                f"{self.max_image_pixels} pixels per camera (max_image_pixels); resize on the robot "
                "(the model sees 224 x 224)"
            )

    def check_text(self, name: str, value: bytes | str) -> None:
        size = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
        if size > self.max_prompt_bytes:
            raise ValueError(
                f"'{name}': {size} bytes of text is over the limit of {self.max_prompt_bytes} bytes (max_prompt_bytes)"
            )


DEFAULT_FRAME_LIMITS = FrameLimits()
DEFAULT_INPUT_LIMITS = InputLimits()
