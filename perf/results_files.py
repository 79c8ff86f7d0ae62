"""A results folder's two files: ``<stem>.json`` (every number, with the command, date and machine that made
them) and ``<stem>.md`` (rendered from that JSON), as committed under ``perf/results/<name>/``."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
from collections.abc import Mapping
from typing import Any


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}"


def stamp(command: str) -> dict[str, str]:
    """The fields every report starts with."""
    return {
        "command": command.strip(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }


def write(results: pathlib.Path, stem: str, report: Mapping[str, Any], markdown: str) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (results / f"{stem}.md").write_text(markdown)
