"""Helpers every runtime builds its stages with (the stages: :class:`openpi_triton.runtime_api.PolicyRuntime`).

``infer_batch`` is the whole of openpi's ``Policy.infer`` for many observations at once, ``check_noise`` the
one rule for a request's noise, ``warm_buckets`` the warm-up that keeps serving free of compilation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from openpi_triton.runtime_api import PolicyRuntime

logger = logging.getLogger(__name__)


def infer_batch(
    policy: PolicyRuntime, observations: Sequence[Mapping[str, Any]], noise: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """Every observation prepared (raises on the first bad one), one ``sample``, then ``finish`` per row."""
    noises = list(noise) if noise is not None else [None] * len(observations)
    if len(noises) != len(observations):
        raise ValueError(f"'noise': got {len(noises)} entries for {len(observations)} observations")
    prepared = [policy.prepare(obs, n) for obs, n in zip(observations, noises, strict=True)]
    start = time.perf_counter()
    raw = policy.sample(prepared)
    infer_ms = (time.perf_counter() - start) * 1000.0
    results = []
    for i, p in enumerate(prepared):
        actions = policy.finish(p, raw[i])
        result: dict[str, Any] = {"actions": actions, "policy_timing": {"infer_ms": infer_ms}}
        echo = policy.rtc_echo(p, actions)
        if echo is not None:
            result["rtc"] = echo
        results.append(result)
    return results


def check_noise(noise: Any, expected: tuple[int, int]) -> np.ndarray | None:
    """A request's ``noise``: ``None``, or finite floats of shape ``expected`` (a leading batch of 1 allowed)."""
    if noise is None:
        return None
    try:
        array = np.asarray(noise)
    except ValueError:
        raise ValueError(f"'noise': expected float32 {list(expected)}, got a ragged sequence") from None
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != expected or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"'noise': expected float32 {list(expected)}, got {array.dtype} {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise ValueError(f"'noise': values must be finite, got {bad} NaN/inf of {array.size}")
    return array.astype(np.float32)


def warm_buckets(policy: PolicyRuntime, example: Any, buckets: Sequence[int], label: str) -> dict[int, float]:
    """One ``sample`` per batch bucket with a prepared example, so serving never compiles (seconds each)."""
    seconds: dict[int, float] = {}
    for bucket in buckets:
        start = time.perf_counter()
        policy.sample([example] * bucket)
        seconds[bucket] = time.perf_counter() - start
        logger.info("warm-up %s batch %d: %.2f s", label, bucket, seconds[bucket])
    return seconds
