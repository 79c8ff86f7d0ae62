"""Image conversions openpi applies before the model: float -> uint8, CHW -> HWC, PIL resize-with-pad to 224."""

from __future__ import annotations

import numpy as np
from PIL import Image


def convert_to_uint8(image: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] become uint8 by ``(255 * x).astype(uint8)`` (truncation, as openpi does)."""
    if np.issubdtype(image.dtype, np.floating):
        return (255 * image).astype(np.uint8)
    return image


def require_unit_range(image: np.ndarray, name: str) -> None:
    """Float images must hold finite values in [0, 1]; 0..255 floats would silently become garbage."""
    if not np.all(np.isfinite(image)):
        raise ValueError(f"image '{name}': float images must hold finite values in [0, 1], got NaN or inf")
    low, high = float(image.min(initial=0.0)), float(image.max(initial=0.0))
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"image '{name}': float images must hold values in [0, 1], got range [{low}, {high}]; "
            "send uint8 for 0..255 data"
        )


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bilinear resize keeping the aspect ratio, centred on a black canvas (openpi-client's ``resize_with_pad``).

    ``image`` is one uint8 HWC image; it is returned unchanged when it already has the target size.
    """
    if image.shape[:2] == (height, width):
        return image
    pil = Image.fromarray(image)
    cur_width, cur_height = pil.size
    ratio = max(cur_width / width, cur_height / height)
    resized_height = int(cur_height / ratio)
    resized_width = int(cur_width / ratio)
    resized = pil.resize((resized_width, resized_height), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (max(0, int((width - resized_width) / 2)), max(0, int((height - resized_height) / 2))))
    return np.asarray(canvas)
