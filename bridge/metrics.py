"""The bridge's Prometheus metrics, served at ``GET /metrics`` on the admin port.

Every robot request is counted once with its outcome, so an operator can alert on errors by kind:

- ``openpi_bridge_requests_total{slot, transport, outcome}``: outcome ``ok``, ``robot_error`` (bad frame,
  wrong field, a limit), ``triton_error``, ``timeout`` (Triton call deadline), ``server_error`` (e.g.
  non-finite actions held back), ``stale`` (waited past the model's queue deadline, not computed), ``internal``
  (a bug of ours, logged with its traceback);
- ``openpi_bridge_request_seconds{slot, transport}``: end to end, frame received to answer sent;
- ``openpi_bridge_triton_seconds{model}`` and ``openpi_bridge_triton_failures_total{model, status}``: each
  Triton call, and failed ones by Triton's status (Triton 2.51 counts a model's error responses as successes);
- ``openpi_bridge_connections{slot, transport}`` open now, ``openpi_bridge_connections_refused_total{slot,
  transport, reason}`` (``max_connections``, ``per_address``, ``unauthorized``, ``idle``);
- ``openpi_bridge_bytes_received_total`` / ``openpi_bridge_bytes_sent_total{slot, transport}``;
- ``openpi_bridge_admin_unauthorized_total``;
- ``openpi_bridge_background_failures_total{task}``: a background step that raised (``dns`` re-reading the
  Triton servers' name, ``health`` checking them, ``retire`` closing one that left), logged with its traceback;
  the task goes on, so a rising count is a bug to report, not an outage.

``transport`` is ``websocket`` or ``quic`` (the sidecar socket, which only the QUIC sidecar uses).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from openpi_bridge.errors import outcome_of

# Control loops run at 10-50 Hz: resolution where a robot notices (a few ms to a second).
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


class BridgeMetrics:
    """One registry per bridge (tests run several bridges in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        slot_transport = ["slot", "transport"]
        self.requests = Counter(
            "openpi_bridge_requests",
            "robot requests by outcome",
            [*slot_transport, "outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "openpi_bridge_request_seconds",
            "robot request, frame received to answer sent",
            slot_transport,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.triton_seconds = Histogram(
            "openpi_bridge_triton_seconds",
            "one Triton call",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.triton_failures = Counter(
            "openpi_bridge_triton_failures",
            "failed Triton calls by status",
            ["model", "status"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "openpi_bridge_connections", "open robot connections", slot_transport, registry=self.registry
        )
        self.refused = Counter(
            "openpi_bridge_connections_refused",
            "connections refused or closed by a limit",
            [*slot_transport, "reason"],
            registry=self.registry,
        )
        self.bytes_received = Counter(
            "openpi_bridge_bytes_received", "request bytes from robots", slot_transport, registry=self.registry
        )
        self.bytes_sent = Counter(
            "openpi_bridge_bytes_sent", "answer bytes to robots", slot_transport, registry=self.registry
        )
        self.admin_unauthorized = Counter(
            "openpi_bridge_admin_unauthorized", "admin requests without the right API key", registry=self.registry
        )
        self.fleet_batch_requests = Histogram(
            "openpi_bridge_fleet_batch_requests",
            "requests the fleet gate released together (one batch for Triton)",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=self.registry,
        )
        self.fleet_hold_seconds = Histogram(
            "openpi_bridge_fleet_hold_seconds",
            "time a request waited at the fleet gate for its batch to leave",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.background_failures = Counter(
            "openpi_bridge_background_failures",
            "background steps (dns, health, retire) that raised; the task goes on",
            ["task"],
            registry=self.registry,
        )

    def request_done(self, slot: str, transport: str, seconds: float, error: BaseException | None = None) -> None:
        outcome = "ok" if error is None else outcome_of(error)
        self.requests.labels(slot, transport, outcome).inc()
        self.request_seconds.labels(slot, transport).observe(seconds)

    def triton_call(self, model: str, seconds: float, status: str | None = None) -> None:
        self.triton_seconds.labels(model).observe(seconds)
        if status is not None:
            self.triton_failures.labels(model, status or "UNKNOWN").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
