"""``make attack``: one misbehaving client must not hurt the others. Bounded, loopback-only adversarial run.

    python -m perf.attack                         # every attack (`make attack`), ~10 min on 2 cores
    python -m perf.attack --short                 # the subset `make test` runs (tests/test_attack_short.py)
    python -m perf.attack --only ws-huge-prompt-1MB,admin-without-key
    python -m perf.attack --list

It starts its own stack (``python -m openpi_triton.stack``: tritonserver + bridge with the action slot through
``combined_ensemble`` and the planner slot + admin API + QUIC sidecars; free ports, sockets in a private temp
folder, an API key and a QUIC token; see ``perf.attack_stack``) and two witness robots that call it the whole
time (``perf.attack_witness``): one on WebSocket (openpi-client), one on QUIC (``FlashTransportPolicy``), 4 Hz
each, fixed noise, every answer compared with the robot's reference. Then the quiet p99 of each witness is
measured, and the attacks of ``perf.attack_cases`` run one after the other; fault attacks last (SIGKILL for
the action model's stub, the action QUIC sidecar, tritonserver, the bridge, and finally the stack itself, after
which none of its children may be left). The QUIC attacks that need a raw client use ``aioquic`` and are
skipped (SKIP, not FAIL) where it is not installed. A last row judges the witnesses over the whole run,
between attacks included.

Rules, per attack (any broken rule fails the attack, and the run exits 1):
- the attacker saw what the fixed stack answers (the ``expected`` column; see ``perf.attack_cases``);
- witnesses: no wrong answer ever; no error outside fault attacks; every call in flight during a non-fault attack
  (and its settle time) at most 3x the witness's quiet p99 x the host's load factor + 50 ms (the floor: on 2
  cores a quiet p99 can be tiny, and one scheduler hiccup is not a stall). The load factor follows a shared
  host whose other work comes and goes during the run: the witness's median over its quiet calls just before
  the attack and just after it (attack over and settled, at least 4 calls each), the higher of the two, over
  its median in the quiet phase, and at least 1. A stall or a slowdown the attack causes while it runs does
  not move those medians, so it still breaks the rule;
- fault attacks: witnesses may see errors, then must answer right again by themselves (3 in a row each)
  within ``--recovery`` seconds (default 180: Triton's restart includes loading and warming every model);
- memory: bridge peak RSS during the attack <= 4 x N + 32 MiB, N the largest message the attacker sent
  (``Attack.frame_bytes``; decoding amplification); afterwards every part (bridge, triton = server + stubs,
  quic = both sidecars) back within 32 MiB of its RSS before and within 8 fds (lowest sample of a settle of
  2 s, extended up to 15 s while a part is above: memory given back a few seconds later is not kept).

Besides, ``decode-cost`` (``perf.decode_cost``): peak memory of decoding hostile and benign frames of 1 KiB ..
32 MiB (``--short``: up to 8 MiB) in a subprocess, each <= 4 x N + 2 MiB. It runs while the stack starts.

Prints one line per attack and writes ``attack.json`` (every observation, witness calls per attack, RSS/fds)
plus the stack's and the witnesses' logs into ``--results`` (default ``perf/results/attack-<timestamp>/``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import pathlib
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python perf/attack.py`: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from perf import attack_quic, attack_report, decode_cost
from perf.attack_cases import Attack, Context, MiB, Observation, Sampler, catalog
from perf.attack_stack import (
    PARTS,
    Stack,
    Usage,
    cleanup_workdir,
    find_processes,
    kill_leftovers,
    start_stack,
    stop_stack,
    wait_ready,
)
from perf.attack_witness import Call, WitnessFleet, WitnessSpec
from perf.soak import _cmdline

RESULTS_ROOT = pathlib.Path(__file__).resolve().parent / "results"
CONFIG_NAME = "pi05_aloha"  # the embedded default model that `make serve` serves
LATENCY_FACTOR, LATENCY_FLOOR_MS = 3.0, 50.0
LOAD_CALLS = 4  # quiet calls per witness before and after each attack that set its load factor
PEAK_FACTOR, PEAK_SLACK = 4.0, 32 * MiB
RETAINED_RSS, RETAINED_FDS = 32 * MiB, 8
MIN_WINDOW_S, SETTLE_S, MAX_SETTLE_S = 2.0, 2.0, 15.0


@dataclasses.dataclass(frozen=True)
class Options:
    short: bool = False
    only: tuple[str, ...] = ()
    quiet_s: float = 20.0
    rate_hz: float = 4.0
    recovery_s: float = 180.0
    ready_timeout_s: float = 900.0


@dataclasses.dataclass
class WitnessStats:
    calls: int
    errors: int
    wrong: int
    max_ms: float
    limit_ms: float
    load_factor: float = 1.0
    first_problem: str = ""


@dataclasses.dataclass(frozen=True)
class Quiet:
    """A witness's latency without attacks: the quiet phase's p99 and median (ms)."""

    p99_ms: float
    p50_ms: float


@dataclasses.dataclass
class AttackResult:
    name: str
    expected: str
    observed: str
    fault: bool
    attacker_ok: bool
    witnesses: dict[str, WitnessStats]
    before: Usage | None
    after: Usage | None
    bridge_peak_rss: int
    frame_bytes: int
    seconds: float
    failures: list[str]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    verdict: str = "FAIL"  # PASS | FAIL | SKIP
    window: tuple[float, float] = (0.0, 0.0)  # time.monotonic() span the witnesses were judged over


# ------------------------------------------------------------------------------------------------ witnesses


def witness_specs(stack: Stack, rate_hz: float, logs: pathlib.Path) -> list[WitnessSpec]:
    p = stack.ports
    return [
        WitnessSpec("ws", "websocket", p.ws_action, 0, stack.api_key, CONFIG_NAME, rate_hz,
                    log_path=str(logs / "witness-ws.log")),
        WitnessSpec("quic", "quic", p.quic_action, 1, stack.quic_token, CONFIG_NAME, rate_hz,
                    log_path=str(logs / "witness-quic.log")),
    ]  # fmt: skip


def quiet_baseline(fleet: WitnessFleet, seconds: float) -> dict[str, Quiet]:
    """Each witness's p99 and median over ``seconds`` without attacks; an error or wrong answer aborts the run."""
    began = time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    calls = fleet.overlapping(began, time.monotonic())
    bad = [c for c in calls if c.outcome != "ok"]
    if bad:
        raise RuntimeError(f"witnesses failed before any attack: {bad[0].witness}: {bad[0].outcome} {bad[0].detail}")
    quiet = {}
    for spec in fleet.specs:
        latencies = [c.latency_ms for c in calls if c.witness == spec.name]
        if len(latencies) < 5:
            raise RuntimeError(f"witness {spec.name} made only {len(latencies)} calls in the quiet phase")
        quiet[spec.name] = Quiet(float(np.percentile(latencies, 99)), float(np.median(latencies)))
    return quiet


