"""Everything a GPU machine should measure, in one run (``perf/gpu_check.sh`` sets the machine up first).

    python -m perf.gpu_check --out perf/results/gpu-<date>        # full-size random pi0.5, bfloat16, GPU
    python -m perf.gpu_check --quick --out /tmp/x                 # the same steps, tiny model on CPU (CI)

1. ``perf/bench_runtime.py``: action chunk at batch 1 / 2 / 4 / 8, 20-token subtask at batch 1 / 8 (own process,
   so its device memory is free before Triton starts);
2. the measured action costs as a cost curve (``cost_curve.json``: copy it into ``openpi_triton/cost_curves/`` and
   ``make perf-capacity CURVE=<name>`` replays it on any machine);
3. the fleet benchmark with the real model at 1 / 8 / 16 robots: our stack over WebSocket and QUIC, and
   openpi-server, side by side.

Writes ``gpu_check.json`` (every number) and ``gpu_check.md`` (generated from it) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

if __package__ in (None, ""):  # `python perf/gpu_check.py`: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from perf import results_files
from perf.fleet import FleetOptions, run_fleet
from perf.served_model import prepare

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class CheckPlan:
    size: str
    device: str
    dtype: str
    action_batches: tuple[int, ...]
    subtask_batches: tuple[int, ...]
    robots: tuple[int, ...]
    transports: tuple[str, ...]
    duration_s: float
    num_steps: int
    iters: int

    @classmethod
    def full(cls) -> CheckPlan:
        return cls("full", "gpu", "bfloat16", (1, 2, 4, 8), (1, 8), (1, 8, 16), ("websocket", "quic", "openpi-server"),
                   10.0, 10, 10)  # fmt: skip

    @classmethod
    def quick(cls) -> CheckPlan:
        """The same steps, small enough for a test on CPU: tiny model, fewer sizes, a short fleet step."""
        return cls("tiny", "cpu", "float32", (1, 2), (1,), (1,), ("websocket", "openpi-server"), 1.5, 1, 2)


def bench(plan: CheckPlan, out: pathlib.Path) -> dict[str, Any]:
    path = out / "bench.json"
    command = [
        sys.executable, str(REPO / "perf" / "bench_runtime.py"), "--size", plan.size, "--dtype", plan.dtype,
        "--batch-sizes", ",".join(map(str, plan.action_batches)),
        "--subtask-batch-sizes", ",".join(map(str, plan.subtask_batches)),
        "--iters", str(plan.iters), "--json", str(path),
    ]  # fmt: skip
    env = None if plan.device == "gpu" else {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run(command, check=True, env=env, cwd=REPO)
    return json.loads(path.read_text())


def measured_curve(bench_result: Mapping[str, Any], plan: CheckPlan) -> dict[str, Any]:
    """The bench's action milliseconds as a cost curve (``openpi_triton.cost_curve``'s format)."""
    device = str(bench_result.get("device", plan.device))
    name = f"measured_{plan.size}_{plan.dtype}_{plan.device}"
    measured = {int(r["batch"]): float(r["action_ms"]) for r in bench_result["rows"]}
    curve, raised = monotone_costs(measured)
    note = (
        "; raised to the cost of a smaller batch, as a larger batch never costs less (a busy host measured less): "
        + ", ".join(f"batch {b}: {measured[b]:g} -> {curve[b]:g} ms" for b in raised)
        if raised
        else ""
    )
    return {
        "name": name,
        "description": f"{plan.size} random-weight pi0.5 action chunk, {plan.dtype}, {plan.num_steps} flow steps, "
        f"measured on {device} (median of {plan.iters} warm calls, openpi's transforms included){note}",
        "source": f"perf/gpu_check.py on {results_files.machine()}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d}",
        "ms_per_call": {str(b): ms for b, ms in curve.items()},
    }


def monotone_costs(measured: Mapping[int, float]) -> tuple[dict[int, float], list[int]]:
    """Per-call costs that never fall with the batch (a cost curve's rule): each is at least the largest cost of
    a smaller batch. A busy host can time a larger batch below a smaller one; the curve keeps the smaller one's
    cost and the batches raised are returned, for the curve's description."""
    curve: dict[int, float] = {}
    raised: list[int] = []
    highest = 0.0
    for batch in sorted(measured):
        if measured[batch] < highest:
            raised.append(batch)
        highest = max(highest, measured[batch])
        curve[batch] = highest
    return curve, raised


def render_markdown(report: Mapping[str, Any]) -> str:
    bench_rows = report["bench"]["rows"]
    lines = [
        "# GPU check" + (" (quick: tiny model on CPU, checks the steps only)" if report["quick"] else ""),
        "",
        f"Command: `{report['command']}`. Machine: {report['machine']}. Device: {report['bench']['device']}. "
        f"{report['date']}; took {report['seconds']:.0f} s.",
        "",
        f"## Runtime ({report['plan']['size']} random-weight pi0.5, {report['plan']['dtype']})",
        "",
        "| batch | compile s | action ms / call | ms / chunk | subtask ms / call (20 tokens) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in bench_rows:
        lines.append(
            f"| {r['batch']} | {r['compile_s']} | {r['action_ms']} | {r['action_ms'] / r['batch']:.1f} | "
            f"{r.get('subtask_ms', '')} |"
        )
    lines += [
        "",
        f"Peak device memory: {report['bench']['peak_memory_mb']:.0f} MiB. Cost curve written: "
        f"`{report['cost_curve']['name']}` (`cost_curve.json`).",
        "",
        f"## Fleet ({report['fleet_model']})",
        "",
        "| robots | transport | aggregate Hz | x openpi-server | p50 ms | p99 ms | missed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["fleet"]:
        lines.append(
            f"| {r['robots']} | {r['transport']} | {r['aggregate_hz']:.1f} | {r['hz_vs_baseline']} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {100 * r['missed_fraction']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def run(plan: CheckPlan, out: pathlib.Path, command: str, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[gpu-check] runtime benchmark ({plan.size}, {plan.dtype}, {plan.device})", flush=True)
    bench_result = bench(plan, out)
    curve = measured_curve(bench_result, plan)
    (out / "cost_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    model = prepare(plan.size, plan.device, plan.num_steps)
    print(f"[gpu-check] fleet: {model.describe()}", flush=True)
    options = FleetOptions(robots=plan.robots, transports=plan.transports, duration_s=plan.duration_s)
    rows, _ = run_fleet(options, model, out / "fleet")
    report = {
        **results_files.stamp(command),
        "quick": quick,
        "plan": dataclasses.asdict(plan),
        "bench": bench_result,
        "cost_curve": curve,
        "fleet_model": model.describe(),
        "fleet": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    results_files.write(out, "gpu_check", report, render_markdown(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model on CPU, few sizes (checks the steps)")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    plan = CheckPlan.quick() if args.quick else CheckPlan.full()
    command = ("python -m perf.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    report = run(plan, args.out, command, args.quick)
    print((args.out / "gpu_check.md").read_text(), flush=True)
    print(f"[gpu-check] done in {report['seconds']:.0f} s; results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
