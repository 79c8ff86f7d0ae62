"""The bridge's /metrics and Triton's count what robots caused: answers, mistakes, refusals, per slot and transport."""

from __future__ import annotations

import concurrent.futures
import pathlib
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets.sync.client
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import InvalidStatus

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.protocols import local_frame
from openpi_triton.protocols.local_frame import MessageType
from openpi_triton.triton.launcher import TritonServer
from tests.clients import SidecarClient, metric_sum, scrape
from tests.conftest import BridgeProcess, start_bridge_process, stop_bridge_process


def aloha_obs(seed: int, **extra: object) -> dict:
    return {**EMBODIMENTS["aloha"].example(np.random.default_rng(seed), "fold the towel"), **extra}


def bridge_metrics(bridge: BridgeProcess) -> str:
    return scrape(f"http://127.0.0.1:{bridge.admin_port}/metrics")


def test_answers_and_failures_are_counted_per_slot_transport_and_model(
    bridge: BridgeProcess, triton_server: TritonServer
) -> None:
    before = bridge_metrics(bridge)
    triton_before = scrape(f"http://127.0.0.1:{triton_server.options.metrics_port}/metrics")
    robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
    robot.infer(aloha_obs(1, mode="action_only"))
    with pytest.raises(RuntimeError, match="mode"):  # reaches Triton: combined_ensemble refuses the mode
        WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port).infer(aloha_obs(1, mode="bogus"))
    with pytest.raises(RuntimeError, match="state"):  # refused by the bridge itself
        WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port).infer(dict(aloha_obs(1), state=np.zeros(3)))
    sidecar = SidecarClient(str(bridge.action_socket))
    kind, _ = sidecar.request(MessageType.INFER, local_frame.pack(aloha_obs(2, mode="action_only")))
    assert kind == MessageType.INFER_RESPONSE
    after = bridge_metrics(bridge)

    def grew(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    websocket = {"slot": "action", "transport": "websocket"}
    assert grew("openpi_bridge_requests_total", outcome="ok", **websocket) == 1
    assert grew("openpi_bridge_requests_total", outcome="robot_error", **websocket) == 2
    assert grew("openpi_bridge_requests_total", outcome="ok", slot="action", transport="quic") == 1
    assert grew("openpi_bridge_request_seconds_count", **websocket) == 3
    assert grew("openpi_bridge_triton_failures_total", model="combined_ensemble", status="INVALID_ARGUMENT") == 1
    assert grew("openpi_bridge_triton_seconds_count", model="combined_ensemble") == 3  # the bridge's refusal: no call
    # Every call passed the fleet gate, one at a time (each robot alone): three batches of one request.
    assert grew("openpi_bridge_fleet_hold_seconds_count", model="combined_ensemble") == 3
    assert grew("openpi_bridge_fleet_batch_requests_count", model="combined_ensemble") == 3
    assert grew("openpi_bridge_fleet_batch_requests_sum", model="combined_ensemble") == 3
    assert grew("openpi_bridge_bytes_received_total", **websocket) > 3 * 600_000  # four 3x224x224 cameras each
    assert grew("openpi_bridge_bytes_sent_total", **websocket) > 0
    assert metric_sum(after, "openpi_bridge_connections", slot="action", transport="quic") >= 1  # still open
    # Triton's side: the ensemble's error response counted as a failure of that model.
    triton_after = scrape(f"http://127.0.0.1:{triton_server.options.metrics_port}/metrics")
    failures = {"model": "combined_ensemble", "code": "INVALID_ARG"}
    assert metric_sum(triton_after, "openpi_request_failures_total", **failures) > metric_sum(
        triton_before, "openpi_request_failures_total", **failures
    )


def test_refusals_and_auth_failures_are_counted(triton_server: TritonServer, tmp_path: pathlib.Path) -> None:
    bridge = start_bridge_process(triton_server.grpc_url, tmp_path, planner=None, api_key="k3y", max_connections=1)
    try:
        with pytest.raises(InvalidStatus):
            websockets.sync.client.connect(f"ws://127.0.0.1:{bridge.action_port}", open_timeout=60)
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{bridge.admin_port}/config", timeout=30)
        assert error.value.code == 401
        held = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port, api_key="k3y")
        with pytest.raises(InvalidStatus):  # max_connections=1 and one is open
            websockets.sync.client.connect(
                f"ws://127.0.0.1:{bridge.action_port}",
                additional_headers={"Authorization": "Api-Key k3y"},
                open_timeout=60,
            )
        text = bridge_metrics(bridge)  # no key needed for /metrics
        refused = {"slot": "action", "transport": "websocket"}
        assert metric_sum(text, "openpi_bridge_connections_refused_total", reason="unauthorized", **refused) == 1
        assert metric_sum(text, "openpi_bridge_connections_refused_total", reason="max_connections", **refused) == 1
        assert metric_sum(text, "openpi_bridge_admin_unauthorized_total") == 1
        assert metric_sum(text, "openpi_bridge_connections", **refused) == 1
        del held
    finally:
        stop_bridge_process(bridge)


