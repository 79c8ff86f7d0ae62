"""Edits of a model's ``config.pbtxt`` text that keep its comments and layout (benchmarks, deployments)."""

from __future__ import annotations

import re


def set_parameter(config_text: str, key: str, value: str) -> str:
    """``parameters { key: KEY ... }`` set to ``value``; a missing parameter is an error naming it."""
    pattern = re.compile(r'(parameters \{ key: "' + re.escape(key) + r'" value: \{ string_value: )"[^"]*"')
    if not pattern.search(config_text):
        raise KeyError(f"config.pbtxt has no parameter {key!r}")
    return pattern.sub(lambda m: m.group(1) + '"' + value.replace('"', '\\"') + '"', config_text)


def set_field(config_text: str, pattern: str, replacement: str, what: str) -> str:
    """The first match of ``pattern`` replaced; ``what`` names the field when there is none."""
    new, count = re.subn(pattern, replacement, config_text, count=1, flags=re.DOTALL)
    if count != 1:
        raise ValueError(f"config.pbtxt: cannot find {what} to rewrite")
    return new


def set_instance_group(config_text: str, count: int, gpus: int) -> str:
    """``count`` instances on CPU (``gpus`` 0), or ``count`` on each of GPUs 0..gpus-1."""
    if gpus > 0:
        devices = ", ".join(str(g) for g in range(gpus))
        group = f"{{ kind: KIND_GPU, count: {count}, gpus: [ {devices} ] }}"
    else:
        group = f"{{ kind: KIND_CPU, count: {count} }}"
    return set_field(config_text, r"instance_group\s*\[[^\]]*\]", f"instance_group [ {group} ]", "instance_group")
