#!/usr/bin/env bash
# openpi-triton container entrypoint: what `make serve` runs, with the container's own tritonserver.
#
#   entrypoint.sh [all]        tritonserver + bridge + one QUIC sidecar per slot (default)
#   entrypoint.sh triton       tritonserver alone, reachable from other hosts (scale-out pods)
#   entrypoint.sh bridge       bridge + QUIC sidecars in front of remote Triton servers
#                              (OPENPI_TRITON__URLS='["triton-a:8001","triton-b:8001"]')
#   entrypoint.sh healthcheck  exit 0 when this container's role is ready (Docker HEALTHCHECK)
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
#   BRIDGE_CONFIG                     bridge JSON file [both slots]; OPENPI_* variables override it
#
# Every child runs in the background; SIGTERM/SIGINT are forwarded to all of them. tritonserver is
# supervised in place: when it exits it is started again after a backoff (1 s doubling to 30 s; one that ran
# TRITON_BACKOFF_RESET_SECS [120] starts over), stale Python-backend regions are removed from /dev/shm before
# each start, and the stub watchdog follows each new pid; the bridge reconnects to it by itself. When any
# other child exits, the others are stopped and the container exits non-zero, so the restart policy brings the
# whole stack back (a half-running stack would look healthy to robots on the surviving protocol).
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
if [[ "$serving_role" == "triton" ]]; then
  default_ports=(8000 8001 8002)
  default_address="0.0.0.0"
else
  # The bridge owns 8000 (action), 8001 (admin) and 8002 (planner) inside the container.
  default_ports=(8100 8101 8102)
  default_address="127.0.0.1"
fi
MODEL_REPOSITORY="${MODEL_REPOSITORY:-/models}"
TRITON_MODEL_CONTROL_MODE="${TRITON_MODEL_CONTROL_MODE:-poll}"
TRITON_REPOSITORY_POLL_SECS="${TRITON_REPOSITORY_POLL_SECS:-15}"
TRITON_LOAD_MODELS="${TRITON_LOAD_MODELS:-*}"
TRITON_HTTP_PORT="${TRITON_HTTP_PORT:-${default_ports[0]}}"
TRITON_GRPC_PORT="${TRITON_GRPC_PORT:-${default_ports[1]}}"
TRITON_METRICS_PORT="${TRITON_METRICS_PORT:-${default_ports[2]}}"
TRITON_ADDRESS="${TRITON_ADDRESS:-$default_address}"
TRITON_READY_TIMEOUT="${TRITON_READY_TIMEOUT:-1800}"
TRITON_BACKOFF_RESET_SECS="${TRITON_BACKOFF_RESET_SECS:-120}"
BRIDGE_CONFIG="${BRIDGE_CONFIG:-}"
# Inside a container the admin API must listen on the container's interface to be published at all;
# compose publishes it on the host's 127.0.0.1 only.
export OPENPI_ADMIN__HOST="${OPENPI_ADMIN__HOST:-0.0.0.0}"

log() { printf '[entrypoint] %s\n' "$*" >&2; }

http_ok() {
  # No curl in the base image: the venv's Python is always there.
  python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" 2>/dev/null
}

bridge_health_url() {
  python - <<'PY'
from openpi_bridge.config import load_config
import os
config = load_config(os.environ.get("BRIDGE_CONFIG") or None)
port = config.action_transport.websocket_port if config.action else config.planner_transport.websocket_port
print(f"http://127.0.0.1:{port}/healthz")
PY
}

if [[ "$ROLE" == "healthcheck" ]]; then
  case "$serving_role" in
    triton) http_ok "http://127.0.0.1:${TRITON_HTTP_PORT}/v2/health/ready" ;;
    *) http_ok "$(BRIDGE_CONFIG="$BRIDGE_CONFIG" bridge_health_url)" ;;
  esac
  exit
fi

pids=()
names=()

start() {
  # start NAME CMD...: runs CMD in the background with its output prefixed by [NAME].
  local name="$1"
  shift
  "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
  track "$name"
}

track() {
  # track NAME: the job just started in the background is child NAME (stopped by stop_all, awaited below).
  pids+=("$!")
  names+=("$1")
  log "started $1 (pid $!)"
}

stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Triton stops its Python stubs itself; give everything the time docker's stop grace period allows.
  wait || true
  if [[ -n "${TRITON_PID_FILE:-}" ]]; then
    rm -f "$TRITON_PID_FILE"
  fi
}

