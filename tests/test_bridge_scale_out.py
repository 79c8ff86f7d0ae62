"""Two local tritonservers behind one bridge: traffic reaches both, losing one loses only its in-flight requests."""

from __future__ import annotations

import concurrent.futures
import pathlib
import threading
import time
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as grpcclient
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports
from tests.clients import metric_sum, scrape
from tests.conftest import BridgeProcess, start_bridge_process, stop_bridge_process
from tests.triton_helpers import copy_model, wait_until


def _count(url: str) -> int:
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics("action", as_json=True)
    return int(stats["model_stats"][0].get("inference_count", 0))


def _reached(read: Callable[[], int], expected: int, timeout: float = 60.0) -> int:
    """Triton counts a request just after it answers it (on a loaded host, long after): polls until the count
    reaches ``expected`` (returned at once when it does) or the timeout passes, and returns the last count."""
    deadline = time.monotonic() + timeout
    value = read()
    while value < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value


def _triton_calls(bridge: BridgeProcess) -> tuple[float, float]:
    """The bridge's Triton calls for the action model and the failed ones among them; counted before the robot
    reads its answer, so exact right after the answers (unlike Triton's own statistics)."""
    text = scrape(f"http://127.0.0.1:{bridge.admin_port}/metrics")
    calls = metric_sum(text, "openpi_bridge_triton_seconds_count", model="action")
    return calls, metric_sum(text, "openpi_bridge_triton_failures_total", model="action")


def _diagnosis(counts: list[int], urls: list[str], workdir: pathlib.Path) -> str:
    """What to look at when the load did not spread: each server's statistics and the bridge's log."""
    stats = [grpcclient.InferenceServerClient(u).get_inference_statistics("action", as_json=True) for u in urls]
    return f"counts {counts} at {urls}\nstatistics {stats}\nbridge log:\n{(workdir / 'bridge.log').read_text()}"


def test_two_tritons_share_the_load_and_one_can_die(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    servers = []
    for name in ("a", "b"):
        repo = tmp_path / name
        copy_model(repo, "action", "action", {"batch_buckets": "1,2"})
        http, grpc, metrics = free_ports(3)
        env = {"OPENPI_TRITON_HOME": str(embedded_default.root.parent)}
        server = TritonServer(
            ServerOptions(repo, http, grpc, metrics, env=env), log_stream=open(tmp_path / f"{name}.log", "w")
        )
        servers.append(server.start())
    for server in servers:
        server.wait_ready(["action"], timeout=300)
    urls = [s.grpc_url for s in servers]
    bridge = start_bridge_process(urls[0], tmp_path, planner=None, triton={"urls": urls})
    obs = EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel")
    try:

        def robot(_: int) -> int:
            policy = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
            served = sum(policy.infer(obs)["actions"].shape == (50, 14) for _ in range(4))
            policy._ws.close()
            return served

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert sum(pool.map(robot, range(6))) == 24
        time.sleep(2 * 2)  # two poll periods: a spurious reload (it resets statistics) would have happened
        for name in ("a", "b"):  # the stub's first import must not look like a repository edit
            assert (tmp_path / f"{name}.log").read_text().count("successfully loaded 'action'") == 1
        _reached(lambda: sum(_count(u) for u in urls), 24)
        counts = [_count(u) for u in urls]
        assert all(c > 0 for c in counts) and sum(counts) == 24, _diagnosis(counts, urls, tmp_path)

        # Kill server a under traffic: only requests in flight on it may fail.
        failures: list[str] = []
        successes = [0]
        stop = threading.Event()

        def traffic() -> None:
            policy = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
            while not stop.is_set():
                try:
                    policy.infer(obs)
                    successes[0] += 1
                except Exception as exc:  # recorded, bounded below; the connection is gone, open a new one
                    failures.append(str(exc))
                    policy._ws.close()
                    policy = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
            policy._ws.close()

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: successes[0] >= 6, 120, "traffic flowing before the kill")
        servers[0].stop()
        after_stop = successes[0] + 6  # served by the remaining server once the bridge took the dead one out
        wait_until(lambda: successes[0] >= after_stop, 120, "traffic served after the kill")
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        assert len(failures) <= 3, failures  # at most one in flight per robot thread
        # The last traffic answers may not be in b's statistics yet: b's count is a lower bound, and the bridge's
        # own count (exact once the robot has its answers) says each request made exactly one call, none failed.
        before, (calls_before, failed_before) = _count(urls[1]), _triton_calls(bridge)
        policy = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        for _ in range(10):
            assert policy.infer(obs)["actions"].shape == (50, 14)
        calls, failed = _triton_calls(bridge)
        assert (calls - calls_before, failed - failed_before) == (10, 0)  # no try on the dead server, no retry
        assert _reached(lambda: _count(urls[1]), before + 10) >= before + 10  # and b, the one alive, ran them
    finally:
        stop_bridge_process(bridge)
        for server in servers:
            server.stop()
