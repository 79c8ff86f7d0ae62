"""Witness robots: well-behaved robots that call the stack the whole time an attack runs, each in its own process.

A witness sends one fixed observation with a fixed ``noise`` (``perf.soak.robot_observation``), so every answer
must equal its first one (the reference): ``actions`` within ``tolerance`` and the same ``subtask`` text (the
witnesses use the action slot's default mode, planner then action, so a broken planner shows as well). Robots
connect with the unchanged clients: openpi-client's ``WebsocketClientPolicy`` (API key) and
``FlashTransportPolicy`` (QUIC, token). A call that raises or times out is an error; the witness then
reconnects (a failed connection attempt is an error record too, so an outage is visible as a run of errors).

Every call becomes a :class:`Call` record on a queue: ``started`` is ``time.monotonic()`` (system-wide on Linux,
so the main process can cut the records into attack windows).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import time
import traceback
from typing import Any

import numpy as np

from perf.soak import check_answer, expected_shape, robot_observation


@dataclasses.dataclass(frozen=True)
class WitnessSpec:
    name: str
    transport: str  # "websocket" | "quic"
    port: int
    robot_id: int
    credential: str  # API key (WebSocket) or QUIC token
    config_name: str
    rate_hz: float = 4.0
    timeout_s: float = 10.0
    tolerance: float = 1e-4
    log_path: str = ""  # the witness's stderr (and its QUIC client binary's log) go here when set


@dataclasses.dataclass(frozen=True)
class Call:
    witness: str
    started: float
    latency_ms: float
    outcome: str  # "ok" | "wrong" | "error"
    detail: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.latency_ms / 1000.0


@dataclasses.dataclass(frozen=True)
class Ready:
    witness: str
    error: str = ""


def connect(spec: WitnessSpec) -> Any:
    if spec.transport == "websocket":
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        return WebsocketClientPolicy(host="127.0.0.1", port=spec.port, api_key=spec.credential)
    from openpi_triton.flash_client import FlashTransportPolicy

    return FlashTransportPolicy("127.0.0.1", port=spec.port, local_port=0, auth_token=spec.credential)


def close(client: Any) -> None:
    closer = getattr(client, "close", None) or getattr(getattr(client, "_ws", None), "close", None)
    if closer is not None:
        try:
            closer()
        except Exception:  # a broken connection may fail to close; it is dropped either way
            pass


class Witness:
    """One robot's client with a timeout per call (openpi-client's ``infer`` would wait forever)."""

    def __init__(self, spec: WitnessSpec) -> None:
        self.spec = spec
        self.obs = {**robot_observation(spec.config_name, spec.robot_id), "prompt": "fold the towel"}
        self.shape = expected_shape(spec.config_name)
        self.client: Any = None
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.reference: np.ndarray | None = None
        self.subtask: str | None = None

    def ensure_connected(self) -> None:
        if self.client is None:
            self.client = self.worker.submit(connect, self.spec).result(timeout=self.spec.timeout_s * 3)

    def call(self) -> dict:
        self.ensure_connected()
        return self.worker.submit(self.client.infer, self.obs).result(timeout=self.spec.timeout_s)

    def drop(self) -> None:
        """After an error the connection's state is unknown: close it (this also unblocks a stuck worker)."""
        if self.client is not None:
            close(self.client)
        self.client = None
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def judge(self, answer: dict) -> str:
        why = check_answer(answer, self.reference, self.shape, self.spec.tolerance)
        subtask = (answer.get("subtask") or {}).get("text")
        if not why and self.subtask is not None and subtask != self.subtask:
            why = f"subtask {str(subtask)[:60]!r}, reference {self.subtask[:60]!r}"
        return why

    def take_reference(self) -> None:
        answer = self.call()
        why = check_answer(answer, None, self.shape, self.spec.tolerance)
        if why:
            raise RuntimeError(f"reference answer unusable: {why}")
        self.reference = np.asarray(answer["actions"])
        self.subtask = (answer.get("subtask") or {}).get("text")

    def timed_call(self) -> Call:
        began = time.monotonic()
        try:
            answer = self.call()
        except concurrent.futures.TimeoutError:
            self.drop()
            return Call(self.spec.name, began, _ms(began), "error", f"no answer within {self.spec.timeout_s:g} s")
        except Exception as error:
            self.drop()
            return Call(self.spec.name, began, _ms(began), "error", f"{type(error).__name__}: {error}"[:300])
        latency = _ms(began)
        why = self.judge(answer)
        return Call(self.spec.name, began, latency, "wrong" if why else "ok", why)


