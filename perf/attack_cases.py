"""The attacks of ``perf.attack``: each one bounded in bytes, connections and time, on loopback only.

An attack function gets the :class:`Context` (the stack, the witnesses, the sampler of the stack's memory) and
returns an :class:`Observation`: what the attacker saw and whether that is what the fixed stack is expected to
answer. The witnesses, memory and fds are judged by ``perf.attack`` around every attack, not here.

Expected answers follow the bridge's documented behaviour (docs/operations.md): a bad or too-large request gets
an error text frame naming the field and the limit, then close 1011 (openpi's protocol; openpi-client raises);
frames above ``max_message_bytes`` close 1009; connections beyond ``max_connections_per_address`` get HTTP 503 at
the upgrade; every admin route answers 401 without the key; a prompt format with anything but bare ``{task}``
fields, or over 1024 characters, is 422; an admin body above ``max_body_bytes`` is 413 before it is read.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from perf import attack_quic
from perf.attack_clients import (
    OP_BINARY,
    OP_TEXT,
    Outcome,
    RawWebSocket,
    http_partial_body,
    http_request,
    local_frame_exchange,
    websocket_attack,
)
from perf.attack_stack import Stack, StackProcesses, Usage, find_processes, pid_alive, usage
from perf.attack_witness import Witness, WitnessFleet, WitnessSpec
from perf.decode_cost import (
    local_frame_json_arrays,
    msgpack_empty_arrays,
    msgpack_empty_maps,
)
from perf.soak import _cmdline

MiB = 2**20
# Defaults of the bridge's `limits` / `admin` config (the stack runs with defaults; see the module docstring).
MAX_IMAGE_PIXELS = 2_304_000
MAX_PROMPT_BYTES = 2048
MAX_FRAME_VALUES = 8192
MAX_FRAME_DEPTH = 32
MAX_PER_ADDRESS = 64
QUIC_MAX_CONNECTIONS = 256
DEFAULT_FORMAT = "Task: {task}. Subtask: "
# Words of the server's insides that a robot's error text must not carry (issue: "leaked internals").
INTERNAL_WORDS = ("INTERNAL", "[-1", "Traceback", "RecursionError", "shm", "shared memory", "region",
                  "InferenceServerException", "StatusCode", "tritonclient")  # fmt: skip


# ------------------------------------------------------------------------------------------------ sampling


class Sampler:
    """RSS and fds of the stack's parts every ``period_s``, keeping the peak since :meth:`reset`.

    The pid map is refreshed every second (Triton may be restarted by the stack with new pids)."""

    def __init__(self, stack_pid: int, period_s: float = 0.1) -> None:
        self.stack_pid = stack_pid
        self.period_s = period_s
        self.processes: StackProcesses = find_processes(stack_pid)
        self.seen: dict[int, list[str]] = {}
        self.remember(self.processes)
        self.peak: dict[str, int] = {}
        self.latest: Usage = usage(self.processes)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attack-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        refreshed = 0.0
        while not self._stop.wait(self.period_s):
            now = time.monotonic()
            if now - refreshed > 1.0:
                self.processes = find_processes(self.stack_pid)
                self.remember(self.processes)
                refreshed = now
            sample = usage(self.processes)
            with self._lock:
                self.latest = sample
                for part, value in sample.rss.items():
                    self.peak[part] = max(self.peak.get(part, 0), value)

    def remember(self, processes: StackProcesses) -> None:
        """Every process the stack ever had, with its command line (to clean up what outlives the stack)."""
        for pid in processes.all_pids:
            self.seen.setdefault(pid, _cmdline(pid))

    def reset(self) -> None:
        with self._lock:
            self.peak = dict(self.latest.rss)

    def peaks(self) -> dict[str, int]:
        with self._lock:
            return dict(self.peak)

    def now(self) -> Usage:
        return usage(find_processes(self.stack_pid))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclasses.dataclass
class Context:
    stack: Stack
    fleet: WitnessFleet
    sampler: Sampler
    config_name: str
    results: pathlib.Path
    recovery_s: float

    @property
    def headers(self) -> dict[str, str]:
        return self.stack.auth_header

    def observation(self, robot_id: int = 40) -> dict[str, Any]:
        from perf.soak import robot_observation

        return robot_observation(self.config_name, robot_id)


@dataclasses.dataclass(frozen=True)
class Observation:
    observed: str
    ok: bool
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Attack:
    name: str
    expected: str
    run: Callable[[Context], Observation]
    short: bool = False
    fault: bool = False
    frame_bytes: int = 0  # the largest message the attacker sends: N of the memory rule
    needs_aioquic: bool = False
    final: bool = False  # ends the stack: runs last


# ---------------------------------------------------------------------------------------------- helpers


def _packb(obs: dict[str, Any]) -> bytes:
    from openpi_triton.protocols import msgpack_numpy

    return msgpack_numpy.packb(obs)


def _clean(text: str) -> bool:
    return not any(w in text for w in INTERNAL_WORDS)


def _why_not(outcome: Outcome, words: tuple[str, ...]) -> str:
    """What differs from 'an error text naming every word, close 1011, no internals'; empty if nothing."""
    problems = []
    if outcome.binary_reply:
        problems.append("answered as if the request were fine")
    missing = [w for w in words if w not in outcome.error_text]
    if missing:
        problems.append(f"error text lacks {missing}")
    if outcome.close_code != 1011:
        problems.append(f"close code {outcome.close_code}, expected 1011")
    leaked = [w for w in INTERNAL_WORDS if w in outcome.error_text]
    if leaked:
        problems.append(f"error text leaks {leaked}")
    return "; ".join(problems)


def ws_frame_attack(ctx: Context, payload: bytes, *words: str, opcode: int = OP_BINARY) -> Observation:
    outcome = websocket_attack(ctx.stack.ports.ws_action, ctx.headers, payload, opcode)
    why = _why_not(outcome, words)
    details = {"error_text": outcome.error_text, "close": outcome.close_code, "why": why}
    return Observation(outcome.describe(), not why, details)


def robot_mistake(ctx: Context, change: Callable[[dict[str, Any]], None], *words: str) -> Observation:
    obs = ctx.observation()
    change(obs)
    return ws_frame_attack(ctx, _packb(obs), *words)


# ----------------------------------------------------------------------------------------- decoding attacks


def msgpack_amplification(build: Callable[[int], bytes], size: int) -> Callable[[Context], Observation]:
    def run(ctx: Context) -> Observation:
        return ws_frame_attack(ctx, build(size), "max_frame_values")

    return run


def msgpack_deep_maps(ctx: Context) -> Observation:
    """A valid-looking observation nested 200 maps deep (openpi observations nest 3 deep)."""
    frame = b"\x81\xa1a" * 200 + b"\xc0"
    return ws_frame_attack(ctx, frame, "max_frame_depth")


def local_frame_json(size: int) -> Callable[[Context], Observation]:
    def run(ctx: Context) -> Observation:
        from openpi_triton.protocols.local_frame import MessageType, envelope

        reply = local_frame_exchange(
            str(ctx.stack.action_socket), envelope(MessageType.INFER, local_frame_json_arrays(size))
        )
        text = reply.body.decode("utf-8", errors="replace")
        ok = reply.kind == 0x13 and "max_" in text and _clean(text)
        return Observation(reply.describe(), ok, {"reply": text[:300]})

    return run


def local_frame_huge_length(ctx: Context) -> Observation:
    """An envelope declaring 4 GB: refused from the header alone."""
    reply = local_frame_exchange(str(ctx.stack.action_socket), struct.pack(">IB", 0xFFFFFFF0, 0x02) + b"\0" * 1024)
    text = reply.body.decode("utf-8", errors="replace")
    return Observation(reply.describe(), reply.kind == 0x13 and "length" in text, {"reply": text[:300]})


# --------------------------------------------------------------------------------------------- big inputs


def huge_image(ctx: Context) -> Observation:
    obs = ctx.observation()
    images = obs["images"]
    camera = next(iter(images))
    images[camera] = np.zeros((4600, 4600, 3), np.uint8)  # 63.5 MB: just under max_message_bytes (64 MiB)
    shm_before = _shm_bytes()
    result = ws_frame_attack(ctx, _packb(obs), "max_image_pixels", camera)
    grown = _shm_bytes() - shm_before
    ok = result.ok and grown <= 8 * MiB
    return Observation(
        f"{result.observed}; /dev/shm {grown / MiB:+.0f} MiB", ok, {**result.details, "shm_growth": grown}
    )


def _shm_bytes() -> int:
    total = 0
    for entry in pathlib.Path("/dev/shm").iterdir():
        try:
            total += entry.stat().st_size
        except OSError:
            continue
    return total


def huge_prompt(ctx: Context) -> Observation:
    def change(obs: dict[str, Any]) -> None:
        obs["prompt"] = "fold the towel " * (2**20 // 15)

    return robot_mistake(ctx, change, "prompt", "max_prompt_bytes")


# --------------------------------------------------------------------------------------------- robot mistakes


def state_1e308(ctx: Context) -> Observation:
    def change(obs: dict[str, Any]) -> None:
        obs["state"] = np.full_like(np.asarray(obs["state"], np.float64), 1e308)

    return robot_mistake(ctx, change, "state")


def state_wrong_length(ctx: Context) -> Observation:
    def change(obs: dict[str, Any]) -> None:
        obs["state"] = np.asarray(obs["state"])[:7]

    return robot_mistake(ctx, change, "'state'", "[14]", "[7]")


def unknown_mode(ctx: Context) -> Observation:
    def change(obs: dict[str, Any]) -> None:
        obs["mode"] = "fly"

    return robot_mistake(ctx, change, "mode", "fly")


def quic_wrong_length(ctx: Context) -> Observation:
    """The same mistake through QUIC (sidecar -> LocalFrame -> bridge): the same robot-facing message."""
    from openpi_triton.flash_client import FlashTransportPolicy

    obs = ctx.observation()
    obs["state"] = np.asarray(obs["state"])[:7]
    client = FlashTransportPolicy("127.0.0.1", port=ctx.stack.ports.quic_action, local_port=0,
                                  auth_token=ctx.stack.quic_token)  # fmt: skip
    try:
        client.infer(obs)
        return Observation("answered a 7-value state", False)
    except Exception as exc:
        text = str(exc)
        ok = all(w in text for w in ("'state'", "[14]", "[7]")) and _clean(text)
        return Observation(f"{type(exc).__name__}: {text.strip()[-110:]!r}", ok, {"error_text": text[:500]})
    finally:
        client.close()


def text_frame(ctx: Context) -> Observation:
    outcome = websocket_attack(ctx.stack.ports.ws_action, ctx.headers, b"hello", OP_TEXT)
    ok = bool(outcome.error_text) and outcome.close_code == 1011
    return Observation(outcome.describe(), ok, {"error_text": outcome.error_text})


def not_a_map(ctx: Context) -> Observation:
    return ws_frame_attack(ctx, b"\x05", "map")


def half_frame(ctx: Context) -> Observation:
    """Declares a 1 MB frame, sends 100 KB, closes: the bridge must just drop it (fds checked by the harness)."""
    ws = RawWebSocket(ctx.stack.ports.ws_action)
    try:
        status = ws.upgrade(ctx.headers)
        ws.recv_frame()
        ws.send_frame(OP_BINARY, b"\x80" * 100_000, declared=2**20)
    finally:
        ws.close()
    return Observation(f"upgrade {status}, closed mid-frame", status == 101)


def oversize_frame(ctx: Context) -> Observation:
    """Declares 256 MiB (above max_message_bytes), sends 1 MiB: close 1009 from the header, nothing buffered."""
    began = time.monotonic()
    ws = RawWebSocket(ctx.stack.ports.ws_action, timeout_s=10)
    try:
        ws.upgrade(ctx.headers)
        ws.recv_frame()
        try:
            ws.send_frame(OP_BINARY, b"\0" * MiB, declared=256 * MiB)
        except OSError:
            pass
        outcome = ws.outcome(began)
    finally:
        ws.close()
    return Observation(outcome.describe(), outcome.close_code == 1009 and outcome.seconds < 5)


def no_key_upgrade(ctx: Context) -> Observation:
    outcome = websocket_attack(ctx.stack.ports.ws_action, {}, b"")
    return Observation(outcome.describe(), "HTTP 401" in outcome.error_text)


# ----------------------------------------------------------------------------------------------- connections


def _new_robot(ctx: Context, robot_id: int) -> str:
    """A NEW robot from 127.0.0.1 connects and gets a right-shaped answer: '' or why not."""
    spec = WitnessSpec("new-robot", "websocket", ctx.stack.ports.ws_action, robot_id, ctx.stack.api_key,
                       ctx.config_name, timeout_s=15)  # fmt: skip
    robot = Witness(spec)
    try:
        robot.take_reference()
        return ""
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:160]
    finally:
        robot.drop()


def idle_connections(count: int) -> Callable[[Context], Observation]:
    def run(ctx: Context) -> Observation:
        held: list[RawWebSocket] = []
        statuses: dict[int, int] = {}
        fds_during = 0
        try:
            for _ in range(count):  # from 127.0.0.2: another host as far as per-address limits go
                ws = RawWebSocket(ctx.stack.ports.ws_action, source="127.0.0.2", timeout_s=10)
                try:
                    status = ws.upgrade(ctx.headers)
                except OSError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
                held.append(ws) if status == 101 else ws.close()
            fds_during = ctx.sampler.now().fds.get("bridge", 0)
            newcomer = _new_robot(ctx, robot_id=41)
        finally:
            for ws in held:
                ws.close()
        admitted = statuses.get(101, 0)
        ok = admitted <= MAX_PER_ADDRESS and statuses.get(503, 0) == count - admitted and not newcomer
        observed = f"{admitted} upgraded, {statuses.get(503, 0)} got 503 ({statuses}); bridge fds {fds_during}; "
        observed += "new robot OK" if not newcomer else f"new robot failed: {newcomer}"
        return Observation(observed, ok, {"statuses": statuses, "new_robot": newcomer})

    return run


def slowloris(ctx: Context) -> Observation:
    """40 upgrades from 127.0.0.3 sent one header byte a second: the bridge's open timeout must drop them."""
    socks = []
    for _ in range(40):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.3", 0))
        sock.connect(("127.0.0.1", ctx.stack.ports.ws_action))
        sock.setblocking(False)
        socks.append(sock)
    request = RawWebSocket.upgrade_request(ctx.headers)
    began, closed_at = time.monotonic(), {}
    newcomer = ""
    try:
        for i in range(len(request)):
            if time.monotonic() - began > 20 or len(closed_at) == len(socks):
                break
            for k, sock in enumerate(socks):
                if k in closed_at:
                    continue
                try:
                    sock.send(request[i : i + 1])
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        closed_at[k] = time.monotonic() - began
                except BlockingIOError:
                    continue
                except OSError:
                    closed_at[k] = time.monotonic() - began
            if i == 3:
                newcomer = _new_robot(ctx, robot_id=42)
            time.sleep(1.0)  # the attack's pace: one byte per second per connection
    finally:
        for sock in socks:
            sock.close()
    latest = max(closed_at.values(), default=float("nan"))
    ok = len(closed_at) == len(socks) and latest <= 20 and not newcomer
    observed = f"{len(closed_at)}/{len(socks)} dropped by the server, last after {latest:.0f}s; "
    observed += "new robot OK" if not newcomer else f"new robot failed: {newcomer}"
    return Observation(observed, ok)


