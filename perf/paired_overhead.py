"""One robot's overhead over openpi-server, paired: the robot alternates its calls between the two servers, so
each call to ours has a call to openpi-server next to it, under the same moment's load of the host.

Two 15 s windows one after the other (the fleet benchmark's 1-robot rows) differ by several milliseconds on
a shared machine whenever its load changes between them, more than the 1 ms the goal allows. Here the host's
drift hits both sides of every pair alike. Every call has its own control tick (the robot calls at its rate,
each server at half of it), so one server's work after an answer does not run into the other's call. The
order within a pair alternates, and the overhead is the mean of the two orders' median differences: what
the server called first leaves behind for the second cancels out.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from typing import Any

from perf.robots import Endpoint


@dataclasses.dataclass(frozen=True)
class PairedOverhead:
    pairs: int
    ours_p50_ms: float
    baseline_p50_ms: float
    # The mean of the median (ours - openpi-server) of the pairs where ours went first and of those where
    # openpi-server did; each order's median too.
    overhead_p50_ms: float
    ours_first_p50_ms: float
    baseline_first_p50_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


def summarize(ours_ms: Sequence[float], baseline_ms: Sequence[float]) -> PairedOverhead:
    """The pairs' statistics; ``ours_ms[i]`` and ``baseline_ms[i]`` are one pair, ours first in even pairs."""
    if len(ours_ms) != len(baseline_ms) or len(ours_ms) < 4:
        raise ValueError(f"pairs: expected at least 4 and as many of ours as baseline, got {len(ours_ms)} / "
                         f"{len(baseline_ms)}")  # fmt: skip
    differences = [a - b for a, b in zip(ours_ms, baseline_ms, strict=True)]
    ours_first, baseline_first = statistics.median(differences[0::2]), statistics.median(differences[1::2])
    return PairedOverhead(
        len(differences),
        statistics.median(ours_ms),
        statistics.median(baseline_ms),
        (ours_first + baseline_first) / 2,
        ours_first,
        baseline_first,
    )


def measure(
    ours: Endpoint, baseline: Endpoint, config_name: str, pairs: int = 100, rate_hz: float = 10.0, seed: int = 0
) -> PairedOverhead:
    """``pairs`` pairs of calls with openpi-client's ``WebsocketClientPolicy``, one call per control period
    (each server sees half the rate); the same observation goes to both servers of a pair."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from openpi_triton.domain.configs import get_policy_config
    from perf.input_data import observations

    frames = observations(get_policy_config(config_name).embodiment, 4, seed=seed)
    clients = {
        "ours": WebsocketClientPolicy(host=ours.host, port=ours.port),
        "baseline": WebsocketClientPolicy(host=baseline.host, port=baseline.port),
    }
    for client in clients.values():
        for frame in frames[:2]:
            client.infer(frame)  # warm: connections, compiled programs, caches
    latencies: dict[str, list[float]] = {"ours": [], "baseline": []}
    period = 1.0 / rate_hz
    next_start = time.monotonic()
    for i in range(pairs):
        frame = frames[i % len(frames)]
        for side in ("ours", "baseline") if i % 2 == 0 else ("baseline", "ours"):
            delay = next_start - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            clients[side].infer(frame)
            latencies[side].append((time.perf_counter() - began) * 1000.0)
            next_start = max(next_start + period, time.monotonic())
    for client in clients.values():
        close = getattr(client, "close", None)
        if close is not None:
            close()
    return summarize(latencies["ours"], latencies["baseline"])
