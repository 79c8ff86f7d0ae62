"""A Triton server SIGKILLed (and not reaped) while a robot's call is inside its Python-backend stubs: every
stub goes with it (our ``server_watch`` thread) instead of taking the zombie for a live server and waiting
forever: the action model's (inside the model call), the BLS's (waiting on its child request) and the
planner's (idle)."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import signal
import threading

from openpi_triton.domain.configs import get_policy_config
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.readiness import wait_until
from openpi_triton.simulated_device import lock_path
from openpi_triton.triton.server_watch import POLL_INTERVAL_S
from perf.attack_stack import pid_alive
from perf.input_data import observations
from perf.repository import RepositoryVariant, build_repository, models_needed, serving
from perf.robots import Endpoint, GrpcPolicy
from perf.soak import process_tree

# Long enough to kill the server inside the call (warm-up makes one call too).
CALL_MS = 5_000


def _device_busy(path: pathlib.Path) -> bool:
    """True while a simulated call holds the device (the stub is inside ``execute``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_every_stub_exits_when_its_server_is_killed_mid_call(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> None:
    curve = tmp_path / "slow.json"
    curve.write_text(json.dumps({"name": "slow", "description": "t", "source": "t", "ms_per_call": {"1": CALL_MS}}))
    parameters = {
        "runtime": "simulated",
        "cost_curve": str(curve),
        "checkpoint_dir": str(embedded_default.checkpoint_dir),
        "tokenizer_path": str(embedded_default.tokenizer_path),
        "batch_buckets": "1",
    }
    models = models_needed(["combined_ensemble"])
    repo = build_repository(tmp_path / "repo", RepositoryVariant(parameters=parameters, bls_instances=1), models)
    robot = {**observations(get_policy_config("pi05_aloha").embodiment, 1, seed=3)[0], "mode": "action_only"}
    with serving(repo, models, tmp_path / "triton.log") as server:
        assert server.process is not None
        server_pid = server.process.pid
        stubs = process_tree(server_pid)[1:]
        assert len(stubs) >= len(models), f"one stub per model ({models}) below tritonserver, found {stubs}"
        host, _, port = server.grpc_url.rpartition(":")
        client = GrpcPolicy(Endpoint(host, int(port), "combined_ensemble"))
        answers: list[BaseException | object] = []

        def call() -> None:
            try:
                answers.append(client.infer(robot))
            except Exception as exc:  # the server dies under it
                answers.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        device = lock_path(0, server_pid)
        wait_until(lambda: _device_busy(device), 60, "the stub inside its simulated call")
        # Not reaped yet, as when the stack that started it was SIGKILLed too and the container's init does not
        # reap: the server's zombie still passes the stub's own check (kill(pid, 0)), but it is no parent.
        os.kill(server_pid, signal.SIGKILL)
        wait_until(
            lambda: not any(pid_alive(p) for p in stubs),
            2 * CALL_MS / 1000 + 40 * POLL_INTERVAL_S,
            f"stubs {stubs} to exit after their server was killed",
        )
        server.process.wait(timeout=30)
        caller.join(timeout=30)
        assert answers and isinstance(answers[0], Exception), answers
        client.close()
