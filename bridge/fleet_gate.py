"""Closed-loop batching for a robot fleet: a model's requests wait in the bridge while its devices are busy,
and when a batch is answered, the robots that come straight back get a moment to do so before the next batch
leaves.

Why: a robot whose model call takes longer than its control period sends its next observation the moment its
actions arrive. Triton's dynamic batcher sends whatever waits in its queue as soon as an instance is free, so
the robots that happened to be early leave without the ones just answered, and a fleet settles into convoys
(batches of 2 and 6 taking turns instead of one batch of 8), every robot waiting for both. The gate keeps the
fleet in one batch. The next batch leaves when

- no robot is expected back: a robot (one connection) that came back within ``max_return_s`` of its last
  answer is expected back for ``max_return_s`` after its next one (it sends as soon as it has its actions);
  a robot that paces at its own rate (came back later) or is new is never waited for; or
- the held requests fill a batch (the model's ``max_batch_size``): a full batch leaves at once, even while
  the devices are busy (it waits in Triton's queue and starts the moment the running batch ends: on a second
  instance of the same GPU, its transforms run while the first batch computes);

and a partial batch only while fewer batches run than the model has devices (GPUs, on every Triton server). A
request that finds a device free and nobody expected back leaves at once: a lone robot never waits here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator


class GateTimeoutError(Exception):
    """A request waited longer than it was allowed to for its batch to leave."""


class Robot:
    """One connection's rhythm at the gate: when it was last answered and how fast it came back."""

    __slots__ = ("answered_at", "return_s")

    def __init__(self) -> None:
        self.answered_at: float | None = None
        self.return_s: float | None = None


_robot: contextvars.ContextVar[Robot | None] = contextvars.ContextVar("fleet_robot", default=None)


@contextlib.contextmanager
def serving_robot(robot: Robot | None = None) -> Iterator[Robot]:
    """Marks the requests of the current task (one connection) as one robot's (a new one by default)."""
    robot = robot or Robot()
    token = _robot.set(robot)
    try:
        yield robot
    finally:
        _robot.reset(token)


@dataclasses.dataclass
class _Batch:
    """Requests released together; the batch runs until the last of them is answered."""

    outstanding: int
    size: int = 0
    # Until then a request arriving joins it at once: Triton's batcher is still gathering it (its queue delay).
    open_until: float = float("-inf")


class FleetGate:
    """The gate of one model; every request to it passes :meth:`admission`.

    ``concurrency`` and ``max_batch`` are read at each decision (a swapped model or a lost server changes them);
    ``on_release`` hears the size of each batch let go. ``queue_delay`` is the model's
    ``max_queue_delay_microseconds`` (in seconds): while Triton still gathers a batch let go that long ago,
    a new request joins it instead of waiting behind it.
    ``max_return_s`` = 0 still holds requests while the devices are busy but never waits for robots.
    """

    def __init__(
        self,
        concurrency: Callable[[], int],
        max_batch: Callable[[], int],
        max_return_s: float,
        on_release: Callable[[int], None] = lambda size: None,
        queue_delay: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._queue_delay = queue_delay
        self._forming: _Batch | None = None
        self._on_release = on_release
        self.max_return_s = max_return_s
        self._held: collections.deque[asyncio.Future[_Batch]] = collections.deque()
        self._running = 0
        self._expected: dict[Robot, float] = {}  # robot -> when to stop waiting for it (loop time)
        self._timer: asyncio.TimerHandle | None = None

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def running(self) -> int:
        return self._running

    @property
    def expected(self) -> int:
        return len(self._expected)

    @contextlib.asynccontextmanager
    async def admission(self) -> AsyncIterator[Admission]:
        """One request's passage: ``await admission.wait(...)`` before its first send; leaving the block marks
        it answered (whatever the outcome)."""
        admission = Admission(self, _robot.get())
        try:
            yield admission
        finally:
            admission.leave()

    def _arrived(self, robot: Robot | None, now: float) -> None:
        if robot is None:
            return
        self._expected.pop(robot, None)
        if robot.answered_at is not None:
            back_after = now - robot.answered_at
            robot.return_s = back_after if back_after <= self.max_return_s else None

    async def _wait(self, robot: Robot | None, timeout_s: float) -> _Batch:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._arrived(robot, now)
        forming = self._forming
        if forming is not None and not self._held and now < forming.open_until and forming.size < self._max_batch():
            forming.outstanding += 1  # Triton still gathers that batch: this request makes it larger, not later
            forming.size += 1
            return forming
        future: asyncio.Future[_Batch] = loop.create_future()
        self._held.append(future)
        self._release()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if future.done() and not future.cancelled():
                self._answered(future.result(), robot)  # released at the same moment: it was counted as running
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._held.remove(future)
            if isinstance(exc, TimeoutError):
                raise GateTimeoutError from None
            raise

    def _answered(self, batch: _Batch, robot: Robot | None) -> None:
        batch.outstanding -= 1
        if batch.outstanding == 0:
            self._running -= 1
        now = asyncio.get_running_loop().time()
        if robot is not None:
            robot.answered_at = now
            if robot.return_s is not None:
                # Its last return time is no guide to this one (a loaded host, a robot's jitter): the full bound.
                self._expected[robot] = now + self.max_return_s
        self._release()

    def _release(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for robot in [r for r, until in self._expected.items() if until <= now]:
            del self._expected[robot]  # late: it paces at its own rate now, or is gone
        while self._held:
            size = max(1, self._max_batch())
            # A full batch leaves even while every device is busy: it cannot grow, and queued in Triton behind
            # the running one it starts the moment that ends. A partial one waits for a free device and for
            # the robots expected back.
            if len(self._held) < size:
                if self._running >= max(1, self._concurrency()):
                    return
                if self._expected:
                    self._arm_timer(loop, min(self._expected.values()))
                    return
            batch = _Batch(0)
            while self._held and batch.outstanding < size:
                future = self._held.popleft()
                if not future.done():
                    future.set_result(batch)
                    batch.outstanding += 1
            if batch.outstanding:
                self._running += 1
                batch.size = batch.outstanding
                batch.open_until = now + self._queue_delay()
                self._forming = batch
                self._on_release(batch.outstanding)

    def _arm_timer(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._release()


class Admission:
    """A request's place at the gate: :meth:`wait` until its batch leaves (once; later calls return at once)."""

    def __init__(self, gate: FleetGate, robot: Robot | None) -> None:
        self._gate = gate
        self._robot = robot
        self._batch: _Batch | None = None

    @property
    def admitted(self) -> bool:
        return self._batch is not None

    async def wait(self, timeout_s: float) -> None:
        """Raises :class:`GateTimeoutError` when the batch did not leave within ``timeout_s``."""
        if self._batch is None:
            self._batch = await self._gate._wait(self._robot, timeout_s)

    def leave(self) -> None:
        if self._batch is not None:
            batch, self._batch = self._batch, None
            self._gate._answered(batch, self._robot)
