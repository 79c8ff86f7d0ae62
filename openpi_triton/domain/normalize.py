"""openpi's state / action normalisation: z-score for pi0, quantiles for pi0.5 (same float64 arithmetic)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class NormStats:
    """openpi's per-key statistics; vectors have the robot's own width (float64, as openpi parses them)."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None


def _pad(x: np.ndarray, dim: int, value: float) -> np.ndarray:
    if x.shape[-1] >= dim:
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])], constant_values=value)


def normalize(x: np.ndarray, stats: NormStats, *, use_quantiles: bool) -> np.ndarray:
    """Statistics are cut to the data's width on the way in."""
    n = x.shape[-1]
    if use_quantiles:
        assert stats.q01 is not None and stats.q99 is not None
        q01, q99 = stats.q01[..., :n], stats.q99[..., :n]
        return (x - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0
    return (x - stats.mean[..., :n]) / (stats.std[..., :n] + 1e-6)


def unnormalize(x: np.ndarray, stats: NormStats, *, use_quantiles: bool) -> np.ndarray:
    """Inverse on the model's padded width: extra dims keep mean 0 / std 1, or pass through for quantiles."""
    if use_quantiles:
        assert stats.q01 is not None and stats.q99 is not None
        q01, q99 = stats.q01, stats.q99
        dim = q01.shape[-1]
        if dim < x.shape[-1]:
            head = (x[..., :dim] + 1.0) / 2.0 * (q99 - q01 + 1e-6) + q01
            return np.concatenate([head, x[..., dim:]], axis=-1)
        return (x + 1.0) / 2.0 * (q99 - q01 + 1e-6) + q01
    mean = _pad(stats.mean, x.shape[-1], 0.0)
    std = _pad(stats.std, x.shape[-1], 1.0)
    return x * (std + 1e-6) + mean


def check_quantiles(norm_stats: dict[str, NormStats], source: str) -> None:
    for key, stats in norm_stats.items():
        if stats.q01 is None or stats.q99 is None:
            raise ValueError(f"{source}: pi0.5 uses quantile normalisation but norm stats {key!r} lack q01/q99")
