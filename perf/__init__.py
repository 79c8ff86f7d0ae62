"""Benchmarks: native runtime, transport overheads, perf_analyzer sweeps and the robot-fleet benchmark.

Run from the repository root (``python -m perf.sweep``, ``python -m perf.fleet``); see docs/performance.md.
"""
