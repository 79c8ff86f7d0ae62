"""Where one robot request's time went, for the ``server_timing`` of its answer.

openpi's server sends ``infer_ms`` (and ``prev_total_ms`` from the second request on); we keep those and add
the stages of our path, in milliseconds:

- ``decode_ms``: the robot's frame to an observation (msgpack / LocalFrame, on the bridge's CPU threads);
- ``inputs_ms``: the observation checked and turned into gRPC tensors (images into shared memory);
- ``fleet_hold_ms``: waiting at the fleet gate (``fleet_gate``) for the request's batch to leave;
- ``triton_ms``: the gRPC call to Triton, as the bridge saw it; inside it, from the model's ``model_timing``
  (same host only, since they compare wall clocks of two processes):
  ``queue_ms`` (gRPC in, the BLS's queue and its hop, Triton's queue, the Python backend's IPC), ``bls_ms``
  (time the BLS spent around its child call, when a BLS was in front), ``model_ms`` (the action model's
  execute: reading the request, openpi's transforms, the model call), ``compute_ms`` (the batched model call
  alone), ``batch_size``, ``return_ms`` (answer back to the bridge: IPC and gRPC out);
- ``prev_encode_ms``: packing the previous answer on this connection (this one's is not known until sent).

A :class:`RequestTiming` lives in a context variable for the duration of one request, so the layers a request
passes (endpoint, slot, gateway) record their stage without passing it along.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from openpi_triton.contract import io_names

_current: contextvars.ContextVar[RequestTiming | None] = contextvars.ContextVar("request_timing", default=None)


@dataclasses.dataclass
class RequestTiming:
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    # Wall clock (time.time()) when the Triton call was sent and its answer received.
    call_sent_s: float = math.nan
    call_received_s: float = math.nan

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + (time.perf_counter() - start) * 1000.0

    def model_timing(self, timing: np.ndarray, local: bool) -> None:
        """The model's ``model_timing`` row, against the bridge's wall clock at send and receipt when ``local``."""
        fields = dict(zip(io_names.MODEL_TIMING_FIELDS, (float(v) for v in timing.reshape(-1)), strict=False))
        start, end = fields.get("execute_start_s", math.nan), fields.get("execute_end_s", math.nan)
        self.stages["model_ms"] = (end - start) * 1000.0
        self.stages["compute_ms"] = fields.get("compute_ms", math.nan)
        self.stages["batch_size"] = fields.get("batch_size", math.nan)
        bls_start, bls_end = fields.get("bls_start_s", math.nan), fields.get("bls_end_s", math.nan)
        front, back = (bls_start, bls_end) if math.isfinite(bls_start) else (start, end)
        if math.isfinite(bls_start):
            self.stages["bls_ms"] = ((bls_end - bls_start) - (end - start)) * 1000.0
        if local:  # one host, one clock
            self.stages["queue_ms"] = (front - self.call_sent_s) * 1000.0
            self.stages["return_ms"] = (self.call_received_s - back) * 1000.0

    def server_timing(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.stages.items() if math.isfinite(v)}


@contextlib.contextmanager
def recording() -> Iterator[RequestTiming]:
    """A fresh timing for the request being served in this task."""
    timing = RequestTiming()
    token = _current.set(timing)
    try:
        yield timing
    finally:
        _current.reset(token)


def current() -> RequestTiming:
    """The request's timing, or a throwaway one outside a request (admin calls, tests of one layer)."""
    return _current.get() or RequestTiming()


def stage(name: str) -> Any:
    return current().stage(name)
