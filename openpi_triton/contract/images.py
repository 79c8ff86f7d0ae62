"""The image rules every layer holds robots to (openpi's): uint8, or float in [0, 1] truncated to uint8."""

from __future__ import annotations

import numpy as np

# The size openpi's models see every camera at; robots may pre-resize to it (``image_specs``).
MODEL_IMAGE_SIZE = 224


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
