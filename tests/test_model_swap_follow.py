"""One edit of the action model's config.pbtxt swaps what the whole stack serves (planner and ensemble follow),
as robots with the unchanged openpi-client see it: ALOHA default -> the golden pi05_droid checkpoint."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.native.policy import PolicyOptions, load_policy
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.processes import stop_process
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports
from openpi_triton.triton.watchdog import StubWatchdog, WatchdogOptions
from perf.swap_window import edit_to_golden_droid
from tests.clients import healthz
from tests.conftest import bridge_config, start_bridge_process, stop_bridge_process
from tests.triton_helpers import copy_model, spawn_module, stack_args, wait_until

# What a robot may read while the models switch: each names the situation (never a per-tensor error).
CLEAR_ERRORS = ("being swapped", "this server serves", "is not ready", "not reachable", "unavailable")


@dataclasses.dataclass(frozen=True)
class Robot:
    """One embodiment's observation with fixed noise, and the answer the right model gives it."""

    obs: dict
    expected: np.ndarray

    @classmethod
    def make(cls, embodiment: str, config: str, checkpoint: pathlib.Path, tokenizer: pathlib.Path, horizon: int):
        obs = EMBODIMENTS[embodiment].example(np.random.default_rng(3), "fold the towel")
        noise = np.random.default_rng(4).standard_normal((horizon, 32)).astype(np.float32)
        policy = load_policy(config, checkpoint, PolicyOptions(tokenizer_path=str(tokenizer), batch_buckets=(1,)))
        return cls({**obs, "noise": noise, "mode": "action_only"}, policy.infer(obs, noise)["actions"])

    def ask(self, port: int) -> tuple[dict, np.ndarray]:
        """Metadata and actions from a fresh connection (a robot that reconnects after an error)."""
        client = WebsocketClientPolicy(host="127.0.0.1", port=port)
        try:
            return client.get_server_metadata(), client.infer(self.obs)["actions"]
        finally:
            client._ws.close()


def watch_the_switch(port: int, aloha: Robot, droid: Robot, timeout: float) -> dict:
    """Asks with both robots until the DROID one is served; every answer must be its own model's, every error
    a clear one. Returns what was seen (errors, health, seconds to the switch)."""
    start = time.monotonic()
    errors: list[str] = []
    health: list[int] = []
    while time.monotonic() - start < timeout:
        health.append(healthz(port)[0])
        for robot in (aloha, droid):
            try:
                metadata, actions = robot.ask(port)
            except Exception as exc:  # a refused or failed call: must say why in words a robot engineer reads
                message = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
                errors.append(message)
                assert any(clear in message for clear in CLEAR_ERRORS), f"unclear error during the swap: {exc}"
                continue
            assert actions.shape == robot.expected.shape, "answered by a model of another embodiment"
            np.testing.assert_allclose(actions, robot.expected, atol=1e-4, err_msg="answered by a mismatched pair")
            if robot is droid:
                assert metadata["action_horizon"] == 15
                assert metadata["image_specs"][0]["path"] == ["observation/exterior_image_1_left"]
                return {"errors": errors, "health": health, "seconds": time.monotonic() - start}
    raise AssertionError(f"the DROID robot was not served within {timeout:.0f} s; errors: {errors[-5:]}")


def after_the_switch(port: int, aloha: Robot) -> None:
    # The DROID robot (action_only) is served before the planner has finished loading: health waits for all.
    wait_until(lambda: healthz(port) == (200, "OK\n"), 300, "/healthz 200 once every model serves DROID")
    with pytest.raises(RuntimeError, match="this server serves 'pi05_droid'"):
        aloha.ask(port)


def _repository(root: pathlib.Path) -> pathlib.Path:
    repository = root / "repo"
    copy_model(repository, "action", "action", {"batch_buckets": "1"})
    copy_model(repository, "planner", "planner", {"batch_buckets": "1"})
    copy_model(repository, "combined_ensemble", "combined_ensemble")
    return repository


