"""PNG plots of sweep and fleet results (matplotlib, headless)."""

from __future__ import annotations

import pathlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

PERCENTILES = ("p50", "p90", "p99")


def sweep_plot(rows: Sequence[Mapping[str, Any]], model: str, path: pathlib.Path) -> pathlib.Path:
    """Latency p50 / p90 / p99 (ms) against throughput, one line per server configuration, points = concurrency."""
    series: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["model"] == model:
            series[row["variant"]].append(row)
    fig, axes = plt.subplots(1, len(PERCENTILES), figsize=(15, 4.5), sharey=True)
    for ax, pct in zip(axes, PERCENTILES, strict=True):
        for variant, points in sorted(series.items()):
            points = sorted(points, key=lambda r: r["concurrency"])
            xs = [p["throughput"] for p in points]
            ys = [p[f"{pct}_ms"] for p in points]
            (line,) = ax.plot(xs, ys, marker="o", label=variant)
            for p, x, y in zip(points, xs, ys, strict=True):
                ax.annotate(
                    str(p["concurrency"]),
                    (x, y),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color=line.get_color(),
                )
        ax.set_title(f"{model}: {pct} latency")
        ax.set_xlabel("throughput (inferences / s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("latency (ms)")
    axes[-1].legend(fontsize=8, title="labels = concurrency", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fleet_plots(rows: Sequence[Mapping[str, Any]], rate_hz: float, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Per transport against robot count: aggregate Hz (with the demand line), p50 / p99 latency, missed deadlines."""
    by_transport: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_transport[row["transport"]].append(row)
    fig, (ax_hz, ax_lat, ax_miss) = plt.subplots(1, 3, figsize=(16, 4.5))
    robots_all = sorted({r["robots"] for r in rows})
    ax_hz.plot(robots_all, [n * rate_hz for n in robots_all], "k--", lw=1, label=f"demand ({rate_hz:g} Hz each)")
    for transport, points in by_transport.items():
        points = sorted(points, key=lambda r: r["robots"])
        robots = [p["robots"] for p in points]
        (line,) = ax_hz.plot(robots, [p["aggregate_hz"] for p in points], marker="o", label=transport)
        color = line.get_color()
        ax_lat.plot(robots, [p["p50_ms"] for p in points], marker="o", color=color, label=f"{transport} p50")
        ax_lat.plot(robots, [p["p99_ms"] for p in points], marker="x", ls=":", color=color, label=f"{transport} p99")
        ax_miss.plot(robots, [100 * p["missed_fraction"] for p in points], marker="o", color=color, label=transport)
    for ax, title, ylabel in (
        (ax_hz, "aggregate throughput", "calls / s (all robots)"),
        (ax_lat, "round trip per call", "ms"),
        (ax_miss, "missed deadlines", f"% of calls over {1000 / rate_hz:.0f} ms"),
    ):
        ax.set_title(title)
        ax.set_xlabel("robots")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(robots_all, [str(n) for n in robots_all])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_lat.set_yscale("log")
    fig.tight_layout()
    path = out_dir / "fleet.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
