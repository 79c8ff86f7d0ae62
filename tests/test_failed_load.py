"""A bad edit in poll mode: the old model keeps serving, the failure is reported once (later polls refuse at
once, in one line), the admin API lists it, and fixing the edit loads the new model and clears the record."""

from __future__ import annotations

import json
import os
import pathlib
import urllib.request

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton import load_status
from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports
from tests.conftest import start_bridge_process, stop_bridge_process
from tests.triton_helpers import copy_model, set_parameter, wait_until


def _edit(config: pathlib.Path, key: str, value: str) -> None:
    staged = config.with_suffix(".tmp")
    staged.write_text(set_parameter(config.read_text(), key, value))
    os.replace(staged, config)


def _failed_loads(admin_port: int, model_dir: pathlib.Path) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/models", timeout=60) as response:
        records = json.loads(response.read())["failed_loads"]
    return [r for r in records if r["model_dir"] == str(model_dir)]


def test_a_bad_edit_is_reported_once_and_listed_until_fixed(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = str(embedded_default.root.parent)
    monkeypatch.setenv("OPENPI_TRITON_HOME", home)  # the bridge reads the records of this host's models
    repository = tmp_path / "repo"
    model_dir = copy_model(repository, "action", "action", {"batch_buckets": "1"})
    http, grpc, metrics = free_ports(3)
    options = ServerOptions(repository, http, grpc, metrics, poll_seconds=1, env={"OPENPI_TRITON_HOME": home})
    with TritonServer(options, log_stream=open(tmp_path / "triton.log", "w")) as triton:
        triton.wait_ready(["action"], timeout=600)
        bridge = start_bridge_process(triton.grpc_url, tmp_path, planner=None)
        robot = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port)
        obs = EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel")
        try:
            _edit(model_dir / "config.pbtxt", "model_config_name", "pi05_alohaa")
            (record,) = wait_until(lambda: _failed_loads(bridge.admin_port, model_dir), 300, "the failed load listed")
            assert "'pi05_alohaa' is not supported" in record["message"]
            assert robot.infer(obs)["actions"].shape == (50, 14)  # the old copy keeps serving
            log = tmp_path / "triton.log"
            wait_until(lambda: "not loaded again, nothing changed since its load failed" in log.read_text(), 120,
                       "a later poll refused in one line")  # fmt: skip
            _edit(model_dir / "config.pbtxt", "model_config_name", "pi05_aloha")
            _edit(model_dir / "config.pbtxt", "num_steps", "2")  # a real change: the model loads again
            wait_until(lambda: not _failed_loads(bridge.admin_port, model_dir), 300, "the record cleared")
            assert load_status.previous_failure(model_dir, "anything") is None
            assert robot.infer(obs)["actions"].shape == (50, 14)
        finally:
            stop_bridge_process(bridge)
