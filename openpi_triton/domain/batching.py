"""Fixed batch buckets: JAX compiles once per shape, so batches are padded up to the next bucket."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Compiled batch sizes when nothing else is configured: Triton's max_batch_size 8, every size up to it padded
# at most to the double. The one home of this default (options, config.pbtxt parameters).
DEFAULT_BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8)


def parse_buckets(value: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,2,4,8"`` or ``[1, 2, 4, 8]`` -> sorted unique positive sizes; anything else is a ``ValueError``."""
    error = f"batch buckets: expected comma-separated positive integers, got {value!r}"
    if isinstance(value, str):
        items: list[object] = [v.strip() for v in value.split(",") if v.strip()]
        if not all(isinstance(v, str) and v.isdigit() for v in items):
            raise ValueError(error)
        sizes = sorted({int(str(v)) for v in items})
    elif isinstance(value, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        sizes = sorted(set(value))
    else:
        raise ValueError(error)
    if not sizes or sizes[0] < 1:
        raise ValueError(error)
    return tuple(sizes)


def split_into_buckets(count: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """Chunks of ``count`` rows as (start, stop, bucket): full largest buckets first, the rest padded up."""
    chunks: list[tuple[int, int, int]] = []
    start = 0
    largest = buckets[-1]
    while count - start > largest:
        chunks.append((start, start + largest, largest))
        start += largest
    remaining = count - start
    if remaining > 0:
        chunks.append((start, count, next(b for b in buckets if b >= remaining)))
    return chunks


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """Pads axis 0 to ``size`` by repeating the first row (padded rows are computed and dropped)."""
    if array.shape[0] == size:
        return array
    reps = np.repeat(array[:1], size - array.shape[0], axis=0)
    return np.concatenate([array, reps], axis=0)
