"""``attack.md`` from ``attack.json``: the table ``make attack`` printed, for the docs to link.

python -m perf.attack_report perf/results/attack-<name>/attack.json
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

MiB = 2**20


def _cell(text: Any, width: int = 110) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _witnesses(row: dict[str, Any]) -> tuple[str, str]:
    witnesses = row.get("witnesses") or {}
    if not witnesses:
        return "-", "-"
    errors = sum(w.get("errors", 0) + w.get("wrong", 0) for w in witnesses.values())
    worst = max(witnesses.values(), key=lambda w: w.get("max_ms", 0.0) / max(w.get("limit_ms", 1.0), 1e-9))
    return str(errors), f"{worst.get('max_ms', 0):.0f} / {worst.get('limit_ms', 0):.0f}"


def _bridge(row: dict[str, Any]) -> str:
    before, after = (row.get(k) or {} for k in ("before", "after"))
    rss_before, rss_after = (before.get("rss") or {}).get("bridge"), (after.get("rss") or {}).get("bridge")
    if rss_before is None or rss_after is None:
        return "-"
    return f"{rss_before / MiB:.0f} → {rss_after / MiB:.0f}"


def markdown(report: dict[str, Any], source: str) -> str:
    rows = report["attacks"]
    passed = sum(1 for r in rows if r["verdict"] != "FAIL")
    lines = [
        f"# make attack: {passed}/{len(rows)} passed",
        "",
        f"From `{source}`. Rules: " + "; ".join(f"{k}: {v}" for k, v in report.get("rules", {}).items()) + ".",
        "Witness errors count errors and wrong answers of both witness robots during the attack (fault attacks",
        "allow errors, then need recovery); latency is the worse witness's max against its limit, in ms.",
        "",
        "| attack | expected | observed | witness errors | witness max / limit ms | bridge RSS MiB | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        errors, latency = _witnesses(row)
        cells = [row["name"], _cell(row["expected"], 70), _cell(row["observed"]), errors, latency, _bridge(row)]
        lines.append("| " + " | ".join([*cells, row["verdict"]]) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(json_path: pathlib.Path) -> pathlib.Path:
    report = json.loads(json_path.read_text())
    target = json_path.with_suffix(".md")
    target.write_text(markdown(report, str(json_path)))
    return target


if __name__ == "__main__":
    print(write_markdown(pathlib.Path(sys.argv[1])))