# ------------------------------------------------------------------------------------------------------ admin


def _config_now(ctx: Context) -> str:
    reply = http_request(ctx.stack.ports.admin, "GET", "/config", ctx.headers)
    return reply.body


def _restore_format(ctx: Context) -> None:
    import json

    body = json.dumps({"generation_prompt_format": DEFAULT_FORMAT}).encode()
    http_request(ctx.stack.ports.admin, "PATCH", "/config", {**ctx.headers, "Content-Type": "application/json"}, body)


def admin_without_key(ctx: Context) -> Observation:
    import json

    port = ctx.stack.ports.admin
    body = json.dumps({"generation_prompt_format": DEFAULT_FORMAT}).encode()  # harmless if it were applied
    wrong = {"Authorization": "Api-Key wrong"}
    probes = [
        ("GET", "/config", {}, None), ("PATCH", "/config", {"Content-Type": "application/json"}, body),
        ("GET", "/docs", {}, None), ("GET", "/openapi.json", {}, None), ("GET", "/health", {}, None),
        ("POST", "/models/action/reload", {}, None), ("GET", "/config", wrong, None),
    ]  # fmt: skip
    seen = []
    for method, path, headers, data in probes:
        reply = http_request(port, method, path, headers, data)
        seen.append((f"{method} {path}{' (wrong key)' if headers is wrong else ''}", reply.status))
    ok = all(status == 401 for _, status in seen)
    return Observation(", ".join(f"{what} {status}" for what, status in seen), ok, {"statuses": seen})


