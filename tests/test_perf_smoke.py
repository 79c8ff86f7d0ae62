"""Smoke tests of perf/: perf_analyzer runs against a real tritonserver with our generated input data, and the
fleet benchmark (our stack + the openpi-server baseline) writes its results. No skips: if perf_analyzer cannot
run here (libb64-0d or libcudart missing), this fails with the fix in the message.
"""

from __future__ import annotations

import base64
import csv
import json
import pathlib
from collections.abc import Iterator

import numpy as np
import pytest

from openpi_triton.domain.configs import get_policy_config
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton import io_spec
from openpi_triton.triton.launcher import TritonServer
from perf import perf_analyzer
from perf.fleet import FleetOptions, run_fleet
from perf.input_data import InputDataOptions, input_data, observations, write_input_data
from perf.repository import RepositoryVariant, build_repository, rewrite_config, serving
from perf.served_model import ServedModel
from perf.sweep import SweepOptions, pa_args, summarize


@pytest.fixture(scope="module")
def tiny_model(embedded_default: EmbeddedDefault) -> ServedModel:
    # One flow step and two batch buckets: the smoke tests check the plumbing, quickly, on 2 cores.
    return ServedModel(
        "tiny", embedded_default.config_name, embedded_default.checkpoint_dir, embedded_default.tokenizer_path,
        "float32", gpu=False, num_steps=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def perf_triton(tiny_model: ServedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """tritonserver with the `action` model only, started as the benchmarks start theirs (no poll reloads)."""
    work = tmp_path_factory.mktemp("perf-triton")
    variant = RepositoryVariant(parameters={**tiny_model.parameters(), "batch_buckets": "1,2"})
    repo = build_repository(work / "repo", variant, ["action"])
    with serving(repo, ["action"], work / "triton.log") as server:
        yield server


@pytest.mark.parametrize("config_name", ["pi05_aloha", "pi05_droid", "pi05_libero"])
def test_input_data_matches_the_served_io(config_name: str) -> None:
    config = get_policy_config(config_name)
    data = input_data(InputDataOptions(config_name, "action", entries=2, noise=True))
    specs = {s.name: s for s in io_spec.action_inputs(config)}
    assert len(data["data"]) == 2
    for entry in data["data"]:
        required = {n for n, s in specs.items() if not s.optional}
        assert required <= set(entry) <= set(specs)
        assert entry["prompt"] and isinstance(entry["prompt"][0], str)
        noise = np.frombuffer(base64.b64decode(entry["noise"]["content"]["b64"]), "<f4")
        assert entry["noise"]["shape"] == [config.action_horizon, config.action_dim]
        assert noise.size == config.action_horizon * config.action_dim
        for name, spec in specs.items():
            if spec.data_type == "TYPE_UINT8" and name in entry:
                shape = entry[name]["shape"]
                pixels = np.frombuffer(base64.b64decode(entry[name]["content"]["b64"]), np.uint8)
                assert pixels.size == np.prod(shape) and len(shape) == 3 and 3 in (shape[0], shape[2])
                assert pixels.std() > 10  # a scene, not a constant image
            if spec.data_type == "TYPE_FP64":
                vector = np.frombuffer(base64.b64decode(entry[name]["content"]["b64"]), "<f8")
                assert entry[name]["shape"] == list(spec.dims) and vector.size == spec.dims[0]


def test_observations_differ_between_entries() -> None:
    first, second = observations(get_policy_config("pi05_aloha").embodiment, 2)
    assert not np.array_equal(first["images"]["cam_high"], second["images"]["cam_high"])
    assert first["images"]["cam_high"].shape == (3, 224, 224)


def test_batching_off_and_instances_rewrite_the_config() -> None:
    text = (pathlib.Path(__file__).parents[1] / "model_repository" / "action" / "config.pbtxt").read_text()
    new = rewrite_config(text, "action", RepositoryVariant(batching=False, instances=2, parameters={"num_steps": "3"}))
    assert "max_batch_size: 1\n" in new and "count: 2" in new
    assert 'key: "batch_buckets" value: { string_value: "1" }' in new
    assert 'key: "num_steps" value: { string_value: "3" }' in new


def test_perf_analyzer_runs_against_tritonserver(perf_triton: TritonServer, tmp_path: pathlib.Path) -> None:
    data = write_input_data(tmp_path / "action.json", InputDataOptions("pi05_aloha", "action", entries=2))
    options = SweepOptions(measurement_interval_ms=800, max_trials=3)
    out = tmp_path / "pa.csv"
    args = pa_args("action", perf_triton.grpc_url, data, 1, out, options)
    args[args.index("--concurrency-range") + 1] = "1:2"
    perf_analyzer.run(args, timeout=120, log=tmp_path / "pa.log")
    rows = perf_analyzer.read_csv(out)
    assert [int(r["Concurrency"]) for r in sorted(rows, key=lambda r: int(r["Concurrency"]))] == [1, 2]
    for row in rows:
        summary = summarize(row)
        assert summary["throughput"] > 0, (tmp_path / "pa.log").read_text()
        assert 0 < summary["p50_ms"] <= summary["p99_ms"]


def test_fleet_writes_results_with_the_openpi_server_baseline(
    perf_triton: TritonServer, tiny_model: ServedModel, tmp_path: pathlib.Path
) -> None:
    options = FleetOptions(robots=(1,), rate_hz=10.0, duration_s=1.5, warmup_calls=1)
    rows, goals = run_fleet(options, tiny_model, tmp_path, triton_url=perf_triton.grpc_url)
    assert {r["transport"] for r in rows} == {"websocket", "quic", "grpc", "openpi-server"}
    for row in rows:
        assert row["errors"] == 0 and row["calls"] > 0, row
    with open(tmp_path / "fleet.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert (tmp_path / "fleet.png").stat().st_size > 0
    assert "openpi-server" in (tmp_path / "fleet.md").read_text()
    assert any(g.met is not None for g in goals)  # the 1-robot latency goal is judged
    assert json.loads((tmp_path / "fleet_goals.json").read_text())


def test_input_data_can_carry_an_rtc_request() -> None:
    data = input_data(InputDataOptions("pi05_aloha", "combined_ensemble", entries=1, rtc_delay=5))
    entry = data["data"][0]
    assert entry["rtc.prev_actions"]["shape"] == [25, 14]
    assert entry["rtc.inference_delay"]["shape"] == [1]
    assert np.frombuffer(base64.b64decode(entry["rtc.inference_delay"]["content"]["b64"]), "<i4").tolist() == [5]
