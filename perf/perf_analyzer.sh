#!/usr/bin/env bash
# perf_analyzer (from the tritonclient 2.51.0 wheel) with its libraries found; arguments pass through.
#   perf/perf_analyzer.sh -m action -u 127.0.0.1:8101 -i grpc --input-data perf/results/x/action.json
# Needs Debian's libb64-0d (apt-get install libb64-0d) and the venv (make venv).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PERF_PYTHON:-$repo/.venv/bin/python}"
if [ ! -x "$python" ]; then
  echo "error: $python not found; run 'make venv' first (or set PERF_PYTHON)" >&2
  exit 1
fi
# The caller's working directory stays (relative --input-data / -f paths); the repo goes on PYTHONPATH.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m perf.perf_analyzer "$@"