def load_factor(quiet: Quiet, before: Sequence[Call], after: Sequence[Call]) -> float:
    """How much slower the host answers this witness around an attack than in the quiet phase (see the module
    docstring); medians of right answers, so one slow call does not move it, and a span of fewer than
    ``LOAD_CALLS`` calls does not count."""
    medians = [
        float(np.median([c.latency_ms for c in span if c.outcome == "ok"]))
        for span in (before, after)
        if sum(c.outcome == "ok" for c in span) >= LOAD_CALLS
    ]
    return max([1.0] + [m / quiet.p50_ms for m in medians if quiet.p50_ms > 0])


def witness_stats(
    calls: list[Call], quiet: dict[str, Quiet], before: Sequence[Call] = (), after: Sequence[Call] = ()
) -> dict[str, WitnessStats]:
    stats = {}
    for name, baseline in quiet.items():
        mine = [c for c in calls if c.witness == name]
        problems = [c for c in mine if c.outcome != "ok"]
        factor = load_factor(baseline, *([c for c in span if c.witness == name] for span in (before, after)))
        stats[name] = WitnessStats(
            calls=len(mine),
            errors=sum(c.outcome == "error" for c in mine),
            wrong=sum(c.outcome == "wrong" for c in mine),
            max_ms=round(max((c.latency_ms for c in mine), default=0.0), 1),
            limit_ms=round(LATENCY_FACTOR * baseline.p99_ms * factor + LATENCY_FLOOR_MS, 1),
            load_factor=round(factor, 2),
            first_problem=f"{problems[0].outcome}: {problems[0].detail}"[:300] if problems else "",
        )
    return stats


