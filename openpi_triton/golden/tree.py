"""Reading ``golden-tree/1`` pairs: ``<name>.npz`` (array leaves) + ``<name>.json`` (paths, dtypes, strings).

The JSON's ``path`` lists rebuild the dict, because single keys may contain '/' (DROID's
``observation/joint_position``) while other observations nest (ALOHA's ``images/cam_high``).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np


def load_tree(folder: pathlib.Path, name: str) -> dict[str, Any]:
    """Loads ``folder/name.{json,npz}`` into a nested dict of numpy arrays and strings."""
    meta = json.loads((folder / f"{name}.json").read_text())
    if meta.get("format") != "golden-tree/1":
        raise ValueError(f"{folder / name}.json: unsupported format {meta.get('format')!r}")
    tree: dict[str, Any] = {}
    with np.load(folder / f"{name}.npz", allow_pickle=False) as npz:
        for entry in meta["arrays"]:
            value = npz[entry["npz_entry"]]
            if value.ndim == 0:
                value = value[()]
            _insert(tree, entry["path"], value)
    for entry in meta.get("strings", []):
        _insert(tree, entry["path"], entry["value"])
    return tree


def _insert(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
