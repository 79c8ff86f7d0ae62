"""docker/entrypoint.sh supervises tritonserver: a killed one is started again with backoff, in place.

Runs the entrypoint for real (role triton, the wheel's tritonserver standing in for the image's), with the
fixtures of tests/test_docker_files.py.
"""

from __future__ import annotations

import os
import pathlib
import signal
import urllib.error
import urllib.request

from tests.triton_helpers import copy_model, processes_mentioning, wait_for_log, wait_until


def _ready(http_port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


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
    wait_for_log(process, log, "[entrypoint] running: triton watchdog", timeout=120)
    wait_until(lambda: _ready(http) or process.poll() is not None, 600, "Triton is ready")

    (triton,) = processes_mentioning(f"--grpc-port={grpc}")
    (watchdog,) = processes_mentioning(f"--url 127.0.0.1:{grpc}")
    os.kill(triton, signal.SIGKILL)
    wait_until(lambda: not _ready(http), 30, "the killed server stops answering")
    wait_until(lambda: _ready(http) or process.poll() is not None, 600, "the restarted server is ready")

    assert process.poll() is None, log.read_text()[-4000:]
    (restarted,) = processes_mentioning(f"--grpc-port={grpc}")
    assert restarted != triton
    assert processes_mentioning(f"--url 127.0.0.1:{grpc}") == [watchdog], "the watchdog keeps running"
    text = log.read_text()
    assert "[entrypoint] tritonserver exited (signal 9); restarting in 1 s (restart 1)" in text, text[-4000:]
    argv = pathlib.Path(f"/proc/{watchdog}/cmdline").read_bytes().decode().split("\0")
    pid_file = pathlib.Path(argv[argv.index("--triton-pid-file") + 1])
    assert pid_file.read_text().strip() == str(restarted), "the watchdog is not told about the new server"
    wait_for_log(process, log, f"[entrypoint] tritonserver ready again (restart 1, pid {restarted})", timeout=60)

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, log.read_text()[-4000:]
    assert processes_mentioning(f"--grpc-port={grpc}") == []
    assert processes_mentioning(str(repository)) == [], "a stub or the watchdog outlived the entrypoint"
    assert not pid_file.exists()
