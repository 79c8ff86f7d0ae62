"""Real-Time Chunking as a robot sees it: a simulated 50 Hz control loop against the real stack, naive
asynchronous switching against RTC, and what RTC costs per call.

    python -m perf.rtc                                   # results in perf/results/rtc-<date>
    python -m perf.rtc --ticks 200 --delays 5 --results /tmp/rtc
    python -m perf.rtc --render perf/results/rtc-20261201   # rtc.md again from rtc.json only

1. Closed loop. Starts the stack ``make serve`` runs (``perf.attack_stack``: Triton with the embedded default
   pi0.5 ALOHA model, the bridge) and drives one robot (openpi-client over WebSocket, ``action_only``) with
   :class:`openpi_triton.rtc_client.AsyncChunkExecutor` in simulated time (``perf.rtc_sim``): 50 Hz ticks, the
   next inference starts after ``--execution-horizon`` actions, its answer is used exactly ``d`` ticks after
   the observation (the injected delay). The simulated arm's joint state is the last commanded action. Every
   variant sees the same observations and noise. Per variant: |a_switch − a_before| at each chunk switch
   (max over the 14 dims; max and mean over switches), the ordinary step between two ticks of one chunk for
   scale, and jerk (third difference / Δt³, max over dims) at the switches and elsewhere.
2. Cost. The same model in-process on this machine's CPU: median milliseconds per call, plain against RTC
   (VJP), batch 1 and 8, calls interleaved so both see the same load; the ratio is the result (absolute
   times only mean something on a GPU).

The embedded default has random weights: its chunks are not a meaningful motion, but the switch jumps and the
cost of the backward pass are those of the real sampler. Writes ``rtc.json``, ``rtc.md`` (generated from the
JSON) and ``rtc.png``; ``python -m perf.doc_tables`` copies rtc.md's tables into docs/rtc.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from perf.rtc_sim import LoopResult, jerk, plan_deviations, run_control_loop, step_sizes, switch_jumps

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONTROL_PERIOD_S = 0.02  # 50 Hz
VARIANTS: dict[str, dict[str, Any] | None] = {
    "naive": None,  # asynchronous switching without rtc
    "rtc-vjp": {"mode": "vjp"},
    "rtc-identity": {"mode": "identity"},
}


def _observer(seed: int) -> Any:
    from openpi_triton.domain.embodiments import EMBODIMENTS

    cameras = EMBODIMENTS["aloha"].example(np.random.default_rng(seed), "fold the towel")

    def observation(state: np.ndarray, tick: int) -> dict[str, Any]:
        noise = np.random.default_rng(10_000 * seed + tick).standard_normal((50, 32)).astype(np.float32)
        return {**cameras, "state": state, "noise": noise, "mode": "action_only"}

    return observation


def _summary(result: LoopResult) -> dict[str, Any]:
    jumps = switch_jumps(result)
    steps = step_sizes(result.actions)
    switch_ticks = {s.tick for s in result.switches}
    ordinary = [float(v) for t, v in enumerate(steps, start=1) if t not in switch_ticks]
    jerks = jerk(result.actions, CONTROL_PERIOD_S)
    # jerk[t] spans ticks t..t+3: it includes a switch when one of t+1..t+3 is a switch tick.
    at_switch = [float(v) for t, v in enumerate(jerks) if switch_ticks & {t + 1, t + 2, t + 3}]
    elsewhere = [float(v) for t, v in enumerate(jerks) if not switch_ticks & {t + 1, t + 2, t + 3}]
    prefix = [s.rtc["prefix_max_abs_err"] for s in result.switches if s.rtc is not None]
    return {
        "switches": len(result.switches),
        "starved_ticks": result.starved_ticks,
        "jump_max": float(jumps.max()),
        "jump_mean": float(jumps.mean()),
        "plan_deviation_mean": float(plan_deviations(result).mean()),
        "step_mean": float(np.mean(ordinary)),
        "jerk_switch_max": max(at_switch),
        "jerk_switch_mean": float(np.mean(at_switch)),
        "jerk_elsewhere_mean": float(np.mean(elsewhere)),
        "prefix_max_abs_err_mean": float(np.mean(prefix)) if prefix else None,
    }


def _row(rows: list[dict[str, Any]], variant: str, delay: int) -> dict[str, Any]:
    return next(r for r in rows if r["variant"] == variant and r["delay_ticks"] == delay)


def closed_loop(port: int, api_key: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    robot = WebsocketClientPolicy(host="127.0.0.1", port=port, api_key=api_key)
    rows, traces = [], {}
    for delay in args.delays:
        for variant, options in VARIANTS.items():
            started = time.perf_counter()
            result = run_control_loop(
                robot,
                _observer(args.seed),
                np.zeros(14),
                ticks=args.ticks,
                delay_ticks=delay,
                execution_horizon=args.execution_horizon,
                rtc=options is not None,
                rtc_options=options,
            )
            row = {"delay_ticks": delay, "delay_ms": delay * CONTROL_PERIOD_S * 1000, "variant": variant}
            row.update(_summary(result))
            rows.append(row)
            traces[f"{variant}@{delay}"] = {
                "actions": result.actions[:, args.plot_dim].tolist(),
                "switch_ticks": [s.tick for s in result.switches],
            }
            print(f"[rtc] d={delay} {variant}: {row} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return rows, traces


def call_cost(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median ms per call, plain and RTC (VJP) interleaved, per batch size, in-process on this CPU."""
    from openpi_triton.native.policy import PolicyOptions, load_policy
    from openpi_triton.native.tiny import ensure_embedded_default

    default = ensure_embedded_default()
    buckets = tuple(sorted(set(args.cost_batches)))
    options = PolicyOptions(tokenizer_path=str(default.tokenizer_path), batch_buckets=buckets)
    policy = load_policy(default.config_name, default.checkpoint_dir, options)
    policy.warmup()
    rng = np.random.default_rng(args.seed)
    rows = []
    for batch in buckets:
        plain_obs = [policy.config.embodiment.example(rng, "fold the towel") for _ in range(batch)]
        prev = rng.uniform(-1, 1, size=(25, 14))
        guided_obs = [{**o, "rtc": {"prev_actions": prev, "inference_delay": 5}} for o in plain_obs]
        timings: dict[str, list[float]] = {"plain": [], "rtc": []}
        for _ in range(args.cost_iters):
            for name, batch_obs in (("plain", plain_obs), ("rtc", guided_obs)):
                start = time.perf_counter()
                policy.infer_batch(batch_obs)
                timings[name].append((time.perf_counter() - start) * 1000.0)
        plain, guided = statistics.median(timings["plain"]), statistics.median(timings["rtc"])
        rows.append({"batch": batch, "plain_ms": plain, "rtc_ms": guided, "ratio": guided / plain})
        print(f"[rtc] cost batch {batch}: {rows[-1]}", file=sys.stderr)
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    """rtc.md, from rtc.json only."""
    setup = report["setup"]
    lines = [
        "# RTC: chunk switches of a simulated 50 Hz robot, and the cost per call",
        "",
        f"Generated by `{report['command']}` on {report['date']} from `rtc.json` ({report['machine']}).",
        "",
        f"Closed loop: {setup['ticks']} ticks at 50 Hz against the real stack (embedded default {setup['model']}, "
        f"random weights), next inference after s = {setup['execution_horizon']} actions, answer used exactly d "
        "ticks after its observation (injected delay, simulated time). Jumps are max over the 14 dims of "
        "|a_switch − a_before| (a_before: the last action of the old chunk); the ordinary step is the same between "
        "two ticks of one chunk; the deviation is |a_switch − what the old chunk had planned for that tick|; jerk is "
        "the third difference / Δt³ (max over dims). The random-weight model's chunks are rough (large ordinary "
        "steps), so a switch can at best be as smooth as an ordinary tick.",
        "",
        "| d (ticks) | d (ms) | variant | switches | jump max | jump mean | ordinary step mean | "
        "deviation from old plan mean | jerk at switch max | jerk at switch mean | jerk elsewhere mean | starved |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["closed_loop"]:
        lines.append(
            f"| {r['delay_ticks']} | {r['delay_ms']:.0f} | {r['variant']} | {r['switches']} | {r['jump_max']:.3f} | "
            f"{r['jump_mean']:.3f} | {r['step_mean']:.3f} | {r['plan_deviation_mean']:.3f} | "
            f"{r['jerk_switch_max']:.3g} | {r['jerk_switch_mean']:.3g} | {r['jerk_elsewhere_mean']:.3g} | "
            f"{r['starved_ticks']} |"
        )
    lines += ["", "Jump mean and deviation mean relative to naive switching at the same delay:", ""]
    lines += ["| d (ticks) | metric | rtc-vjp / naive | rtc-identity / naive |", "|---|---|---|---|"]
    for delay, ratios in report["ratios"].items():
        for metric in ("jump_mean", "plan_deviation_mean"):
            values = ratios[metric]
            lines.append(f"| {delay} | {metric} | {values['rtc-vjp']:.3f} | {values['rtc-identity']:.3f} |")
    lines += [
        "",
        f"Cost per call in-process on this machine's CPU (median of {setup['cost_iters']} interleaved calls; "
        "CPU times, compare the ratio only):",
        "",
        "| batch | RTC (VJP) / plain |",
        "|---|---|",
    ]
    for r in report["cost"]:  # milliseconds stay in the JSON: CPU times, not what a GPU serves
        lines.append(f"| {r['batch']} | {r['ratio']:.2f} |")
    lines += ["", "![executed trajectory and switches](rtc.png)", ""]
    return "\n".join(lines)


def render(results: pathlib.Path) -> None:
    """Rewrites ``rtc.md`` from ``results/rtc.json`` (no benchmark run); ``python -m perf.doc_tables`` then copies
    its tables into the docs."""
    report = json.loads((results / "rtc.json").read_text())
    (results / "rtc.md").write_text(render_markdown(report))


def plot(report: dict[str, Any], traces: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    delay = report["setup"]["delays"][0]
    fig = plt.figure(figsize=(12, 7.5))
    top = fig.add_subplot(2, 1, 1)
    for variant in VARIANTS:
        trace = traces[f"{variant}@{delay}"]
        top.plot(trace["actions"], label=variant, linewidth=1.2)
    for tick in traces[f"naive@{delay}"]["switch_ticks"]:
        top.axvline(tick, color="grey", linewidth=0.6, linestyle=":")
    top.set_title(f"executed joint {report['setup']['plot_dim']} at 50 Hz, d = {delay} ticks (dotted: chunk switches)")
    top.set_xlabel("control tick")
    top.legend()
    rows, delays = report["closed_loop"], report["setup"]["delays"]
    width = 0.8 / len(VARIANTS)
    labels = {"jump_mean": "mean |a_switch − a_before|", "plan_deviation_mean": "mean |a_switch − old plan|"}
    for position, (metric, label) in enumerate(labels.items(), start=3):
        ax = fig.add_subplot(2, 2, position)
        for i, variant in enumerate(VARIANTS):
            values = [_row(rows, variant, d)[metric] for d in delays]
            ax.bar([x + i * width for x in range(len(delays))], values, width, label=variant)
        ax.set_xticks([x + width for x in range(len(delays))], [f"d = {d} ticks" for d in delays])
        ax.set_ylabel(f"{label} (max over dims)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=400)
    parser.add_argument("--delays", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--execution-horizon", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-dim", type=int, default=0)
    parser.add_argument("--cost-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cost-iters", type=int, default=15)
    parser.add_argument("--results", type=pathlib.Path)
    parser.add_argument("--render", type=pathlib.Path, metavar="RESULTS", help="only regenerate the markdown")
    args = parser.parse_args(argv)
    if args.render is not None:
        render(args.render)
        return 0
    today = datetime.date.today()
    results = args.results or REPO_ROOT / "perf" / "results" / f"rtc-{today:%Y%m%d}"
    results.mkdir(parents=True, exist_ok=True)

    from perf.attack_stack import cleanup_workdir, start_stack, stop_stack, wait_ready

    logs = pathlib.Path(tempfile.mkdtemp(prefix="openpi-rtc-logs-"))  # logs are not results
    stack = start_stack(logs)
    try:
        print(f"[rtc] stack ready in {wait_ready(stack, 1200):.0f} s (log {stack.log})", file=sys.stderr)
        rows, traces = closed_loop(stack.ports.ws_action, stack.api_key, args)
    finally:
        stop_stack(stack)
        cleanup_workdir(stack)
    cost = call_cost(args)
    guided = [v for v in VARIANTS if v != "naive"]
    ratios = {
        str(d): {
            metric: {v: _row(rows, v, d)[metric] / _row(rows, "naive", d)[metric] for v in guided}
            for metric in ("jump_mean", "plan_deviation_mean")
        }
        for d in args.delays
    }
    report = {
        "command": shlex.join(["python", "-m", "perf.rtc", *(argv if argv is not None else sys.argv[1:])]),
        "date": today.isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, CPU only",
        "setup": {
            "model": "pi05_aloha",
            "ticks": args.ticks,
            "delays": args.delays,
            "execution_horizon": args.execution_horizon,
            "control_period_s": CONTROL_PERIOD_S,
            "seed": args.seed,
            "plot_dim": args.plot_dim,
            "cost_iters": args.cost_iters,
        },
        "closed_loop": rows,
        "ratios": ratios,
        "cost": cost,
    }
    (results / "rtc.json").write_text(json.dumps(report, indent=1) + "\n")
    (results / "rtc.md").write_text(render_markdown(report))
    plot(report, traces, results / "rtc.png")
    print(f"[rtc] wrote {results}/rtc.json, rtc.md, rtc.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