def test_admin_lists_what_each_model_serves(bridge: BridgeProcess) -> None:
    import json

    with urllib.request.urlopen(f"http://127.0.0.1:{bridge.admin_port}/models", timeout=60) as response:
        (server,) = json.loads(response.read())["servers"]
    models = {m["name"]: m for m in server["models"]}
    assert models["action"]["state"] == "READY"
    assert models["action"]["serves"]["model_config_name"] == "pi05_aloha"
    assert models["action"]["serves"]["checkpoint_dir"] == "(embedded default)"
    assert models["planner"]["serves"]["follows"] == "action"
    assert models["combined_ensemble"]["serves"]["follows"] == "action"


def test_every_series_the_grafana_dashboard_plots_is_exported(
    bridge: BridgeProcess, triton_server: TritonServer
) -> None:
    import json
    import re

    from tests.conftest import REPO_ROOT

    dashboard = json.loads((REPO_ROOT / "docker" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b((?:openpi|nv)_\w+)\b", target["expr"])
    }
    WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port).infer(aloha_obs(5))  # default mode: planner too
    with pytest.raises(RuntimeError):  # one failure, so that the failure series have samples
        WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port).infer(aloha_obs(5, mode="bogus"))
    exported = bridge_metrics(bridge) + scrape(f"http://127.0.0.1:{triton_server.options.metrics_port}/metrics")
    expected = {n for n in queried if not n.startswith("nv_gpu")}  # GPU series exist only on a GPU

    def declared(name: str) -> bool:  # a sample, or the family (labelled series appear once used)
        family = re.sub(r"_(bucket|sum|count|total)$", "", name)
        pattern = rf"^({name}[{{ ]|# TYPE ({name}|{family}) )"
        return re.search(pattern, exported, re.MULTILINE) is not None

    missing = sorted(n for n in expected if not declared(n))
    assert not missing, f"the dashboard plots series nobody exports: {missing}"


def test_a_fleet_through_the_fleet_gate_gets_its_own_answers_and_the_gate_counts_them(
    triton_server: TritonServer, tmp_path: pathlib.Path
) -> None:
    """The gate on (as for a GPU fleet): four closed-loop robots at once each get the answer they get alone,
    nothing is lost, and the gate's histograms count every request it let go."""
    gated = {"url": triton_server.grpc_url, "fleet_batching": {"enabled": True}}
    bridge = start_bridge_process(triton_server.grpc_url, tmp_path, triton=gated)
    try:
        observations = {seed: aloha_obs(seed, mode="action_only", noise=_noise(seed)) for seed in range(4)}
        alone = {
            seed: WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port).infer(obs)
            for seed, obs in observations.items()
        }
        before = bridge_metrics(bridge)

        def closed_loop(seed: int) -> list[np.ndarray]:
            robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
            return [robot.infer(observations[seed])["actions"] for _ in range(5)]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = dict(zip(observations, pool.map(closed_loop, observations), strict=True))
        after = bridge_metrics(bridge)
    finally:
        stop_bridge_process(bridge)
    for seed, chunks in answers.items():
        for actions in chunks:
            assert np.abs(actions - alone[seed]["actions"]).max() < 1e-4, seed
    released = metric_sum(after, "openpi_bridge_fleet_batch_requests_sum") - metric_sum(
        before, "openpi_bridge_fleet_batch_requests_sum"
    )
    held = metric_sum(after, "openpi_bridge_fleet_hold_seconds_count") - metric_sum(
        before, "openpi_bridge_fleet_hold_seconds_count"
    )
    assert released == held == 20


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(900 + seed).standard_normal((50, 32)).astype(np.float32)
