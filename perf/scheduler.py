"""The robot scheduler measured on a cost curve: Triton's queue delay, preferred batch sizes and the stale
deadline, alone and behind the bridge's fleet gate, side by side in one run (SIMULATED GPU cost curve, our
stack over WebSocket, robots at 10 Hz).

    python -m perf.scheduler                     # make perf-scheduler: perf/results/scheduler-<date>/
    python -m perf.scheduler --cost-curve my_gpu.json --robots 8,16 --duration 15
    python -m perf.scheduler --bls 2,8 --robots 8    # through the combined_ensemble BLS, by its instance count

Each variant is a fresh Triton whose ``action`` model runs the simulated runtime with that dynamic batcher
(see :mod:`openpi_triton.scheduler`). Writes ``scheduler.json`` and ``scheduler.md`` (generated from the JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import pathlib
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

if __package__ in (None, ""):  # `python perf/scheduler.py`: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from openpi_triton import cost_curve
from openpi_triton.domain.batching import DEFAULT_BATCH_BUCKETS
from openpi_triton.scheduler import Scheduler
from perf import results_files
from perf.fleet import FleetOptions, run_fleet
from perf.repository import RepositoryVariant
from perf.served_model import prepare

GATE_OFF = {"enabled": False}
GATE_ON = {"enabled": True}


def variants(period_us: int) -> list[tuple[str, Scheduler, dict[str, Any]]]:
    """(label, Triton's dynamic batcher, the bridge's ``triton.fleet_batching``): Triton's batcher alone, then
    with the bridge's fleet gate in front, each with and without the stale deadline."""
    alone = [
        Scheduler(queue_delay_us=0),
        Scheduler(queue_delay_us=10_000),
        Scheduler.for_buckets(DEFAULT_BATCH_BUCKETS, queue_delay_us=10_000),
        Scheduler(queue_delay_us=10_000, stale_after_us=period_us),
    ]
    gated = [Scheduler(queue_delay_us=2_000), Scheduler(queue_delay_us=2_000, stale_after_us=period_us)]
    return [(f"{s.label()}, Triton alone", s, GATE_OFF) for s in alone] + [
        (f"{s.label()}, fleet gate", s, GATE_ON) for s in gated
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    route = (
        "bridge -> the `combined_ensemble` BLS -> Triton -> simulated `action`"
        if report.get("bls")
        else ("bridge -> Triton -> simulated `action`")
    )
    lines = [
        f"# Robot scheduler (SIMULATED: GPU cost curve `{report['cost_curve']['name']}`)",
        "",
        f"Command: `{report['command']}`. Machine: {report['machine']}. {report['date']}. Our stack over WebSocket "
        f"({route}), robots at {report['rate_hz']:g} Hz for {report['duration_s']:g} s "
        "per step; `stale` = observations the queue deadline answered instead of computing them late.",
        "",
        "| scheduler | robots | answered Hz | p50 ms | p99 ms | missed | stale | Triton executions by batch size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in report["variants"]:
        for r in v["rows"]:
            batches = ", ".join(f"{b}: {n}" for b, n in r.get("triton", {}).get("executions_by_batch", {}).items())
            sent = r["calls"] + r["stale"]
            stale = f"{100 * r['stale'] / sent:.0f} %" if sent else "0 %"
            lines.append(
                f"| {v['scheduler']} | {r['robots']} | {r['aggregate_hz']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                f"| {100 * r['missed_fraction']:.1f} % | {stale} | {batches} |"
            )
    return "\n".join(lines) + "\n"


def run(
    curve_name: str,
    robots: Sequence[int],
    rate_hz: float,
    duration_s: float,
    results: pathlib.Path,
    command: str,
    bls_instances: Sequence[int] = (),
) -> dict[str, Any]:
    """The scheduler variants; with ``bls_instances``, the fleet scheduler through the BLS at each instance count."""
    curve = cost_curve.load(curve_name)
    model = dataclasses.replace(prepare("tiny", "cpu"), cost_curve=curve_name)
    work = pathlib.Path(tempfile.mkdtemp(prefix="perf-scheduler-"))
    options = FleetOptions(
        robots=tuple(robots), transports=("websocket",), rate_hz=rate_hz, duration_s=duration_s,
        ensemble=bool(bls_instances),
    )  # fmt: skip
    if bls_instances:
        fleet = Scheduler(queue_delay_us=2_000)
        cases = [(f"{n} BLS instances, {fleet.label()}, fleet gate", fleet, GATE_ON, n) for n in bls_instances]
    else:
        cases = [(label, s, gate, None) for label, s, gate in variants(int(1e6 / rate_hz))]
    measured = []
    for index, (label, scheduler, gate, instances) in enumerate(cases):
        variant = RepositoryVariant(parameters=model.parameters(), scheduler=scheduler, bls_instances=instances)
        gated = dataclasses.replace(options, fleet_batching=gate)
        rows, _ = run_fleet(gated, model, work / str(index), repository=variant)
        measured.append({"scheduler": label, "fleet_batching": gate, "rows": rows})
    report = {
        **results_files.stamp(command),
        "rate_hz": rate_hz,
        "duration_s": duration_s,
        "cost_curve": curve.as_dict(),
        "model": model.describe(),
        "bls": bool(bls_instances),
        "variants": measured,
    }
    results_files.write(results, "bls" if bls_instances else "scheduler", report, render_markdown(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cost-curve", default=cost_curve.DEFAULT_CURVE)
    parser.add_argument("--robots", default="8,16")
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--bls", default="", help="BLS instance counts to compare (through the ensemble)")
    parser.add_argument("--results", type=pathlib.Path)
    args = parser.parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    name = "bls" if args.bls else "scheduler"
    results = args.results or pathlib.Path(__file__).resolve().parent / "results" / f"{name}-{stamp}"
    robots = [int(n) for n in args.robots.split(",") if n]
    command = ("python -m perf.scheduler " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    bls = [int(n) for n in args.bls.split(",") if n]
    report = run(args.cost_curve, robots, args.rate, args.duration, results, command, bls)
    print(render_markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
