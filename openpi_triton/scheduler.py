"""The action model's scheduler for robots: Triton's dynamic batcher, written as a ``config.pbtxt`` block.

- ``queue_delay_us``: how long the first request of a batch may wait for others. 0 keeps a lone robot's
  latency lowest; robots whose answers came back together (a saturated server) send again within a few
  milliseconds of each other, so a short delay lets them share one call instead of splitting into a batch of 1
  and a batch of the rest.
- ``preferred_batch_sizes``: batch sizes Triton sends as soon as it has them (the compiled buckets); a size
  in between is padded to the next bucket anyway, so it costs the same as that bucket.
- ``stale_after_us``: optional deadline (Triton's queue policy, ``timeout_action: REJECT``): an observation
  that waited longer in the queue is answered with an error instead of being computed late; the bridge
  tells the robot it was stale. Off (0) by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

# Triton's error text for a request its queue policy rejected (the bridge recognises it).
QUEUE_TIMEOUT_MESSAGE = "Request timeout expired"


@dataclasses.dataclass(frozen=True)
class Scheduler:
    queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    stale_after_us: int = 0

    def __post_init__(self) -> None:
        if self.queue_delay_us < 0 or self.stale_after_us < 0:
            raise ValueError(f"scheduler: delays must be >= 0 microseconds, got {self}")
        if any(b < 1 for b in self.preferred_batch_sizes):
            raise ValueError(f"scheduler: preferred batch sizes must be >= 1, got {self.preferred_batch_sizes}")

    @classmethod
    def for_buckets(cls, buckets: Sequence[int], queue_delay_us: int = 0, stale_after_us: int = 0) -> Scheduler:
        """Preferred sizes = the compiled buckets above 1 (a 1 would send every lone request at once, so the
        delay could never gather a second one)."""
        return cls(queue_delay_us, tuple(b for b in sorted(buckets) if b > 1), stale_after_us)

    def label(self) -> str:
        parts = [f"delay {self.queue_delay_us / 1000:g} ms"]
        if self.preferred_batch_sizes:
            parts.append("preferred " + ",".join(map(str, self.preferred_batch_sizes)))
        if self.stale_after_us:
            parts.append(f"stale after {self.stale_after_us / 1000:g} ms")
        return ", ".join(parts)

    def dynamic_batching(self) -> str:
        """The ``dynamic_batching { ... }`` block of ``config.pbtxt``."""
        lines = ["dynamic_batching {", f"  max_queue_delay_microseconds: {self.queue_delay_us}"]
        if self.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, self.preferred_batch_sizes))} ]")
        if self.stale_after_us:
            policy = f"timeout_action: REJECT default_timeout_microseconds: {self.stale_after_us}"
            lines.append(f"  default_queue_policy {{ {policy} }}")
        return "\n".join(lines) + "\n}"
