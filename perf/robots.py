"""Simulated robots for the fleet benchmark: one process each, calling a policy at a fixed control rate.

A robot connects with its transport's real client, warms up, waits for the common start, then calls
``infer`` once per control period (its phase offset spreads robots over the period, as real robots are not
synchronised). A call slower than the period is a missed deadline; the next call then starts at once (no
burst to catch up). Only calls started inside the measured window count.
"""

from __future__ import annotations

import dataclasses
import multiprocessing.synchronize
import time
import traceback
from typing import Any, ClassVar, Protocol

import numpy as np

from openpi_triton import tensor_names

TRANSPORTS = ("websocket", "quic", "grpc", "openpi-server")
# The bridge's name for an answer the queue deadline gave (openpi_bridge.errors.StaleObservationError).
STALE = "StaleObservationError"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a transport's robots connect: host + port (gRPC also needs the model name)."""

    host: str
    port: int
    model: str = "action"


@dataclasses.dataclass(frozen=True)
class RobotTask:
    robot_id: int
    transport: str
    endpoint: Endpoint
    config_name: str
    rate_hz: float
    duration_s: float
    phase_s: float
    warmup_calls: int = 2
    observations: int = 4
    seed: int = 0
    # Keys added to every observation (``{"mode": "action_only"}`` through the ensemble; openpi ignores others).
    extra_obs: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass
class RobotResult:
    robot_id: int
    transport: str
    latencies_ms: list[float]
    missed: int
    errors: int
    first_error: str = ""
    # Each answer's ``server_timing`` (where the server says the time went), when the transport returns it.
    server_timings: list[dict[str, float]] = dataclasses.field(default_factory=list)
    # Observations the server's queue deadline answered as stale instead of computing them late.
    stale: int = 0


class Policy(Protocol):
    def infer(self, obs: dict) -> dict: ...


class GrpcPolicy:
    """A robot talking to Triton directly with ``tritonclient`` (no bridge): the tensor-name rule, batch 1."""

    _TYPES: ClassVar[dict[np.dtype, str]] = {
        np.dtype(np.uint8): "UINT8",
        np.dtype(np.float64): "FP64",
        np.dtype(np.float32): "FP32",
    }

    def __init__(self, endpoint: Endpoint):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(f"{endpoint.host}:{endpoint.port}")
        self._model = endpoint.model

    def infer(self, obs: dict) -> dict:
        inputs = []
        for name, value in tensor_names.flatten(obs).items():
            if isinstance(value, str):
                data = np.array([[value.encode()]], dtype=np.object_)
                tensor = self._grpc.InferInput(name, [1, 1], "BYTES")
            else:
                array = np.asarray(value)
                if np.issubdtype(array.dtype, np.floating) and name != "noise":
                    array = array.astype(np.float64)  # state vectors are FP64 in the served config
                data = array[None]
                tensor = self._grpc.InferInput(name, list(data.shape), self._TYPES[array.dtype])
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        result = self._client.infer(self._model, inputs)
        return {"actions": result.as_numpy("actions")[0]}

    def close(self) -> None:
        self._client.close()


def connect(transport: str, endpoint: Endpoint) -> Any:
    if transport in ("websocket", "openpi-server"):
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        return WebsocketClientPolicy(host=endpoint.host, port=endpoint.port)
    if transport == "quic":
        from openpi_triton.flash_client import FlashTransportPolicy

        return FlashTransportPolicy(endpoint.host, port=endpoint.port, local_port=0)
    if transport == "grpc":
        return GrpcPolicy(endpoint)
    raise ValueError(f"transport: expected one of {TRANSPORTS}, got {transport!r}")


def reconnected(task: RobotTask, client: Any) -> Any:
    """The client to use after a stale answer: openpi's WebSocket protocol closes the connection after an error,
    the QUIC client's connection stays usable."""
    if task.transport in ("websocket", "openpi-server"):
        return connect(task.transport, task.endpoint)
    return client


def run_robot(
    task: RobotTask,
    ready: multiprocessing.Queue,  # type: ignore[type-arg]
    start_at: Any,  # multiprocessing.Value("d"): the common start, time.monotonic() (system-wide on Linux)
    go: multiprocessing.synchronize.Event,
    results: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """Process entry point. Always reports (an error result if it cannot connect)."""
    from openpi_triton.domain.configs import get_policy_config
    from perf.input_data import observations

    outcome = RobotResult(task.robot_id, task.transport, [], 0, 0)
    client = None
    try:
        embodiment = get_policy_config(task.config_name).embodiment
        frames = observations(embodiment, task.observations, seed=task.seed + 1000 * task.robot_id)
        frames = [{**frame, **dict(task.extra_obs)} for frame in frames]
        client = connect(task.transport, task.endpoint)
        for i in range(task.warmup_calls):
            try:
                client.infer(frames[i % len(frames)])
            except Exception as exc:  # a busy server's deadline may answer a warm-up call as stale
                if STALE not in str(exc):
                    raise
                client = reconnected(task, client)
    except Exception:
        outcome.errors += 1
        outcome.first_error = traceback.format_exc(limit=3)
        ready.put(task.robot_id)
        results.put(outcome)
        return
    ready.put(task.robot_id)
    go.wait()
    period = 1.0 / task.rate_hz
    end = start_at.value + task.duration_s
    next_start = start_at.value + task.phase_s
    call = 0
    while next_start < end:
        delay = next_start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        began = time.monotonic()
        try:
            answer = client.infer(frames[call % len(frames)])
        except Exception as exc:
            if STALE in str(exc):
                # The server's deadline answered this observation instead of computing it late: a robot
                # sends its next one (openpi's WebSocket protocol closes the connection after an error).
                outcome.stale += 1
                client = reconnected(task, client)
            else:
                outcome.errors += 1
                if not outcome.first_error:
                    outcome.first_error = traceback.format_exc(limit=3)
                if outcome.errors > 10:
                    break
        else:
            elapsed = time.monotonic() - began
            outcome.latencies_ms.append(elapsed * 1000.0)
            outcome.missed += elapsed > period
            timing = answer.get("server_timing") if isinstance(answer, dict) else None
            if isinstance(timing, dict):
                outcome.server_timings.append({k: float(v) for k, v in timing.items()})
        call += 1
        next_start = max(next_start + period, time.monotonic())
    close = getattr(client, "close", None)
    if close is not None:
        close()
    results.put(outcome)
