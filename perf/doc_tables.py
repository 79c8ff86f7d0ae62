"""Tables in the docs are copies of tables in committed results files, never typed.

A docs block

    <!-- table: perf/results/capacity-20261202/capacity.md 2 -->
    ...
    <!-- end table -->

holds the 2nd markdown table (1-based) of that results file. ``python -m perf.doc_tables`` rewrites every block
of README.md and docs/*.md from its file; ``--check`` only reports blocks that differ (a test runs it).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (\S+) (\d+) -->\n)(.*?)(<!-- end table -->)", re.DOTALL)


def tables(markdown: str) -> list[str]:
    """The markdown tables of a file, in order (runs of lines starting with ``|``)."""
    found, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current) + "\n")
            current = []
    if current:
        found.append("\n".join(current) + "\n")
    return found


def render(text: str, repo: pathlib.Path = REPO) -> str:
    def replace(match: re.Match[str]) -> str:
        source, index = repo / match.group(2), int(match.group(3))
        available = tables(source.read_text()) if source.is_file() else []
        if not 1 <= index <= len(available):
            raise ValueError(f"{match.group(2)}: no table {index} (it has {len(available)})")
        return match.group(1) + available[index - 1] + match.group(5)

    return BLOCK.sub(replace, text)


def documents(repo: pathlib.Path = REPO) -> list[pathlib.Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a block differs from its results file")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(str(path.relative_to(REPO)))
            if not args.check:
                path.write_text(new)
    if stale:
        print(("differ from their results files: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
