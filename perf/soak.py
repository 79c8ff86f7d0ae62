"""Soak test: a fleet of robots against a freshly started stack for minutes, checking every answer.

    python -m perf.soak                                    # 16 robots, 0.9 Hz each, 300 s (`make soak`)
    python -m perf.soak --robots 4 --rate 2 --duration 20 --warmup 5
    python -m perf.soak --rate 5                           # on a GPU box, where the stack has the capacity

The stack is started here on free ports: a real tritonserver (launcher, model control mode ``none``) serving
``action`` on the embedded default model, the bridge as its own process (WebSocket + sidecar socket) and one
QUIC server sidecar (see ``perf.fleet_services``). Robots are separate processes; most use openpi-client's
``WebsocketClientPolicy``, every fourth ``FlashTransportPolicy`` (QUIC) by default.

Default load: on a 2-core CPU the stack serves the tiny model at about 20-23 calls/s in total (measured: 16
robots asking 40 calls/s got 23.4 calls/s at p50 675 ms), so 16 robots x 0.9 Hz = 14.4 calls/s is about 60-70 %
of capacity: busy enough to batch, with headroom so that the queue does not grow without bound (an overloaded
stack would fail the latency rule for a reason that is not a leak). On a GPU, raise ``--rate``.

Every robot sends one fixed observation with a fixed ``noise`` input, so its answer is deterministic: the first
answer (before the measured run) is the robot's reference, and every later answer must be finite, have the same
shape and match it within 1e-4 (dynamic batching changes rounding only), else it is **wrong**. A call that raises
or gets no answer within ``--timeout`` is **lost** (the robot then reconnects).

Pass criteria (all must hold; exit code 1 otherwise):
- zero lost and zero wrong answers, and every robot ran to the end;
- RSS growth < 10 % from the sample taken after ``--warmup`` seconds to the end of the run, for Triton (server +
  its Python stub processes) and for the bridge, each on its own; open file descriptors (sockets, shared memory)
  grow by at most 16 over the same span, for each;
- p99 latency of calls started in the last third of the run <= 1.5 x p99 of calls started in the first third
  (``p99_ratio_limit``; ``None`` reports the thirds without judging them: a run of seconds on a shared host,
  where other work comes and goes, cannot tell a drift of the stack from a change of the host's load).

Writes ``soak.json`` (options, counts, latency, memory samples, checks) and the stack's logs into the results
folder (default ``perf/results/soak-<timestamp>/``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import multiprocessing
import multiprocessing.synchronize
import os
import pathlib
import queue
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python perf/soak.py`: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from perf.fleet_services import fleet_services
from perf.robots import Endpoint, connect
from perf.served_model import ServedModel, prepare

RESULTS_ROOT = pathlib.Path(__file__).resolve().parent / "results"
TRANSPORTS = ("websocket", "quic")


@dataclasses.dataclass(frozen=True)
class SoakOptions:
    robots: int = 16
    quic_robots: int | None = None  # None: every fourth robot (robots // 4)
    rate_hz: float = 0.9  # per robot; see the module docstring for why not more on 2 cores
    duration_s: float = 300.0
    warmup_s: float = 30.0  # memory baseline taken here: allocators and caches settle first
    timeout_s: float = 10.0  # no answer by then: lost
    tolerance: float = 1e-4
    memory_growth_limit: float = 0.10
    p99_ratio_limit: float | None = 1.5  # None: drift reported, not judged (see the module docstring)
    fd_growth_limit: int = 16  # open descriptors per stack part, warm-up to end: steady traffic opens none for good
    progress_every_s: float = 10.0
    connect_timeout_s: float = 180.0

    @property
    def quic_count(self) -> int:
        return self.robots // 4 if self.quic_robots is None else min(self.quic_robots, self.robots)

    def transport(self, robot_id: int) -> str:
        """Spreads the QUIC robots over the ids (so over the phases of the control period)."""
        quic = self.quic_count
        if quic == 0:
            return "websocket"
        stride = self.robots / quic
        return "quic" if any(int(k * stride) == robot_id for k in range(quic)) else "websocket"


# ---------------------------------------------------------------------------------------------------- robots


@dataclasses.dataclass(frozen=True)
class SoakRobot:
    robot_id: int
    transport: str
    endpoint: Endpoint
    config_name: str
    rate_hz: float
    duration_s: float
    phase_s: float
    timeout_s: float
    tolerance: float


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One request of the measured run; ``started_s`` is relative to the common start."""

    robot_id: int
    transport: str
    started_s: float
    latency_ms: float
    outcome: str  # "ok" | "wrong" | "lost"
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class RobotDone:
    robot_id: int
    setup_error: str = ""


