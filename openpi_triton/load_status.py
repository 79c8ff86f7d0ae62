"""Remembers a model's failed load, so that a bad edit is reported once and not re-tried at full cost.

In poll mode Triton tries a model that failed to load again at every repository poll: with a bad edit
(a misspelled config, a missing checkpoint) that is a new stub, a checkpoint load attempt and a traceback
every few seconds, while the old copy keeps serving and the repository index still says READY. So a model
records its failure here (outside the repository, so that Triton does not take it for an edit), and a later
attempt with the same inputs (its config.pbtxt, the action model's it inherits from, the checkpoint folder)
fails at once with one short line pointing at the first report. Any change of those inputs tries again; a
load that succeeds clears the record. The bridge's ``GET /models`` lists the records it can read (same host).

Records live in ``$OPENPI_TRITON_HOME/load-status/`` (default ``~/.cache/openpi-triton/load-status``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any


def status_dir() -> pathlib.Path:
    home = os.environ.get("OPENPI_TRITON_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "openpi-triton")
    return pathlib.Path(home) / "load-status"


def _record_file(model_dir: pathlib.Path) -> pathlib.Path:
    # Several repositories (and servers) may share one home: the model's folder names the record.
    key = hashlib.sha256(str(model_dir.absolute()).encode()).hexdigest()[:16]
    return status_dir() / f"{model_dir.name}-{key}.json"


def fingerprint(model_dir: pathlib.Path, inherited_from: pathlib.Path | None, checkpoint_dir: str) -> str:
    """What a load depends on that an operator changes: the config files, and the checkpoint folder's state."""
    parts = []
    for config in (model_dir / "config.pbtxt", inherited_from):
        parts.append(config.read_text(errors="replace") if config is not None and config.is_file() else "-")
    checkpoint = pathlib.Path(checkpoint_dir) if checkpoint_dir else None
    parts.append(str(checkpoint.stat().st_mtime_ns) if checkpoint is not None and checkpoint.exists() else "absent")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def previous_failure(model_dir: pathlib.Path, current: str) -> dict[str, Any] | None:
    """The recorded failure of a load with exactly these inputs, if any."""
    try:
        record = json.loads(_record_file(model_dir).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("fingerprint") == current else None


def record_failure(model_dir: pathlib.Path, current: str, message: str) -> None:
    record = {"model": model_dir.name, "model_dir": str(model_dir), "fingerprint": current,
              "message": message, "time": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    path = _record_file(model_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(".tmp")
        staged.write_text(json.dumps(record))
        os.replace(staged, path)
    except OSError:
        pass  # a read-only home: failures are reported every time, as without this


def clear(model_dir: pathlib.Path) -> None:
    try:
        _record_file(model_dir).unlink()
    except OSError:
        pass


def failures(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every record readable here (optionally only for model ``names``), newest first."""
    records = []
    for path in sorted(status_dir().glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and (names is None or record.get("model") in names):
            records.append({k: record.get(k) for k in ("model", "model_dir", "message", "time")})
    return sorted(records, key=lambda r: str(r.get("time")), reverse=True)
