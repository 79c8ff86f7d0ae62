"""The RTC results' rtc.md is what ``perf.rtc`` renders from the committed rtc.json, and docs/rtc.md's tables are
copies of its tables (numbers in docs come from results files, never typed by hand)."""

from __future__ import annotations

import json
import pathlib

from perf import doc_tables
from perf import rtc as rtc_perf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = "perf/results/rtc-20261201"


def test_the_results_markdown_is_rendered_from_the_json() -> None:
    report = json.loads((REPO_ROOT / RESULTS / "rtc.json").read_text())
    assert (REPO_ROOT / RESULTS / "rtc.md").read_text() == rtc_perf.render_markdown(report)


def test_the_docs_tables_are_the_results_tables() -> None:
    docs = (REPO_ROOT / "docs" / "rtc.md").read_text()
    blocks = doc_tables.BLOCK.findall(docs)
    assert {b[1] for b in blocks} == {f"{RESULTS}/rtc.md"} and len(blocks) == 2
    assert doc_tables.render(docs) == docs, "run `python -m perf.doc_tables`"


def test_the_recorded_command_is_the_command_line_as_typed() -> None:
    assert rtc_perf.shlex.join(["python", "-m", "perf.rtc"]) == "python -m perf.rtc"
    for results in (REPO_ROOT / "perf" / "results").glob("rtc-*/rtc.json"):
        command = json.loads(results.read_text())["command"]
        assert command == command.strip() and "  " not in command, results
