"""A model repository for one deployment: ``model_repository/`` copied with the served model, dtype, instances
and devices written into its config files (the Helm chart's configure-models init container runs this).

    python -m openpi_triton.triton.configure_repository --source /models --target /repository \\
        --config-name pi05_droid --checkpoint-dir /cache/openpi-triton/checkpoints/pi05_droid \\
        --dtype bfloat16 --instances 2 --gpus 1

Only the action model names the served model (config name, checkpoint, dtype): the planner and
combined_ensemble inherit them at load. Instances and devices apply to the two models that run the policy.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

from openpi_triton.triton.config_text import set_instance_group, set_parameter

# Models that run the policy runtime: their instances are the unit that fills a GPU; the BLS only forwards.
RUNTIME_MODELS = ("action", "planner")
PLANNER_MODELS = ("planner", "combined_ensemble")
DTYPES = ("bfloat16", "float32")


def configure(
    source: pathlib.Path,
    target: pathlib.Path,
    *,
    config_name: str,
    checkpoint_dir: str,
    dtype: str,
    instances: int,
    gpus: int,
    batch_buckets: str,
    planner: bool,
) -> list[str]:
    """Writes ``target`` (replacing what was there) and returns the models it holds."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    if instances < 1:
        raise ValueError(f"--instances: expected at least 1 instance per model, got {instances}")
    if gpus < 0:
        raise ValueError(f"--gpus: expected 0 (CPU) or more GPUs, got {gpus}")
    models = [m for m in ("action", *PLANNER_MODELS) if planner or m not in PLANNER_MODELS]
    missing = [m for m in models if not (source / m / "config.pbtxt").is_file()]
    if missing:
        raise FileNotFoundError(f"--source {str(source)!r} has no config.pbtxt for {missing}")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for model in models:
        shutil.copytree(source / model, target / model, ignore=shutil.ignore_patterns("__pycache__"))
        config = target / model / "config.pbtxt"
        text = config.read_text()
        if model == "action":
            text = set_parameter(text, "model_config_name", config_name)
            text = set_parameter(text, "checkpoint_dir", checkpoint_dir)
            text = set_parameter(text, "dtype", dtype)
        if model in RUNTIME_MODELS:
            text = set_instance_group(text, instances, gpus)
            text = set_parameter(text, "batch_buckets", batch_buckets)
        config.write_text(text)
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=pathlib.Path, required=True, help="model repository to copy")
    parser.add_argument("--target", type=pathlib.Path, required=True, help="folder to write (replaced)")
    parser.add_argument("--config-name", required=True, help="openpi config, e.g. pi05_droid")
    parser.add_argument("--checkpoint-dir", default="", help="params/ + assets/ folder; empty: embedded default")
    parser.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)}")
    parser.add_argument("--instances", type=int, default=1, help="instances of action and of planner")
    parser.add_argument("--gpus", type=int, default=0, help="0: CPU instances; N: instances on GPUs 0..N-1")
    parser.add_argument("--batch-buckets", default="1,2,4,8", help="batch sizes compiled and warmed at load")
    parser.add_argument("--no-planner", dest="planner", action="store_false", help="action model only")
    args = parser.parse_args(argv)
    try:
        models = configure(**vars(args))  # the flags are configure's parameters
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"configure_repository: {exc}", file=sys.stderr)
        return 2
    print(f"configure_repository: wrote {', '.join(models)} into {args.target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
