"""docker/entrypoint.sh supervises tritonserver: a killed one is started again with backoff, in place.

Runs the entrypoint for real (role triton, the wheel's tritonserver standing in for the image's), with the
fixtures of tests/test_docker_files.py.
"""

from __future__ import annotations

import os
import pathlib
import signal

from openpi_triton.readiness import http_status
from tests.triton_helpers import copy_model, processes_mentioning, wait_until


def _ready(http_port: str) -> bool:
    return http_status(int(http_port), "/v2/health/ready") == 200


def test_entrypoint_restarts_a_killed_tritonserver(
    container_env: dict[str, str],
    spawn_entrypoint,
    tmp_path: pathlib.Path,
) -> None:
    repository = tmp_path / "repo"
    copy_model(repository, "action", "action", {"batch_buckets": "1"})  # one model, one bucket: quick starts
    container_env["MODEL_REPOSITORY"] = str(repository)
    http, grpc = container_env["TRITON_HTTP_PORT"], container_env["TRITON_GRPC_PORT"]
    log = tmp_path / "entrypoint.log"
    process = spawn_entrypoint("triton", container_env, log)
    ready = pathlib.Path(container_env["STACK_READY_FILE"])
    wait_until(lambda: ready.exists() or process.poll() is not None, 600, "the stack's ready signal")
    assert process.poll() is None and _ready(http), log.read_text()[-4000:]

    (triton,) = processes_mentioning(f"--grpc-port={grpc}")
    os.kill(triton, signal.SIGKILL)
    wait_until(lambda: not _ready(http), 30, "the killed server stops answering")
    wait_until(lambda: _ready(http) or process.poll() is not None, 600, "the restarted server is ready")

    assert process.poll() is None, log.read_text()[-4000:]
    (restarted,) = processes_mentioning(f"--grpc-port={grpc}")
    assert restarted != triton
    text = log.read_text()
    assert "[stack] tritonserver exited (signal 9); restarting in 1 s (restart 1)" in text, text[-4000:]
    ready_again = f"[stack] tritonserver ready again (restart 1, pid {restarted})"
    wait_until(lambda: ready_again in log.read_text(), 30, "the recovery is reported")

    # The stub watchdog (tested with real stubs in test_supervision.py) is told about the new server.
    follows = f"[watchdog] tritonserver is now pid {restarted} (was {triton}): watching its stubs"
    wait_until(lambda: follows in log.read_text(), 30, "the watchdog follows the new server")

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, log.read_text()[-4000:]
    assert processes_mentioning(f"--grpc-port={grpc}") == []
    assert processes_mentioning(str(repository)) == [], "a stub outlived the entrypoint"
    assert not ready.exists(), "the ready signal is withdrawn on exit"
