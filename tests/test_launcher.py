"""The local launcher CLI: starts tritonserver from the wheel, reports ready, stops on Ctrl-C without orphans."""

from __future__ import annotations

import pathlib
import signal

from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.readiness import http_status
from openpi_triton.triton.launcher import free_ports
from tests.triton_helpers import copy_model, processes_mentioning, spawn_module, wait_until


def test_launcher_serves_and_stops_cleanly_on_ctrl_c(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    repo = tmp_path / "repo"
    copy_model(repo, "action", "action", {"batch_buckets": "1"})
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "launcher.log"
    proc = spawn_module(
        "openpi_triton.triton.launcher",
        [
            "--model-repository",
            str(repo),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--wait-for",
            "action",
        ],
        log,
        embedded_default.root.parent,
    )
    try:
        ready = "/v2/models/action/ready"
        wait_until(lambda: http_status(http, ready) == 200 or proc.poll() is not None, 300, "action is ready")
        wait_until(lambda: "[stack] ready." in log.read_text(), 30, "the launcher reports ready")
        assert processes_mentioning(str(repo)), "tritonserver is not running"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # Stubs are started with their model.py path, so this also covers orphaned Python-backend stubs.
    wait_until(lambda: processes_mentioning(str(repo)) == [], 30, "tritonserver and its stubs gone with the launcher")
