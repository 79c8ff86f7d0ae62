"""perf/gpu_check.sh, the script a GPU machine runs, checked end to end on CPU with the tiny model (``--quick``)
so that it cannot break while no GPU is at hand."""

from __future__ import annotations

import json
import pathlib
import subprocess

from openpi_triton import cost_curve
from perf.gpu_check import monotone_costs

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_quick_runs_every_step_and_writes_its_results(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gpu-check"
    run = subprocess.run(
        [str(REPO / "perf" / "gpu_check.sh"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {r["batch"]: r for r in report["bench"]["rows"]}
    assert sorted(rows) == [1, 2] and all(r["action_ms"] > 0 for r in rows.values())
    assert rows[1]["subtask_ms"] > 0 and "subtask_ms" not in rows[2]  # subtask timed at its own batch sizes
    curve = cost_curve.load(str(out / "cost_curve.json"))
    assert [b for b, _ in curve.points] == [1, 2] and curve.ms(1) == rows[1]["action_ms"]
    fleet = {r["transport"]: r for r in report["fleet"]}
    assert set(fleet) == {"websocket", "openpi-server"}
    assert all(r["calls"] > 0 and r["errors"] == 0 for r in fleet.values()), fleet
    text = (out / "gpu_check.md").read_text()
    assert text.startswith("# GPU check (quick") and "| 1 | websocket |" in text and "measured_tiny" in text


def test_a_measured_curve_is_monotone_and_names_the_batches_it_raised() -> None:
    assert monotone_costs({1: 483.7, 2: 229.2, 4: 500.0, 8: 900.0}) == ({1: 483.7, 2: 483.7, 4: 500.0, 8: 900.0}, [2])
    assert monotone_costs({1: 73.0, 2: 90.0}) == ({1: 73.0, 2: 90.0}, [])
