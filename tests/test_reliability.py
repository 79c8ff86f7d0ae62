"""Faults inside the stack: a Python stub dying mid-request, the bridge restarted under connected robots."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.flash_client import FlashTransportPolicy
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.readiness import http_status
from openpi_triton.sidecar import SidecarSupervisor
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports
from openpi_triton.triton.watchdog import StubWatchdog, WatchdogOptions
from tests.conftest import BridgeProcess, restart_bridge_process, start_bridge_process, stop_bridge_process
from tests.triton_helpers import copy_model, free_udp_port, wait_until

OBS = EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel")


@pytest.fixture(params=["poll", "explicit"])
def slow_action_stack(
    request: pytest.FixtureRequest, embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> Iterator[tuple[TritonServer, BridgeProcess, StubWatchdog]]:
    """Triton serving ``action`` with many flow steps (a request lasts long enough to be hit), in poll or
    explicit model control mode, with a bridge and the stub watchdog."""
    repo = tmp_path / "repo"
    copy_model(repo, "action", "action", {"batch_buckets": "1", "num_steps": "150"})
    http, grpc, metrics = free_ports(3)
    env = {"OPENPI_TRITON_HOME": str(embedded_default.root.parent)}
    options = ServerOptions(repo, http, grpc, metrics, model_control_mode=request.param, env=env)
    server = TritonServer(options, log_stream=open(tmp_path / "triton.log", "w"))
    server.start()
    bridge = watchdog = None
    try:
        server.wait_ready(["action"], timeout=300)
        bridge = start_bridge_process(server.grpc_url, tmp_path, planner=None, admin={"enabled": False})
        watchdog = StubWatchdog(WatchdogOptions(server.grpc_url, server.process.pid, repo, interval_s=0.5)).start()
        yield server, bridge, watchdog
    finally:
        if watchdog is not None:
            watchdog.stop()
        if bridge is not None:
            stop_bridge_process(bridge)
        server.stop()


def stub_pids(repository: pathlib.Path, model: str) -> list[int]:
    """The Python backend stubs serving ``model`` (their command line names the model file)."""
    found = subprocess.run(
        ["pgrep", "-f", f"triton_python_backend_stub {repository.resolve()}/{model}/"], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def cpu_seconds(pid: int) -> float:
    """CPU time process ``pid`` used so far (all its threads), from /proc: it grows only while it computes."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_crashing_stub_fails_only_the_request_it_was_running(
    slow_action_stack: tuple[TritonServer, BridgeProcess, StubWatchdog],
) -> None:
    server, bridge, watchdog = slow_action_stack
    robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
    (stub,) = stub_pids(server.options.model_repository, "action")
    before = cpu_seconds(stub)
    assert robot.infer(OBS)["actions"].shape == (50, 14)
    # What one request costs the stub: the kill comes a third of the way into the next one.
    cost = cpu_seconds(stub) - before
    # The fault comes after the watchdog knows the stub, as in a long-running stack.
    wait_until(lambda: watchdog.watched_stubs("action"), 30, "the watchdog knows the stub")
    assert watchdog.watched_stubs("action") == {"action_0_0"}

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        idle = cpu_seconds(stub)
        in_flight = pool.submit(robot.infer, OBS)
        wait_until(
            lambda: cpu_seconds(stub) - idle > cost / 3, 60, "the stub is well into the request", interval_s=0.01
        )
        assert not in_flight.done(), "the request ended before the fault"
        os.kill(stub, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="Error in inference server") as failure:
            in_flight.result(timeout=60)  # an answer, not a hang
    assert "action" in str(failure.value), "the error names the model whose stub died"

    # Triton does not restart the stub; the watchdog reloads the model. Until the new stub is warm,
    # requests get errors (never hangs), then all succeed.
    deadline = time.monotonic() + 180
    outcomes: list[str] = []
    while time.monotonic() < deadline:
        robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        try:
            asked = time.monotonic()
            actions = robot.infer(OBS)["actions"]
            outcomes.append("ok")
            break
        except RuntimeError as exc:
            assert time.monotonic() - asked < 60
            outcomes.append(str(exc).splitlines()[-1])
            # The next attempt once the watchdog has reloaded the model and the bridge says it serves it.
            wait_until(
                lambda: watchdog.reloads and http_status(bridge.action_port, "/healthz") == 200,
                max(0.0, deadline - time.monotonic()),
                "the reloaded model serves",
            )
        finally:
            robot._ws.close()
    assert outcomes[-1:] == ["ok"], outcomes
    assert actions.shape == (50, 14)
    robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
    for _ in range(3):
        assert robot.infer(OBS)["actions"].shape == (50, 14)
    robot._ws.close()
    assert stub_pids(server.options.model_repository, "action") not in ([], [stub])
    assert watchdog.reloads == ["action"]
    assert server.process is not None and server.process.poll() is None
    assert bridge.process.poll() is None


def test_robots_reconnect_after_the_bridge_restarts(triton_server: TritonServer, tmp_path: pathlib.Path) -> None:
    bridge = start_bridge_process(triton_server.grpc_url, tmp_path, planner=None, admin={"enabled": False})
    quic_port = free_udp_port()
    sidecar = SidecarSupervisor("action", quic_port, bridge.action_socket).start()
    try:
        assert sidecar.wait_ready(), "the sidecar listens"
        ws_robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        quic_robot = FlashTransportPolicy("127.0.0.1", port=quic_port, local_port=0)
        assert ws_robot.infer(OBS)["actions"].shape == (50, 14)
        assert quic_robot.infer(OBS)["actions"].shape == (50, 14)

        bridge.process.kill()
        bridge.process.wait()
        with pytest.raises(Exception):  # noqa: B017 - websockets' ConnectionClosed: the socket is gone
            ws_robot.infer(OBS)
        with pytest.raises(RuntimeError, match="openpi-flash-transport"):
            quic_robot.infer(OBS)

        # openpi-client 0.1.2 (PyPI) does not retry: a robot's reconnect attempt is refused while the bridge
        # is down (openpi's newer client retries every 5 s by itself) and succeeds once it is back.
        with pytest.raises(ConnectionRefusedError):
            WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        restart_bridge_process(bridge)
        ws_robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        assert ws_robot.infer(OBS)["actions"].shape == (50, 14)
        ws_robot._ws.close()

        # Our QUIC client keeps its object: the next request reconnects (at most one more error first).
        answers = []
        for _ in range(3):
            try:
                answers.append(quic_robot.infer(OBS)["actions"].shape)
            except RuntimeError as exc:
                answers.append(str(exc).splitlines()[0])
        assert answers[-2:] == [(50, 14), (50, 14)], answers
        quic_robot.close()
        assert sidecar.restarts == 0, "the sidecar survived the bridge restart"
    finally:
        sidecar.stop()
        stop_bridge_process(bridge)