def _ms(began: float) -> float:
    return (time.monotonic() - began) * 1000.0


def run_witness(
    spec: WitnessSpec,
    out: multiprocessing.Queue,  # type: ignore[type-arg]
    stop: multiprocessing.synchronize.Event,
) -> None:
    """Process entry point: reference answer, then one call per period until ``stop`` (no catch-up bursts)."""
    attack_run = os.getppid()  # read first: the run may be killed while the reference is taken
    if spec.log_path:  # fd 2 itself, so that the QUIC client binaries this robot starts log there as well
        log = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
        os.close(log)
    witness = Witness(spec)
    try:
        witness.take_reference()
        witness.timed_call()  # the second call may still meet a cold path; the quiet phase starts after
    except Exception:
        out.put(Ready(spec.name, traceback.format_exc(limit=4)))
        witness.drop()
        return
    out.put(Ready(spec.name))
    period = 1.0 / spec.rate_hz
    next_start = time.monotonic()
    while not stop.is_set() and os.getppid() == attack_run:  # a killed run's witnesses stop too
        record = witness.timed_call()
        out.put(record)
        if record.outcome == "error":
            stop.wait(0.2)  # a down server refuses at once: do not spin
        next_start = max(next_start + period, time.monotonic())
        stop.wait(max(next_start - time.monotonic(), 0.0))
    witness.drop()


class WitnessFleet:
    """Starts the witnesses, waits for their references, then gathers their records in the background."""

    def __init__(self, specs: list[WitnessSpec]) -> None:
        self.specs = specs
        ctx = multiprocessing.get_context("spawn")  # no gRPC / JAX state inherited by fork
        self.queue: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
        self.stop_event = ctx.Event()
        self.processes = [
            ctx.Process(target=run_witness, args=(s, self.queue, self.stop_event), daemon=True) for s in specs
        ]
        self.calls: list[Call] = []

    def start(self, timeout_s: float) -> None:
        for p in self.processes:
            p.start()
        errors = []
        deadline = time.monotonic() + timeout_s
        ready: set[str] = set()
        while len(ready) < len(self.specs):
            item = self.queue.get(timeout=max(deadline - time.monotonic(), 1.0))
            if isinstance(item, Call):  # a witness that is ready already calls
                self.calls.append(item)
                continue
            ready.add(item.witness)
            if item.error:
                errors.append(f"witness {item.witness}: {item.error}")
        if errors:
            self.stop()
            raise RuntimeError("\n".join(errors))

    def drain(self) -> list[Call]:
        """Moves every record that has arrived into ``calls``; returns the new ones."""
        new = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Call):
                new.append(item)
        self.calls += new
        return new

    def overlapping(self, begin: float, end: float) -> list[Call]:
        """Calls that were in flight at some moment of ``[begin, end]`` (a call stalled by an attack counts)."""
        self.drain()
        return [c for c in self.calls if c.started <= end and c.ended >= begin]

    def wait_for_calls_after(self, moment: float, timeout_s: float) -> None:
        """Until every witness has a call that ended after ``moment`` (so a window's last calls are in)."""
        deadline = time.monotonic() + timeout_s
        names = {s.name for s in self.specs}
        while time.monotonic() < deadline:
            self.drain()
            if names <= {c.witness for c in self.calls if c.ended >= moment}:
                return
            time.sleep(0.05)

    def calls_started_after(self, moment: float, count: int, timeout_s: float) -> list[Call]:
        """Until every witness has ``count`` calls that started after ``moment`` and ended (or the timeout);
        returns those calls."""
        deadline = time.monotonic() + timeout_s
        names = {s.name for s in self.specs}
        while True:
            self.drain()
            later = [c for c in self.calls if c.started >= moment]
            if all(sum(c.witness == n for c in later) >= count for n in names) or time.monotonic() >= deadline:
                return later
            time.sleep(0.05)

    def stop(self) -> None:
        self.stop_event.set()
        for p in self.processes:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
        self.drain()
