"""docs/rtc.md's measured section and the results' rtc.md are what ``perf.rtc`` renders from the committed
rtc.json (numbers in docs come from results files, never typed by hand)."""

from __future__ import annotations

import json
import pathlib
import re

from perf import rtc as rtc_perf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_docs_measured_section_is_rendered_from_the_results_json() -> None:
    docs = rtc_perf.DOCS.read_text()
    begin = re.escape(rtc_perf.DOCS_BEGIN).replace(re.escape("{results}"), "(?P<results>[^`]+)")
    found = re.search(begin, docs)
    assert found is not None, "docs/rtc.md has no generated section"
    results = found.group("results")
    report = json.loads((REPO_ROOT / results / "rtc.json").read_text())
    assert rtc_perf.render_docs_section(report, results) in docs
    assert (REPO_ROOT / results / "rtc.md").read_text() == rtc_perf.render_markdown(report)


def test_the_recorded_command_is_the_command_line_as_typed() -> None:
    assert rtc_perf.shlex.join(["python", "-m", "perf.rtc"]) == "python -m perf.rtc"
    for results in (REPO_ROOT / "perf" / "results").glob("rtc-*/rtc.json"):
        command = json.loads(results.read_text())["command"]
        assert command == command.strip() and "  " not in command, results
