"""The simulated policy: openpi's real input and output transforms around a model call that only waits.

A batched call sleeps for what a GPU cost curve (:mod:`openpi_triton.cost_curve`) says that batch costs,
then returns deterministic actions derived from each observation's state, so every robot gets its own
answer. Sleeping uses no CPU, so on a CPU-only machine the CPU that remains measures the serving stack
(bridge, Triton's dynamic batcher, the BLS, QUIC) under a GPU's batching economics. Numbers measured with
this runtime are simulations and are labelled as such wherever they appear.

Batches are padded to the batch buckets as the native runtime pads them: a batch of 3 with buckets
1,2,4,8 pays the curve's price for 4. The transforms are the native runtime's own code (this runtime is the
native one with its model replaced), so the norm stats and tokenizer come from a real checkpoint (empty
``checkpoint_dir``: the embedded default); its weights are never read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from openpi_triton.cost_curve import CostCurve
from openpi_triton.domain import batching, output_transforms
from openpi_triton.domain.configs import PolicyConfig, get_policy_config
from openpi_triton.native import checkpoint, tokenizer
from openpi_triton.native.policy import NativePolicy, PolicyOptions, PreparedObservation, checked_norm_stats
from openpi_triton.simulated_device import SimulatedDevice


@dataclasses.dataclass(frozen=True)
class SimulatedCall:
    """What one ``sample`` did: the buckets it ran and the milliseconds it waited."""

    buckets: tuple[int, ...]
    waited_ms: float


class SimulatedPolicy:
    """One openpi config's transforms (from a real checkpoint's norm stats and tokenizer) and a cost curve."""

    # The real transforms, the native runtime's own code: they read only config, options, norm_stats and
    # tokenizer, which this class sets up exactly as NativePolicy does. What is simulated is the model alone.
    prepare = NativePolicy.prepare
    _prepare_rtc = NativePolicy._prepare_rtc
    check_noise = NativePolicy.check_noise
    finish = NativePolicy.finish
    rtc_echo = NativePolicy.rtc_echo
    metadata = NativePolicy.metadata
    action_horizon = NativePolicy.action_horizon

    def __init__(
        self,
        config: PolicyConfig,
        norm_stats: Mapping[str, checkpoint.NormStats],
        sp_tokenizer: Any,
        options: PolicyOptions,
        curve: CostCurve,
        device: SimulatedDevice | None = None,
    ) -> None:
        self.config = config
        # Shared with the other instances on this device (None: this policy has the device to itself).
        self.device = device
        self.options = options
        self.curve = curve
        self.norm_stats = checked_norm_stats(config, norm_stats)
        self.tokenizer = tokenizer.PromptTokenizer(sp_tokenizer, config.max_token_len)
        self.output_chain = output_transforms.output_chain(config, self.norm_stats)
        # A model that only waits cannot be guided: an rtc request is refused, never answered unguided.
        self.rtc_refusal = "the simulated runtime has no model to guide"
        self.last_call = SimulatedCall((), 0.0)

    def describe(self) -> str:
        costs = ", ".join(f"{b}: {self.curve.ms(b):.0f} ms" for b in self.options.batch_buckets)
        return f"SIMULATED {self.config.name} (cost curve {self.curve.name}: {costs} per call)"

    def sample(self, prepared: Sequence[PreparedObservation]) -> np.ndarray:
        """Waits curve(bucket) per bucket-sized chunk; raw (normalised) actions float32 [N, H, action_dim]."""
        horizon, dim = self.config.action_horizon, self.config.action_dim
        if not prepared:
            return np.zeros((0, horizon, dim), np.float32)
        chunks = batching.split_into_buckets(len(prepared), self.options.batch_buckets)
        buckets = tuple(bucket for _, _, bucket in chunks)
        waited = sum(self.curve.ms(b) for b in buckets)
        with self.device.running() if self.device is not None else contextlib.nullcontext():
            time.sleep(waited / 1000.0)
        self.last_call = SimulatedCall(buckets, waited)
        # Deterministic and distinct per robot: the normalised state, fading along the chunk.
        fade = np.linspace(1.0, 0.5, horizon, dtype=np.float32)[:, None]
        return np.stack([np.tanh(p.state)[None, :] * fade for p in prepared]).astype(np.float32)

    def warmup(self) -> dict[int, float]:
        """Nothing to compile: one call per bucket checks the transforms and the curve (seconds per bucket)."""
        example = self.prepare(self.config.embodiment.example(np.random.default_rng(0)))
        seconds = {}
        for bucket in self.options.batch_buckets:
            start = time.perf_counter()
            self.sample([example] * bucket)
            seconds[bucket] = round(time.perf_counter() - start, 3)
        return seconds

    def infer(self, obs: Mapping[str, Any], noise: Any = None) -> dict[str, Any]:
        from openpi_triton import staged_policy

        return staged_policy.infer_batch(self, [obs], None if noise is None else [noise])[0]


def load_simulated_policy(
    config_name: str,
    checkpoint_dir: str | pathlib.Path,
    options: PolicyOptions,
    curve: CostCurve,
    device: SimulatedDevice | None = None,
) -> SimulatedPolicy:
    """The transforms of ``config_name`` from ``checkpoint_dir`` (norm stats; its weights are never read)."""
    config = get_policy_config(config_name)
    norm_stats = checkpoint.load_norm_stats(checkpoint_dir, config.asset_id)
    sp = tokenizer.load_sentencepiece(options.tokenizer_path)
    return SimulatedPolicy(config, norm_stats, sp, options, curve, device)
