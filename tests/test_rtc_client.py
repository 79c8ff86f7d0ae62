"""The client-side asynchronous chunk executor against the real stack (openpi-client over WebSocket -> bridge ->
Triton), in a simulated control loop with an injected delay; openpi's synchronous ActionChunkBroker unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.rtc_client import AsyncChunkExecutor, InferenceFailedError
from perf.rtc_sim import plan_deviations, run_control_loop, switch_jumps
from tests.conftest import BridgeProcess

CAMERAS = EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel")


def observation(state: np.ndarray, tick: int) -> dict[str, Any]:
    noise = np.random.default_rng(tick).standard_normal((50, 32)).astype(np.float32)
    return {**CAMERAS, "state": state, "noise": noise, "mode": "action_only"}


@pytest.fixture
def robot(bridge: BridgeProcess) -> WebsocketClientPolicy:
    return WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)


def test_the_executor_switches_at_the_measured_delay_and_rtc_smooths_the_switch(robot: WebsocketClientPolicy) -> None:
    runs = {
        rtc: run_control_loop(robot, observation, np.zeros(14), ticks=110, delay_ticks=5, execution_horizon=25, rtc=rtc)
        for rtc in (False, True)
    }
    for result in runs.values():
        assert [s.tick for s in result.switches] == [30, 55, 80, 105]  # launch after s = 25 ticks, answer 5 later
        assert all(s.delay_ticks == 5 and s.requested_delay == 5 for s in result.switches)
        assert result.starved_ticks == 0
        for s in result.switches:  # the first new action is the new chunk's row for this tick
            np.testing.assert_array_equal(result.actions[s.tick], s.after)
            np.testing.assert_array_equal(result.actions[s.tick - 1], s.before)
    assert all(s.rtc is None for s in runs[False].switches)
    assert all(s.rtc is not None and s.rtc["applied"] and s.rtc["inference_delay"] == 5 for s in runs[True].switches)
    # The first new action lands near what the old plan had for that tick, and the switch jumps less.
    naive, guided = plan_deviations(runs[False]), plan_deviations(runs[True])
    assert guided.mean() < 0.5 * naive.mean(), (guided, naive)
    assert switch_jumps(runs[True]).mean() < switch_jumps(runs[False]).mean()


def test_the_delay_estimate_is_the_largest_recent_measurement(robot: WebsocketClientPolicy) -> None:
    executor = AsyncChunkExecutor(robot, execution_horizon=40, initial_delay_ticks=3, delay_window=2)
    assert executor.delay_estimate() == 3
    executor.start(observation(np.zeros(14), 0))
    state = np.zeros(14)
    for tick in range(45):
        state = executor.get_action(observation(state, tick))
    assert executor.wait_idle(timeout=120)
    measured = executor.pending_ticks
    assert measured is not None and measured >= 5
    executor.get_action(observation(state, 45))  # the answer is taken at this tick
    assert executor.pending_ticks is None
    assert executor.switches[-1].delay_ticks == measured and executor.delay_estimate() == measured
    executor.close()


def test_start_is_required_and_the_execution_horizon_is_checked(robot: WebsocketClientPolicy) -> None:
    with pytest.raises(ValueError, match="execution_horizon"):
        AsyncChunkExecutor(robot, execution_horizon=0)
    with pytest.raises(RuntimeError, match=r"start\(obs\)"):
        AsyncChunkExecutor(robot, execution_horizon=10).get_action(observation(np.zeros(14), 0))


def test_openpis_synchronous_action_chunk_broker_still_works(robot: WebsocketClientPolicy) -> None:
    obs = observation(np.zeros(14), 7)
    chunk = robot.infer(obs)["actions"]
    broker = ActionChunkBroker(robot, action_horizon=10)
    for step in range(10):
        np.testing.assert_array_equal(broker.infer(obs)["actions"], chunk[step])


class ReconnectingRobot:
    """The openpi client as a robot would keep it: the server closes a connection after an error, so a failed
    call is followed by a new connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client = WebsocketClientPolicy(host="127.0.0.1", port=port)

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.client.infer(obs)
        except Exception:
            self.client = WebsocketClientPolicy(host="127.0.0.1", port=self.port)
            raise


def test_failed_calls_back_off_raise_after_the_limit_and_recover(bridge: BridgeProcess) -> None:
    failures: list[tuple[int, int]] = []
    executor = AsyncChunkExecutor(
        ReconnectingRobot(bridge.action_port),
        execution_horizon=5,
        max_consecutive_failures=4,
        retry_backoff_ticks=4,
        max_retry_backoff_ticks=16,
        on_failure=lambda error, consecutive: failures.append((executor.tick, consecutive)),
        history=3,
    )
    executor.start(observation(np.zeros(14), 0))
    refused = {**observation(np.zeros(14), 1), "state": np.zeros(7)}  # the server refuses a 7-dim state
    with pytest.raises(InferenceFailedError, match=r"(?s)4 inference calls in a row failed .*Last error: .*'state'"):
        for _ in range(60):
            executor.get_action(refused)
            assert executor.wait_idle(timeout=120)  # the answer is in before the next tick
    # First call after s = 5 ticks; each failure is seen one tick later and the next call waits 4, 8, 16 ticks.
    assert failures == [(6, 1), (11, 2), (20, 3), (37, 4)]
    assert len(executor.errors) == 3  # bounded history
    # The robot's owner may go on: the next call waits the capped back-off (16 ticks), succeeds and resets.
    for tick in range(38, 60):
        executor.get_action(observation(np.zeros(14), tick))
        assert executor.wait_idle(timeout=120)
    assert executor.consecutive_failures == 0 and [s.tick for s in executor.switches] == [54]
    assert failures[-1] == (37, 4)