# ------------------------------------------------------------------------------------------------ one attack


def judge(attack: Attack, result: AttackResult) -> list[str]:
    why = result.details.get("why") or "observed is not the expected"
    failures = [] if result.attacker_ok else [f"attacker: {why}"]
    for name, w in result.witnesses.items():
        if w.wrong:
            failures.append(f"witness {name}: {w.wrong} wrong answers")
        if w.calls == 0:
            failures.append(f"witness {name}: no call during the attack")
        if not attack.fault and w.errors:
            failures.append(f"witness {name}: {w.errors} errors ({w.first_problem[:80]})")
        if not attack.fault and w.max_ms > w.limit_ms:
            failures.append(f"witness {name}: {w.max_ms:.0f} ms > {w.limit_ms:.0f} ms")
    if attack.fault or result.before is None or result.after is None:
        return failures
    peak_limit = PEAK_FACTOR * attack.frame_bytes + PEAK_SLACK
    grown = result.bridge_peak_rss - result.before.rss.get("bridge", 0)
    if grown > peak_limit:
        failures.append(f"bridge peak RSS +{grown / MiB:.0f} MiB > {peak_limit / MiB:.0f} MiB")
    return failures + retained_failures(result.before, result.after)


def retained_failures(before: Usage, after: Usage) -> list[str]:
    failures = []
    for part in PARTS:
        rss = after.rss.get(part, 0) - before.rss.get(part, 0)
        fds = after.fds.get(part, 0) - before.fds.get(part, 0)
        if rss > RETAINED_RSS:
            failures.append(f"{part} kept +{rss / MiB:.0f} MiB")
        if fds > RETAINED_FDS:
            failures.append(f"{part} kept +{fds} fds")
    return failures


def settled_usage(sampler: Sampler, before: Usage | None, min_s: float, max_s: float) -> Usage:
    """The lowest RSS and fds of each part since the settle began: what stays, not what is still being freed.

    At least ``min_s``; up to ``max_s`` while a part is still above the retained limits (memory that a process
    gives back a few seconds later, e.g. a large frame buffer dropped with its connection, is not retained)."""
    began = time.monotonic()
    lowest = sampler.now()
    while True:
        elapsed = time.monotonic() - began
        settled = before is None or not retained_failures(before, lowest)
        if elapsed >= max_s or (elapsed >= min_s and settled):
            return lowest
        time.sleep(0.25)  # sampling interval
        sample = sampler.now()
        lowest = Usage({p: min(lowest.rss.get(p, 0), sample.rss.get(p, 0)) for p in PARTS},
                       {p: min(lowest.fds.get(p, 0), sample.fds.get(p, 0)) for p in PARTS})  # fmt: skip