def admin_format(fmt: str, exposure_s: float = 3.0) -> Callable[[Context], Observation]:
    """PATCH /config with a bad format (with the key): expected 422; if accepted, the witnesses live with it for
    ``exposure_s`` (so its harm is measured) and the default is restored."""

    def run(ctx: Context) -> Observation:
        import json

        body = json.dumps({"generation_prompt_format": fmt}).encode()
        headers = {**ctx.headers, "Content-Type": "application/json"}
        reply = http_request(ctx.stack.ports.admin, "PATCH", "/config", headers, body, timeout_s=30)
        if reply.status == 200:
            time.sleep(exposure_s)  # the bad format in effect: the witnesses' planner calls meet it
            _restore_format(ctx)
        after = _config_now(ctx)
        expected = 413 if len(body) > 65536 else 422
        ok = reply.status == expected and DEFAULT_FORMAT in after
        return Observation(f"{reply.describe()}; config after: {after[:60]}", ok, {"status": reply.status})

    return run


def admin_declared_body(declared: int, sent: int) -> Callable[[Context], Observation]:
    def run(ctx: Context) -> Observation:
        reply = http_partial_body(ctx.stack.ports.admin, "/config", ctx.headers, declared, sent, timeout_s=5)
        _restore_format(ctx)
        return Observation(f"{reply.describe()} after {sent / MiB:.0f} of {declared / MiB:.0f} MiB sent",
                           reply.status == 413 and reply.seconds < 5)  # fmt: skip

    return run


