"""Image conversions openpi applies before the model: float -> uint8, CHW -> HWC, PIL resize-with-pad to 224."""

from __future__ import annotations

import numpy as np
from PIL import Image

from openpi_triton.contract.images import convert_to_uint8, require_unit_range

__all__ = ["convert_to_uint8", "require_unit_range", "resize_with_pad"]


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