# shellcheck disable=SC2329 # called through the trap below, which shellcheck does not follow
on_signal() {
  trap - TERM INT
  log "signal received: stopping ${names[*]}"
  stop_all
  exit 143
}
trap on_signal TERM INT

start_triton() {
  local args=(
    "--model-repository=${MODEL_REPOSITORY}"
    "--model-control-mode=${TRITON_MODEL_CONTROL_MODE}"
    "--http-port=${TRITON_HTTP_PORT}"
    "--grpc-port=${TRITON_GRPC_PORT}"
    "--metrics-port=${TRITON_METRICS_PORT}"
    "--http-address=${TRITON_ADDRESS}"
    "--grpc-address=${TRITON_ADDRESS}"
    # Ready only once every model is loaded and warm (the bridge's /healthz relies on it).
    "--strict-readiness=true"
  )
  case "$TRITON_MODEL_CONTROL_MODE" in
    poll) args+=("--repository-poll-secs=${TRITON_REPOSITORY_POLL_SECS}") ;;
    explicit) args+=("--load-model=${TRITON_LOAD_MODELS}") ;;
    none) ;;
    *)
      log "TRITON_MODEL_CONTROL_MODE must be poll, explicit or none, got '${TRITON_MODEL_CONTROL_MODE}'"
      exit 2
      ;;
  esac
  local extra=()
  if [[ -n "${TRITON_EXTRA_ARGS:-}" ]]; then
    read -r -a extra <<<"$TRITON_EXTRA_ARGS"
  fi
  # Bytecode in place before the stubs import model.py: their first import would otherwise change each
  # version folder, and poll mode would reload every model once (openpi_triton/triton/launcher.py).
  python -c 'import pathlib, sys; from openpi_triton.triton.launcher import precompile_python_models as pre
pre(pathlib.Path(sys.argv[1]))' "$MODEL_REPOSITORY"
  # The current tritonserver's pid, for the watchdog (a restarted server has a new one).
  TRITON_PID_FILE="$(mktemp -t openpi-tritonserver-XXXXXX.pid)"
  supervise_triton "${args[@]}" "${extra[@]}" &
  track triton
}

remove_stale_shm() {
  # A killed tritonserver leaves its Python-backend regions in /dev/shm (RAM); only unused ones are removed,
  # since another tritonserver may share this /dev/shm (see openpi_triton/triton/launcher.py).
  python -c 'import sys; from openpi_triton.triton.launcher import SHM_DIRECTORY, remove_stale_shm_regions as rm
print(f"[entrypoint] removed {rm()} stale Python-backend shared-memory region(s) from {SHM_DIRECTORY}", file=sys.stderr)'
}

exit_reason() {
  # exit_reason STATUS: "signal 9" for a status above 128 (how bash reports a signal), else "code N".
  if (($1 > 128)); then
    printf 'signal %d' $(($1 - 128))
  else
    printf 'code %d' "$1"
  fi
}

announce_ready() {
  # announce_ready PID RESTART: one log line once the restarted tritonserver PID is ready (gives up if it dies).
  local url="http://127.0.0.1:${TRITON_HTTP_PORT}/v2/health/ready"
  while kill -0 "$1" 2>/dev/null; do
    if http_ok "$url"; then
      log "tritonserver ready again (restart $2, pid $1)"
      return
    fi
    sleep 1
  done
}

supervise_triton() {
  # supervise_triton ARGS...: tritonserver ARGS (output prefixed by [triton]) in this background subshell,
  # started again with backoff whenever it exits; SIGTERM (stop_all) ends it and the supervision.
  local child="" backoff=1 restarts=0 started status
  trap 'if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi; exit 143' TERM
  while true; do
    remove_stale_shm || log "could not look for stale shared-memory regions; starting tritonserver anyway"
    started=$SECONDS
    tritonserver "$@" > >(sed -u "s/^/[triton] /") 2>&1 &
    child=$!
    printf '%s\n' "$child" >"$TRITON_PID_FILE"
    log "tritonserver running (pid ${child})"
    if ((restarts > 0)); then
      announce_ready "$child" "$restarts" &
    fi
    status=0
    wait "$child" || status=$?
    child=""
    if ((SECONDS - started >= TRITON_BACKOFF_RESET_SECS)); then
      backoff=1 # it ran a good while: start the backoff over
    fi
    restarts=$((restarts + 1))
    log "tritonserver exited ($(exit_reason "$status")); restarting in ${backoff} s (restart ${restarts})"
    sleep "$backoff" &
    child=$!
    wait "$child" || true
    child=""
    backoff=$((backoff * 2 > 30 ? 30 : backoff * 2))
  done
}

