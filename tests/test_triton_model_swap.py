"""Swapping the served model by editing config.pbtxt while a robot keeps calling (poll mode)."""

from __future__ import annotations

import os
import pathlib
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.native.policy import PolicyOptions, load_policy
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports
from tests.triton_helpers import copy_model, infer_inputs, set_parameter, wait_until


def test_editing_checkpoint_dir_reloads_without_failed_requests(
    embedded_default: EmbeddedDefault, golden_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    repo = tmp_path / "repo"
    model = copy_model(repo, "action", "action", {"batch_buckets": "1"})
    obs = EMBODIMENTS["aloha"].example(np.random.default_rng(7), "fold the towel")
    noise = np.random.default_rng(8).standard_normal((50, 32)).astype(np.float32)
    golden_ckpt, golden_tok = golden_dir / "pi05_aloha" / "checkpoint", golden_dir / "tokenizer.model"
    expected_new = load_policy(
        "pi05_aloha", golden_ckpt, PolicyOptions(tokenizer_path=str(golden_tok), batch_buckets=(1,))
    ).infer(obs, noise)["actions"]

    http, grpc, metrics = free_ports(3)
    options = ServerOptions(
        repo, http, grpc, metrics, poll_seconds=1, env={"OPENPI_TRITON_HOME": str(embedded_default.root.parent)}
    )
    with TritonServer(options, log_stream=open(tmp_path / "triton.log", "w")) as server:
        server.wait_ready(["action"], timeout=300)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        old = client.infer("action", infer_inputs(obs, {"noise": noise})).as_numpy("actions")[0]
        assert np.abs(old - expected_new).max() > 1e-3, "the two models must answer differently"

        answers: list[np.ndarray] = []
        failures: list[str] = []
        stop = threading.Event()

        def robot() -> None:
            own = grpcclient.InferenceServerClient(server.grpc_url)
            while not stop.is_set():
                try:
                    answers.append(own.infer("action", infer_inputs(obs, {"noise": noise})).as_numpy("actions")[0])
                except Exception as exc:  # every failure is recorded and fails the test
                    failures.append(str(exc))
            own.close()

        thread = threading.Thread(target=robot)
        thread.start()
        try:
            wait_until(lambda: answers or failures, 120, "the robot answered before the edit")
            config = model / "config.pbtxt"
            text = set_parameter(config.read_text(), "checkpoint_dir", str(golden_ckpt))
            text = set_parameter(text, "tokenizer_path", str(golden_tok))
            staged = config.with_suffix(".tmp")
            staged.write_text(text)
            os.replace(staged, config)  # atomic: the poller never sees half a file
            wait_until(
                lambda: failures or np.abs(answers[-1] - expected_new).max() < 1e-4, 240, "the new checkpoint answers"
            )
            after_switch = len(answers) + 3  # a few answers from the new copy
            wait_until(lambda: len(answers) >= after_switch or failures, 120, "answers after the switch")
        finally:
            stop.set()
            thread.join(timeout=60)
        if failures:
            pytest.fail(f"{len(failures)} failed requests during the swap, first: {failures[0]}\n{server.log_tail()}")
        assert np.abs(answers[-1] - expected_new).max() < 1e-4, "answers never switched to the new checkpoint"
        assert np.abs(answers[0] - old).max() == 0
        switched = [bool(np.abs(a - expected_new).max() < 1e-4) for a in answers]
        assert switched == sorted(switched), "answers flipped back to the old model"
        assert len(answers) > 5
