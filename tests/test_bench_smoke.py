"""The runtime benchmark script runs end to end on the tiny size (numbers are not asserted here)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from openpi_triton.native.tiny import EmbeddedDefault

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_bench_runtime_tiny_prints_every_batch(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    env_home = str(embedded_default.root.parent)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "perf" / "bench_runtime.py"),
            "--size",
            "tiny",
            "--batch-sizes",
            "1,2",
            "--iters",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "OPENPI_TRITON_HOME": env_home},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(out.read_text())
    assert [r["batch"] for r in summary["rows"]] == [1, 2]
    assert all(r["action_ms"] > 0 and r["subtask_ms"] > 0 and r["compile_s"] > 0 for r in summary["rows"])
    assert summary["peak_memory_mb"] > 0