start_watchdog() {
  # Triton does not restart a crashed Python stub: the watchdog reloads that model (in poll mode by touching
  # the model's version folder, so it needs a writable repository; see openpi_triton/triton/watchdog.py).
  # It also reloads the planner and combined_ensemble after their action model changed (follower.py).
  start watchdog python -m openpi_triton.triton.watchdog --url "127.0.0.1:${TRITON_GRPC_PORT}" \
    --triton-pid-file "$TRITON_PID_FILE" --repository "$MODEL_REPOSITORY" \
    --model-control-mode "$TRITON_MODEL_CONTROL_MODE"
}

wait_for_triton() {
  local url="http://127.0.0.1:${TRITON_HTTP_PORT}/v2/health/ready"
  local deadline=$((SECONDS + TRITON_READY_TIMEOUT))
  log "waiting for Triton and every model (load + warm-up) at ${url} ..."
  until http_ok "$url"; do
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
      log "the tritonserver supervisor exited during start-up"
      stop_all
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "Triton not ready after ${TRITON_READY_TIMEOUT} s"
      stop_all
      exit 1
    fi
    sleep 1
  done
  log "Triton ready"
}

# "slot quic_port socket" for every enabled slot, read from the bridge's own config rules.
sidecar_specs() {
  python - <<'PY'
from openpi_bridge.config import load_config
import os
config = load_config(os.environ.get("BRIDGE_CONFIG") or None)
if config.action is not None:
    print("action", config.action_transport.quic_port, config.action_transport.unix_socket_path)
if config.planner is not None:
    print("planner", config.planner_transport.quic_port, config.planner_transport.unix_socket_path)
PY
}

start_bridge() {
  if [[ -z "$BRIDGE_CONFIG" ]]; then
    # Both slots (the action slot then routes through combined_ensemble), as `make serve`.
    BRIDGE_CONFIG="$(mktemp -t openpi-bridge-XXXXXX.json)"
    printf '{"action": {}, "planner": {}}\n' >"$BRIDGE_CONFIG"
  fi
  export BRIDGE_CONFIG
  if [[ "$ROLE" == "all" && -z "${OPENPI_TRITON__URL:-}" && -z "${OPENPI_TRITON__URLS:-}" ]]; then
    export OPENPI_TRITON__URL="127.0.0.1:${TRITON_GRPC_PORT}"
  fi
  local specs
  specs="$(sidecar_specs)"
  local slot port socket
  while read -r slot port socket; do
    rm -f "$socket" # a socket left by a previous run would look like the bridge is already up
  done <<<"$specs"
  start bridge python -m openpi_bridge --config "$BRIDGE_CONFIG"
  local bridge_pid="${pids[-1]}"
  while read -r slot port socket; do
    local deadline=$((SECONDS + 60))
    until [[ -S "$socket" ]]; do
      if ! kill -0 "$bridge_pid" 2>/dev/null || ((SECONDS > deadline)); then
        log "the bridge did not open its socket ${socket}"
        stop_all
        exit 1
      fi
      sleep 0.2
    done
    start "quic:${slot}" "${OPENPI_FLASH_TRANSPORT_BINARY:-openpi-flash-transport}" server \
      --listen-port "$port" --backend-socket-path "$socket"
  done <<<"$specs"
}

case "$ROLE" in
  all)
    start_triton
    wait_for_triton
    start_watchdog
    start_bridge
    ;;
  triton)
    start_triton
    start_watchdog
    ;;
  bridge) start_bridge ;;
esac
log "running: ${names[*]}"

# Any child exiting ends the container (the trap above handles SIGTERM/SIGINT while we wait).
exited=""
status=0
wait -n -p exited "${pids[@]}" || status=$?
for i in "${!pids[@]}"; do
  if [[ "${pids[$i]}" == "$exited" ]]; then
    log "${names[$i]} exited with status ${status}; stopping the others"
  fi
done
stop_all
exit $((status == 0 ? 1 : status))