# ------------------------------------------------------------------------------------------------------- QUIC


def quic_huge_handshakes(ctx: Context) -> Observation:
    """6 handshakes without the token declaring 64 MiB, 4 MiB of it sent each."""
    before = ctx.sampler.now().rss.get("quic", 0)
    ctx.sampler.reset()
    probes = attack_quic.huge_handshakes(ctx.stack.ports.quic_action, 6, 64 * MiB, 4 * MiB, hold_s=5.0)
    grown = ctx.sampler.peaks().get("quic", 0) - before
    refused = sum(p.refused for p in probes)
    ok = refused == len(probes) and grown <= 16 * MiB
    return Observation(f"{refused}/{len(probes)} refused; sidecar peak RSS {grown / MiB:+.0f} MiB", ok)


def quic_many_connections(count: int) -> Callable[[Context], Observation]:
    def run(ctx: Context) -> Observation:
        fds_holder: dict[str, int] = {}
        port, token = ctx.stack.ports.quic_action, ctx.stack.quic_token
        probes = attack_quic.authenticated_connections(
            port, token, count, 6.0, lambda: fds_holder.update(ctx.sampler.now().fds)
        )
        admitted = sum(p.reply_type == 0 for p in probes)
        ok = admitted <= QUIC_MAX_CONNECTIONS and admitted > 0
        observed = (
            f"{admitted}/{count} admitted; bridge fds {fds_holder.get('bridge')}, sidecar fds {fds_holder.get('quic')}"
        )
        return Observation(observed, ok, {"admitted": admitted})

    return run


