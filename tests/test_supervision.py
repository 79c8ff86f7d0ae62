"""Supervision: children restarted with backoff, none outliving its parent, stale shared memory removed.

The building blocks run with cheap real processes (``sleep``); the stack tests run ``python -m
openpi_triton.stack`` for real and kill its parts with SIGKILL while robots are connected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.flash_client import FlashTransportPolicy
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.processes import Backoff, Child, Supervisor, SupervisorError, spawn, stop_process
from openpi_triton.protocols.local_frame import MessageType
from openpi_triton.readiness import http_status
from openpi_triton.sidecar import SidecarSupervisor
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports, remove_stale_shm_regions
from openpi_triton.triton.watchdog import StubWatchdog, WatchdogOptions
from tests.conftest import REPO_ROOT, bridge_config
from tests.triton_helpers import (
    copy_model,
    infer_inputs,
    processes_mentioning,
    spawn_module,
    stack_args,
    wait_until,
)

OBS = EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel")
# With the noise given, an answer is reproducible: the same before and after a restart.
NOISE = np.random.default_rng(7).standard_normal((50, 32)).astype(np.float32)


def alive(pid: int) -> bool:
    """Running (a zombie is dead: it holds no memory, files or ports, only its exit status)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --- building blocks ---------------------------------------------------------------------------------------


class Sleeper(Child):
    name = "sleeper"

    def spawn(self) -> subprocess.Popen[Any]:
        return spawn(["sleep", "600"])


def test_supervisor_restarts_a_killed_child_with_doubling_backoff() -> None:
    lines: list[str] = []
    supervisor = Supervisor(Sleeper(), Backoff(initial_s=0.2, max_s=0.4, reset_after_s=60), log=lines.append)
    supervisor.start()
    try:
        assert supervisor.wait_first_ready()
        pids = []
        for restart in (1, 2, 3):
            first = wait_until(lambda: supervisor.process, 10, "the child runs")
            pids.append(first.pid)
            os.kill(first.pid, signal.SIGKILL)
            wait_until(
                lambda first=first, restart=restart: supervisor.process is not first and supervisor.restarts == restart,
                10,
                "restarted",
            )
        assert lines[0::2] == [
            "sleeper exited (signal 9); restarting in 0.2 s (restart 1)",
            "sleeper exited (signal 9); restarting in 0.4 s (restart 2)",
            "sleeper exited (signal 9); restarting in 0.4 s (restart 3)",
        ]
        wait_until(lambda: len(lines) == 6, 10, "the third restart is reported ready")
        assert lines[1].startswith("sleeper ready again (restart 1, pid ")
        last = supervisor.process
        assert last is not None and alive(last.pid) and not any(alive(p) for p in pids)
    finally:
        supervisor.stop()
    assert not alive(last.pid), "stop() ends the child"


def test_supervisor_reports_a_child_that_fails_before_it_was_ready() -> None:
    class Failing(Child):
        name = "failing"

        def spawn(self) -> subprocess.Popen[Any]:
            return spawn(["sh", "-c", "exit 3"])

        def wait_ready(self, process: subprocess.Popen[Any]) -> None:
            process.wait()
            raise RuntimeError("it exited")

    lines: list[str] = []
    supervisor = Supervisor(Failing(), log=lines.append).start()
    with pytest.raises(SupervisorError, match="failing did not become ready: it exited"):
        supervisor.wait_first_ready()
    assert supervisor.restarts == 0, "a configuration error is not retried forever"
    supervisor.stop()


HOLDER = textwrap.dedent(
    """
    import sys, threading, time
    from openpi_triton.processes import spawn
    children = [spawn(["sleep", "600"]), spawn(["sleep", "600"], start_new_session=True)]
    def keeper():
        children.append(spawn(["sleep", "600"]))
        children[-1].wait()
    threading.Thread(target=keeper, daemon=True).start()
    while len(children) < 3:
        time.sleep(0.01)
    print(" ".join(str(c.pid) for c in children), flush=True)
    threading.Event().wait()  # alive until the test kills it
    """
)


def test_children_die_with_their_parent_when_it_is_killed() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert holder.stdout is not None
    pids = [int(p) for p in holder.stdout.readline().split()]
    assert len(pids) == 3 and all(alive(p) for p in pids)
    holder.kill()
    holder.wait()
    wait_until(lambda: not any(alive(p) for p in pids), 5, "children of a SIGKILLed parent exit")


