"""The simulated runtime (a GPU cost curve instead of the model) behind real Triton and behind openpi's own
server, the cost curve itself, and the capacity report's goals."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import multiprocessing
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from openpi_triton import cost_curve
from openpi_triton.domain.configs import get_policy_config
from openpi_triton.native.policy import PolicyOptions
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.readiness import accepts_tcp, wait_until
from openpi_triton.scheduler import Scheduler
from openpi_triton.simulated_device import SimulatedDevice, lock_path
from openpi_triton.simulated_policy import SimulatedPolicy, load_simulated_policy
from openpi_triton.triton.launcher import TritonServer, free_ports
from openpi_triton.triton.model_params import ActionParams, ParameterError
from perf import capacity, paired_overhead, triton_stats
from perf.input_data import observations
from perf.repository import RepositoryVariant, build_repository, serving
from perf.robots import STALE, Endpoint, GrpcPolicy
from tests.conftest import start_bridge_process, stop_bridge_process

# The shape of a GPU's curve (batch 4 costs 1.5x batch 1), slow enough that robots sent together on a busy
# machine still find the first call running and queue behind it.
TEST_CURVE = {
    "name": "test_gpu",
    "description": "test",
    "source": "tests",
    "ms_per_call": {"1": 120, "2": 140, "4": 180},
}


@pytest.fixture(scope="module")
def curve_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("curve") / "test_gpu.json"
    path.write_text(json.dumps(TEST_CURVE))
    return path


@pytest.fixture(scope="module")
def local_policy(embedded_default: EmbeddedDefault, curve_file: pathlib.Path) -> SimulatedPolicy:
    options = PolicyOptions(batch_buckets=(1, 2, 4), tokenizer_path=str(embedded_default.tokenizer_path))
    curve = cost_curve.load(str(curve_file))
    return load_simulated_policy(embedded_default.config_name, embedded_default.checkpoint_dir, options, curve)


@pytest.fixture(scope="module")
def simulated_triton(
    embedded_default: EmbeddedDefault, curve_file: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("simulated-triton")
    parameters = {
        "runtime": "simulated",
        "cost_curve": str(curve_file),
        "checkpoint_dir": str(embedded_default.checkpoint_dir),
        "tokenizer_path": str(embedded_default.tokenizer_path),
        "batch_buckets": "1,2,4",
    }
    repo = build_repository(work / "repo", RepositoryVariant(parameters=parameters), ["action"])
    with serving(repo, ["action"], work / "triton.log") as server:
        yield server


def test_the_scheduler_writes_triton_s_dynamic_batching_block() -> None:
    robots = Scheduler.for_buckets((1, 2, 4, 8), queue_delay_us=10_000, stale_after_us=100_000)
    assert robots.preferred_batch_sizes == (2, 4, 8)
    assert robots.dynamic_batching() == (
        "dynamic_batching {\n  max_queue_delay_microseconds: 10000\n  preferred_batch_size: [ 2, 4, 8 ]\n"
        "  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 100000 }\n}"
    )
    assert Scheduler().dynamic_batching() == "dynamic_batching {\n  max_queue_delay_microseconds: 0\n}"
    with pytest.raises(ValueError, match="delays must be >= 0"):
        Scheduler(queue_delay_us=-1)


def test_the_curve_interpolates_and_extends_the_last_slope() -> None:
    curve = cost_curve.from_dict(TEST_CURVE, "test")
    assert [curve.ms(b) for b in (1, 2, 3, 4, 6, 8)] == [120, 140, 160, 180, 220, 260]
    assert curve.throughput_hz(4) == pytest.approx(4000 / 180)
    published = cost_curve.load()
    assert [published.ms(b) for b in (1, 2, 3, 4, 8)] == [73, 90, 107, 119, 167]
    assert published.name == cost_curve.DEFAULT_CURVE


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"ms_per_call": {}}, "at least one point"),
        ({"ms_per_call": {"1": 50, "2": 40}}, "not fall with the batch"),
        ({"ms_per_call": {"one": 50}}, "'one'"),
        ({"ms_per_call": [50, 60]}, "'ms_per_call' must be an object"),
        ({"ms_per_call": {"0": 50}}, ">= 1"),
    ],
)
def test_bad_curves_name_the_field(data: dict, needle: str) -> None:
    with pytest.raises(cost_curve.CostCurveError, match=needle):
        cost_curve.from_dict(data, "curve.json")


def test_the_runtime_parameter_checks_the_curve_at_load(curve_file: pathlib.Path) -> None:
    params = ActionParams.parse({"model_config_name": "pi05_aloha", "runtime": "simulated", "cost_curve": ""})
    assert params.runtime == "simulated"
    with pytest.raises(ParameterError, match=r"parameter 'cost_curve'.*no_such_curve"):
        ActionParams.parse({"model_config_name": "pi05_aloha", "runtime": "simulated", "cost_curve": "no_such_curve"})
    with pytest.raises(ParameterError, match="only used by runtime 'simulated'"):
        ActionParams.parse({"model_config_name": "pi05_aloha", "cost_curve": str(curve_file)})


def test_simulated_calls_wait_the_curve_and_answer_each_robot(local_policy: SimulatedPolicy) -> None:
    robots = observations(get_policy_config("pi05_aloha").embodiment, 3, seed=7)
    started = time.perf_counter()
    answers = [local_policy.infer(obs)["actions"] for obs in robots]
    assert time.perf_counter() - started >= 3 * 0.120
    assert all(a.shape == (50, 14) and np.all(np.isfinite(a)) for a in answers)
    assert not np.allclose(answers[0], answers[1]) and not np.allclose(answers[1], answers[2])
    np.testing.assert_array_equal(local_policy.infer(robots[0])["actions"], answers[0])
    prepared = [local_policy.prepare(obs) for obs in robots]
    local_policy.sample(prepared)
    assert local_policy.last_call.buckets == (4,) and local_policy.last_call.waited_ms == 180


def test_triton_batches_simulated_robots_and_keeps_the_real_transforms(
    simulated_triton: TritonServer, local_policy: SimulatedPolicy
) -> None:
    robots = observations(get_policy_config("pi05_aloha").embodiment, 4, seed=11)
    host, _, port = simulated_triton.grpc_url.rpartition(":")
    before = triton_stats.read(simulated_triton.grpc_url, "action")
    clients = [GrpcPolicy(Endpoint(host, int(port))) for _ in robots]
    try:
        with concurrent.futures.ThreadPoolExecutor(len(robots)) as pool:
            answers = list(pool.map(lambda pair: pair[0].infer(pair[1])["actions"], zip(clients, robots, strict=True)))
    finally:
        for client in clients:
            client.close()
    # Triton counts a batch after its execute returned, which can be after its robots read the answers.
    window = wait_until(
        lambda: (w := triton_stats.read(simulated_triton.grpc_url, "action").minus(before)).inference_count >= 4 and w,
        30,
        "Triton's statistics to count the 4 requests",
    )
    assert window.inference_count == 4
    assert max(window.executions_by_batch) > 1, window  # robots that arrived while one call waited shared one
    for obs, answer in zip(robots, answers, strict=True):
        np.testing.assert_allclose(answer, local_policy.infer(obs)["actions"], rtol=1e-6, atol=1e-6)


@contextlib.contextmanager
def _simulated_openpi_server(
    embedded_default: EmbeddedDefault, curve_file: pathlib.Path, log: pathlib.Path
) -> Iterator[int]:
    """openpi's own server on the simulated policy; yields its port once it listens."""
    (port,) = free_ports(1)
    args = [
        sys.executable, "-m", "perf.baseline_server", "--port", str(port), "--config", embedded_default.config_name,
        "--checkpoint", str(embedded_default.checkpoint_dir), "--tokenizer", str(embedded_default.tokenizer_path),
        "--cost-curve", str(curve_file),
    ]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=pathlib.Path(__file__).parents[1])
    try:
        _wait_until_listening(server, port, log)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_openpi_server_serves_the_same_simulated_policy(
    embedded_default: EmbeddedDefault, curve_file: pathlib.Path, local_policy: SimulatedPolicy, tmp_path: pathlib.Path
) -> None:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    with _simulated_openpi_server(embedded_default, curve_file, tmp_path / "baseline.log") as port:
        robot = WebsocketClientPolicy(host="127.0.0.1", port=port)
        obs = observations(get_policy_config("pi05_aloha").embodiment, 1, seed=3)[0]
        started = time.perf_counter()
        answer = robot.infer(obs)
        assert time.perf_counter() - started >= 0.120
        np.testing.assert_allclose(answer["actions"], local_policy.infer(obs)["actions"], rtol=1e-6, atol=1e-6)