def run_attack(attack: Attack, ctx: Context, quiet: dict[str, Quiet], since: float) -> AttackResult:
    """One attack; ``since``: when the previous attack's window ended (its quiet calls from then on, until this
    attack begins, are the "before" of the load factor)."""
    if not ctx.stack.alive():
        return skipped(attack, "FAIL", f"not run: the stack is down (exit {ctx.stack.process.returncode})")
    before = ctx.sampler.now()
    ctx.sampler.reset()
    began = time.monotonic()
    try:
        observation = attack.run(ctx)
    except Exception as exc:
        observation = Observation(f"harness error: {type(exc).__name__}: {exc}"[:300], False,
                                  {"traceback": traceback.format_exc(limit=6)})  # fmt: skip
    ended = time.monotonic()
    if ended - began < MIN_WINDOW_S:  # a quick attack still gets witness calls around it
        time.sleep(MIN_WINDOW_S - (ended - began))
    peak = ctx.sampler.peaks().get("bridge", 0)
    after = None
    if ctx.stack.alive() and not attack.final:
        after = settled_usage(ctx.sampler, before, SETTLE_S, MAX_SETTLE_S)
    window_end = time.monotonic()
    ctx.fleet.wait_for_calls_after(window_end, timeout_s=15)
    quiet_before = [c for c in ctx.fleet.calls if c.started >= since and c.ended <= began]
    quiet_after: list[Call] = []
    if not attack.fault:  # fault attacks are judged on errors and recovery, not on latency
        quiet_after = ctx.fleet.calls_started_after(window_end, LOAD_CALLS, timeout_s=30)
    result = AttackResult(
        attack.name, attack.expected, observation.observed, attack.fault, observation.ok,
        witness_stats(ctx.fleet.overlapping(began, window_end), quiet, quiet_before, quiet_after), before, after,
        peak, attack.frame_bytes, round(ended - began, 2), [], observation.details,
    )  # fmt: skip
    result.window = (began, window_end)
    result.failures = judge(attack, result)
    result.verdict = "PASS" if not result.failures else "FAIL"
    return result


def skipped(attack: Attack, verdict: str, why: str) -> AttackResult:
    return AttackResult(attack.name, attack.expected, why, attack.fault, False, {}, None, None, 0, attack.frame_bytes,
                        0.0, [why] if verdict == "FAIL" else [], verdict=verdict)  # fmt: skip


def whole_run_result(fleet: WitnessFleet, rows: list[AttackResult], since: float) -> AttackResult:
    """Every witness call from the quiet phase on: no wrong answer at all, no error outside a fault window (this
    also covers the moments between attacks)."""
    fleet.drain()
    faults = [r.window for r in rows if r.fault and r.window != (0.0, 0.0)]
    if rows and rows[-1].fault and faults:  # the last attack ends the stack (or is the last fault): open-ended
        faults[-1] = (faults[-1][0], float("inf"))
    calls = [c for c in fleet.calls if c.started >= since]
    wrong = [c for c in calls if c.outcome == "wrong"]
    stray = [c for c in calls if c.outcome == "error" and not any(c.started <= e and c.ended >= b for b, e in faults)]
    failures = [f"{len(wrong)} wrong answers ({wrong[0].witness}: {wrong[0].detail[:80]})"] if wrong else []
    if stray:
        failures.append(f"{len(stray)} errors outside fault attacks ({stray[0].witness}: {stray[0].detail[:80]})")
    observed = f"{len(calls)} calls: {len(wrong)} wrong, {len(stray)} errors outside fault attacks"
    return AttackResult("witnesses-whole-run", "no wrong answer; errors only in fault attacks", observed, False,
                        not failures, {}, None, None, 0, 0, 0.0, failures, {},
                        "PASS" if not failures else "FAIL")  # fmt: skip


def decode_cost_result(costs: list[decode_cost.DecodeCost]) -> AttackResult:
    bad = [c for c in costs if not c.within_rule]
    worst = max(costs, key=lambda c: c.ratio)
    observed = f"worst {worst.case} N={worst.frame_bytes}: peak/N {worst.ratio:.1f}; {len(bad)}/{len(costs)} over"
    expected = f"peak <= {decode_cost.AMPLIFICATION_LIMIT:g} x N + {decode_cost.SLACK_BYTES // MiB} MiB"
    failures = [f"{c.case} N={c.frame_bytes}: peak/N {c.ratio:.1f}" for c in bad]
    return AttackResult("decode-cost", expected, observed, False, not bad, {}, None, None, 0, 0, 0.0, failures,
                        {"costs": [dataclasses.asdict(c) for c in costs]}, "PASS" if not bad else "FAIL")  # fmt: skip