def quic_silent(ctx: Context) -> Observation:
    probes = attack_quic.silent_connections(ctx.stack.ports.quic_action, 10, hold_s=20.0)
    closed = [p.seconds_to_close for p in probes if p.closed_by_server and p.seconds_to_close is not None]
    ok = len(closed) == len(probes)
    return Observation(
        f"{len(closed)}/{len(probes)} closed by the sidecar, last after {max(closed, default=0):.1f}s", ok
    )


def quic_client_bad_local_frame(ctx: Context) -> Observation:
    """The robot-side client sidecar gets a malformed INFER on its local socket: it must answer ERROR."""
    from openpi_triton.flash_client import find_binary
    from openpi_triton.processes import stop_process

    path = pathlib.Path(tempfile.mkdtemp(prefix="attack-client-")) / "c.sock"
    env = {**os.environ, "OPENPI_QUIC_TOKEN": ctx.stack.quic_token}
    command = [str(find_binary()), "client", "--server-host", "127.0.0.1", "--server-port",
               str(ctx.stack.ports.quic_action), "--local-socket-path", str(path), "--local-port", "0"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)  # polling for the socket file the client creates when it is connected
        reply = local_frame_exchange(str(path), struct.pack(">IB", 3, 0x02) + b"\x05\xff", timeout_s=10)
        return Observation(reply.describe(), reply.kind == 0x13)
    finally:
        stop_process(process, timeout=5)
        path.unlink(missing_ok=True)
        path.parent.rmdir()


