#!/usr/bin/env bash
# On a fresh GPU machine with this repository: everything in one go (target: under 8 minutes).
#   perf/gpu_check.sh                      # full-size random pi0.5 in bfloat16 -> perf/results/gpu-<date>/
#   perf/gpu_check.sh --quick --out DIR    # the same steps with the tiny model on CPU (what `make test` runs)
# Steps: the venv (make venv) with JAX's CUDA 12 wheels, the release QUIC sidecar (built while the runtime
# benchmark runs), then `python -m perf.gpu_check`: action chunk at batch 1/2/4/8, 20-token subtask at batch
# 1/8, the measured cost curve, the fleet benchmark at 1/8/16 robots. Results as JSON + markdown.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
quick=0
out="perf/results/gpu-$(date -u +%Y%m%d)"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
python="${PERF_PYTHON:-$repo/.venv/bin/python}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
if [ "$quick" = 1 ]; then
  exec "$python" -m perf.gpu_check --quick --out "$out"
fi
start=$(date +%s)
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
  echo "error: no NVIDIA GPU visible (nvidia-smi); use --quick to check the steps on CPU" >&2
  exit 1
fi
make venv
# Same JAX version as the pin, with the CUDA 12 plugin (pip wheels carry CUDA; no system toolkit needed).
"$python" -m pip install --quiet "jax[cuda12]==0.5.3"
cargo build --release --quiet --manifest-path flash-transport/Cargo.toml &
sidecar_build=$!
"$python" -m openpi_triton.native.tiny
wait "$sidecar_build"
"$python" -m perf.gpu_check --out "$out"
echo "gpu_check: $(($(date +%s) - start)) s in all; results in $out"