def test_a_child_dies_when_the_thread_that_spawned_it_ends() -> None:
    """PDEATHSIG's rule, which is why every supervisor spawns from the thread that waits for its child."""
    spawned: list[subprocess.Popen[Any]] = []
    worker = threading.Thread(target=lambda: spawned.append(spawn(["sleep", "600"])))
    worker.start()
    worker.join()
    wait_until(lambda: spawned[0].poll() is not None, 5, "the child of an ended thread is killed")
    assert spawned[0].returncode == -signal.SIGKILL


def test_spawn_runs_no_at_fork_handler_of_the_parent_in_the_child(tmp_path: pathlib.Path) -> None:
    """gRPC registers at-fork handlers; a child that ran them while the parent's gRPC threads worked aborted."""
    marker = tmp_path / "at_fork_ran_in_child"
    code = textwrap.dedent(
        f"""
        import os
        from openpi_triton.processes import spawn
        os.register_at_fork(after_in_child=lambda: open({str(marker)!r}, "w").close())
        child = spawn(["true"])
        print(child.wait(), flush=True)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.stdout.strip() == "0", result.stderr
    assert not marker.exists(), "spawn forked with Python between fork and exec"


def test_spawn_raises_the_error_that_stopped_the_exec() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        spawn(["no-such-program-" + uuid.uuid4().hex[:8]])


def test_stale_shared_memory_regions_are_removed_and_held_ones_kept(tmp_path: pathlib.Path) -> None:
    prefix = f"triton_python_backend_shm_region_test{uuid.uuid4().hex[:8]}_"
    files = {kind: tmp_path / f"{prefix}{kind}" for kind in ("stale", "open", "mapped")}
    for path in files.values():
        path.write_bytes(b"\0" * mmap.PAGESIZE)
    # Another live process holds one open and one mapped only (its descriptor closed), as Triton's stubs do.
    holder_code = textwrap.dedent(
        f"""
        import mmap, os, threading
        held = open({str(files["open"])!r}, "rb")
        fd = os.open({str(files["mapped"])!r}, os.O_RDWR)
        region = mmap.mmap(fd, mmap.PAGESIZE)
        os.close(fd)
        print("holding", flush=True)
        threading.Event().wait()  # alive until the test kills it
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert remove_stale_shm_regions(tmp_path, prefix) == 1
        assert sorted(p.name.removeprefix(prefix) for p in tmp_path.iterdir()) == ["mapped", "open"]
    finally:
        holder.kill()
        holder.wait()
    # Once nobody holds them, they are stale too.
    assert remove_stale_shm_regions(tmp_path, prefix) == 2
    assert list(tmp_path.iterdir()) == []


def _fake_bridge(path: pathlib.Path) -> socket.socket:
    """A unix socket that answers the sidecar's METADATA and RESET like the bridge does (enough for a client)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def answer(conn: socket.socket) -> None:
        replies = {MessageType.METADATA: MessageType.METADATA_RESPONSE, MessageType.RESET: MessageType.RESET_RESPONSE}
        with conn:
            while header := conn.recv(5, socket.MSG_WAITALL):
                length, kind = struct.unpack(">IB", header)
                if length > 1:
                    conn.recv(length - 1, socket.MSG_WAITALL)
                body = msgpack_numpy.packb({}) if kind == MessageType.METADATA else b""
                conn.sendall(struct.pack(">IB", len(body) + 1, replies[MessageType(kind)]) + body)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


ROBOT = textwrap.dedent(
    """
    import os, sys, threading, time
    from openpi_triton.flash_client import FlashTransportPolicy
    made = {}
    def build():
        made["tid"] = threading.get_native_id()
        made["policy"] = FlashTransportPolicy("127.0.0.1", port=int(sys.argv[1]), local_port=0)
    worker = threading.Thread(target=build)
    worker.start()
    worker.join()
    while os.path.exists(f"/proc/self/task/{made['tid']}"):
        time.sleep(0.01)  # the OS thread is gone too: its PDEATHSIG has fired by now
    made["policy"].reset()  # the binary outlived the thread that built the policy and still serves
    print(made["policy"]._process.pid, flush=True)
    threading.Event().wait()  # alive until the test kills it
    """
)


def test_the_flash_client_binary_dies_with_the_robot_process(tmp_path: pathlib.Path) -> None:
    socket_path = tmp_path / "bridge.sock"
    fake = _fake_bridge(socket_path)
    port = free_ports(1)[0]  # a TCP port free now is as good a guess as any for UDP
    server = SidecarSupervisor("action", port, socket_path).start()
    robot = None
    try:
        robot = subprocess.Popen(
            [sys.executable, "-c", ROBOT, str(port)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        assert robot.stdout is not None
        binary = int(robot.stdout.readline() or "0")
        assert binary and alive(binary), "the robot could not use its client"
        robot.kill()
        robot.wait()
        wait_until(lambda: not alive(binary), 5, "the client binary exits with the robot process")
    finally:
        if robot is not None and robot.poll() is None:
            robot.kill()
        server.stop()
        fake.close()


def test_the_watchdog_follows_a_restarted_tritonserver(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> None:
    """The first server's pid comes from a pid file (the docker entrypoint), the restarted one's through
    follow() (the stack): no spurious reload after the restart, and a stub of the new server that dies is
    brought back."""
    import tritonclient.grpc as grpcclient

    repo = tmp_path / "repo"
    copy_model(repo, "action", "action", {"batch_buckets": "1"})
    http, grpc, metrics = free_ports(3)
    env = {"OPENPI_TRITON_HOME": str(embedded_default.root.parent)}
    server = TritonServer(
        ServerOptions(repo, http, grpc, metrics, env=env), log_stream=open(tmp_path / "triton.log", "w")
    )
    pid_file = tmp_path / "triton.pid"
    watchdog = StubWatchdog(WatchdogOptions(server.grpc_url, None, repo, interval_s=0.5, triton_pid_file=pid_file))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        server.start()
        assert server.process is not None
        pid_file.write_text(f"{server.process.pid}\n")
        server.wait_ready(["action"], timeout=300)
        watchdog.start()
        wait_until(lambda: watchdog.watched_stubs("action") == {"action_0_0"}, 30, "the watchdog knows the stub")

        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        server.stop()
        server.start()
        new_pid = server.process.pid
        watchdog.follow(new_pid)
        server.wait_ready(["action"], timeout=300)
        wait_until(lambda: watchdog.options.triton_pid == new_pid, 30, "the watchdog takes up the new pid")
        wait_until(lambda: watchdog.watched_stubs("action") == {"action_0_0"}, 30, "the watchdog knows the new stub")
        assert watchdog.reloads == [], "a restarted server's models were reloaded for nothing"

        (stub,) = [p for p in processes_mentioning(f"{repo}/action/") if alive(p) and p != new_pid]
        os.kill(stub, signal.SIGKILL)
        wait_until(lambda: watchdog.reloads == ["action"], 30, "the watchdog reloads the model of the dead stub")

        def serves() -> bool:
            try:
                answer = client.infer("action", infer_inputs(OBS), client_timeout=30)
            except Exception:  # the model is reloading
                return False
            return answer.as_numpy("actions").shape == (1, 50, 14)

        wait_until(serves, 180, "the reloaded model serves")
        assert server.process.pid == new_pid
    finally:
        client.close()
        watchdog.stop()
        server.stop()


# --- the stack ----------------------------------------------------------------------------------------------

# Restarting tritonserver loads and warms every model again: on two shared CPU cores that takes minutes.
# Measured here: 11-18 s from the kill to the first good answer.
RECOVERY_TIMEOUT_S = 300.0


@dataclasses.dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    log: pathlib.Path
    repository: pathlib.Path
    grpc_port: int
    bridge_config: pathlib.Path
    action_port: int
    quic_port: int
    action_socket: str

    def triton_pid(self) -> int | None:
        """The tritonserver process (not its stubs, whose command line names the repository only)."""
        found = [p for p in processes_mentioning(f"--grpc-port={self.grpc_port}") if alive(p)]
        return found[0] if len(found) == 1 else None

    def bridge_pids(self) -> list[int]:
        return [p for p in processes_mentioning(str(self.bridge_config)) if alive(p) and p != self.process.pid]

    def sidecar_pids(self) -> list[int]:
        return [p for p in processes_mentioning(self.action_socket) if alive(p)]

    def children(self) -> list[int]:
        """Everything the stack started: tritonserver, its stubs, the bridge, the sidecars."""
        mentions = (str(self.repository), str(self.bridge_config), f"{self.action_socket} ")
        return sorted({p for text in mentions for p in processes_mentioning(text) if alive(p)} - {self.process.pid})

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def healthy(port: int) -> bool:
    return http_status(port, "/healthz") == 200


def stub_regions(triton_pid: int) -> list[pathlib.Path]:
    """The /dev/shm files of the stubs of ``triton_pid`` (a stub's argv: binary, model.py, region, ..., parent pid)."""
    regions = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 5 and argv[0].endswith(b"triton_python_backend_stub") and argv[5] == str(triton_pid).encode():
            regions.append(pathlib.Path("/dev/shm") / argv[2].decode().lstrip("/"))
    return regions


@pytest.fixture(scope="module")
def stack(embedded_default: EmbeddedDefault, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """``python -m openpi_triton.stack`` on free ports with both slots (one batch bucket: faster warm-ups),
    waited for through its ready signal (every role serves). Tests below may kill it."""
    work = tmp_path_factory.mktemp("stack")
    repository = work / "repo"
    copy_model(repository, "action", "action", {"batch_buckets": "1"})
    copy_model(repository, "planner", "planner", {"batch_buckets": "1"})
    copy_model(repository, "combined_ensemble", "combined_ensemble")
    config = bridge_config(work)
    (work / "bridge.json").write_text(json.dumps(config))
    http, grpc, metrics = free_ports(3)
    ready = work / "ready"
    args = stack_args(repository, work / "bridge.json", (http, grpc, metrics), ready_file=ready)
    process = spawn_module("openpi_triton.stack", args, work / "stack.log", embedded_default.root.parent)
    running = RunningStack(
        process,
        work / "stack.log",
        repository,
        grpc,
        work / "bridge.json",
        config["action_transport"]["websocket_port"],
        config["action_transport"]["quic_port"],
        config["action_transport"]["unix_socket_path"],
    )
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, 900, "the stack's ready signal")
        assert process.poll() is None, running.tail()
        assert healthy(running.action_port) and running.sidecar_pids()
        yield running
    finally:
        stop_process(process, timeout=120)  # SIGTERM: the stack stops everything as on Ctrl-C


def connect_quic(port: int) -> FlashTransportPolicy:
    """A QUIC robot (the stack was ready: its sidecar listens)."""
    return FlashTransportPolicy("127.0.0.1", port=port, local_port=0)


def wait_until_serving(port: int, deadline: float) -> None:
    """Until the bridge's /healthz on ``port`` answers 200 (Triton and the slot's model ready), at most until
    ``deadline``; the caller's next attempt judges the outcome."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: healthy(port), max(0.0, deadline - time.monotonic()), "the stack serves again")


class WebSocketRobot:
    """A well-behaved robot: when a call fails it reconnects and asks again (openpi-client 0.1.2 does not)."""

    def __init__(self, port: int) -> None:
        # Between attempts it waits for the bridge's /healthz on this port (Triton and the model ready).
        self.port = port
        self.policy: WebsocketClientPolicy | None = WebsocketClientPolicy(host="127.0.0.1", port=port)
        self.failures: list[str] = []

    def infer_until_answered(self, timeout: float, obs: dict = OBS) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.policy is None:
                    self.policy = WebsocketClientPolicy(host="127.0.0.1", port=self.port)
                return self.policy.infer(obs)
            except Exception as exc:  # an error answer, a closed connection or a refused reconnect
                self.failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[-1:]}")
                self.close()
                if time.monotonic() > deadline:
                    raise AssertionError(f"no answer within {timeout:.0f} s: {self.failures[-5:]}") from exc
                wait_until_serving(self.port, deadline)

    def close(self) -> None:
        if self.policy is not None:
            self.policy._ws.close()
            self.policy = None


def quic_infer_until_answered(robot: FlashTransportPolicy, timeout: float, health_port: int) -> tuple[dict, list[str]]:
    """Our QUIC client keeps its object across faults: each failed call reconnects for the next one, once the
    bridge's /healthz on ``health_port`` says the stack serves."""
    deadline = time.monotonic() + timeout
    failures = []
    while True:
        try:
            return robot.infer(OBS), failures
        except (RuntimeError, ConnectionError) as exc:
            failures.append(str(exc).splitlines()[0])
            if time.monotonic() > deadline:
                raise AssertionError(f"no QUIC answer within {timeout:.0f} s: {failures[-5:]}") from exc
            wait_until_serving(health_port, deadline)


def test_a_killed_tritonserver_is_restarted_and_robots_recover(stack: RunningStack) -> None:
    ws_robot = WebSocketRobot(stack.action_port)
    quic_robot = connect_quic(stack.quic_port)
    try:
        expected = ws_robot.infer_until_answered(timeout=60, obs={**OBS, "noise": NOISE})
        assert expected["actions"].shape == (50, 14) and "subtask" in expected
        via_quic, _ = quic_infer_until_answered(quic_robot, timeout=60, health_port=stack.action_port)
        assert via_quic["actions"].shape == (50, 14)
        old_triton, bridges, sidecars = stack.triton_pid(), stack.bridge_pids(), stack.sidecar_pids()
        assert old_triton is not None and bridges and sidecars
        old_regions = stub_regions(old_triton)
        assert old_regions and all(r.exists() for r in old_regions), old_regions

        os.kill(old_triton, signal.SIGKILL)
        killed = time.monotonic()
        answer = ws_robot.infer_until_answered(timeout=RECOVERY_TIMEOUT_S, obs={**OBS, "noise": NOISE})
        recovered_s = time.monotonic() - killed
        print(f"WebSocket robot answered again {recovered_s:.0f} s after the kill ({len(ws_robot.failures)} failures)")
        assert answer["subtask"]["text"] == expected["subtask"]["text"], "the restarted server answers as before"
        np.testing.assert_allclose(answer["actions"], expected["actions"], atol=1e-5)
        via_quic, quic_failures = quic_infer_until_answered(quic_robot, timeout=60, health_port=stack.action_port)
        assert via_quic["actions"].shape == (50, 14), quic_failures

        assert stack.process.poll() is None, stack.tail()
        new_triton = stack.triton_pid()
        assert new_triton not in (None, old_triton)
        assert stack.bridge_pids() == bridges and stack.sidecar_pids() == sidecars, "only tritonserver restarts"
        assert not any(r.exists() for r in old_regions), "the killed server's shared memory was left in /dev/shm"
        assert "[stack] tritonserver exited (signal 9); restarting in 1 s (restart 1)" in stack.log.read_text()
        ready_again = f"[stack] tritonserver ready again (restart 1, pid {new_triton})"
        wait_until(lambda: ready_again in stack.log.read_text(), 30, "the recovery is reported")
    finally:
        ws_robot.close()
        quic_robot.close()


def test_a_killed_bridge_is_restarted_and_robots_recover(stack: RunningStack) -> None:
    ws_robot = WebSocketRobot(stack.action_port)
    quic_robot = connect_quic(stack.quic_port)
    try:
        assert ws_robot.infer_until_answered(timeout=60)["actions"].shape == (50, 14)
        via_quic, _ = quic_infer_until_answered(quic_robot, timeout=60, health_port=stack.action_port)
        assert via_quic["actions"].shape == (50, 14)
        (bridge,) = stack.bridge_pids()
        triton, sidecars = stack.triton_pid(), stack.sidecar_pids()

        os.kill(bridge, signal.SIGKILL)
        killed = time.monotonic()
        assert ws_robot.infer_until_answered(timeout=60)["actions"].shape == (50, 14)
        print(f"WebSocket robot answered again {time.monotonic() - killed:.1f} s after the bridge was killed")
        via_quic, _ = quic_infer_until_answered(quic_robot, timeout=60, health_port=stack.action_port)
        assert via_quic["actions"].shape == (50, 14)
        assert stack.bridge_pids() not in ([], [bridge])
        assert stack.triton_pid() == triton and stack.sidecar_pids() == sidecars, "only the bridge restarts"
    finally:
        ws_robot.close()
        quic_robot.close()


def test_no_child_outlives_a_killed_stack(stack: RunningStack) -> None:
    children = stack.children()
    assert stack.triton_pid() in children and stack.bridge_pids() and stack.sidecar_pids()
    assert len(children) >= 6, children  # tritonserver, 3+ stubs, the bridge, the sidecars
    stack.process.kill()
    stack.process.wait()
    wait_until(lambda: not stack.children(), 10, f"the stack's children {children} exit")
    with pytest.raises(OSError):  # its ports are free again
        urllib.request.urlopen(f"http://127.0.0.1:{stack.action_port}/healthz", timeout=5)