# ------------------------------------------------------------------------------------------------ the table


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _usage_cell(result: AttackResult, part: str) -> str:
    if result.before is None:
        return "-"
    after = result.after.brief(part) if result.after is not None else "?"
    return f"{result.before.brief(part)}>{after}"


def _peak_cell(r: AttackResult) -> str:
    """Bridge peak RSS growth during the attack, and as a multiple of the largest message sent."""
    if r.before is None or not r.bridge_peak_rss:
        return "-"
    grown = max(r.bridge_peak_rss - r.before.rss.get("bridge", 0), 0)
    ratio = f"({grown / r.frame_bytes:.1f}xN)" if r.frame_bytes >= MiB else ""
    return f"+{grown / MiB:.0f}{ratio}"


def table_line(r: AttackResult) -> str:
    errors = sum(w.errors + w.wrong for w in r.witnesses.values())
    worst = max(r.witnesses.values(), key=lambda w: w.max_ms / w.limit_ms, default=None)
    latency = f"{worst.max_ms:.0f}/{worst.limit_ms:.0f}" if worst else "-"
    return (
        f"{_cut(r.name, 29):29} {_cut(r.expected, 44):44} {_cut(r.observed, 60):60} "
        f"{errors if r.witnesses else '-':>4} "
        f"{latency:>10} {_peak_cell(r):>11} {_usage_cell(r, 'bridge'):>15} {_usage_cell(r, 'triton'):>17} "
        f"{_usage_cell(r, 'quic'):>13} "
        f"{r.verdict}"
    )


def table_header() -> str:
    return (
        f"{'attack':29} {'expected':44} {'observed':60} {'werr':>4} {'wmax/lim':>10} {'bpeak MiB':>11} "
        f"{'bridge MiB/fds':>15} {'triton MiB/fds':>17} {'quic MiB/fds':>13} verdict"
    )


# ---------------------------------------------------------------------------------------------------- the run


def select(options: Options) -> list[Attack]:
    attacks = catalog()
    known = {a.name for a in attacks}
    unknown = [n for n in options.only if n not in known and n != "decode-cost"]
    if unknown:
        raise SystemExit(f"unknown attack(s) {unknown}; --list shows them")
    if options.only:
        attacks = [a for a in attacks if a.name in options.only]
    elif options.short:
        attacks = [a for a in attacks if a.short]
    return sorted(attacks, key=lambda a: (a.fault, a.final))  # faults last, the stack's own kill at the very end


def run(options: Options, results: pathlib.Path) -> list[AttackResult]:
    results.mkdir(parents=True, exist_ok=True)
    attacks = select(options)
    wants_decode = not options.only or "decode-cost" in options.only
    rows: list[AttackResult] = []
    print(f"[attack] results in {results}; starting the stack ...", flush=True)
    stack = start_stack(results)
    fleet: WitnessFleet | None = None
    sampler: Sampler | None = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sizes = [s for s in decode_cost.SIZES if not options.short or s <= 8 * MiB]
        costs = pool.submit(decode_cost.measure_all, sizes) if wants_decode else None
        try:
            print(f"[attack] stack ready in {wait_ready(stack, options.ready_timeout_s):.0f} s", flush=True)
            fleet = WitnessFleet(witness_specs(stack, options.rate_hz, results))
            fleet.start(timeout_s=300)
            if costs is not None:
                rows.append(decode_cost_result(costs.result()))  # before the quiet phase: it loads the CPU
                print(decode_cost.format_costs(costs.result()), flush=True)
            sampler = Sampler(stack.process.pid).start()
            quiet_from = time.monotonic()
            quiet = quiet_baseline(fleet, options.quiet_s)
            print(
                "[attack] quiet p99 / median (ms): "
                + ", ".join(f"{k} {q.p99_ms:.0f} / {q.p50_ms:.0f}" for k, q in quiet.items()),
                flush=True,
            )
            since = time.monotonic()
            ctx = Context(stack, fleet, sampler, CONFIG_NAME, results, options.recovery_s)
            print(table_header(), flush=True)
            if rows:
                print(table_line(rows[0]), flush=True)
            for attack in attacks:
                rows.append(attack_or_skip(attack, ctx, quiet, since))
                since = max(since, rows[-1].window[1])
                print(table_line(rows[-1]), flush=True)
            rows.append(whole_run_result(fleet, rows, quiet_from))
            print(table_line(rows[-1]), flush=True)
        finally:
            shutdown(stack, fleet, sampler)
    return rows


