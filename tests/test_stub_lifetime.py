"""The stack that started Triton SIGKILLed while a robot's call is inside the Python-backend stubs: Triton dies
with it (PDEATHSIG) and stays an unreaped zombie, and the stubs' stderr is a pipe whose reader (the stack) is
gone. Every stub must still go (our ``server_watch`` thread) instead of taking the zombie for a live server and
waiting forever: the action model's (inside the model call), the BLS's (waiting on its child request) and the
planner's (idle)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

from openpi_triton.domain.configs import get_policy_config
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.readiness import wait_until
from openpi_triton.simulated_device import lock_path
from openpi_triton.triton.launcher import free_ports
from openpi_triton.triton.server_watch import POLL_INTERVAL_S
from perf.attack_stack import pid_alive
from perf.input_data import observations
from perf.repository import RepositoryVariant, build_repository, models_needed
from perf.robots import Endpoint, GrpcPolicy
from perf.soak import _cmdline, process_tree

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Long enough to kill the stack inside the call (warm-up makes one call too).
CALL_MS = 5_000
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37


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


@contextlib.contextmanager
def _orphans_come_to_us() -> Iterator[None]:
    """This process adopts its descendants' orphans (the killed stack's Triton) and does not reap them: a
    zombie server, whatever the machine's init does."""
    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    assert libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, was.value, 0, 0, 0)


def _reap(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_every_stub_exits_when_the_stack_is_killed_mid_call(
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
    http, grpc, metrics = free_ports(3)
    ready = tmp_path / "ready"
    command = [
        sys.executable, "-m", "openpi_triton.stack", "--role", "triton", "--model-repository", str(repo),
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        "--model-control-mode", "none", "--ready-file", str(ready),
    ]  # fmt: skip
    tree: list[int] = []
    with _orphans_come_to_us(), open(tmp_path / "stack.log", "wb") as log:
        stack = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        try:
            wait_until(
                ready.exists,
                600,
                "the stack's ready file",
                unless=lambda: None if stack.poll() is None else f"the stack exited ({stack.returncode})",
            )
            tree = process_tree(stack.pid)[1:]
            server = next(p for p in tree if _cmdline(p)[:1] and _cmdline(p)[0].endswith("tritonserver"))
            stubs = process_tree(server)[1:]
            assert len(stubs) >= len(models), f"one stub per model ({models}) below tritonserver, found {stubs}"
            client = GrpcPolicy(Endpoint("127.0.0.1", grpc, "combined_ensemble"))
            answers: list[BaseException | object] = []

            def call() -> None:
                try:
                    answers.append(client.infer(robot))
                except Exception as exc:  # the server dies under it
                    answers.append(exc)

            caller = threading.Thread(target=call, daemon=True)
            caller.start()
            wait_until(lambda: _device_busy(lock_path(0, server)), 60, "the stub inside its simulated call")
            os.kill(stack.pid, signal.SIGKILL)
            stack.wait(timeout=30)
            wait_until(lambda: not pid_alive(server), 30, "tritonserver to die with its stack")
            wait_until(
                lambda: not any(pid_alive(p) for p in stubs),
                2 * CALL_MS / 1000 + 40 * POLL_INTERVAL_S,
                f"stubs {stubs} to exit after the stack and its server were killed",
            )
            caller.join(timeout=30)
            assert answers and isinstance(answers[0], Exception), answers
            client.close()
        finally:
            if stack.poll() is None:
                tree = tree or process_tree(stack.pid)[1:]  # a stack that never got ready: its Triton too
                stack.kill()
                stack.wait()
            _reap(tree)
