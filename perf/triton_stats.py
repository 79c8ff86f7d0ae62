"""Triton's own statistics of a model, as deltas over a measurement window: how many executions ran at each
batch size (the dynamic batcher's work as Triton saw it) and the time requests spent in its queue."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelStats:
    executions_by_batch: dict[int, int]
    inference_count: int
    execution_count: int
    queue_ns: int
    compute_infer_ns: int

    def minus(self, before: ModelStats) -> ModelStats:
        sizes = set(self.executions_by_batch) | set(before.executions_by_batch)
        by_batch = {b: self.executions_by_batch.get(b, 0) - before.executions_by_batch.get(b, 0) for b in sorted(sizes)}
        return ModelStats(
            {b: n for b, n in by_batch.items() if n},
            self.inference_count - before.inference_count,
            self.execution_count - before.execution_count,
            self.queue_ns - before.queue_ns,
            self.compute_infer_ns - before.compute_infer_ns,
        )

    def summary(self) -> dict[str, Any]:
        """JSON-friendly: executions per batch size, mean batch, mean queue and compute ms per request."""
        requests = max(self.inference_count, 1)
        return {
            "executions_by_batch": {str(b): n for b, n in self.executions_by_batch.items()},
            "mean_batch": round(self.inference_count / self.execution_count, 2) if self.execution_count else 0.0,
            "max_batch": max(self.executions_by_batch, default=0),
            "queue_ms_per_request": round(self.queue_ns / requests / 1e6, 2),
            "compute_ms_per_execution": round(self.compute_infer_ns / max(self.execution_count, 1) / 1e6, 2),
        }


def read(url: str, model: str) -> ModelStats:
    """The cumulative statistics of ``model`` from the Triton at gRPC ``url``."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    batches = stats.get("batch_stats", [])
    by_batch = {int(s["batch_size"]): int(s.get("compute_infer", {}).get("count", 0)) for s in batches}
    inference = stats.get("inference_stats", {})
    return ModelStats(
        by_batch,
        int(stats.get("inference_count", 0)),
        int(stats.get("execution_count", 0)),
        int(inference.get("queue", {}).get("ns", 0)),
        # Per execution: the per-request statistics count a batch's duration once for each of its requests.
        sum(int(s.get("compute_infer", {}).get("ns", 0)) for s in batches),
    )
