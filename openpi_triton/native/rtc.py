"""Real-Time Chunking: guided flow-matching sampling (pseudo-inverse guidance, arXiv 2506.07339) in openpi's
time convention (x_t = t·noise + (1 − t)·actions, t from 1 to 0, v ≈ noise − actions).

Each Euler step predicts the clean chunk Â = x_t − t·v(x_t), weighs its error against the previous chunk Y
(per row W_i over time steps, per dim m_j over the robot's real dims) and moves along
v_g = v − g(t)·Jᵀ(M ⊙ (Y − Â)), J = ∂Â/∂x_t, with one ``jax.vjp`` of the action-expert suffix pass (the prefix
KV cache is held constant: the prefix never attends to the suffix). ``identity`` rows use Jᵀ ≈ I.

Everything per request is a traced array (Y, d, ℓ, β, schedule, mode), so one compiled program per batch
bucket serves any values; a row with ℓ = 0 or β = 0 is exactly plain sampling.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from openpi_triton.domain.rtc import SCHEDULES
from openpi_triton.native import pi0
from openpi_triton.native.variants import ModelSpec

_EXP, _LINEAR, _ONES, _ZEROS = (SCHEDULES.index(s) for s in ("exp", "linear", "ones", "zeros"))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Guidance:
    """Per-row guidance inputs of a batch (all traced).

    target: float32 [B, H, action_dim], the previous chunk in model space (zero rows past K);
    delay, horizon, schedule: int32 [B] (d, ℓ, index in ``SCHEDULES``); max_weight: float32 [B] (β);
    identity: bool [B] (Jᵀ ≈ I instead of the VJP); dims: float32 [action_dim], 1 on the robot's real dims.
    """

    target: jax.Array
    delay: jax.Array
    horizon: jax.Array
    schedule: jax.Array
    max_weight: jax.Array
    identity: jax.Array
    dims: jax.Array


def prefix_weights(delay: jax.Array, horizon: jax.Array, schedule: jax.Array, chunk: int) -> jax.Array:
    """W [..., chunk]: 1 on the frozen rows i < d' = min(d, ℓ), a decay over d' <= i < ℓ, 0 from ℓ on.

    The decay is c·(e^c − 1)/(e − 1) (exp) or c (linear) with c = (ℓ − i)/(ℓ − d' + 1); ``ones`` keeps 1 up to
    ℓ, ``zeros`` drops to 0 after the frozen rows (hard masking).
    """
    delay = jnp.asarray(delay, jnp.int32)[..., None]
    horizon = jnp.asarray(horizon, jnp.int32)[..., None]
    schedule = jnp.asarray(schedule, jnp.int32)[..., None]
    i = jnp.arange(chunk, dtype=jnp.int32)
    frozen = jnp.minimum(delay, horizon)
    c = jnp.clip((frozen - 1 - i).astype(jnp.float32) / (horizon - frozen + 1).astype(jnp.float32) + 1.0, 0.0, 1.0)
    decay = jnp.select(
        [schedule == _EXP, schedule == _LINEAR, schedule == _ONES, schedule == _ZEROS],
        [c * jnp.expm1(c) / (math.e - 1.0), c, jnp.ones_like(c), (i < frozen).astype(jnp.float32)],
    )
    # Frozen rows are exactly 1 (φ(1) rounds below 1 in float32).
    return jnp.where(i < frozen, 1.0, jnp.where(i < horizon, decay, 0.0))


def guidance_weight(time: jax.Array, max_weight: jax.Array) -> jax.Array:
    """g(t) = min(β, (t² + (1 − t)²) / (t(1 − t))), and β where t(1 − t) = 0 (the first step, t = 1)."""
    time = jnp.asarray(time, jnp.float32)
    denominator = time * (1.0 - time)
    safe = jnp.where(denominator > 0, denominator, 1.0)
    ratio = (time**2 + (1.0 - time) ** 2) / safe
    return jnp.where(denominator > 0, jnp.minimum(max_weight, ratio), max_weight)


def guided_step(
    velocity: Callable[[jax.Array], jax.Array],
    x_t: jax.Array,
    time: jax.Array,
    dt: float,
    mask: jax.Array,
    guidance: Guidance,
) -> jax.Array:
    """One Euler step x_t -> x_{t+dt} along the guided velocity; ``mask`` = W ⊙ m [B, H, action_dim]."""

    def denoise(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        v = velocity(x).astype(jnp.float32)
        return x - time * v, v

    # The forward pass runs once: v is the VJP's auxiliary output.
    predicted, pullback, v_t = jax.vjp(denoise, x_t, has_aux=True)
    error = mask * (guidance.target - predicted)
    # The backward pass only where a row needs it: a batch of identity rows (and rows riding along with zero
    # weights, whose correction is 0 either way) skips it; one program, the branch is chosen at run time.
    needs_vjp = jnp.any(~guidance.identity & jnp.any(mask != 0, axis=(1, 2)))
    correction = jax.lax.cond(needs_vjp, lambda e: pullback(e)[0], lambda e: e, error)
    correction = jnp.where(guidance.identity[:, None, None], error, correction)
    g = guidance_weight(time, guidance.max_weight)
    return (x_t + dt * (v_t - g[:, None, None] * correction)).astype(jnp.float32)


def guided_sample_actions(
    params: pi0.Params,
    spec: ModelSpec,
    inputs: pi0.ModelInputs,
    noise: jax.Array,
    guidance: Guidance,
    *,
    num_steps: int = 10,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """``pi0.sample_actions`` with RTC guidance per row."""
    dt = -1.0 / num_steps
    _, prefix_mask, _, kv_cache = pi0.prefix_pass(params, spec, inputs, dtype)
    kv_cache = jax.lax.stop_gradient(kv_cache)
    weights = prefix_weights(guidance.delay, guidance.horizon, guidance.schedule, noise.shape[1])
    mask = weights[:, :, None] * guidance.dims[None, None, :]

    def step(carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x_t, time = carry

        def velocity(x: jax.Array) -> jax.Array:
            return pi0.suffix_velocity(params, spec, inputs, prefix_mask, kv_cache, x, time, dtype)

        return guided_step(velocity, x_t, time, dt, mask, guidance), time + dt

    def cond(carry: tuple[jax.Array, jax.Array]) -> jax.Array:
        return carry[1] >= -dt / 2

    x_0, _ = jax.lax.while_loop(cond, step, (noise.astype(jnp.float32), jnp.asarray(1.0, jnp.float32)))
    return x_0