# ----------------------------------------------------------------------------------------------------- faults


def _triton_server(processes: StackProcesses) -> int | None:
    return processes.triton_server


def _action_stub(processes: StackProcesses) -> int | None:
    stubs = [p for p in processes.parts["triton"] if any(a.endswith("action/1/model.py") for a in _cmdline(p))]
    return stubs[0] if stubs else None


def _action_sidecar(ctx: Context) -> Callable[[StackProcesses], int | None]:
    return lambda processes: processes.quic_by_port.get(ctx.stack.ports.quic_action)


def _bridge(processes: StackProcesses) -> int | None:
    return processes.parts["bridge"][0] if processes.parts["bridge"] else None


def kill_fault(what: str, pick: Callable[[Context], Callable[[StackProcesses], int | None]]) -> Callable[..., Any]:
    """SIGKILL for one of the stack's processes; the witnesses must answer right again within ``ctx.recovery_s``,
    by themselves (they reconnect after an error, as robots do)."""

    def run(ctx: Context) -> Observation:
        pid = pick(ctx)(find_processes(ctx.stack.process.pid))
        if pid is None:
            return Observation(f"no {what} process found", False)
        return killed_and_recovered(ctx, pid)

    return run


def killed_and_recovered(ctx: Context, pid: int) -> Observation:
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    recovered = wait_for_recovery(ctx.fleet, killed_at, ctx.recovery_s, ctx.stack)
    stack_state = "stack running" if ctx.stack.alive() else f"stack exited with {ctx.stack.process.returncode}"
    if recovered is None:
        return Observation(f"not recovered within {ctx.recovery_s:.0f}s; {stack_state}", False)
    return Observation(f"witnesses right again {recovered:.0f}s after the kill; {stack_state}", True,
                       {"recovered_s": recovered})  # fmt: skip


