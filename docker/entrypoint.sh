#!/usr/bin/env bash
# openpi-triton container entrypoint: what `make serve` runs (python -m openpi_triton.stack), with the
# container's own tritonserver.
#
#   entrypoint.sh [all]        tritonserver + bridge + one QUIC sidecar per slot (default)
#   entrypoint.sh triton       tritonserver alone, reachable from other hosts (scale-out pods)
#   entrypoint.sh bridge       bridge + QUIC sidecars in front of remote Triton servers
#                              (OPENPI_TRITON__URLS='["triton-a:8001","triton-b:8001"]')
#   entrypoint.sh healthcheck  exit 0 when this container's role serves now (Docker HEALTHCHECK)
#   entrypoint.sh CMD ...      anything else runs as given (e.g. `tritonserver --help`, `bash`)
#
# The role may also come from OPENPI_ROLE. Environment (defaults in brackets):
#   MODEL_REPOSITORY [/models]
#   TRITON_MODEL_CONTROL_MODE [poll]  poll: an edited config.pbtxt reloads that model;
#                                     explicit: models load at start (TRITON_LOAD_MODELS [*]) and on
#                                     POST /models/<name>/reload (bridge admin API)
#   TRITON_REPOSITORY_POLL_SECS [15]
#   TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT
#                                     [8100/8101/8102 in role all, 8000/8001/8002 in role triton]
#   TRITON_ADDRESS                    [127.0.0.1 in role all, 0.0.0.0 in role triton]
#   TRITON_EXTRA_ARGS                 more tritonserver flags, split on spaces
#   TRITON_READY_TIMEOUT [1800]       seconds for every model to load and warm up
#   TRITON_BACKOFF_RESET_SECS [120]   a tritonserver that ran this long restarts after 1 s again
#   BRIDGE_CONFIG                     bridge JSON file [both slots]; OPENPI_* variables override it
#   STACK_READY_FILE                  written once every process of the role serves, removed on exit
#
# Supervision is the orchestrator's (openpi_triton/orchestrator.py): tritonserver is restarted in place with
# backoff (1 s doubling to 30 s), stale Python-backend regions removed from /dev/shm before each start, the stub
# watchdog following each new server. When any other process exits, the others are stopped and the container
# exits non-zero, so the restart policy brings the whole stack back (a half-running stack would look healthy
# to robots on the surviving protocol). This script stays the parent: it forwards SIGTERM/SIGINT and reaps.
set -euo pipefail

ROLE="${OPENPI_ROLE:-all}"
if [[ $# -gt 0 ]]; then
  case "$1" in
    all | triton | bridge | healthcheck)
      ROLE="$1"
      shift
      ;;
    *) exec "$@" ;;
  esac
fi

# The health check runs beside the container's main process: it checks that process's role.
serving_role="$ROLE"
if [[ "$ROLE" == "healthcheck" ]]; then
  serving_role="${OPENPI_ROLE:-all}"
fi
case "$serving_role" in
  triton)
    roles=(triton)
    default_ports=(8000 8001 8002)
    default_address="0.0.0.0"
    ;;
  bridge)
    roles=(bridge sidecars)
    default_ports=(8100 8101 8102)
    default_address="127.0.0.1"
    ;;
  *)
    roles=(all)
    # The bridge owns 8000 (action), 8001 (admin) and 8002 (planner) inside the container.
    default_ports=(8100 8101 8102)
    default_address="127.0.0.1"
    ;;
esac
TRITON_MODEL_CONTROL_MODE="${TRITON_MODEL_CONTROL_MODE:-poll}"
case "$TRITON_MODEL_CONTROL_MODE" in
  poll | explicit | none) ;;
  *)
    printf '[entrypoint] TRITON_MODEL_CONTROL_MODE must be poll, explicit or none, got %s\n' \
      "'${TRITON_MODEL_CONTROL_MODE}'" >&2
    exit 2
    ;;
esac
# Inside a container the admin API must listen on the container's interface to be published at all;
# compose publishes it on the host's 127.0.0.1 only.
export OPENPI_ADMIN__HOST="${OPENPI_ADMIN__HOST:-0.0.0.0}"

args=(
  --role "${roles[@]}"
  --model-repository "${MODEL_REPOSITORY:-/models}"
  --http-port "${TRITON_HTTP_PORT:-${default_ports[0]}}"
  --grpc-port "${TRITON_GRPC_PORT:-${default_ports[1]}}"
  --metrics-port "${TRITON_METRICS_PORT:-${default_ports[2]}}"
  --tritonserver tritonserver
  --triton-address "${TRITON_ADDRESS:-$default_address}"
  --model-control-mode "$TRITON_MODEL_CONTROL_MODE"
  --poll-seconds "${TRITON_REPOSITORY_POLL_SECS:-15}"
  --load-model "${TRITON_LOAD_MODELS:-*}"
  --wait-for-model '*' # whatever the repository holds: ready once each loaded model is
  --triton-ready-timeout "${TRITON_READY_TIMEOUT:-1800}"
  --restart triton
  --backoff-reset-s "${TRITON_BACKOFF_RESET_SECS:-120}"
)
if [[ -n "${TRITON_EXTRA_ARGS:-}" ]]; then
  read -r -a extra <<<"$TRITON_EXTRA_ARGS"
  for flag in "${extra[@]}"; do
    args+=("--triton-arg=${flag}")
  done
fi
if [[ -n "${BRIDGE_CONFIG:-}" ]]; then
  args+=(--bridge-config "$BRIDGE_CONFIG")
fi
if [[ -n "${STACK_READY_FILE:-}" ]]; then
  args+=(--ready-file "$STACK_READY_FILE")
fi

if [[ "$ROLE" == "healthcheck" ]]; then
  exec python -m openpi_triton.stack "${args[@]}" --healthcheck
fi

python -m openpi_triton.stack "${args[@]}" &
stack=$!
# shellcheck disable=SC2329 # called through the trap below, which shellcheck does not follow
forward() { kill -TERM "$stack" 2>/dev/null || true; }
trap forward TERM INT
status=0
wait "$stack" || status=$?
while kill -0 "$stack" 2>/dev/null; do # a signal interrupted the wait: the stack is still stopping
  status=0
  wait "$stack" || status=$?
done
exit "$status"