def robot_observation(config_name: str, robot_id: int) -> dict[str, Any]:
    """The robot's one observation, with the per-robot ``noise`` that makes its answer reproducible."""
    from openpi_triton.domain.configs import get_policy_config
    from perf.input_data import observations

    config = get_policy_config(config_name)
    (obs,) = observations(config.embodiment, 1, seed=1000 + robot_id)
    noise = np.random.default_rng(900 + robot_id).standard_normal((config.action_horizon, config.action_dim))
    return {**obs, "noise": noise.astype(np.float32)}


def expected_shape(config_name: str) -> tuple[int, int]:
    from openpi_triton.domain.configs import get_policy_config

    config = get_policy_config(config_name)
    return config.action_horizon, config.embodiment.action_dim


def check_answer(answer: dict, reference: np.ndarray | None, shape: tuple[int, ...], tolerance: float) -> str:
    """Empty if the answer is right, else why not (shape, non-finite values, distance to the reference)."""
    actions = np.asarray(answer.get("actions"))
    if actions.shape != shape:
        return f"actions shape {actions.shape}, expected {shape}"
    if not np.all(np.isfinite(actions)):
        return "non-finite actions"
    if reference is not None:
        error = float(np.max(np.abs(actions - reference)))
        if error > tolerance:
            return f"max |actions - reference| = {error:.3g} > {tolerance:g}"
    return ""


