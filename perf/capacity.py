"""Fleet capacity, side by side in one run: our stack against openpi's own server, under a GPU cost curve
(simulated) and on the real tiny model; exits non-zero when a goal is missed.

    python -m perf.capacity                            # make perf-capacity: results in perf/results/capacity-<date>/
    python -m perf.capacity --cost-curve my_gpu.json --duration 20

Phase 1, SIMULATED: both servers serve the simulated runtime (openpi's transforms on this CPU, the model call
replaced by the curve's wait), our robots through the stack as served without a planner (bridge, Triton's
dynamic batcher with the fleet scheduler, ``action``; WebSocket and QUIC), 1 / 8 / 16 robots; then 8 robots
once more through the ``combined_ensemble`` BLS (the route when a planner is configured). Triton's statistics
say which batch sizes ran. Phase 2, real tiny model on this CPU: 1 and 8 robots; the 1-robot ``server_timing`` says
where our time went. Goals (each judged on this run):

- simulated, 8 and 16 robots, WebSocket and QUIC: aggregate >= 3x openpi-server's, missed deadlines <= 1 %,
  p99 <= 2x the same transport's 1-robot p50; batches above 1 seen in Triton's statistics;
- tiny model, 8 robots, WebSocket and QUIC: aggregate >= 1.2x openpi-server's;
- tiny model, 1 robot, WebSocket: p50 at most 1 ms above openpi-server's, from calls alternating between the two
  (``perf.paired_overhead``: the host's drift cancels).

Writes ``capacity.json`` (every number) and ``capacity.md`` (generated from the JSON); the last line printed is
``capacity: <x>x openpi-server at 8 robots (cost curve <name>), overhead p50 <ms> ms``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

if __package__ in (None, ""):  # `python perf/capacity.py`: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from openpi_triton import cost_curve
from openpi_triton.scheduler import Scheduler
from perf import paired_overhead, results_files
from perf.fleet import BASELINE, FleetOptions, Goal, run_fleet
from perf.fleet_services import fleet_services
from perf.repository import RepositoryVariant
from perf.served_model import prepare

OURS = ("websocket", "quic")
VIA_BLS = "websocket (BLS)"
TRANSPORTS = (*OURS, VIA_BLS, BASELINE)
# The bridge's fleet gate lets a batch's requests go together; a short queue delay covers the time they take
# to reach Triton, so the first does not leave alone (docs/performance.md#fleet-batching).
FLEET_SCHEDULER = Scheduler(queue_delay_us=2_000)
# Under the curve our robots go through the bridge's fleet gate (docs/performance.md#fleet-batching); on the
# CPU the bridge runs as served, gate off: there a batch costs about its size, so holding requests while the
# model runs only idles it.
FLEET_GATE: dict[str, Any] = {"fleet_batching": {"enabled": True}}
# Every batch size compiled: whatever size the batcher forms is computed as it is, never padded up to a bucket
# (padding costs the rows it adds: on CPU nearly linearly, under the curve its price for the bucket).
FLEET_BUCKETS = "1,2,3,4,5,6,7,8"
# Two instances of the simulated model on its one simulated GPU (they take turns there,
# openpi_triton.simulated_device): one runs openpi's transforms for the next batch while the other computes,
# as two instances on one GPU do. The fleet gate counts the GPU once, so a fleet of one batch stays one batch.
SIMULATED_INSTANCES = 2


@dataclasses.dataclass(frozen=True)
class CapacityOptions:
    cost_curve: str = cost_curve.DEFAULT_CURVE
    rate_hz: float = 10.0
    duration_s: float = 15.0
    simulated_robots: tuple[int, ...] = (1, 8, 16)
    tiny_robots: tuple[int, ...] = (1, 8)
    tiny_num_steps: int = 10
    scheduler: Scheduler = FLEET_SCHEDULER
    batch_buckets: str = FLEET_BUCKETS
    simulated_instances: int = SIMULATED_INSTANCES
    # Pairs of 1-robot calls alternating between our stack and openpi-server (0: not measured).
    paired_calls: int = 150


def _at(rows: Sequence[Mapping[str, Any]], transport: str, robots: int) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["transport"] == transport and r["robots"] == robots), None)


def _ratio_goal(name: str, rows: Sequence[Mapping[str, Any]], transport: str, robots: int, minimum: float) -> Goal:
    ours, base = _at(rows, transport, robots), _at(rows, BASELINE, robots)
    if not ours or not base or base["aggregate_hz"] <= 0:
        return Goal(name, "not measured", False)
    ratio = ours["aggregate_hz"] / base["aggregate_hz"]
    text = f"{ours['aggregate_hz']:.1f} Hz vs {base['aggregate_hz']:.1f} Hz = {ratio:.2f}x"
    return Goal(name, text, ratio >= minimum)


def simulated_goals(rows: Sequence[Mapping[str, Any]], curve_name: str) -> list[Goal]:
    goals = []
    for robots in (8, 16):
        for transport in OURS:
            where = f"simulated ({curve_name}), {robots} robots, {transport}"
            goals.append(_ratio_goal(f"{where}: aggregate >= 3x openpi-server", rows, transport, robots, 3.0))
            row, one = _at(rows, transport, robots), _at(rows, transport, 1)
            if row is None or one is None:
                goals.append(Goal(f"{where}: missed <= 1 %", "not measured", False))
                goals.append(Goal(f"{where}: p99 <= 2x 1-robot p50", "not measured", False))
                continue
            missed = row["missed_fraction"]
            goals.append(
                Goal(f"{where}: missed <= 1 %", f"{100 * missed:.1f} %", missed <= 0.01 and row["errors"] == 0)
            )
            limit = 2 * one["p50_ms"]
            goals.append(
                Goal(
                    f"{where}: p99 <= 2x 1-robot p50",
                    f"{row['p99_ms']:.1f} ms vs {limit:.1f} ms",
                    row["p99_ms"] <= limit,
                )
            )
        row = _at(rows, "websocket", robots)
        batches = (row or {}).get("triton", {}).get("executions_by_batch", {})
        goals.append(
            Goal(
                f"simulated, {robots} robots: batches above 1 in Triton's statistics",
                ", ".join(f"{n} x batch {b}" for b, n in batches.items()) or "none",
                any(int(b) > 1 for b in batches),
            )
        )
    return goals


def tiny_goals(rows: Sequence[Mapping[str, Any]], paired: Mapping[str, Any] | None) -> list[Goal]:
    goals = [_ratio_goal(f"tiny model, 8 robots, {t}: aggregate >= 1.2x openpi-server", rows, t, 8, 1.2) for t in OURS]
    name = "tiny model, 1 robot, websocket: p50 <= openpi-server + 1 ms (paired calls)"
    if paired is None:
        goals.append(Goal(name, "not measured", False))
    else:
        text = (
            f"{paired['pairs']} pairs: {paired['overhead_p50_ms']:+.1f} ms (ours first "
            f"{paired['ours_first_p50_ms']:+.1f}, openpi-server first {paired['baseline_first_p50_ms']:+.1f}; p50 "
            f"{paired['ours_p50_ms']:.1f} vs {paired['baseline_p50_ms']:.1f} ms)"
        )
        goals.append(Goal(name, text, paired["overhead_p50_ms"] <= 1.0))
    return goals


def curve_ceiling(
    curve: cost_curve.CostCurve, rate_hz: float = 10.0, max_batch: int = 8, fleets: Sequence[int] = (8, 16)
) -> dict[str, Any]:
    """The most observations per second any server can get from one GPU under ``curve``: for each
    fleet size (n robots make batches of at most n), at batch 1, and with every call inside the control period
    (the missed-deadline goal's bound)."""
    buckets = range(1, max_batch + 1)
    best = max(buckets, key=curve.throughput_hz)
    period_ms = 1000.0 / rate_hz
    in_time = [b for b in buckets if curve.ms(b) <= period_ms]
    deadline_batch = max(in_time, default=0)
    return {
        "batch": best,
        "hz": round(curve.throughput_hz(best), 1),
        "batch1_hz": round(curve.throughput_hz(1), 1),
        "hz_by_robots": {str(n): round(max(curve.throughput_hz(b) for b in buckets if b <= n), 1) for n in fleets},
        "deadline_batch": deadline_batch,
        "deadline_hz": round(curve.throughput_hz(deadline_batch), 1) if deadline_batch else 0.0,
    }


def overhead_ms(tiny_rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The 1-robot rows' p50 difference (two windows one after the other)."""
    ours, base = _at(tiny_rows, "websocket", 1), _at(tiny_rows, BASELINE, 1)
    return round(ours["p50_ms"] - base["p50_ms"], 2) if ours and base else None


def final_line(report: Mapping[str, Any]) -> str:
    sim = report["simulated"]["rows"]
    ratios = [
        r["aggregate_hz"] / b["aggregate_hz"]
        for t in OURS
        if (r := _at(sim, t, 8)) and (b := _at(sim, BASELINE, 8)) and b["aggregate_hz"] > 0
    ]
    ratio = f"{min(ratios):.2f}" if ratios else "n/a"
    paired = report["tiny"].get("paired_overhead")
    overhead = paired["overhead_p50_ms"] if paired else report["tiny"]["overhead_p50_ms"]
    over = f"{overhead:+.1f}" if overhead is not None else "n/a"
    name = report["cost_curve"]["name"]
    return f"capacity: {ratio}x openpi-server at 8 robots (cost curve {name}), overhead p50 {over} ms"


def _fleet_table(rows: Sequence[Mapping[str, Any]], label: str) -> list[str]:
    lines = [
        f"| robots | transport | aggregate Hz | x openpi-server | p50 ms | p99 ms | missed | {label} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = {r["robots"]: r["aggregate_hz"] for r in rows if r["transport"] == BASELINE}
    for r in sorted(rows, key=lambda r: (r["robots"], TRANSPORTS.index(r["transport"]))):
        ratio = f"{r['aggregate_hz'] / base[r['robots']]:.2f}" if base.get(r["robots"]) else ""
        batches = r.get("triton", {}).get("executions_by_batch", {})
        extra = ", ".join(f"{b}: {n}" for b, n in batches.items()) if batches else ""
        lines.append(
            f"| {r['robots']} | {r['transport']} | {r['aggregate_hz']:.1f} | {ratio} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {100 * r['missed_fraction']:.1f} % | {extra} |"
        )
    return lines


def breakdown_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The 1-robot ``server_timing`` medians of our transports (where the server says the time went)."""
    timings = {t: (_at(rows, t, 1) or {}).get("server_timing_p50") for t in OURS}
    keys = sorted({k for timing in timings.values() if timing for k in timing})
    if not keys:
        return []
    lines = ["| transport | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for transport, timing in timings.items():
        if timing:
            cells = [f"{timing[k]:.2f}" if k in timing else "" for k in keys]
            lines.append(f"| {transport} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """``capacity.md``, from ``capacity.json`` alone."""
    curve, ceiling, scheduler = report["cost_curve"], report["curve_ceiling"], report["simulated"]["scheduler"]
    points = ", ".join(f"batch {b}: {ms:g} ms" for b, ms in curve["ms_per_call"].items())
    sim, tiny = report["simulated"], report["tiny"]
    verdict = {True: "yes", False: "**no**"}
    lines = [
        "# Fleet capacity",
        "",
        f"Command: `{report['command']}`. Machine: {report['machine']}. {report['date']}.",
        f"Robots call at {report['rate_hz']:g} Hz for {report['duration_s']:g} s per step; a call over "
        f"{1000 / report['rate_hz']:.0f} ms misses its deadline. The transports of one robot count run one after "
        "another.",
        "",
        f"## SIMULATED: GPU cost curve `{curve['name']}`",
        "",
        f"{sim['model']}. Curve: {points} ({curve['description']}; source: {curve['source']}). "
        f"Both servers wait the curve's time for each call; our robots go through the bridge and Triton's "
        f"dynamic batcher ({scheduler}; compiled batch sizes {report['batch_buckets']}) to `action` "
        f"({report.get('simulated_instances', 1)} instance(s) taking turns on one simulated GPU), `{VIA_BLS}` "
        "through the BLS too. The curve allows at most "
        + (
            ", ".join(f"{hz} observations/s at {n} robots" for n, hz in ceiling["hz_by_robots"].items())
            if "hz_by_robots" in ceiling
            else f"{ceiling['hz']} observations/s (batch {ceiling['batch']})"
        )
        + f" on one GPU, {ceiling['batch1_hz']} at batch 1 (openpi-server's one call at a time)"
        + (
            f"; with every call inside the {1000 / report['rate_hz']:.0f} ms period, at most batch "
            f"{ceiling['deadline_batch']}: {ceiling['deadline_hz']} observations/s for any server, against "
            f"{report['rate_hz']:g} per robot asked (the missed-deadline goal's bound)."
            if "deadline_batch" in ceiling
            else "."
        ),
        "",
        *_fleet_table(sim["rows"], "Triton executions by batch size"),
        "",
        "## Real tiny model on this CPU",
        "",
        f"{tiny['model']}; Triton's dynamic batcher as served ({tiny['scheduler']}), compiled batch sizes "
        f"{report['batch_buckets']}.",
        "",
        *_fleet_table(tiny["rows"], "Triton executions by batch size"),
        "",
    ]
    breakdown = breakdown_table(tiny["rows"])
    if breakdown:
        lines += ["1 robot, median `server_timing` (ms):", "", *breakdown, ""]
    paired = tiny.get("paired_overhead")
    if paired:
        lines += [
            f"1 robot, paired: {paired['pairs']} calls to each server, alternating (`perf/paired_overhead.py`): ours "
            f"p50 {paired['ours_p50_ms']:.1f} ms, openpi-server {paired['baseline_p50_ms']:.1f} ms; the pairs' "
            f"median difference {paired['ours_first_p50_ms']:+.2f} ms with ours first, "
            f"{paired['baseline_first_p50_ms']:+.2f} ms with openpi-server first: overhead "
            f"{paired['overhead_p50_ms']:+.2f} ms.",
            "",
        ]
    lines += ["## Goals", "", "| goal | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {g['name']} | {g['measured']} | {verdict[g['met']]} |" for g in report["goals"]]
    lines += ["", f"`{report['final_line']}`"]
    return "\n".join(lines) + "\n"


def run(options: CapacityOptions, results: pathlib.Path, command: str) -> dict[str, Any]:
    curve = cost_curve.load(options.cost_curve)
    tiny_model = prepare("tiny", "cpu", options.tiny_num_steps)
    simulated_model = dataclasses.replace(tiny_model, cost_curve=options.cost_curve)
    work = pathlib.Path(tempfile.mkdtemp(prefix="perf-capacity-"))
    print(f"[capacity] logs and per-phase fleet files in {work}", flush=True)
    timing = dict(rate_hz=options.rate_hz, duration_s=options.duration_s)
    fleet = FleetOptions(robots=options.simulated_robots, transports=(*OURS, BASELINE), **timing, **FLEET_GATE)
    scheduled = RepositoryVariant(
        instances=options.simulated_instances,
        parameters={**simulated_model.parameters(), "batch_buckets": options.batch_buckets},
        scheduler=options.scheduler,
    )
    sim_rows, _ = run_fleet(fleet, simulated_model, work / "simulated", repository=scheduled)
    if 8 in options.simulated_robots:
        bls = FleetOptions(robots=(8,), transports=("websocket",), ensemble=True, **timing, **FLEET_GATE)
        bls_rows, _ = run_fleet(bls, simulated_model, work / "simulated-bls", repository=scheduled)
        sim_rows += [{**r, "transport": VIA_BLS} for r in bls_rows]
    tiny = FleetOptions(robots=options.tiny_robots, transports=(*OURS, BASELINE), **timing)
    tiny_variant = RepositoryVariant(parameters={**tiny_model.parameters(), "batch_buckets": options.batch_buckets})
    tiny_rows, _ = run_fleet(tiny, tiny_model, work / "tiny", repository=tiny_variant)
    paired = None
    if options.paired_calls and 1 in options.tiny_robots:
        (work / "tiny-paired").mkdir()
        transports = ("websocket", BASELINE)
        with fleet_services(tiny_model, transports, work / "tiny-paired", repository=tiny_variant) as endpoints:
            print(f"[capacity] 1 robot, {options.paired_calls} calls alternating between the two servers", flush=True)
            measured = paired_overhead.measure(
                endpoints["websocket"], endpoints[BASELINE], tiny_model.config_name, options.paired_calls
            )
        paired = measured.as_dict()
    goals = simulated_goals(sim_rows, curve.name) + tiny_goals(tiny_rows, paired)
    report: dict[str, Any] = {
        **results_files.stamp(command),
        "rate_hz": options.rate_hz,
        "duration_s": options.duration_s,
        "cost_curve": curve.as_dict(),
        "curve_ceiling": curve_ceiling(curve, options.rate_hz, 8, [n for n in options.simulated_robots if n > 1]),
        "batch_buckets": options.batch_buckets,
        "simulated_instances": options.simulated_instances,
        "simulated": {
            "model": simulated_model.describe(),
            "scheduler": f"{options.scheduler.label()}, fleet gate",
            "rows": sim_rows,
        },
        "tiny": {
            "model": tiny_model.describe(),
            "scheduler": f"{Scheduler().label()}, fleet gate off",
            "rows": tiny_rows,
            "overhead_p50_ms": overhead_ms(tiny_rows),
            "paired_overhead": paired,
        },
        "goals": [dataclasses.asdict(g) for g in goals],
    }
    report["final_line"] = final_line(report)
    results_files.write(results, "capacity", report, render_markdown(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cost-curve", default=cost_curve.DEFAULT_CURVE, help="name in openpi_triton/cost_curves/ or .json"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per step")
    parser.add_argument("--rate", type=float, default=10.0, help="control rate of every robot (Hz)")
    parser.add_argument("--results", type=pathlib.Path, help="default perf/results/capacity-<date>/")
    parser.add_argument("--render", type=pathlib.Path, help="only write capacity.md again from this capacity.json")
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_name("capacity.md").write_text(render_markdown(json.loads(args.render.read_text())))
        return 0
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    results = args.results or pathlib.Path(__file__).resolve().parent / "results" / f"capacity-{stamp}"
    options = CapacityOptions(cost_curve=args.cost_curve, duration_s=args.duration, rate_hz=args.rate)
    command = "python -m perf.capacity " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run(options, results, command.strip())
    print((results / "capacity.md").read_text(), flush=True)
    missed = [g["name"] for g in report["goals"] if not g["met"]]
    if missed:
        print(f"[capacity] {len(missed)} goal(s) missed: {missed}", flush=True)
    print(report["final_line"], flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
