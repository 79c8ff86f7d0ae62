"""perf_analyzer sweeps against a real tritonserver: models x dynamic batching x instance counts x concurrency.

    python -m perf.sweep                                   # everything, embedded default (tiny) model
    python -m perf.sweep --models action --concurrency 1,4 --batching on --instances 1
    python -m perf.sweep --size full                       # full-size random pi0.5 (GPU: bfloat16, KIND_GPU)

For every (batching, instances) configuration a model repository copy is written to a temp folder and a
tritonserver started on it; for every model and concurrency one perf_analyzer run (gRPC, the generated
realistic input data; ``combined_ensemble`` with ``--bls-composing-models=planner,action``). Writes into the
results folder (default ``perf/results/<timestamp>/``): ``sweep.csv`` (one row per step, latencies in ms),
``sweep_<model>.png`` (p50 / p90 / p99 latency against throughput), the raw perf_analyzer CSVs and logs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # `python perf/sweep.py`: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from openpi_triton.triton.launcher import TritonServer
from perf import perf_analyzer, plots
from perf.input_data import MODELS, InputDataOptions, write_input_data
from perf.repository import RepositoryVariant, benchmark_server_options, build_repository, models_needed
from perf.served_model import ServedModel, prepare

RESULTS_ROOT = pathlib.Path(__file__).resolve().parent / "results"
COMPOSING = {"combined_ensemble": "planner,action"}
SWEEP_FIELDS = (
    "model",
    "variant",
    "batching",
    "instances",
    "concurrency",
    "throughput",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "avg_ms",
    "server_queue_ms",
    "server_infer_ms",
)


def default_results_dir() -> pathlib.Path:
    return RESULTS_ROOT / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    models: tuple[str, ...] = MODELS
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    batching: tuple[bool, ...] = (True, False)
    instances: tuple[int, ...] = (1, 2)
    measurement_interval_ms: int = 3000
    # A shared 2-core machine never holds throughput within perf_analyzer's default 10 %; 3 windows are
    # measured either way, and the spread shows in p90/p99.
    stability_percentage: int = 999
    max_trials: int = 3  # perf_analyzer needs 3 windows to judge stability: fewer always fails
    shared_memory: str = "none"
    input_entries: int = 4
    ready_timeout_s: float = 1800.0


def pa_args(
    model: str, url: str, input_file: pathlib.Path, concurrency: int, csv_out: pathlib.Path, options: SweepOptions
) -> list[str]:
    args = [
        "-m", model, "-u", url, "-i", "grpc",
        "--input-data", str(input_file),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(options.measurement_interval_ms),
        "--stability-percentage", str(options.stability_percentage),
        "--max-trials", str(options.max_trials),
        "--shared-memory", options.shared_memory,
        "-f", str(csv_out), "--verbose-csv",
    ]  # fmt: skip
    if model in COMPOSING:
        args.append(f"--bls-composing-models={COMPOSING[model]}")
    return args


def summarize(row: dict[str, str]) -> dict[str, Any]:
    """perf_analyzer's CSV row (microseconds) -> our row (milliseconds)."""
    ms = lambda key: round(float(row[key]) / 1000.0, 2)  # noqa: E731
    return {
        "concurrency": int(row["Concurrency"]),
        "throughput": round(float(row["Inferences/Second"]), 3),
        "p50_ms": ms("p50 latency"),
        "p90_ms": ms("p90 latency"),
        "p95_ms": ms("p95 latency"),
        "p99_ms": ms("p99 latency"),
        "avg_ms": ms("Avg latency"),
        "server_queue_ms": ms("Server Queue"),
        "server_infer_ms": ms("Server Compute Infer"),
    }


