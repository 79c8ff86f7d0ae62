"""The soak test (perf/soak.py) in short: its own stack (tritonserver, bridge process, QUIC sidecar), 4 robots
(one on QUIC) for 20 s, every answer checked against the robot's reference. `make soak` runs the 5-minute,
16-robot version.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from openpi_triton.native.tiny import EmbeddedDefault
from perf.served_model import ServedModel
from perf.soak import Collected, SoakOptions, build_checks, check_answer, run_soak

# 20 s give ~50 calls per third, so p99 is nearly the maximum, and on a shared 2-core host other work starting
# or stopping moves it several-fold (measured: 128 -> 552 ms with no change in the stack): drift is judged by
# the full `make soak` only, and this run fails on lost or wrong answers, stopped robots, memory or descriptor
# growth. Memory is judged after a 5 s warm-up over 15 s, where the bridge's allocator still moves by a few
# percent: 15 % here (10 % in the full run).
SHORT = SoakOptions(
    robots=4, rate_hz=2.0, duration_s=20.0, warmup_s=5.0, memory_growth_limit=0.15, p99_ratio_limit=None
)


def test_check_answer_flags_what_the_soak_calls_wrong() -> None:
    reference = np.zeros((50, 14), np.float32)
    assert check_answer({"actions": reference + 5e-5}, reference, (50, 14), 1e-4) == ""
    assert "reference" in check_answer({"actions": reference + 1e-3}, reference, (50, 14), 1e-4)
    assert "shape" in check_answer({"actions": reference[:, :7]}, reference, (50, 14), 1e-4)
    assert "non-finite" in check_answer({"actions": np.full((50, 14), np.nan)}, None, (50, 14), 1e-4)


def test_checks_judge_descriptor_growth_and_drift_only_where_a_limit_is_set() -> None:
    collected = Collected(finished=set(range(4)), fds_after_warmup={"triton": 90, "bridge": 40})
    collected.fds_end = {"triton": 90 + 16, "bridge": 40 + 17}  # the bridge leaked
    report = {
        "lost": 0, "wrong": 0, "memory_growth": {"triton": 0.01, "bridge": 0.01},
        "latency_ms": {"first_third": {"p99": 100.0}, "last_third": {"p99": 400.0}},
    }  # fmt: skip
    judged = {c.name: c.passed for c in build_checks(SoakOptions(robots=4), collected, report)}
    assert judged["triton open files grow by <= 16"] and not judged["bridge open files grow by <= 16"]
    assert judged["last-third p99 <= 1.5 x first-third p99"] is False
    unjudged = build_checks(SoakOptions(robots=4, p99_ratio_limit=None), collected, report)
    assert not any("p99" in c.name for c in unjudged) and len(unjudged) == len(judged) - 1


def test_quic_robots_are_spread_over_the_fleet() -> None:
    options = SoakOptions(robots=16)
    assert [i for i in range(16) if options.transport(i) == "quic"] == [0, 4, 8, 12]
    assert [SHORT.transport(i) for i in range(4)] == ["quic", "websocket", "websocket", "websocket"]


def test_short_soak_passes(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    model = ServedModel(
        "tiny", embedded_default.config_name, embedded_default.checkpoint_dir, embedded_default.tokenizer_path,
        "float32", gpu=False,
    )  # fmt: skip
    report = run_soak(SHORT, model, tmp_path)
    failed = [f"{c.name}: {c.measured}" for c in report.checks if not c.passed]
    assert report.passed, f"{failed}\n{report.examples}"
    assert report.lost == 0 and report.wrong == 0, report.examples
    # Every robot called at its rate (a robot that silently stopped would pass the other checks).
    assert report.requests >= 0.9 * SHORT.robots * SHORT.rate_hz * SHORT.duration_s
    assert report.by_transport["quic"]["ok"] > 0 and report.by_transport["websocket"]["ok"] > 0
    assert {"triton", "bridge"} <= set(report.memory_end) and {"triton", "bridge"} <= set(report.fds_end)
    saved = json.loads((tmp_path / "soak.json").read_text())
    assert saved["passed"] is True and saved["requests"] == report.requests
