"""The one rule for a planner prompt format (``generation_prompt_format``), wherever it comes from.

A format is applied with ``str.format(task=...)`` to every planner request, so a format an operator or a
client sends must not be able to do more than splice the task in: its replacement fields must be bare
``{task}`` (no conversion such as ``!r``, no format spec such as ``:>10000000``, no attribute or index such
as ``{task.__class__}`` or ``{0}``), and its length is capped. ``{{`` and ``}}`` stay literal braces.
The bridge's config and admin API and the planner model all call :func:`validate_prompt_format`.
"""

from __future__ import annotations

import string
from typing import Any

DEFAULT_GENERATION_PROMPT_FORMAT = "Task: {task}. Subtask: "
MAX_PROMPT_FORMAT_CHARS = 1024


def validate_prompt_format(prompt_format: Any, field: str = "generation_prompt_format") -> str:
    """Returns ``prompt_format`` if it is safe to apply; else ``ValueError`` naming ``field`` and the problem."""
    if not isinstance(prompt_format, str):
        raise ValueError(f"'{field}': expected a string containing '{{task}}', got {type(prompt_format).__name__}")
    if len(prompt_format) > MAX_PROMPT_FORMAT_CHARS:
        raise ValueError(f"'{field}': {len(prompt_format)} characters is over the limit of {MAX_PROMPT_FORMAT_CHARS}")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(prompt_format)]
    except ValueError as exc:
        raise ValueError(f"'{field}': invalid format string {prompt_format[:80]!r} ({exc})") from None
    used = [f for f in fields if f[0] is not None]
    for name, spec, conversion in used:
        if name != "task" or spec or conversion:
            text = "{" + (name or "") + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"'{field}': only the bare field '{{task}}' is allowed, got {text[:80]!r} in {prompt_format[:80]!r}"
            )
    if not used:
        raise ValueError(f"'{field}': must contain '{{task}}', got {prompt_format[:80]!r}")
    return prompt_format
