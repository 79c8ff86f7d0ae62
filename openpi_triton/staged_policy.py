"""The runtime seam: the three stages every runtime's policy exposes, and ``infer_batch`` built on them.

Serving layers (the Triton action model) call the stages themselves so that each request gets its own
error: ``prepare`` checks and transforms one observation (``ValueError`` names the field), ``sample`` makes
one batched model call for many prepared observations, ``finish`` applies the output transforms to one
row. ``infer_batch`` is the whole of openpi's ``Policy.infer`` for many observations at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class StagedPolicy(Protocol):
    def prepare(self, obs: Mapping[str, Any], noise: Any = None) -> Any: ...

    def sample(self, prepared: Sequence[Any]) -> Any: ...

    def finish(self, prepared: Any, raw: Any) -> Any: ...


def infer_batch(
    policy: StagedPolicy, observations: Sequence[Mapping[str, Any]], noise: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """Every observation prepared (raises on the first bad one), one ``sample``, then ``finish`` per row."""
    noises = list(noise) if noise is not None else [None] * len(observations)
    if len(noises) != len(observations):
        raise ValueError(f"'noise': got {len(noises)} entries for {len(observations)} observations")
    prepared = [policy.prepare(obs, n) for obs, n in zip(observations, noises, strict=True)]
    start = time.perf_counter()
    raw = policy.sample(prepared)
    infer_ms = (time.perf_counter() - start) * 1000.0
    return [
        {"actions": policy.finish(p, raw[i]), "policy_timing": {"infer_ms": infer_ms}} for i, p in enumerate(prepared)
    ]