def test_paired_calls_alternate_between_the_bridge_and_openpi_server(
    embedded_default: EmbeddedDefault, curve_file: pathlib.Path, simulated_triton: TritonServer, tmp_path: pathlib.Path
) -> None:
    """One robot, the same simulated policy behind both: every pair has one answered call to each server."""
    bridge = start_bridge_process(simulated_triton.grpc_url, tmp_path, planner=None)
    try:
        with _simulated_openpi_server(embedded_default, curve_file, tmp_path / "baseline.log") as port:
            ours, base = Endpoint("127.0.0.1", bridge.action_port), Endpoint("127.0.0.1", port)
            measured = paired_overhead.measure(ours, base, embedded_default.config_name, pairs=6, rate_hz=20.0)
    finally:
        stop_bridge_process(bridge)
    batch_1_ms = TEST_CURVE["ms_per_call"]["1"]
    assert measured.pairs == 6
    assert measured.ours_p50_ms >= batch_1_ms and measured.baseline_p50_ms >= batch_1_ms
    # Both wait the same curve: what the bridge and Triton add is far below one model call (a second call, or
    # pairs that do not line up, would show as a whole call's difference).
    assert abs(measured.overhead_p50_ms) < batch_1_ms / 2, measured


def test_an_observation_older_than_the_deadline_is_answered_stale(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> None:
    """Robots behind a busy model: the queue deadline answers the late ones as stale, in the robot's terms, and
    the robot's next call is served."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    curve = tmp_path / "slow.json"
    curve.write_text(json.dumps({"ms_per_call": {"1": 300, "4": 320}}))
    parameters = {
        "runtime": "simulated", "cost_curve": str(curve), "checkpoint_dir": str(embedded_default.checkpoint_dir),
        "tokenizer_path": str(embedded_default.tokenizer_path), "batch_buckets": "1,4",
    }  # fmt: skip
    variant = RepositoryVariant(parameters=parameters, scheduler=Scheduler(stale_after_us=30_000))
    repo = build_repository(tmp_path / "repo", variant, ["action"])
    robots = observations(get_policy_config("pi05_aloha").embodiment, 4, seed=5)
    with serving(repo, ["action"], tmp_path / "triton.log") as server:
        bridge = start_bridge_process(server.grpc_url, tmp_path, planner=None)
        try:

            def call(obs: dict) -> str:
                robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
                try:
                    return "answered" if robot.infer(obs)["actions"].shape == (50, 14) else "wrong"
                except RuntimeError as exc:
                    return str(exc)

            outcomes: list[str] = []
            for _ in range(3):  # one call runs 300 ms; those queued behind it pass the 30 ms deadline
                with concurrent.futures.ThreadPoolExecutor(len(robots)) as pool:
                    outcomes += list(pool.map(call, robots))
                if any(STALE in o for o in outcomes):
                    break
            stale = [o for o in outcomes if STALE in o]
            assert stale and "answered" in outcomes, outcomes
            assert "waited more than 30 ms in the queue of model 'action'" in stale[0]
            assert "send a fresh one" in stale[0]
            assert call(robots[0]) == "answered"  # the server itself is fine
        finally:
            stop_bridge_process(bridge)


def _wait_until_listening(server: subprocess.Popen[bytes], port: int, log: pathlib.Path) -> None:
    """openpi's server opens its port once the policy is loaded."""

    def exited() -> str | None:
        return None if server.poll() is None else f"openpi-server exited ({server.poll()}):\n{log.read_text()[-2000:]}"

    wait_until(lambda: accepts_tcp(port), 120, f"openpi-server listening on {port}", unless=exited)


def _row(transport: str, robots: int, hz: float, p50: float, p99: float, missed: float = 0.0, **extra: object) -> dict:
    return {
        "transport": transport, "robots": robots, "aggregate_hz": hz, "p50_ms": p50, "p99_ms": p99,
        "missed_fraction": missed, "errors": 0, **extra,
    }  # fmt: skip


def test_capacity_goals_and_report_come_from_the_rows() -> None:
    batches = {"triton": {"executions_by_batch": {"1": 3, "8": 40}}}
    sim = [
        _row("websocket", 1, 10.0, 80.0, 90.0), _row("quic", 1, 10.0, 85.0, 95.0), _row("openpi-server", 1, 10, 76, 80),
        _row("websocket", 8, 45.0, 170.0, 200.0, 1.0, **batches), _row("quic", 8, 40.0, 180.0, 150.0, 0.005),
        _row("openpi-server", 8, 13.0, 600.0, 700.0, 1.0),
    ]  # fmt: skip
    tiny = [_row("websocket", 1, 10.0, 29.0, 30.0), _row("openpi-server", 1, 10.0, 25.0, 28.0)]
    # The windows one after the other differ by 4 ms (the host's load moved); the pairs by 0.8 ms.
    # Ours first: differences 0.2, 0.2, 0.4; openpi-server first: 1.4, 1.4 (what the first call leaves behind).
    paired = paired_overhead.summarize([25.2, 26.9, 25.4, 26.9, 25.6], [25.0, 25.5, 25.2, 25.5, 25.2]).as_dict()
    assert paired["ours_first_p50_ms"] == 0.2 and paired["baseline_first_p50_ms"] == 1.4
    assert paired["overhead_p50_ms"] == 0.8 and paired["pairs"] == 5
    goals = {g.name: g for g in capacity.simulated_goals(sim, "c") + capacity.tiny_goals(tiny, paired)}
    assert goals["simulated (c), 8 robots, websocket: aggregate >= 3x openpi-server"].met
    assert not goals["simulated (c), 8 robots, websocket: missed <= 1 %"].met
    assert goals["simulated (c), 8 robots, quic: missed <= 1 %"].met
    assert goals["simulated (c), 8 robots, quic: p99 <= 2x 1-robot p50"].met
    assert not goals["simulated (c), 16 robots, quic: aggregate >= 3x openpi-server"].met  # not measured: missed
    assert goals["simulated, 8 robots: batches above 1 in Triton's statistics"].met
    assert goals["tiny model, 1 robot, websocket: p50 <= openpi-server + 1 ms (paired calls)"].met
    assert not capacity.tiny_goals(tiny, None)[-1].met  # not measured is not met
    report = {
        "command": "test", "date": "today", "machine": "m", "rate_hz": 10.0, "duration_s": 15.0,
        "cost_curve": cost_curve.load().as_dict(), "curve_ceiling": capacity.curve_ceiling(cost_curve.load()),
        "batch_buckets": "1,2,3,4,5,6,7,8",
        "simulated": {"model": "SIMULATED x", "scheduler": "delay 10 ms", "rows": sim},
        "tiny": {
            "model": "tiny", "scheduler": "-", "rows": tiny, "overhead_p50_ms": capacity.overhead_ms(tiny),
            "paired_overhead": paired,
        },
        "goals": [{"name": g.name, "measured": g.measured, "met": g.met} for g in goals.values()],
    }  # fmt: skip
    report["final_line"] = capacity.final_line(report)
    assert report["final_line"] == (
        "capacity: 3.08x openpi-server at 8 robots (cost curve pi05_published), overhead p50 +0.8 ms"
    )
    text = capacity.render_markdown(report)
    assert "SIMULATED" in text and "| 8 | websocket | 45.0 | 3.46 |" in text and "1: 3, 8: 40" in text
    assert text.rstrip().endswith(f"`{report['final_line']}`")
    assert "openpi-server first: overhead +0.80 ms" in text


def test_the_simulated_runtime_refuses_rtc_requests(local_policy: SimulatedPolicy) -> None:
    obs = local_policy.config.embodiment.example(np.random.default_rng(0))
    obs["rtc"] = {"prev_actions": np.zeros((10, 14)), "inference_delay": 2}
    with pytest.raises(ValueError, match=r"'rtc': the simulated runtime has no model to guide"):
        local_policy.prepare(obs)
    assert "rtc" not in local_policy.infer({k: v for k, v in obs.items() if k != "rtc"})


def test_docs_tables_are_copies_of_committed_results(tmp_path: pathlib.Path) -> None:
    from perf import doc_tables

    blocks = [b for path in doc_tables.documents() for b in doc_tables.BLOCK.findall(path.read_text())]
    assert len(blocks) >= 8 and all((doc_tables.REPO / b[1]).is_file() for b in blocks)
    assert doc_tables.main(["--check"]) == 0, "run `python -m perf.doc_tables` after committing new results"
    source = tmp_path / "r.md"
    source.write_text("# x\n\n| a |\n| --- |\n| 1 |\n\ntext\n\n| b |\n| --- |\n| 2 |\n")
    doc = "before\n<!-- table: r.md 2 -->\nold\n<!-- end table -->\nafter\n"
    assert (
        doc_tables.render(doc, tmp_path)
        == "before\n<!-- table: r.md 2 -->\n| b |\n| --- |\n| 2 |\n<!-- end table -->\nafter\n"
    )
    with pytest.raises(ValueError, match="no table 3"):
        doc_tables.render(doc.replace("r.md 2", "r.md 3"), tmp_path)


def _hold_device(path: str, seconds: float, together: Any, spans: Any) -> None:
    """Process entry point: one simulated call on the device at ``path``, reporting when it held it."""
    device = SimulatedDevice(pathlib.Path(path))
    together.wait()  # every process asks for the device at the same moment
    with device.running():
        begin = time.monotonic()
        time.sleep(seconds)
        spans.put((begin, time.monotonic()))
    device.close()


def test_processes_on_one_simulated_device_take_turns(tmp_path: pathlib.Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    spans: Any = ctx.Queue()
    together = ctx.Barrier(3)
    lock = str(tmp_path / "gpu.lock")
    workers = [ctx.Process(target=_hold_device, args=(lock, 0.2, together, spans)) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        held = sorted(spans.get(timeout=120) for _ in workers)
    finally:
        for worker in workers:
            worker.join(timeout=30)
    for (_, end), (begin, _) in itertools.pairwise(held):
        assert begin >= end, held  # never two calls on the device at once


def test_two_instances_of_one_server_share_its_simulated_gpu(
    embedded_default: EmbeddedDefault, curve_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Two instances, no batching: two robots at once run one after the other (as on one GPU), not together."""
    parameters = {
        "runtime": "simulated",
        "cost_curve": str(curve_file),
        "checkpoint_dir": str(embedded_default.checkpoint_dir),
        "tokenizer_path": str(embedded_default.tokenizer_path),
    }
    variant = RepositoryVariant(batching=False, instances=2, parameters=parameters)
    repo = build_repository(tmp_path / "repo", variant, ["action"])
    robots = observations(get_policy_config("pi05_aloha").embodiment, 2, seed=5)
    with serving(repo, ["action"], tmp_path / "triton.log") as server:
        assert server.process is not None
        assert lock_path(0, server.process.pid).exists()  # the device is the server's: its stubs' parent
        host, _, port = server.grpc_url.rpartition(":")
        clients = [GrpcPolicy(Endpoint(host, int(port))) for _ in robots]
        try:
            for client, obs in zip(clients, robots, strict=True):
                client.infer(obs)  # both connections warm
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(len(robots)) as pool:
                list(pool.map(lambda pair: pair[0].infer(pair[1]), zip(clients, robots, strict=True)))
            both_s = time.perf_counter() - started
        finally:
            for client in clients:
                client.close()
    batch_1_s = TEST_CURVE["ms_per_call"]["1"] / 1000.0
    assert both_s >= 2 * batch_1_s, both_s
