"""The README stays a short entry point and no link of the docs leads nowhere (files and section anchors)."""

from __future__ import annotations

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README_MAX_LINES = 320
DOCUMENTS = sorted(
    [REPO / "README.md", REPO / "flash-transport" / "README.md", *(REPO / "docs").glob("*.md")],
)
# [text](target) outside code spans; targets with a scheme are the web's business.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _outside_code(text: str) -> str:
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(document: pathlib.Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in _outside_code(document.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            heading = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(heading.replace(" ", "-"))
    return anchors


def _links(document: pathlib.Path) -> list[str]:
    return [t for t in LINK.findall(_outside_code(document.read_text())) if not re.match(r"[a-z]+:", t)]


def test_the_readme_is_short() -> None:
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; depth belongs in docs/"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(document: pathlib.Path) -> None:
    broken = []
    for target in _links(document):
        path_part, _, anchor = target.partition("#")
        resolved = (document.parent / path_part).resolve() if path_part else document
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no section #{anchor} in {resolved.relative_to(REPO)})")
    assert not broken, f"{document.relative_to(REPO)}: broken links: {broken}"


def test_the_link_check_sees_links() -> None:
    """The checks above would pass on documents it cannot read; the README does link into docs/."""
    assert any(t.startswith("docs/") for t in _links(REPO / "README.md"))