def attack_or_skip(attack: Attack, ctx: Context, quiet: dict[str, Quiet], since: float) -> AttackResult:
    if attack.needs_aioquic and not attack_quic.available():
        return skipped(attack, "SKIP", "not run: aioquic is not installed (pip install aioquic)")
    return run_attack(attack, ctx, quiet, since)


def shutdown(stack: Stack, fleet: WitnessFleet | None, sampler: Sampler | None) -> None:
    if fleet is not None:
        fleet.stop()
    if sampler is not None:
        sampler.stop()
    known = find_processes(stack.process.pid).all_pids if stack.alive() else []
    if sampler is not None:  # also what an earlier stack death left behind, if the pid is still that process
        known += [pid for pid, argv in sampler.seen.items() if argv and _cmdline(pid) == argv]
    left = stop_stack(stack) + kill_leftovers(sorted(set(known)))
    if left:
        print(f"[attack] killed {len(left)} leftover stack processes: {left}", flush=True)
    cleanup_workdir(stack)


def write_report(rows: list[AttackResult], options: Options, results: pathlib.Path) -> pathlib.Path:
    report = {
        "options": dataclasses.asdict(options),
        "rules": {
            "latency": f"witness max <= {LATENCY_FACTOR:g} x quiet p99 x load factor + {LATENCY_FLOOR_MS:g} ms "
            f"(non-fault; load factor: quiet median before / after the attack over the quiet phase's, >= 1)",
            "peak": f"bridge peak RSS growth <= {PEAK_FACTOR:g} x N + {PEAK_SLACK // MiB} MiB",
            "retained": f"each part within {RETAINED_RSS // MiB} MiB and {RETAINED_FDS} fds within {MAX_SETTLE_S:g} s",
            "fault": f"right answers again within {options.recovery_s:g} s",
            "decode": f"peak <= {decode_cost.AMPLIFICATION_LIMIT:g} x N + {decode_cost.SLACK_BYTES // MiB} MiB",
        },
        "attacks": [dataclasses.asdict(r) for r in rows],
        "passed": all(r.verdict != "FAIL" for r in rows),
    }
    path = results / "attack.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    attack_report.write_markdown(path)
    return path


def default_results_dir() -> pathlib.Path:
    return RESULTS_ROOT / datetime.datetime.now().strftime("attack-%Y%m%d-%H%M%S")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the subset `make test` runs (~3 min)")
    parser.add_argument("--only", default="", help="comma-separated attack names (decode-cost included)")
    parser.add_argument("--results", type=pathlib.Path, default=None, help="default perf/results/attack-<timestamp>/")
    parser.add_argument("--recovery", type=float, default=Options.recovery_s, help="fault recovery limit (s)")
    parser.add_argument("--quiet", type=float, default=None, help="seconds of quiet p99 measurement")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for attack in catalog():
            print(f"{attack.name:32} {'short ' if attack.short else '      '}{attack.expected}")
        return 0
    quiet = args.quiet if args.quiet is not None else (12.0 if args.short else Options.quiet_s)
    only = tuple(n for n in args.only.split(",") if n)
    options = Options(short=args.short, only=only, quiet_s=quiet, recovery_s=args.recovery)
    results = args.results or default_results_dir()
    rows = run(options, results)
    path = write_report(rows, options, results)
    failed = [r for r in rows if r.verdict == "FAIL"]
    for r in failed:
        print(f"[attack] FAIL {r.name}: {'; '.join(r.failures)}", flush=True)
    print(f"[attack] {len(rows) - len(failed)}/{len(rows)} passed or skipped; report {path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