def wait_for_recovery(fleet: WitnessFleet, since: float, timeout_s: float, stack: Stack) -> float | None:
    """Seconds until every witness had 3 right answers in a row started after ``since``; None if not in time."""
    names = [s.name for s in fleet.specs]
    while time.monotonic() - since < timeout_s:
        fleet.drain()
        recovered_at = []
        for name in names:
            calls = [c for c in fleet.calls if c.witness == name and c.started > since]
            streak_start = _ok_streak_start(calls, 3)
            if streak_start is None:
                break
            recovered_at.append(streak_start)
        else:
            return max(recovered_at) - since
        if not stack.alive():
            return None
        time.sleep(0.5)  # polling the witnesses' records
    return None


def _ok_streak_start(calls: list[Any], length: int) -> float | None:
    run: list[Any] = []
    for call in calls:
        run = [*run, call] if call.outcome == "ok" else []
        if len(run) >= length:
            return run[0].started
    return None


KILLED_STACK_GONE_S = 10.0


def kill_stack(ctx: Context) -> Observation:
    """SIGKILL for the stack process itself: none of its children may outlive it. Triton dies with the stack at
    once (PDEATHSIG); its Python-backend stubs see their parent change within a quarter second and exit
    (``openpi_triton.triton.server_watch``), even while the dead server waits unreaped: 10 s to be gone."""
    processes = find_processes(ctx.stack.process.pid)
    part_of = {pid: part for part, pids in processes.parts.items() for pid in pids}
    named = {pid: _process_label(pid, part_of.get(pid, "other")) for pid in processes.all_pids}
    os.kill(ctx.stack.process.pid, signal.SIGKILL)
    ctx.stack.process.wait(timeout=10)
    deadline = time.monotonic() + KILLED_STACK_GONE_S
    while time.monotonic() < deadline and any(pid_alive(p) for p in processes.all_pids):
        time.sleep(0.2)  # polling for the children's exit
    left = [p for p in processes.all_pids if pid_alive(p)]
    if not left:
        return Observation(f"all {len(processes.all_pids)} processes gone", True)
    labels = [named[p] for p in left]
    return Observation(
        f"{len(left)} left running after {KILLED_STACK_GONE_S:g}s: {', '.join(labels)}", False, {"left": labels}
    )


def _process_label(pid: int, part: str) -> str:
    """``triton: stub of action`` (a Python-backend stub names its model's ``model.py``), ``triton:
    tritonserver``, ``bridge: python``: what a leftover process was, read before the kill (a zombie's command line
    is gone)."""
    argv = _cmdline(pid)
    model = next((pathlib.Path(a).parents[1].name for a in argv if a.endswith("/model.py")), None)
    what = f"stub of {model}" if model else (pathlib.Path(argv[0]).name if argv and argv[0] else "?")
    return f"{part}: {what} (pid {pid})"


# ----------------------------------------------------------------------------------------------------- catalog


