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

from openpi_triton.native.tiny import EmbeddedDefault
from perf.attack import Options, select
from perf.attack_cases import catalog

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_short_subset_is_a_subset_with_faults_last() -> None:
    short = select(Options(short=True))
    assert {a.name for a in short} < {a.name for a in catalog()}
    assert short[-1].name == "kill-9-stack" and short[-1].final
    assert all(not a.fault for a in short[:-1])


def test_short_attack_run_passes(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    env_home = str(embedded_default.root.parent)
    done = subprocess.run(
        [sys.executable, "-m", "perf.attack", "--short", "--results", str(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "OPENPI_TRITON_HOME": env_home},
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads((tmp_path / "attack.json").read_text())
    failed = [f"{a['name']}: {a['failures']}" for a in report["attacks"] if a["verdict"] == "FAIL"]
    assert done.returncode == 0, "\n".join(failed) + "\n" + done.stdout[-6000:] + done.stderr[-3000:]
    names = {a["name"] for a in report["attacks"]}
    assert {"decode-cost", "ws-msgpack-empty-arrays-8M", "admin-without-key"} <= names