@pytest.fixture(scope="module")
def robots(embedded_default: EmbeddedDefault, golden_dir: pathlib.Path) -> tuple[Robot, Robot]:
    aloha = Robot.make(
        "aloha", "pi05_aloha", embedded_default.checkpoint_dir, embedded_default.tokenizer_path, horizon=50
    )
    droid = Robot.make(
        "droid", "pi05_droid", golden_dir / "pi05_droid" / "checkpoint", golden_dir / "tokenizer.model", horizon=15
    )
    return aloha, droid


@pytest.fixture
def poll_stack(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> Iterator[tuple[pathlib.Path, int]]:
    """``make serve``'s stack (poll mode) on free ports; yields (repository, action WebSocket port)."""
    repository = _repository(tmp_path)
    config = bridge_config(tmp_path)
    (tmp_path / "bridge.json").write_text(json.dumps(config))
    ready = tmp_path / "ready"
    args = stack_args(repository, tmp_path / "bridge.json", free_ports(3), ready_file=ready)
    process = spawn_module("openpi_triton.stack", args, tmp_path / "stack.log", embedded_default.root.parent)
    port = config["action_transport"]["websocket_port"]
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, 900, "the stack's ready signal")
        assert process.poll() is None, (tmp_path / "stack.log").read_text()[-3000:]
        assert healthz(port)[0] == 200
        yield repository, port
    finally:
        stop_process(process, timeout=120)  # SIGTERM: the stack stops everything as on Ctrl-C


def test_poll_mode_one_edit_swaps_the_embodiment(
    poll_stack: tuple[pathlib.Path, int], robots: tuple[Robot, Robot], golden_dir: pathlib.Path
) -> None:
    repository, port = poll_stack
    aloha, droid = robots
    metadata, actions = aloha.ask(port)
    np.testing.assert_allclose(actions, aloha.expected, atol=1e-4)
    assert metadata["reset_pose"] == [0, -1.5, 1.5, 0, 0, 0]
    edit_to_golden_droid(repository, golden_dir)
    seen = watch_the_switch(port, aloha, droid, timeout=600)
    assert 503 in seen["health"], "health said 200 throughout, while the slot could not serve"
    after_the_switch(port, aloha)
    print(f"poll mode: DROID served {seen['seconds']:.1f} s after the edit; {len(seen['errors'])} clear errors")


def test_explicit_mode_admin_reload_swaps_the_embodiment(
    embedded_default: EmbeddedDefault, robots: tuple[Robot, Robot], golden_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    repository = _repository(tmp_path)
    http, grpc, metrics = free_ports(3)
    options = ServerOptions(
        repository, http, grpc, metrics, model_control_mode="explicit",
        env={"OPENPI_TRITON_HOME": str(embedded_default.root.parent)},
    )  # fmt: skip
    aloha, droid = robots
    with TritonServer(options, log_stream=open(tmp_path / "triton.log", "w")) as triton:
        triton.wait_ready(["action", "planner", "combined_ensemble"], timeout=900)
        watchdog = StubWatchdog(WatchdogOptions(triton.grpc_url, None, repository, 1.0, model_control_mode="explicit"))
        watchdog.start()
        bridge = start_bridge_process(triton.grpc_url, tmp_path)
        try:
            np.testing.assert_allclose(aloha.ask(bridge.action_port)[1], aloha.expected, atol=1e-4)
            edit_to_golden_droid(repository, golden_dir)
            np.testing.assert_allclose(aloha.ask(bridge.action_port)[1], aloha.expected, atol=1e-4)  # not loaded yet
            request = urllib.request.Request(
                f"http://127.0.0.1:{bridge.admin_port}/models/action/reload", method="POST"
            )
            with urllib.request.urlopen(request, timeout=900) as response:
                assert response.status == 200
            seen = watch_the_switch(bridge.action_port, aloha, droid, timeout=600)
            assert 503 in seen["health"], "health said 200 throughout, while the slot could not serve"
            after_the_switch(bridge.action_port, aloha)
            assert watchdog.follower is not None and sorted(watchdog.follower.reloads) == [
                "combined_ensemble",
                "planner",
            ]
            print(f"explicit mode: DROID served {seen['seconds']:.1f} s after the reload; {len(seen['errors'])} errors")
        finally:
            stop_bridge_process(bridge)
            watchdog.stop()
