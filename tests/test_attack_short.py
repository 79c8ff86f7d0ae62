"""`make attack` in short (perf/attack.py --short): its own stack, a WebSocket and a QUIC witness robot calling
throughout, the short subset of attacks; every attack's line must say PASS (exit code 0). The full run is
`make attack`.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from openpi_triton.native.tiny import EmbeddedDefault
from perf import decode_cost
from perf.attack import Options, Quiet, select, witness_stats
from perf.attack_cases import _ok_streak_start, _why_not, catalog
from perf.attack_clients import Outcome
from perf.attack_witness import Call

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_short_subset_is_a_subset_with_faults_last() -> None:
    short = select(Options(short=True))
    assert {a.name for a in short} < {a.name for a in catalog()}
    assert short[-1].name == "kill-9-stack" and short[-1].final
    assert all(not a.fault for a in short[:-1])


def test_an_error_frame_is_judged_on_words_close_code_and_leaks() -> None:
    good = Outcome("ObservationError: 'state': expected value of shape [14], got [7]", 1011)
    assert _why_not(good, ("'state'", "[14]", "[7]")) == ""
    leaky = Outcome("TritonCallError: combined_ensemble: StatusCode.INVALID_ARGUMENT: 'state' [-1,14]", 1011)
    assert "leaks" in _why_not(leaky, ("'state'",))
    assert "close code" in _why_not(Outcome("'state'", None), ("'state'",))
    assert "answered" in _why_not(Outcome("", None, binary_reply=True), ())


def test_recovery_needs_three_right_answers_in_a_row() -> None:
    calls = [Call("ws", float(t), 10.0, o) for t, o in enumerate(["error", "ok", "error", "ok", "ok", "ok", "ok"])]
    assert _ok_streak_start(calls, 3) == 3.0
    assert _ok_streak_start(calls[:5], 3) is None


def test_witness_limit_follows_the_host_load_around_an_attack_but_not_a_stall_in_it() -> None:
    quiet = {"ws": Quiet(p99_ms=300.0, p50_ms=200.0)}

    def calls(latencies: list[float], at: float) -> list[Call]:
        return [Call("ws", at + i, ms, "ok") for i, ms in enumerate(latencies)]

    loaded = calls([400.0, 420.0, 380.0, 400.0], 0.0)  # the host got twice as slow before and after the attack
    attack = calls([900.0, 1000.0], 10.0)  # over 3 x 300 + 50 ms, under 3 x 300 x 2 + 50 ms
    stats = witness_stats(attack, quiet, loaded, calls([390.0, 400.0, 410.0, 400.0], 20.0))["ws"]
    assert stats.load_factor == 2.0 and stats.max_ms <= stats.limit_ms == 1850.0
    # Same calls with a quiet host around them: the attack slowed the witness, and that breaks the rule.
    steady = calls([200.0, 190.0, 210.0, 200.0], 0.0)
    stats = witness_stats(attack, quiet, steady, steady)["ws"]
    assert stats.load_factor == 1.0 and stats.max_ms > stats.limit_ms == 950.0
    # One slow call around the attack does not raise the limit (medians), nor do too few calls.
    stats = witness_stats(attack, quiet, calls([200.0, 5000.0, 200.0, 200.0], 0.0), calls([5000.0] * 3, 20.0))["ws"]
    assert stats.load_factor == 1.0


def test_decode_cost_measures_the_frame_a_benign_decode_copies() -> None:
    """A benign 8 MiB image frame: msgpack copies the bytes once, so about 1 x N; far below the rule."""
    cost = decode_cost.measure("msgpack/benign-image", 8 * 2**20)
    assert cost.outcome == "decoded" and 0.5 < cost.ratio < 2.0 and cost.within_rule, cost


def test_short_attack_run_passes(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    env_home = str(embedded_default.root.parent)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "perf.attack", "--short", "--results", str(tmp_path)],
            cwd=REPO_ROOT,
            env={**os.environ, "OPENPI_TRITON_HOME": env_home},
            capture_output=True,
            text=True,
            timeout=1200,  # over the run's own 900 s for the stack to get ready
        )
    except subprocess.TimeoutExpired as timeout:  # the run's stack and witnesses die with it
        pytest.fail(f"perf.attack --short ran past {timeout.timeout} s:\n{_text(timeout.stdout)[-6000:]}")
    report = json.loads((tmp_path / "attack.json").read_text())
    failed = [f"{a['name']}: {a['failures']}" for a in report["attacks"] if a["verdict"] == "FAIL"]
    assert done.returncode == 0, "\n".join(failed) + "\n" + done.stdout[-6000:] + done.stderr[-3000:]
    names = {a["name"] for a in report["attacks"]}
    assert {"decode-cost", "ws-msgpack-empty-arrays-8M", "admin-without-key"} <= names


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""
