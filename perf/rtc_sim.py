"""A simulated robot control loop for RTC: fixed control ticks, an :class:`AsyncChunkExecutor` against a real
policy client, and an inference delay injected in ticks.

Simulated time: every inference really runs on the stack, but its answer is handed to the executor exactly
``delay_ticks`` control ticks after the observation was captured (the loop waits for a slower answer; a faster
one is held back). So the delay is the same for every variant compared and independent of the machine's load.
The simulated arm is a perfect position controller: its joint state is the last commanded action.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from openpi_triton.rtc_client import AsyncChunkExecutor, PolicyClient, Switch


class HeldPolicy:
    """A policy client whose answers wait for :meth:`release` (one release per answer)."""

    def __init__(self, policy: PolicyClient) -> None:
        self.policy = policy
        self._release = threading.Event()

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        result = self.policy.infer(obs)
        self._release.wait()
        self._release.clear()
        return result

    def release(self) -> None:
        self._release.set()


@dataclasses.dataclass
class LoopResult:
    actions: np.ndarray  # [ticks, D]: what the robot executed, tick by tick
    switches: list[Switch]
    starved_ticks: int


def run_control_loop(
    policy: PolicyClient,
    observation: Callable[[np.ndarray, int], dict[str, Any]],
    initial_state: np.ndarray,
    *,
    ticks: int,
    delay_ticks: int,
    execution_horizon: int,
    rtc: bool,
    rtc_options: dict[str, Any] | None = None,
) -> LoopResult:
    """``observation(state, tick)``: the robot's observation at a tick (the loop feeds back the executed action)."""
    held = HeldPolicy(policy)
    executor = AsyncChunkExecutor(
        held,
        execution_horizon=execution_horizon,
        rtc=rtc,
        rtc_options=rtc_options,
        initial_delay_ticks=delay_ticks,
        history=ticks,  # every switch of the run
    )
    state = np.asarray(initial_state, dtype=np.float64)
    held.release()  # the first chunk is fetched synchronously
    executor.start(observation(state, 0))
    executed = []
    for tick in range(ticks):
        if executor.pending_ticks == delay_ticks:
            held.release()
            executor.wait_idle()
        action = executor.get_action(observation(state, tick))
        executed.append(np.asarray(action, dtype=np.float64))
        state = executed[-1]
    if executor.pending_ticks is not None:
        held.release()
    executor.close()
    if executor.errors:
        raise RuntimeError(f"inference failed during the loop: {executor.errors[0]!r}")
    return LoopResult(np.stack(executed), list(executor.switches), executor.starved_ticks)


def switch_jumps(result: LoopResult) -> np.ndarray:
    """max over dims of |a_switch − a_before| at each switch."""
    return np.asarray([float(np.max(np.abs(s.after - s.before))) for s in result.switches])


def plan_deviations(result: LoopResult) -> np.ndarray:
    """max over dims of |a_switch − what the old chunk had planned for that tick| at each switch."""
    return np.asarray([float(np.max(np.abs(s.after - s.planned))) for s in result.switches if s.planned is not None])


def step_sizes(actions: np.ndarray) -> np.ndarray:
    """max over dims of |a_{t+1} − a_t| at every tick."""
    return np.max(np.abs(np.diff(actions, axis=0)), axis=1)


def jerk(actions: np.ndarray, control_period_s: float) -> np.ndarray:
    """max over dims of |third difference| / Δt³ at every tick (units of the actions per s³)."""
    return np.max(np.abs(np.diff(actions, n=3, axis=0)), axis=1) / control_period_s**3
