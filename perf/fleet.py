"""Robot-fleet benchmark: N simulated robots per transport against our stack and against openpi's own server.

    python -m perf.fleet                                   # 1, 2, 4, 8, 16 robots at 10 Hz, 10 s each
    python -m perf.fleet --robots 1,8 --rate 10 --duration 20 --transports websocket,openpi-server
    python -m perf.fleet --size full                       # full-size random pi0.5 (GPU: bfloat16)

Transports: ``websocket`` (openpi-client's ``WebsocketClientPolicy`` -> our bridge -> Triton), ``quic``
(``FlashTransportPolicy`` -> QUIC sidecars -> bridge -> Triton), ``grpc`` (``tritonclient`` straight to Triton)
and the baseline ``openpi-server`` (PyPI ``openpi-server``'s ``WebsocketPolicyServer`` serving the same native
policy in its own process). Each robot is its own process (see ``perf.robots``). For every robot count the
transports run one after another, so drift of the machine hits all of them alike.

Writes ``fleet.csv``, ``fleet.md`` (table, ratios to the baseline, the goals met or not) and ``fleet.png``
into the results folder (default ``perf/results/<timestamp>/``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import multiprocessing
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python perf/fleet.py`: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from perf import plots, triton_stats
from perf.fleet_services import fleet_services
from perf.repository import RepositoryVariant
from perf.results_files import machine
from perf.robots import TRANSPORTS, Endpoint, RobotResult, RobotTask, run_robot
from perf.served_model import ServedModel, prepare
from perf.sweep import default_results_dir

BASELINE = "openpi-server"
FLEET_FIELDS = (
    "transport", "robots", "rate_hz", "duration_s", "calls", "aggregate_hz", "p50_ms", "p95_ms", "p99_ms",
    "max_ms", "missed", "missed_fraction", "errors", "hz_vs_baseline",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FleetOptions:
    robots: tuple[int, ...] = (1, 2, 4, 8, 16)
    transports: tuple[str, ...] = TRANSPORTS
    rate_hz: float = 10.0
    duration_s: float = 10.0
    warmup_calls: int = 2
    connect_timeout_s: float = 180.0
    # Our robots go through the BLS (``combined_ensemble``, mode ``action_only``) instead of straight to ``action``.
    ensemble: bool = False
    # The bridge's ``triton.fleet_batching`` (None: its default, the gate off).
    fleet_batching: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    met: bool | None  # None: not measured in this run


def run_step(
    transport: str,
    endpoint: Endpoint,
    robots: int,
    options: FleetOptions,
    config_name: str,
    triton: Endpoint | None = None,
) -> dict:
    """``robots`` robot processes on one transport for one window; returns the summary row (with Triton's
    statistics of ``action`` over the window when ``triton`` is given and the transport reaches it)."""
    ctx = multiprocessing.get_context("spawn")  # no JAX/gRPC state inherited by fork
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    period = 1.0 / options.rate_hz
    extra = (("mode", "action_only"),) if options.ensemble and transport in ("websocket", "quic") else ()
    tasks = [
        RobotTask(i, transport, endpoint, config_name, options.rate_hz, options.duration_s, period * i / robots,
                  options.warmup_calls, extra_obs=extra)
        for i in range(robots)
    ]  # fmt: skip
    reaches_triton = triton is not None and transport != BASELINE
    processes = [ctx.Process(target=run_robot, args=(t, ready, start_at, go, results), daemon=True) for t in tasks]
    for p in processes:
        p.start()
    try:
        for _ in processes:
            ready.get(timeout=options.connect_timeout_s)
        before = triton_stats.read(f"{triton.host}:{triton.port}", triton.model) if reaches_triton else None
        start_at.value = time.monotonic() + 0.2
        go.set()
        outcomes: list[RobotResult] = [
            results.get(timeout=options.duration_s + options.connect_timeout_s) for _ in processes
        ]
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    row = summarize(transport, robots, options, outcomes)
    if before is not None and triton is not None:
        window = triton_stats.read(f"{triton.host}:{triton.port}", triton.model).minus(before)
        row["triton"] = window.summary()
    return row


def summarize(transport: str, robots: int, options: FleetOptions, outcomes: Sequence[RobotResult]) -> dict:
    latencies = np.asarray([ms for o in outcomes for ms in o.latencies_ms])
    errors = [o.first_error for o in outcomes if o.first_error]
    if errors:
        print(f"[fleet] {transport} x{robots}: {len(errors)} robot(s) reported errors; first:\n{errors[0]}", flush=True)
    pct = (lambda q: round(float(np.percentile(latencies, q)), 2)) if latencies.size else (lambda q: float("nan"))
    missed = sum(o.missed for o in outcomes)
    timings = [t for o in outcomes for t in o.server_timings]
    row = {
        "transport": transport,
        "robots": robots,
        "rate_hz": options.rate_hz,
        "duration_s": options.duration_s,
        "calls": int(latencies.size),
        "aggregate_hz": round(latencies.size / options.duration_s, 2),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(float(latencies.max()), 2) if latencies.size else float("nan"),
        "missed": missed,
        "missed_fraction": round(missed / latencies.size, 4) if latencies.size else 1.0,
        "errors": sum(o.errors for o in outcomes),
        "stale": sum(o.stale for o in outcomes),
    }
    if timings:
        keys = sorted({k for t in timings for k in t})
        row["server_timing_p50"] = {k: round(float(np.median([t[k] for t in timings if k in t])), 3) for k in keys}
    return row


def add_ratios(rows: list[dict]) -> None:
    baseline = {r["robots"]: r["aggregate_hz"] for r in rows if r["transport"] == BASELINE}
    for row in rows:
        base = baseline.get(row["robots"])
        row["hz_vs_baseline"] = round(row["aggregate_hz"] / base, 2) if base else ""


def evaluate_goals(rows: Sequence[Mapping[str, Any]]) -> list[Goal]:
    """The issue's goals, judged on this run (our numbers through WebSocket, the robots' unchanged client)."""
    at = {(r["transport"], r["robots"]): r for r in rows}
    goals = []
    ours, base8 = at.get(("websocket", 8)), at.get((BASELINE, 8))
    if ours and base8 and base8["aggregate_hz"] > 0:
        ratio = ours["aggregate_hz"] / base8["aggregate_hz"]
        text = f"{ours['aggregate_hz']:.1f} Hz vs {base8['aggregate_hz']:.1f} Hz = {ratio:.2f}x"
        goals.append(Goal("8 robots: aggregate throughput >= 3x openpi-server", text, ratio >= 3.0))
    else:
        goals.append(Goal("8 robots: aggregate throughput >= 3x openpi-server", "not measured", None))
    for transport in ("websocket", "quic", "grpc"):
        one, eight = at.get((transport, 1)), at.get((transport, 8))
        name = f"{transport}: p99 at 8 robots <= 2x p50 at 1 robot"
        if one and eight:
            limit = 2 * one["p50_ms"]
            goals.append(Goal(name, f"{eight['p99_ms']:.1f} ms vs limit {limit:.1f} ms", eight["p99_ms"] <= limit))
        else:
            goals.append(Goal(name, "not measured", None))
    goals.append(
        overhead_goal(
            "1 robot: WebSocket p50 within +1 ms of openpi-server", at.get(("websocket", 1)), at.get((BASELINE, 1))
        )
    )
    return goals


def overhead_goal(
    name: str, ours: Mapping[str, Any] | None, base: Mapping[str, Any] | None, unmeasured: bool | None = None
) -> Goal:
    """One robot's p50 at most 1 ms over openpi-server's (``unmeasured``: the verdict when a row is missing)."""
    if not (ours and base):
        return Goal(name, "not measured", unmeasured)
    delta = ours["p50_ms"] - base["p50_ms"]
    return Goal(name, f"{ours['p50_ms']:.1f} - {base['p50_ms']:.1f} = {delta:+.1f} ms", delta <= 1.0)


def markdown(
    rows: Sequence[Mapping[str, Any]], goals: Sequence[Goal], model: ServedModel, options: FleetOptions
) -> str:
    lines = [
        f"# Fleet benchmark\n\nModel: {model.describe()}. Machine: {machine()}.",
        f"Robots call at {options.rate_hz:g} Hz for {options.duration_s:g} s per step; a call over "
        f"{1000 / options.rate_hz:.0f} ms misses its deadline.\n",
        "| transport | robots | calls | aggregate Hz | x openpi-server | p50 ms | p95 ms | p99 ms | missed | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["robots"], TRANSPORTS.index(r["transport"]))):
        lines.append(
            f"| {r['transport']} | {r['robots']} | {r['calls']} | {r['aggregate_hz']:.1f} | {r['hz_vs_baseline']} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {100 * r['missed_fraction']:.0f} % | "
            f"{r['errors']} |"
        )
    lines += ["", "| goal | measured | met |", "| --- | --- | --- |"]
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    lines += [f"| {g.name} | {g.measured} | {verdict[g.met]} |" for g in goals]
    return "\n".join(lines) + "\n"


def run_fleet(
    options: FleetOptions,
    model: ServedModel,
    results: pathlib.Path,
    triton_url: str | None = None,
    repository: RepositoryVariant | None = None,
) -> tuple[list[dict], list[Goal]]:
    """Starts the services, runs every (robot count, transport) step, writes CSV / markdown / plots."""
    results.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    total = len(options.robots) * len(options.transports)
    with fleet_services(
        model,
        options.transports,
        results,
        triton_url,
        ensemble=options.ensemble,
        repository=repository,
        fleet_batching=options.fleet_batching,
    ) as endpoints:
        step = 0
        for robots in options.robots:
            for transport in options.transports:
                step += 1
                started = time.monotonic()
                row = run_step(
                    transport, endpoints[transport], robots, options, model.config_name, endpoints.get("triton")
                )
                rows.append(row)
                print(
                    f"[fleet] {step}/{total} {transport} x{robots}: {row['aggregate_hz']:.1f} Hz, "
                    f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, missed {row['missed']}/{row['calls']}, "
                    f"errors {row['errors']} ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
    add_ratios(rows)
    goals = evaluate_goals(rows)
    with open(results / "fleet.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(FLEET_FIELDS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (results / "fleet.md").write_text(markdown(rows, goals, model, options))
    (results / "fleet_goals.json").write_text(json.dumps([dataclasses.asdict(g) for g in goals], indent=1))
    (results / "fleet.json").write_text(json.dumps(rows, indent=1))
    plots.fleet_plots(rows, options.rate_hz, results)
    return rows, goals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", default="1,2,4,8,16", help="comma-separated robot counts")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--rate", type=float, default=10.0, help="control rate of every robot (Hz)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per step")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--num-steps", type=int, default=10, help="flow-matching steps (Triton and baseline)")
    parser.add_argument("--triton-url", help="use this running Triton (its `action` must serve the same model)")
    parser.add_argument("--results", type=pathlib.Path, default=None, help="default perf/results/<timestamp>/")
    args = parser.parse_args(argv)
    transports = tuple(t for t in args.transports.split(",") if t)
    unknown = sorted(set(transports) - set(TRANSPORTS))
    if unknown:
        parser.error(f"unknown transports {unknown}; choose from {list(TRANSPORTS)}")
    options = FleetOptions(
        robots=tuple(int(n) for n in args.robots.split(",") if n),
        transports=transports,
        rate_hz=args.rate,
        duration_s=args.duration,
    )
    results = args.results or default_results_dir()
    model = prepare(args.size, args.device, args.num_steps)
    print(f"[fleet] model: {model.describe()}; results in {results}", flush=True)
    run_fleet(options, model, results, args.triton_url)
    print((results / "fleet.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
