"""Benchmark of the native runtime: compile time, warm ms per action chunk and per 20-token subtask, peak memory.

    python perf/bench_runtime.py --size tiny                       # the embedded default architecture
    python perf/bench_runtime.py --size full --dtype bfloat16      # gemma_2b + gemma_300m + So400m/14, random
    python perf/bench_runtime.py --checkpoint DIR --config pi05_aloha --tokenizer PATH

For each batch size it prints the compile (warm-up) seconds, the median warm wall time of one
``infer_batch`` call (all of openpi's input/output transforms included) and of one 20-step planner call
(early exit off, so every call decodes all tokens), and the batch-8 / batch-1 cost ratio per call.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from openpi_triton.domain.configs import get_policy_config
from openpi_triton.native import checkpoint, random_init, tiny, tokenizer, variants
from openpi_triton.native.planner import PlannerOptions, SubtaskPlanner
from openpi_triton.native.policy import NativePolicy, PolicyOptions

SIZES = {
    "tiny": dict(paligemma="dummy", action_expert="dummy", siglip=tiny.TINY_SIGLIP, vocab_size=tiny.VOCAB_SIZE),
    "full": dict(paligemma="gemma_2b", action_expert="gemma_300m", siglip="So400m/14"),
}


def _peak_memory_mb(device: jax.Device) -> float:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed(fn: Any, iters: int) -> float:
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), help="random weights of a named size")
    parser.add_argument("--checkpoint", type=pathlib.Path, help="an openpi checkpoint directory instead")
    parser.add_argument("--config", default="pi05_aloha", help="openpi config name (default pi05_aloha)")
    parser.add_argument("--tokenizer", help="SentencePiece model (default: the embedded default's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--subtask-batch-sizes", help="those of --batch-sizes that also time a subtask (default: all)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-planner", action="store_true")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    parser.add_argument("--results", type=pathlib.Path, help="also write bench.json and bench.md into this folder")
    args = parser.parse_args(argv)
    if bool(args.size) == bool(args.checkpoint):
        parser.error("give exactly one of --size or --checkpoint")

    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    subtask_sizes = tuple(int(b) for b in (args.subtask_batch_sizes or args.batch_sizes).split(","))
    default = tiny.ensure_embedded_default()
    sp = tokenizer.load_sentencepiece(args.tokenizer or default.tokenizer_path)
    config = get_policy_config(args.config)
    dtype = args.dtype
    print(f"[bench] device {jax.devices()[0]}, dtype {dtype}, batch sizes {batch_sizes}", flush=True)
    start = time.perf_counter()
    if args.checkpoint:
        params = checkpoint.load_params(args.checkpoint, dtype)
        norm_stats = checkpoint.load_norm_stats(args.checkpoint, config.asset_id)
    else:
        spec = variants.named_spec(**SIZES[args.size], pi05=config.pi05)
        params = random_init.random_params(spec, seed=0, dtype=jax.numpy.dtype(dtype))
        norm_stats = checkpoint.load_norm_stats(default.checkpoint_dir, "trossen")
    print(f"[bench] weights ready in {time.perf_counter() - start:.1f} s", flush=True)
    policy = NativePolicy(config, params, norm_stats, sp, PolicyOptions(dtype=dtype, batch_buckets=batch_sizes))
    print(f"[bench] {policy.spec.describe()}", flush=True)
    compile_s = policy.warmup()
    planner = None
    planner_compile: dict[int, float] = {}
    if not args.no_planner:
        planner = SubtaskPlanner(params, sp, PlannerOptions(dtype=dtype, batch_buckets=subtask_sizes))
        planner_compile = planner.warmup(early_exit=False)
    del params

    rng = np.random.default_rng(0)
    observations = [
        config.embodiment.example(rng, "pick up the red cube and put it in the bowl")
        for _ in range(max(batch_sizes + subtask_sizes))
    ]
    rows = []
    for b in batch_sizes:
        row: dict[str, Any] = {"batch": b, "compile_s": round(compile_s[b], 2)}
        row["action_ms"] = round(_timed(lambda b=b: policy.infer_batch(observations[:b]), args.iters), 2)
        if planner is not None and b in subtask_sizes:
            prepared = [planner.prepare_observation(o) for o in observations[:b]]
            row["planner_compile_s"] = round(planner_compile[b], 2)
            row["subtask_ms"] = round(
                _timed(lambda p=prepared: planner.generate_batch(p, early_exit=False), args.iters), 2
            )
        rows.append(row)
        print(f"[bench] {json.dumps(row)}", flush=True)
    peak = _peak_memory_mb(policy.device)
    by_batch = {r["batch"]: r for r in rows}
    print(f"\n{'batch':>5} {'compile s':>10} {'action ms':>10} {'ms/chunk':>9} {'subtask ms':>11}")
    for r in rows:
        print(
            f"{r['batch']:>5} {r['compile_s']:>10} {r['action_ms']:>10} {r['action_ms'] / r['batch']:>9.2f} "
            f"{r.get('subtask_ms', '-'):>11}"
        )
    summary: dict[str, Any] = {
        "device": str(policy.device),
        "dtype": dtype,
        "peak_memory_mb": round(peak, 1),
        "rows": rows,
    }
    if 1 in by_batch and 8 in by_batch:
        summary["batch8_over_batch1"] = round(by_batch[8]["action_ms"] / by_batch[1]["action_ms"], 2)
        print(f"batch 8 / batch 1 cost per call: {summary['batch8_over_batch1']}")
    print(f"peak memory: {peak:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.results:
        write_results(args.results, summary, args, argv)
    return 0


def write_results(results: pathlib.Path, summary: dict[str, Any], args: argparse.Namespace, argv: Any) -> None:
    from perf import results_files

    command = "python perf/bench_runtime.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {**results_files.stamp(command), "iters": args.iters, **summary}
    lines = [
        "# Runtime benchmark",
        "",
        f"Command: `{summary['command']}`. Machine: {summary['machine']}, device {summary['device']}, "
        f"{summary['dtype']}. {summary['date']}. Medians of {args.iters} warm calls; peak memory "
        f"{summary['peak_memory_mb']:.0f} MiB.",
        "",
        "| batch | compile s | action ms / call | subtask ms / call |",
        "| --- | --- | --- | --- |",
        *(
            f"| {r['batch']} | {r['compile_s']} | {r['action_ms']:.0f} | {r.get('subtask_ms', 0):.0f} |"
            for r in summary["rows"]
        ),
    ]
    results_files.write(results, "bench", summary, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