class TimedPolicy:
    """A robot's client whose calls give up after a timeout (openpi-client's ``infer`` would wait forever).

    The call runs on a worker thread; after a timeout the connection is in an unknown state, so the caller
    closes this client (which also unblocks the worker's socket read) and connects a new one."""

    def __init__(self, transport: str, endpoint: Endpoint):
        self._client = connect(transport, endpoint)
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def infer(self, obs: dict, timeout_s: float) -> dict:
        return self._worker.submit(self._client.infer, obs).result(timeout=timeout_s)

    def close(self) -> None:
        close = getattr(self._client, "close", None) or getattr(getattr(self._client, "_ws", None), "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # closing a broken connection may fail; it is dropped either way
                pass
        self._worker.shutdown(wait=False, cancel_futures=True)


def timed_call(
    policy: TimedPolicy, obs: dict, task: SoakRobot, reference: np.ndarray, shape: tuple[int, ...]
) -> tuple[str, str, float]:
    """One request: (outcome, detail, latency in ms)."""
    began = time.monotonic()
    try:
        answer = policy.infer(obs, task.timeout_s)
    except concurrent.futures.TimeoutError:
        return "lost", f"no answer within {task.timeout_s:g} s", (time.monotonic() - began) * 1000.0
    except Exception as error:
        return "lost", f"{type(error).__name__}: {error}"[:500], (time.monotonic() - began) * 1000.0
    latency_ms = (time.monotonic() - began) * 1000.0
    why = check_answer(answer, reference, shape, task.tolerance)
    return ("wrong" if why else "ok"), why, latency_ms


def run_soak_robot(
    task: SoakRobot,
    ready: multiprocessing.Queue,  # type: ignore[type-arg]
    start_at: Any,  # multiprocessing.Value("d"): the common start, time.monotonic() (system-wide on Linux)
    go: multiprocessing.synchronize.Event,
    records: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """Process entry point: connect, take the reference answer, then one call per period until the end."""
    policy: TimedPolicy | None = None
    try:
        obs = robot_observation(task.config_name, task.robot_id)
        shape = expected_shape(task.config_name)
        policy = TimedPolicy(task.transport, task.endpoint)
        answer = policy.infer(obs, task.timeout_s * 3)  # the first call may meet a cold connection path
        why = check_answer(answer, None, shape, task.tolerance)
        if why:
            raise RuntimeError(f"reference answer unusable: {why}")
        reference = np.asarray(answer["actions"])
    except Exception:
        ready.put(task.robot_id)
        records.put(RobotDone(task.robot_id, traceback.format_exc(limit=4)))
        if policy is not None:
            policy.close()
        return
    ready.put(task.robot_id)
    go.wait()
    policy = control_loop(task, policy, obs, reference, shape, start_at.value, records)
    policy.close()
    records.put(RobotDone(task.robot_id))


def control_loop(
    task: SoakRobot,
    policy: TimedPolicy,
    obs: dict,
    reference: np.ndarray,
    shape: tuple[int, ...],
    start: float,
    records: multiprocessing.Queue,  # type: ignore[type-arg]
) -> TimedPolicy:
    """Calls once per control period (no catch-up bursts after a slow call); reconnects after a lost call."""
    period = 1.0 / task.rate_hz
    next_start = start + task.phase_s
    while next_start < start + task.duration_s:
        delay = next_start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        began = time.monotonic()
        outcome, detail, latency_ms = timed_call(policy, obs, task, reference, shape)
        records.put(CallRecord(task.robot_id, task.transport, began - start, latency_ms, outcome, detail))
        if outcome == "lost":
            policy = reconnect(task, policy)
        next_start = max(next_start + period, time.monotonic())
    return policy


def reconnect(task: SoakRobot, policy: TimedPolicy) -> TimedPolicy:
    """A fresh connection after a lost call; if that fails too, the next call reports it (and tries again)."""
    policy.close()
    try:
        return TimedPolicy(task.transport, task.endpoint)
    except Exception:
        return policy  # closed: its next call raises and counts as lost


# ----------------------------------------------------------------------------------------------------- memory


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm)": state, ppid
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (tritonserver's Python stubs are its children)."""
    children = _proc_children()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def open_fds(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def _cmdline(pid: int) -> list[str]:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def stack_processes() -> dict[str, int]:
    """The stack's root pids among this process's children: {"triton", "bridge", "quic_sidecar"}.

    ``fleet_services`` starts them as our direct children without handing out the pids, so they are found by
    their command lines (robots are started later, so they cannot be mistaken for them)."""
    found: dict[str, int] = {}
    for pid in _proc_children().get(os.getpid(), []):
        argv = _cmdline(pid)
        if argv and argv[0].endswith("tritonserver"):
            found["triton"] = pid
        elif "openpi_bridge" in argv:
            found["bridge"] = pid
        elif argv and argv[0].endswith("openpi-flash-transport"):
            found["quic_sidecar"] = pid
    missing = {"triton", "bridge"} - set(found)
    if missing:
        raise RuntimeError(f"cannot find the stack's {sorted(missing)} process(es) among this process's children")
    return found


def _part_pids(name: str, pid: int) -> list[int]:
    """Triton counts the server and its stubs, the others their own process."""
    return process_tree(pid) if name == "triton" else [pid]


def sample_memory(stack: dict[str, int]) -> dict[str, int]:
    """RSS in bytes per stack part."""
    return {name: rss_bytes(_part_pids(name, pid)) for name, pid in stack.items()}


def sample_fds(stack: dict[str, int]) -> dict[str, int]:
    """Open file descriptors per stack part."""
    return {name: open_fds(_part_pids(name, pid)) for name, pid in stack.items()}


# ---------------------------------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Collected:
    records: list[CallRecord] = dataclasses.field(default_factory=list)
    setup_errors: dict[int, str] = dataclasses.field(default_factory=dict)
    finished: set[int] = dataclasses.field(default_factory=set)
    memory: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {"t_s", "triton", "bridge", ...}
    memory_after_warmup: dict[str, int] = dataclasses.field(default_factory=dict)
    memory_end: dict[str, int] = dataclasses.field(default_factory=dict)
    fds_after_warmup: dict[str, int] = dataclasses.field(default_factory=dict)
    fds_end: dict[str, int] = dataclasses.field(default_factory=dict)


def make_tasks(options: SoakOptions, endpoints: dict[str, Endpoint], config_name: str) -> list[SoakRobot]:
    period = 1.0 / options.rate_hz
    return [
        SoakRobot(
            i, options.transport(i), endpoints[options.transport(i)], config_name, options.rate_hz,
            options.duration_s, period * i / options.robots, options.timeout_s, options.tolerance,
        )
        for i in range(options.robots)
    ]  # fmt: skip


def percentile(latencies: Sequence[float], q: float) -> float:
    return round(float(np.percentile(latencies, q)), 2) if latencies else float("nan")


def progress_line(collected: Collected, elapsed: float, options: SoakOptions, memory: dict[str, int]) -> str:
    recent = [r.latency_ms for r in collected.records if r.outcome != "lost" and r.started_s >= elapsed - 10.0]
    lost = sum(r.outcome == "lost" for r in collected.records)
    wrong = sum(r.outcome == "wrong" for r in collected.records)
    mem = ", ".join(f"{name} {value / 2**20:.0f} MiB" for name, value in memory.items())
    return (
        f"[soak] {elapsed:5.0f} s / {options.duration_s:.0f} s: {len(collected.records)} requests, "
        f"errors {lost} lost + {wrong} wrong, p99 (last 10 s) {percentile(recent, 99):.0f} ms; {mem}"
    )


def collect(
    options: SoakOptions,
    records: multiprocessing.Queue,  # type: ignore[type-arg]
    start: float,
    stack: dict[str, int],
    collected: Collected,
) -> None:
    """Gathers call records until every robot is done; memory samples and a progress line every tick."""
    deadline = start + options.duration_s + options.timeout_s + options.connect_timeout_s
    next_tick = start + options.progress_every_s
    while len(collected.finished) < options.robots and time.monotonic() < deadline:
        try:
            item = records.get(timeout=0.5)
        except queue.Empty:
            item = None
        if isinstance(item, CallRecord):
            collected.records.append(item)
        elif isinstance(item, RobotDone):
            collected.finished.add(item.robot_id)
            if item.setup_error:
                collected.setup_errors[item.robot_id] = item.setup_error
        now = time.monotonic()
        if not collected.memory_after_warmup and now - start >= options.warmup_s:
            collected.memory_after_warmup, collected.fds_after_warmup = sample_memory(stack), sample_fds(stack)
        if now >= next_tick and now - start <= options.duration_s + 1:
            memory = sample_memory(stack)
            collected.memory.append({"t_s": round(now - start, 1), **memory})
            print(progress_line(collected, now - start, options, memory), flush=True)
            next_tick += options.progress_every_s
        if now - start >= options.duration_s and not collected.memory_end:
            # End of the load, before the stack is stopped.
            collected.memory_end, collected.fds_end = sample_memory(stack), sample_fds(stack)


def run_robots(options: SoakOptions, endpoints: dict[str, Endpoint], config_name: str) -> Collected:
    """Starts the robot processes, waits until each holds its reference answer, runs them, gathers results."""
    ctx = multiprocessing.get_context("spawn")  # no JAX / gRPC state inherited by fork
    ready, records = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    tasks = make_tasks(options, endpoints, config_name)
    processes = [ctx.Process(target=run_soak_robot, args=(t, ready, start_at, go, records), daemon=True) for t in tasks]
    for p in processes:
        p.start()
    collected = Collected()
    try:
        for _ in processes:
            ready.get(timeout=options.connect_timeout_s)
        stack = stack_processes()  # now: the supervisor thread has surely started the QUIC sidecar
        start_at.value = time.monotonic() + 0.5
        go.set()
        print(f"[soak] {options.robots} robots connected; running {options.duration_s:.0f} s", flush=True)
        collect(options, records, start_at.value, stack, collected)
        if not collected.memory_end:
            collected.memory_end, collected.fds_end = sample_memory(stack), sample_fds(stack)
    finally:
        for p in processes:
            p.join(timeout=15)
            if p.is_alive():
                p.kill()
    return collected


# ------------------------------------------------------------------------------------------------- the report


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    measured: str
    passed: bool


@dataclasses.dataclass
class SoakReport:
    options: dict[str, Any]
    model: str
    requests: int
    ok: int
    lost: int
    wrong: int
    by_transport: dict[str, dict[str, int]]
    latency_ms: dict[str, dict[str, float]]  # {"all" | "first_third" | "last_third": {"p50", "p99", "calls"}}
    memory_after_warmup: dict[str, int]
    memory_end: dict[str, int]
    memory_growth: dict[str, float]
    memory_samples: list[dict[str, Any]]
    fds_after_warmup: dict[str, int]
    fds_end: dict[str, int]
    checks: list[Check]
    examples: list[str]  # the first few lost / wrong details and setup errors, to start debugging from
    passed: bool = False

    def __post_init__(self) -> None:
        self.passed = all(c.passed for c in self.checks)


def latency_stats(records: Sequence[CallRecord], duration_s: float) -> dict[str, dict[str, float]]:
    answered = [r for r in records if r.outcome != "lost"]
    parts = {
        "all": answered,
        "first_third": [r for r in answered if r.started_s < duration_s / 3],
        "last_third": [r for r in answered if r.started_s >= 2 * duration_s / 3],
    }
    return {
        name: {"p50": percentile([r.latency_ms for r in part], 50), "p99": percentile([r.latency_ms for r in part], 99),
               "calls": len(part)}
        for name, part in parts.items()
    }  # fmt: skip


def memory_growth(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    return {name: round(after[name] / before[name] - 1.0, 4) for name in before if before[name] and name in after}


def build_checks(options: SoakOptions, collected: Collected, report: dict[str, Any]) -> list[Check]:
    lost, wrong = report["lost"], report["wrong"]
    unfinished = options.robots - len(collected.finished) + len(collected.setup_errors)
    checks = [
        Check("zero lost requests", f"{lost} lost", lost == 0),
        Check("zero wrong answers", f"{wrong} wrong", wrong == 0),
        Check("every robot ran to the end", f"{options.robots - unfinished}/{options.robots}", unfinished == 0),
    ]
    growth = report["memory_growth"]
    for part in ("triton", "bridge"):
        value = growth.get(part)
        measured = "not measured" if value is None else f"{100 * value:+.1f} %"
        limit = options.memory_growth_limit
        checks.append(Check(f"{part} RSS growth < {100 * limit:.0f} %", measured, value is not None and value < limit))
        before, after = collected.fds_after_warmup.get(part), collected.fds_end.get(part)
        grew = None if before is None or after is None else after - before
        checks.append(
            Check(
                f"{part} open files grow by <= {options.fd_growth_limit}",
                "not measured" if grew is None else f"{before} -> {after}",
                grew is not None and grew <= options.fd_growth_limit,
            )
        )
    if options.p99_ratio_limit is None:
        return checks
    first, last = report["latency_ms"]["first_third"]["p99"], report["latency_ms"]["last_third"]["p99"]
    limit_ms = options.p99_ratio_limit * first
    checks.append(
        Check(
            f"last-third p99 <= {options.p99_ratio_limit:g} x first-third p99",
            f"{last:.1f} ms vs limit {limit_ms:.1f} ms",
            bool(np.isfinite(last) and np.isfinite(first) and last <= limit_ms),
        )
    )
    return checks


def build_report(options: SoakOptions, model: ServedModel, collected: Collected) -> SoakReport:
    records = collected.records
    counts = {o: sum(r.outcome == o for r in records) for o in ("ok", "lost", "wrong")}
    by_transport = {
        t: {o: sum(r.outcome == o and r.transport == t for r in records) for o in ("ok", "lost", "wrong")}
        for t in TRANSPORTS
    }
    growth = memory_growth(collected.memory_after_warmup, collected.memory_end)
    latency = latency_stats(records, options.duration_s)
    summary = {**counts, "memory_growth": growth, "latency_ms": latency}
    examples = [f"robot {r.robot_id} ({r.transport}) at {r.started_s:.1f} s: {r.outcome}: {r.detail}"
                for r in records if r.outcome != "ok"][:5]  # fmt: skip
    examples += [f"robot {i} could not start:\n{e}" for i, e in sorted(collected.setup_errors.items())][:3]
    return SoakReport(
        options={**dataclasses.asdict(options), "quic_robots": options.quic_count},
        model=model.describe(),
        requests=len(records),
        ok=counts["ok"],
        lost=counts["lost"],
        wrong=counts["wrong"],
        by_transport=by_transport,
        latency_ms=latency,
        memory_after_warmup=collected.memory_after_warmup,
        memory_end=collected.memory_end,
        memory_growth=growth,
        memory_samples=collected.memory,
        fds_after_warmup=collected.fds_after_warmup,
        fds_end=collected.fds_end,
        checks=build_checks(options, collected, summary),
        examples=examples,
    )


def format_report(report: SoakReport) -> str:
    o = report.options
    lat = report.latency_ms
    lines = [
        f"[soak] {o['robots']} robots ({o['quic_robots']} QUIC) x {o['rate_hz']:g} Hz for {o['duration_s']:g} s; "
        f"model: {report.model}",
        f"[soak] requests {report.requests}: ok {report.ok}, lost {report.lost}, wrong {report.wrong}; "
        + ", ".join(f"{t} {c['ok']}/{sum(c.values())} ok" for t, c in report.by_transport.items()),
        f"[soak] latency p50/p99 ms: all {lat['all']['p50']:.1f}/{lat['all']['p99']:.1f}, first third "
        f"{lat['first_third']['p50']:.1f}/{lat['first_third']['p99']:.1f}, last third "
        f"{lat['last_third']['p50']:.1f}/{lat['last_third']['p99']:.1f}",
        "[soak] RSS after warm-up -> end: "
        + ", ".join(
            f"{name} {report.memory_after_warmup[name] / 2**20:.0f} -> {report.memory_end.get(name, 0) / 2**20:.0f} MiB"
            for name in report.memory_after_warmup
        ),
    ]
    lines += [f"[soak] {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.measured}" for c in report.checks]
    lines += [f"[soak] example: {e}" for e in report.examples]
    lines.append(f"[soak] {'PASSED' if report.passed else 'FAILED'}")
    return "\n".join(lines)


def run_soak(options: SoakOptions, model: ServedModel, results: pathlib.Path) -> SoakReport:
    """Starts the stack, runs the robots, writes ``soak.json`` (and the stack logs) into ``results``."""
    results.mkdir(parents=True, exist_ok=True)
    transports = tuple(t for t in TRANSPORTS if t == "websocket" or options.quic_count > 0)
    with fleet_services(model, transports, results) as endpoints:
        collected = run_robots(options, endpoints, model.config_name)
    report = build_report(options, model, collected)
    (results / "soak.json").write_text(json.dumps(dataclasses.asdict(report), indent=1))
    return report


def default_results_dir() -> pathlib.Path:
    return RESULTS_ROOT / datetime.datetime.now().strftime("soak-%Y%m%d-%H%M%S")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SoakOptions()
    parser.add_argument("--robots", type=int, default=defaults.robots)
    parser.add_argument("--quic-robots", type=int, default=None, help="default: robots // 4")
    parser.add_argument("--rate", type=float, default=defaults.rate_hz, help="control rate of every robot (Hz)")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s, help="seconds before the memory baseline")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds until a call is lost")
    parser.add_argument("--memory-growth-limit", type=float, default=defaults.memory_growth_limit)
    parser.add_argument("--p99-ratio-limit", type=float, default=defaults.p99_ratio_limit)
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--num-steps", type=int, default=10, help="flow-matching steps of the served model")
    parser.add_argument("--results", type=pathlib.Path, default=None, help="default perf/results/soak-<timestamp>/")
    args = parser.parse_args(argv)
    options = SoakOptions(
        robots=args.robots,
        quic_robots=args.quic_robots,
        rate_hz=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
        memory_growth_limit=args.memory_growth_limit,
        p99_ratio_limit=args.p99_ratio_limit,
    )
    results = args.results or default_results_dir()
    model = prepare("tiny", args.device, args.num_steps)
    print(f"[soak] model: {model.describe()}; results in {results}", flush=True)
    report = run_soak(options, model, results)
    print(format_report(report), flush=True)
    print(f"[soak] report: {results / 'soak.json'}", flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
