"""The native runtime against golden vectors produced by real openpi, through the real golden-check CLI."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np

from openpi_triton.golden.tree import load_tree


def _run_check(folder: pathlib.Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openpi_triton.golden.check", str(folder), *extra],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_every_shared_golden_case_is_within_tolerance(golden_dir: pathlib.Path) -> None:
    result = _run_check(golden_dir)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [c["case"] for c in json.loads((golden_dir / "manifest.json").read_text())["cases"]]
    lines = result.stdout.splitlines()
    for case in cases:
        line = next(line for line in lines if line.startswith(case))
        assert " ok " in line and "actions=" in line and "raw_actions=" in line, line
    assert f"{len(cases)} passed, 0 failed" in result.stdout


def test_golden_check_fails_when_an_expected_output_is_off(golden_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A copy of one case whose recorded actions moved by 1e-3 (10x the tolerance) must fail."""
    copy = tmp_path / "golden"
    copy.mkdir()
    shutil.copy(golden_dir / "manifest.json", copy)
    shutil.copy(golden_dir / "tokenizer.model", copy)
    shutil.copytree(golden_dir / "pi0_aloha", copy / "pi0_aloha")
    for path in [copy, *copy.rglob("*")]:  # shared/ is read-only; the copy must not be
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = copy / "pi0_aloha" / "obs_1"
    actions = load_tree(out, "output")["actions"]
    meta = json.loads((out / "output.json").read_text())
    entry = next(a["npz_entry"] for a in meta["arrays"] if a["path"] == ["actions"])
    np.savez(out / "output.npz", **{entry: actions + 1e-3})
    result = _run_check(copy, "--case", "pi0_aloha")
    assert result.returncode == 1, result.stdout
    assert "FAIL" in result.stdout and "actions" in result.stdout
