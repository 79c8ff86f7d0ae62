"""Reading openpi checkpoint directories: ``<dir>/params`` (orbax PyTree) and ``<dir>/assets/<id>/norm_stats.json``."""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from openpi_triton.domain.normalize import NormStats

logger = logging.getLogger(__name__)

_REMOTE_SCHEMES = ("gs://", "hf://", "s3://", "http://", "https://")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used, with a message saying how to fix it."""


def resolve_checkpoint_dir(checkpoint_dir: str | pathlib.Path) -> pathlib.Path:
    """Checks that ``checkpoint_dir`` is a local openpi checkpoint directory (the one that contains ``params/``)."""
    text = str(checkpoint_dir)
    if text.startswith(_REMOTE_SCHEMES):
        raise CheckpointError(
            f"checkpoint_dir {text!r} is a remote URI; the native runtime reads local directories only. "
            "Prepare a local copy first, e.g. `gsutil -m cp -r gs://openpi-assets/checkpoints/pi05_base <dir>` "
            "or `huggingface-cli download <repo> --local-dir <dir>`, then point checkpoint_dir at the directory "
            "that contains params/ and assets/."
        )
    path = pathlib.Path(text).expanduser().resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint_dir {str(path)!r} does not exist or is not a directory")
    if (path / "_METADATA").exists() and not (path / "params").exists():
        raise CheckpointError(
            f"checkpoint_dir {str(path)!r} looks like the params/ folder itself; point it at its parent directory"
        )
    if not (path / "params" / "_METADATA").exists():
        if (path / "model.safetensors").exists():
            raise CheckpointError(
                f"checkpoint_dir {str(path)!r} holds a PyTorch checkpoint (model.safetensors); "
                "the native runtime reads JAX (orbax) checkpoints: use runtime 'openpi' for PyTorch"
            )
        raise CheckpointError(f"checkpoint_dir {str(path)!r} has no params/_METADATA (not an openpi JAX checkpoint)")
    return path


def _strip_value_leaves(tree: Mapping[str, Any]) -> Any:
    """nnx.State saves put every leaf under a trailing 'value' key; pure-dict saves do not. Accept both."""
    if set(tree) == {"value"} and not isinstance(tree["value"], Mapping):
        return tree["value"]
    return {k: _strip_value_leaves(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def load_params(checkpoint_dir: str | pathlib.Path, dtype: str | np.dtype | None = None) -> dict[str, Any]:
    """Loads the ``params`` item of an openpi orbax checkpoint as a nested dict of numpy arrays.

    ``dtype`` (e.g. ``"bfloat16"`` on GPU, ``"float32"`` for parity checks) casts every floating leaf;
    ``None`` keeps what is on disk.
    """
    import jax
    import orbax.checkpoint as ocp

    path = resolve_checkpoint_dir(checkpoint_dir) / "params"
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = checkpointer.restore(path, restore_args=restore_args)
    if "params" not in restored:
        raise CheckpointError(f"{path} has no top-level 'params' item (found {sorted(restored)})")
    params = _strip_value_leaves(restored["params"])
    if dtype is not None:
        target = np.dtype(dtype) if str(dtype) != "bfloat16" else jax.numpy.bfloat16
        params = jax.tree.map(lambda x: x.astype(target) if np.issubdtype(x.dtype, np.floating) else x, params)
    return params


def load_norm_stats(checkpoint_dir: str | pathlib.Path, asset_id: str) -> dict[str, NormStats]:
    """Reads ``<dir>/assets/<asset_id>/norm_stats.json`` (asset ids may contain '/')."""
    path = pathlib.Path(checkpoint_dir) / "assets" / asset_id / "norm_stats.json"
    if not path.exists():
        available = sorted(
            str(p.parent.relative_to(path.parents[len(pathlib.Path(asset_id).parts)]))
            for p in (pathlib.Path(checkpoint_dir) / "assets").rglob("norm_stats.json")
        )
        raise CheckpointError(f"norm stats {str(path)!r} not found (asset id {asset_id!r}); available: {available}")
    raw = json.loads(path.read_text())
    stats = raw.get("norm_stats", raw)
    result: dict[str, NormStats] = {}
    for key, entry in stats.items():

        def vec(name: str, entry: dict = entry, key: str = key) -> np.ndarray | None:
            if entry.get(name) is None:
                return None
            return np.asarray(entry[name], dtype=np.float64)

        mean, std = vec("mean"), vec("std")
        if mean is None or std is None:
            raise CheckpointError(f"{path}: norm stats for {key!r} need 'mean' and 'std'")
        result[key] = NormStats(mean=mean, std=std, q01=vec("q01"), q99=vec("q99"))
    return result
