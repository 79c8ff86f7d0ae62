"""Locating and running Triton's ``perf_analyzer`` from the ``tritonclient`` 2.51.0 wheel on this kind of host.

Newer perf_analyzer builds need glibc 2.38; the one in tritonclient 2.51.0 runs on Debian bookworm (glibc 2.36)
once two shared libraries are found: ``libb64.so.0d`` (Debian package ``libb64-0d``) and ``libcudart.so.12``
(PyPI ``nvidia-cuda-runtime-cu12``, loaded even without a GPU). This module puts the latter on
``LD_LIBRARY_PATH`` and fails with the fix when the former is missing.

    python -m perf.perf_analyzer -m action -u 127.0.0.1:8101 -i grpc ...   # execs perf_analyzer
"""

from __future__ import annotations

import csv
import ctypes
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Sequence

LIBB64 = "libb64.so.0d"


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer cannot run here, or a run failed."""


def binary() -> pathlib.Path:
    """The wheel installs ``perf_analyzer`` beside this interpreter's ``python`` (the venv's ``bin/``)."""
    candidates = [pathlib.Path(sys.executable).parent / "perf_analyzer"]
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.append(pathlib.Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise PerfAnalyzerError(
        f"perf_analyzer not found (looked at {', '.join(map(str, candidates))}); it ships in the tritonclient "
        "2.51.0 wheel: pip install 'tritonclient[grpc,http]==2.51.0' (or `make venv`)"
    )


def cudart_dir() -> pathlib.Path:
    """``nvidia/cuda_runtime/lib`` of the ``nvidia-cuda-runtime-cu12`` wheel (holds ``libcudart.so.12``)."""
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    if spec is None or not spec.submodule_search_locations:
        raise PerfAnalyzerError(
            "libcudart.so.12 is needed by perf_analyzer 2.51 (even without a GPU): pip install nvidia-cuda-runtime-cu12"
        )
    lib = pathlib.Path(next(iter(spec.submodule_search_locations))) / "lib"
    if not (lib / "libcudart.so.12").exists():
        raise PerfAnalyzerError(f"libcudart.so.12 missing from {lib}: reinstall nvidia-cuda-runtime-cu12")
    return lib


def check_libb64() -> None:
    try:
        ctypes.CDLL(LIBB64)
    except OSError:
        raise PerfAnalyzerError(
            f"{LIBB64} not found: perf_analyzer 2.51 links against it. Install it with: apt-get install libb64-0d"
        ) from None


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the CUDA runtime library on ``LD_LIBRARY_PATH``."""
    check_libb64()
    env = dict(os.environ if base is None else base)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart_dir()), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def run(args: Sequence[str], timeout: float, log: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs perf_analyzer with ``args``; raises :class:`PerfAnalyzerError` with its output tail on failure."""
    command = [str(binary()), *args]
    try:
        done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PerfAnalyzerError(f"perf_analyzer did not finish within {timeout:.0f} s: {' '.join(command)}") from exc
    if log is not None:
        log.write_text(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise PerfAnalyzerError(f"perf_analyzer exited with {done.returncode}: {' '.join(command)}\n{tail}")
    return done


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    """Rows of a ``perf_analyzer -f`` report (latencies in microseconds); only the main table, no trailers."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("Concurrency") or not row["Concurrency"].strip().isdigit():
                break  # server-side/metrics tables follow after a blank line
            rows.append(row)
    if not rows:
        raise PerfAnalyzerError(f"no measurement rows in {path}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        command = str(binary())
        env = environment()
    except PerfAnalyzerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    os.execve(command, [command, *args], env)


if __name__ == "__main__":
    sys.exit(main())