def write_csv(path: pathlib.Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def run_sweep(options: SweepOptions, model: ServedModel, results: pathlib.Path) -> list[dict[str, Any]]:
    raw = results / "perf_analyzer"
    raw.mkdir(parents=True, exist_ok=True)
    inputs = {
        m: write_input_data(raw / f"input_{m}.json", InputDataOptions(model.config_name, m, options.input_entries))
        for m in options.models
    }
    variants = [
        RepositoryVariant(batching=b, instances=n, gpu=model.gpu, parameters=model.parameters())
        for b in options.batching
        for n in options.instances
    ]
    total = len(variants) * len(options.models) * len(options.concurrency)
    rows: list[dict[str, Any]] = []
    step = 0
    for variant in variants:
        work = pathlib.Path(tempfile.mkdtemp(prefix="perf-sweep-"))
        server = None
        try:
            repo = build_repository(work / "repo", variant, models_needed(options.models))
            log = open(results / f"triton_{variant.slug}.log", "w")  # closed after the server stops
            server = TritonServer(benchmark_server_options(repo), log_stream=log)
            print(f"[sweep] {variant.label}: starting tritonserver (models warm up first) ...", flush=True)
            started = time.monotonic()
            server.start()
            server.wait_ready(models_needed(options.models), timeout=options.ready_timeout_s)
            print(f"[sweep] {variant.label}: ready in {time.monotonic() - started:.0f} s", flush=True)
            for name in options.models:
                for concurrency in options.concurrency:
                    step += 1
                    started = time.monotonic()
                    stem = f"{name}_{variant.slug}_c{concurrency}"
                    out = raw / f"{stem}.csv"
                    args = pa_args(name, server.grpc_url, inputs[name], concurrency, out, options)
                    timeout = 60 + 4 * options.max_trials * options.measurement_interval_ms / 1000 * 3
                    perf_analyzer.run(args, timeout=timeout, log=raw / f"{stem}.log")
                    row = {
                        "model": name,
                        "variant": variant.label,
                        "batching": "on" if variant.batching else "off",
                        "instances": variant.instances,
                        **summarize(perf_analyzer.read_csv(out)[0]),
                    }
                    rows.append(row)
                    print(
                        f"[sweep] {step}/{total} {name} {variant.label} concurrency={concurrency}: "
                        f"{row['throughput']:.1f} infer/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms "
                        f"({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
                    write_csv(results / "sweep.csv", rows, SWEEP_FIELDS)  # partial results survive a failure
        finally:
            if server is not None:
                server.stop()
                server.log_stream.close()
            shutil.rmtree(work, ignore_errors=True)
    for name in options.models:
        plots.sweep_plot(rows, name, results / f"sweep_{name}.png")
    return rows


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated concurrency levels")
    parser.add_argument("--batching", default="on,off", help="dynamic batching: on, off or on,off")
    parser.add_argument("--instances", default="1,2", help="instance counts of action and planner")
    parser.add_argument("--measurement-interval-ms", type=int, default=3000)
    parser.add_argument("--shared-memory", choices=("none", "system"), default="none")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--num-steps", type=int, default=10, help="flow-matching steps of the action model")
    parser.add_argument("--results", type=pathlib.Path, default=None, help="default perf/results/<timestamp>/")
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    batching = tuple({"on": True, "off": False}[v] for v in args.batching.split(",") if v)
    options = SweepOptions(
        models=models,
        concurrency=_ints(args.concurrency),
        batching=batching,
        instances=_ints(args.instances),
        measurement_interval_ms=args.measurement_interval_ms,
        shared_memory=args.shared_memory,
    )
    results = args.results or default_results_dir()
    results.mkdir(parents=True, exist_ok=True)
    model = prepare(args.size, args.device, args.num_steps)
    print(f"[sweep] model: {model.describe()}; results in {results}", flush=True)
    try:
        rows = run_sweep(options, model, results)
    except perf_analyzer.PerfAnalyzerError as exc:
        print(f"[sweep] error: {exc}", file=sys.stderr)
        return 1
    print(f"[sweep] {len(rows)} steps: {results / 'sweep.csv'}, plots sweep_<model>.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
