"""Asynchronous chunk execution for robots that keep moving while the server computes the next chunk.

Wraps any openpi-style policy client (``infer(obs) -> {"actions": [H, D], ...}``: ``WebsocketClientPolicy``,
``FlashTransportPolicy``). The robot's control loop calls :meth:`AsyncChunkExecutor.get_action` once per control
period; the executor hands out the current chunk one action at a time and, once ``execution_horizon`` actions
of it have run, starts the next inference on a background thread with the observation of that tick. With
``rtc=True`` the request carries the unexecuted remainder of the current chunk and a conservative delay
estimate (the largest of the recent measured delays, in ticks), so the server pins the new chunk's first rows to
what the robot executes meanwhile (docs/rtc.md). When the answer arrives, the executor switches to it at the
measured delay: the rows for ticks that already ran are skipped.

Failures: a failed call is retried after a back-off that doubles with each consecutive failure
(``retry_backoff_ticks``, 2x, ... up to ``max_retry_backoff_ticks``), so a failing server is not called every
control period; meanwhile the robot keeps executing its chunk (and then holds the last action). After
``max_consecutive_failures`` failures in a row, ``get_action`` raises :class:`InferenceFailedError` (again at
every further failure until a call succeeds), and ``on_failure`` (optional) hears about each one. ``errors``
and ``switches`` keep only the most recent ``history`` entries, so a long run uses bounded memory.

Time is counted in calls of ``get_action`` (control ticks), never in wall-clock time, so the executor works the
same for a real 50 Hz loop and for a simulated one.

    executor = AsyncChunkExecutor(WebsocketClientPolicy(host, port), execution_horizon=25)
    executor.start(robot.observation())           # first chunk, synchronously
    while running:                                # every control period
        robot.command(executor.get_action(robot.observation()))
    executor.close()
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np


class PolicyClient(Protocol):
    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Switch:
    """One change of chunk: at ``tick`` the robot went from ``before`` (old chunk) to ``after`` (new chunk)."""

    tick: int
    delay_ticks: int  # measured: ticks from the observation's capture to the switch
    requested_delay: int  # the estimate sent with the request
    before: np.ndarray
    after: np.ndarray
    planned: np.ndarray | None  # what the old chunk had for this tick (None: it had run out)
    rtc: dict[str, Any] | None  # the server's report, when the request carried rtc


class InferenceFailedError(RuntimeError):
    """Several inference calls in a row failed: the robot is running on an old chunk, or holding its last action."""


class AsyncChunkExecutor:
    """Controller-side chunk queue with background inference (one request in flight at a time)."""

    def __init__(
        self,
        policy: PolicyClient,
        *,
        execution_horizon: int,
        rtc: bool = True,
        rtc_options: Mapping[str, Any] | None = None,
        control_period_s: float = 0.02,
        delay_window: int = 10,
        initial_delay_ticks: int | None = None,
        max_consecutive_failures: int | None = 3,
        retry_backoff_ticks: int = 5,
        max_retry_backoff_ticks: int = 50,
        on_failure: Callable[[BaseException, int], None] | None = None,
        history: int = 100,
    ) -> None:
        """``execution_horizon``: actions of a chunk executed before the next inference starts (s_min);
        ``rtc_options``: extra fields of the ``rtc`` request (``max_guidance_weight``, ``schedule``, ``mode``);
        ``initial_delay_ticks``: the delay estimate before any asynchronous call was measured (default: the
        first call's latency over ``control_period_s``);
        ``max_consecutive_failures``: failed calls in a row after which ``get_action`` raises (``None``: never);
        ``retry_backoff_ticks`` / ``max_retry_backoff_ticks``: ticks to wait after the first failure before the
        next call, doubling per consecutive failure up to the cap (at 50 Hz the defaults are 100 ms and 1 s);
        ``on_failure(error, consecutive)``: called in the control loop for every failed call;
        ``history``: how many recent ``switches`` and ``errors`` are kept."""
        if execution_horizon < 1:
            raise ValueError(f"execution_horizon: expected >= 1, got {execution_horizon}")
        if max_consecutive_failures is not None and max_consecutive_failures < 1:
            raise ValueError(f"max_consecutive_failures: expected >= 1 or None, got {max_consecutive_failures}")
        if not 1 <= retry_backoff_ticks <= max_retry_backoff_ticks:
            raise ValueError(
                "retry_backoff_ticks, max_retry_backoff_ticks: expected 1 <= first <= cap, got "
                f"{retry_backoff_ticks}, {max_retry_backoff_ticks}"
            )
        if history < 1:
            raise ValueError(f"history: expected >= 1, got {history}")
        self.policy = policy
        self.execution_horizon = execution_horizon
        self.rtc = rtc
        self.rtc_options = dict(rtc_options or {})
        self.control_period_s = control_period_s
        self._delays: collections.deque[int] = collections.deque(maxlen=delay_window)
        self._initial_delay = initial_delay_ticks
        self._lock = threading.Lock()
        self._chunk: np.ndarray | None = None
        self._index = 0  # next row of the current chunk
        self._executed_in_chunk = 0  # ticks since the current chunk's observation was captured
        self._tick = 0
        self._in_flight: _Request | None = None
        self._last_action: np.ndarray | None = None
        self.max_consecutive_failures = max_consecutive_failures
        self.retry_backoff_ticks = retry_backoff_ticks
        self.max_retry_backoff_ticks = max_retry_backoff_ticks
        self.on_failure = on_failure
        self.consecutive_failures = 0
        self._retry_at_tick = 0  # no call starts before this tick (back-off after failures)
        self.switches: collections.deque[Switch] = collections.deque(maxlen=history)
        self.starved_ticks = 0  # ticks that repeated the last action because the chunk ran out
        self.errors: collections.deque[BaseException] = collections.deque(maxlen=history)

    # ----- control loop ---------------------------------------------------------------------------------------

    def start(self, obs: dict[str, Any]) -> None:
        """Fetches the first chunk synchronously (the robot has nothing to execute before it)."""
        started = time.perf_counter()
        result = self.policy.infer(dict(obs))
        latency = time.perf_counter() - started
        if self._initial_delay is None:
            self._initial_delay = max(1, math.ceil(latency / self.control_period_s))
        with self._lock:
            self._chunk = np.asarray(result["actions"])
            self._index = 0
            self._executed_in_chunk = 0

    def get_action(self, obs: dict[str, Any]) -> np.ndarray:
        """The action for this control tick; ``obs`` is this tick's observation (used if an inference starts)."""
        with self._lock:
            if self._chunk is None:
                raise RuntimeError("call start(obs) before get_action")
            self._switch_if_answered()
            due = self._executed_in_chunk >= self.execution_horizon and self._tick >= self._retry_at_tick
            if self._in_flight is None and due:
                self._launch(obs)
            if self._index < len(self._chunk):
                action = self._chunk[self._index]
                self._index += 1
            else:  # the chunk ran out before the next one arrived: hold position
                assert self._last_action is not None
                action = self._last_action
                self.starved_ticks += 1
            self._executed_in_chunk += 1
            self._tick += 1
            if self._in_flight is not None:
                self._in_flight.ticks_elapsed += 1
            self._last_action = action
            return action

    def delay_estimate(self) -> int:
        """Conservative: the largest measured delay of the recent window (ticks)."""
        if self._delays:
            return max(self._delays)
        return self._initial_delay or 1

    @property
    def tick(self) -> int:
        """Control ticks so far (calls of ``get_action`` that returned an action)."""
        return self._tick

    @property
    def pending_ticks(self) -> int | None:
        """Ticks since the in-flight request's observation was captured (``None``: none in flight)."""
        request = self._in_flight
        return None if request is None else request.ticks_elapsed

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until no inference is in flight (tests, simulations); True when idle."""
        request = self._in_flight
        return request is None or request.done.wait(timeout)

    def close(self) -> None:
        request = self._in_flight
        if request is not None:
            request.done.wait()

    # ----- internals --------------------------------------------------------------------------------------------

    def _launch(self, obs: dict[str, Any]) -> None:
        assert self._chunk is not None
        request_obs = dict(obs)
        remainder = np.array(self._chunk[self._index :], copy=True)
        delay = min(self.delay_estimate(), len(remainder))
        if self.rtc and len(remainder) > 0:
            request_obs["rtc"] = {"prev_actions": remainder, "inference_delay": delay, **self.rtc_options}
        request = _Request(delay=delay)
        self._in_flight = request
        thread = threading.Thread(target=self._infer, args=(request, request_obs), name="rtc-inference", daemon=True)
        thread.start()

    def _infer(self, request: _Request, obs: dict[str, Any]) -> None:
        try:
            request.result = self.policy.infer(obs)
        except BaseException as exc:  # surfaced to the control loop's owner; the robot keeps its chunk
            request.error = exc
        finally:
            request.done.set()

    def _switch_if_answered(self) -> None:
        request = self._in_flight
        if request is None or not request.done.is_set():
            return
        self._in_flight = None
        if request.error is not None or request.result is None:
            self._failed(request.error or RuntimeError("inference returned nothing"))
            return
        assert self._chunk is not None and self._last_action is not None
        chunk = np.asarray(request.result["actions"])
        measured = request.ticks_elapsed
        self._delays.append(measured)
        if measured >= len(chunk):
            self._failed(RuntimeError(f"the answer came {measured} ticks late, after its whole chunk"))
            return
        self.consecutive_failures = 0
        planned = self._chunk[self._index] if self._index < len(self._chunk) else None
        report = request.result.get("rtc")
        self.switches.append(
            Switch(self._tick, measured, request.delay, self._last_action, chunk[measured], planned, report)
        )
        self._chunk = chunk
        self._index = measured
        self._executed_in_chunk = measured  # counted from the capture, as the execution horizon s is

    def _failed(self, error: BaseException) -> None:
        """Records a failed call, schedules the retry after the back-off, and raises once failures persist."""
        self.errors.append(error)
        self.consecutive_failures += 1
        backoff = self.retry_backoff_ticks * 2 ** min(self.consecutive_failures - 1, 30)
        self._retry_at_tick = self._tick + min(backoff, self.max_retry_backoff_ticks)
        if self.on_failure is not None:
            self.on_failure(error, self.consecutive_failures)
        limit = self.max_consecutive_failures
        if limit is not None and self.consecutive_failures >= limit:
            left = 0 if self._chunk is None else max(0, len(self._chunk) - self._index)
            raise InferenceFailedError(
                f"{self.consecutive_failures} inference calls in a row failed (limit max_consecutive_failures="
                f"{limit}); the robot has {left} actions of its last chunk left, then holds its last action. "
                f"Last error: {type(error).__name__}: {error}"
            ) from error


@dataclasses.dataclass
class _Request:
    delay: int
    ticks_elapsed: int = 0
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
