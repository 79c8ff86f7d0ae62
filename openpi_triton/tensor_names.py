"""The one key-path rule between robot observations and Triton tensor names.

A robot observation is a dict whose values are arrays, strings or nested dicts. Its Triton tensor name
is the key path joined with ``.``: ``{"images": {"cam_high": x}}`` -> ``images.cam_high``. Top-level
keys that contain ``/`` stay whole (DROID's ``observation/joint_position``), so ``/`` never separates
levels. openpi keys never contain ``.``; a key that does cannot be represented and is rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SEPARATOR = "."


def tensor_name(path: tuple[str, ...]) -> str:
    for key in path:
        if SEPARATOR in key or not key:
            raise ValueError(f"observation key {key!r} cannot be a tensor name part (empty or contains '{SEPARATOR}')")
    return SEPARATOR.join(path)


def key_path(name: str) -> tuple[str, ...]:
    return tuple(name.split(SEPARATOR))


def flatten(obs: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Nested observation -> {tensor name: leaf}."""
    flat: dict[str, Any] = {}
    for key, value in obs.items():
        if not isinstance(key, str):
            raise ValueError(f"observation keys must be strings, got {key!r}")
        path = (*prefix, key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[tensor_name(path)] = value
    return flat


def unflatten(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """{tensor name: leaf} -> nested observation."""
    obs: dict[str, Any] = {}
    for name, value in tensors.items():
        path = key_path(name)
        node = obs
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return obs