def catalog() -> list[Attack]:
    err = "error frame naming {} + close 1011"
    fmt = "422; config unchanged"
    big = "413 before the body (4 MiB sent)"
    amplify = msgpack_amplification
    return [
        Attack("ws-msgpack-empty-arrays-8M", err.format("max_frame_values"),
               amplify(msgpack_empty_arrays, 8 * MiB), True, frame_bytes=8 * MiB),
        Attack("ws-msgpack-empty-maps-8M", err.format("max_frame_values"),
               amplify(msgpack_empty_maps, 8 * MiB), frame_bytes=8 * MiB),
        Attack("ws-msgpack-empty-arrays-32M", err.format("max_frame_values"),
               amplify(msgpack_empty_arrays, 32 * MiB), frame_bytes=32 * MiB),
        Attack("ws-msgpack-deep-maps", err.format("max_frame_depth"), msgpack_deep_maps, True, frame_bytes=1024),
        Attack("unix-localframe-json-8M", "ERROR reply naming a max_* limit",
               local_frame_json(8 * MiB), True, frame_bytes=8 * MiB),
        Attack("unix-localframe-json-32M", "ERROR reply naming a max_* limit",
               local_frame_json(32 * MiB), frame_bytes=32 * MiB),
        Attack("unix-declared-4GB", "ERROR naming the length, nothing read", local_frame_huge_length, True,
               frame_bytes=1024),
        Attack("ws-huge-image-4600x4600", err.format("max_image_pixels + camera") + "; no /dev/shm growth",
               huge_image, frame_bytes=64 * MiB),
        Attack("ws-huge-prompt-1MB", err.format("prompt + max_prompt_bytes"), huge_prompt, True, frame_bytes=MiB),
        Attack("ws-state-1e308", err.format("'state'"), state_1e308, True),
        Attack("ws-state-length-7", err.format("'state' [14] [7]") + ", no internals", state_wrong_length, True),
        Attack("quic-state-length-7", "RuntimeError naming 'state' [14] [7], no internals", quic_wrong_length),
        Attack("ws-unknown-mode", err.format("mode 'fly'") + ", not INTERNAL", unknown_mode, True),
        Attack("ws-text-frame", "error text + close 1011", text_frame, True),
        Attack("ws-not-a-map", err.format("map"), not_a_map),
        Attack("ws-half-frame-close", "connection dropped, fds back", half_frame, frame_bytes=MiB),
        Attack("ws-declared-256MiB", "close 1009 at once", oversize_frame, True, frame_bytes=MiB),
        Attack("ws-upgrade-without-key", "HTTP 401", no_key_upgrade, True),
        Attack("ws-idle-300-from-127.0.0.2", f"<= {MAX_PER_ADDRESS} upgraded, rest 503; new robot OK",
               idle_connections(300), True),
        Attack("ws-slowloris-40", "all dropped by the open timeout (<= 20 s); new robot OK", slowloris),
        Attack("admin-without-key", "401 on every route", admin_without_key, True),
        Attack("admin-format-positional", fmt, admin_format("{task} {0}"), True),
        Attack("admin-format-globals", fmt, admin_format("{task} {task.__init__.__globals__}"), True),
        Attack("admin-format-width", fmt, admin_format("{task} {task:>10000000}"), True),
        Attack("admin-format-conversion", fmt, admin_format("{task} {task!r}")),
        Attack("admin-format-1025-chars", fmt, admin_format("{task}" + "x" * 1019)),
        Attack("admin-format-2MB", "413; config unchanged", admin_format("{task}" + "x" * 2 * MiB),
               frame_bytes=2 * MiB),
        Attack("admin-body-50MB-declared", big, admin_declared_body(50 * MiB, 4 * MiB), frame_bytes=4 * MiB),
        Attack("admin-body-200MB-declared", big, admin_declared_body(200 * MiB, 4 * MiB), True,
               frame_bytes=4 * MiB),
        Attack("quic-unauth-64MiB-handshakes", "6/6 refused; sidecar peak <= +16 MiB", quic_huge_handshakes,
               needs_aioquic=True),
        Attack("quic-300-connections", f"<= {QUIC_MAX_CONNECTIONS} admitted", quic_many_connections(300),
               needs_aioquic=True),
        Attack("quic-silent-handshakes", "10/10 closed by the handshake timeout", quic_silent, needs_aioquic=True),
        Attack("quic-client-bad-local-frame", "ERROR reply from the client sidecar", quic_client_bad_local_frame,
               True),
        Attack("kill-9-action-stub", "witness errors, then right answers again",
               kill_fault("action stub", lambda ctx: _action_stub), fault=True),
        Attack("kill-9-quic-sidecar", "witness errors, then right answers again",
               kill_fault("QUIC sidecar", _action_sidecar), fault=True),
        Attack("kill-9-tritonserver", "witness errors, then right answers again",
               kill_fault("tritonserver", lambda ctx: _triton_server), fault=True),
        Attack("kill-9-bridge", "witness errors, then right answers again",
               kill_fault("bridge", lambda ctx: _bridge), fault=True),
        Attack("kill-9-stack", f"no child outlives the stack ({KILLED_STACK_GONE_S:g} s)", kill_stack, True,
               fault=True, final=True),
    ]  # fmt: skip
