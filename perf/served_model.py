"""The model a benchmark serves, identical for Triton and for the openpi-server baseline.

- ``tiny``: the embedded default (tiny random-weight pi0.5 ALOHA, CPU-friendly).
- ``full``: a full-size random-weight pi0.5 (gemma_2b + gemma_300m + So400m/14), written once as an openpi-layout
  checkpoint under ``$OPENPI_TRITON_HOME/perf-full-<dtype>`` (about 6.6 GB in bfloat16), meant for a GPU.
- with ``cost_curve``: the simulated runtime (the tiny model's transforms, a GPU cost curve's wait instead of the
  model), on both servers.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys
import time

from openpi_triton.native import tiny

FULL_SIZE = dict(paligemma="gemma_2b", action_expert="gemma_300m", siglip="So400m/14")
_MARKER = "perf_full.json"


@dataclasses.dataclass(frozen=True)
class ServedModel:
    size: str
    config_name: str
    checkpoint_dir: pathlib.Path
    tokenizer_path: pathlib.Path
    dtype: str
    gpu: bool
    num_steps: int = 10
    cost_curve: str = ""  # non-empty: runtime 'simulated' with this curve

    def parameters(self) -> dict[str, str]:
        """config.pbtxt parameters for the action and planner models."""
        params = {
            "model_config_name": self.config_name,
            "checkpoint_dir": str(self.checkpoint_dir),
            "tokenizer_path": str(self.tokenizer_path),
            "dtype": self.dtype,
            "num_steps": str(self.num_steps),
        }
        if self.cost_curve:
            params.update(runtime="simulated", cost_curve=self.cost_curve)
        return params

    def describe(self) -> str:
        if self.cost_curve:
            return f"SIMULATED {self.config_name}: GPU cost curve {self.cost_curve!r} (openpi's transforms on CPU)"
        device = "GPU" if self.gpu else "CPU"
        return f"{self.size} random-weight {self.config_name}, {self.dtype}, {self.num_steps} flow steps, {device}"

    def baseline_args(self) -> list[str]:
        """``perf.baseline_server`` arguments serving this same model behind openpi's server."""
        args = [
            "--config", self.config_name, "--checkpoint", str(self.checkpoint_dir),
            "--tokenizer", str(self.tokenizer_path), "--dtype", self.dtype, "--num-steps", str(self.num_steps),
        ]  # fmt: skip
        return args + (["--cost-curve", self.cost_curve] if self.cost_curve else [])


def _write_full_checkpoint(target: pathlib.Path, dtype: str, source: tiny.EmbeddedDefault) -> None:
    import jax
    import orbax.checkpoint as ocp

    from openpi_triton.native import random_init, variants

    print(f"[perf] writing a full-size random pi0.5 checkpoint ({dtype}) to {target} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    spec = variants.named_spec(**FULL_SIZE, pi05=True)
    params = random_init.to_numpy(random_init.random_params(spec, seed=0, dtype=jax.numpy.dtype(dtype)))
    ocp.PyTreeCheckpointer().save((staging / "params").resolve(), {"params": params})
    # Norm statistics only shape the numbers, not the cost: reuse the embedded default's.
    shutil.copytree(source.checkpoint_dir / "assets", staging / "assets")
    (staging / _MARKER).write_text(json.dumps({"spec": FULL_SIZE, "dtype": dtype}))
    staging.rename(target)
    print(f"[perf] full-size checkpoint written in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def gpu_available() -> bool:
    try:
        import jax

        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def prepare(
    size: str,
    device: str = "auto",
    num_steps: int = 10,
    default: tiny.EmbeddedDefault | None = None,
) -> ServedModel:
    """Builds (once) and describes the model of ``size`` (``tiny`` | ``full``) on ``device`` (auto | cpu | gpu)."""
    default = default or tiny.ensure_embedded_default()
    gpu = gpu_available() if device == "auto" else device == "gpu"
    dtype = "bfloat16" if gpu else "float32"
    if size == "tiny":
        checkpoint_dir = default.checkpoint_dir
    elif size == "full":
        checkpoint_dir = default.root.parent / f"perf-full-{dtype}"
        if not (checkpoint_dir / _MARKER).exists():
            _write_full_checkpoint(checkpoint_dir, dtype, default)
    else:
        raise ValueError(f"size: expected 'tiny' or 'full', got {size!r}")
    # The tiny tokenizer's ids are a subset of any vocabulary, so it drives the full-size model too.
    return ServedModel(size, default.config_name, checkpoint_dir, default.tokenizer_path, dtype, gpu, num_steps)
