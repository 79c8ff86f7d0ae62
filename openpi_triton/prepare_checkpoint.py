"""Puts an openpi checkpoint where the Triton models read it (the ``checkpoint_dir`` parameter).

    python -m openpi_triton.prepare_checkpoint SOURCE [--cache DIR] [--name NAME] [--force]

SOURCE is a local openpi checkpoint directory (``params/`` orbax PyTree + ``assets/<asset_id>/norm_stats.json``),
``gs://bucket/path`` (needs ``gcsfs``; public buckets such as openpi-assets work without credentials) or
``hf://org/repo[@revision][/path]`` (needs ``huggingface_hub``). The copy lands in ``DIR/NAME`` (default
``$OPENPI_TRITON_HOME/checkpoints/<last path component>``), is written into a temporary folder beside it and
renamed into place only when complete and checked, so a model never sees half a checkpoint. A marker file,
written last, makes a second run with the same source a no-op. Progress (files, bytes) goes to stderr; the
``config.pbtxt`` line to use goes to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from openpi_triton.native import checkpoint

MARKER = ".openpi-triton-prepared.json"
# Remote schemes and the pip package whose fsspec filesystem reads them.
REMOTE_PACKAGES = {"gs": ("gcsfs", "gcsfs"), "hf": ("huggingface_hub", "huggingface_hub")}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
PROGRESS_INTERVAL_S = 2.0


class PrepareError(RuntimeError):
    """The checkpoint cannot be prepared; the message says what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a checkpoint comes from: ``scheme`` is ``local``, ``gs`` or ``hf``."""

    text: str
    scheme: str
    location: str  # local: absolute path; remote: the URI as given

    @property
    def default_name(self) -> str:
        tail = self.location.rstrip("/").rsplit("/", 1)[-1]
        return tail.split("@", 1)[0]  # hf://org/repo@rev -> repo


def parse_source(text: str) -> Source:
    match = _SCHEME.match(text)
    if match is None:
        return Source(text, "local", str(pathlib.Path(text).expanduser().resolve()))
    scheme = match.group(1).lower()
    if scheme == "file":
        return Source(text, "local", str(pathlib.Path(text[len("file://") :]).expanduser().resolve()))
    if scheme not in REMOTE_PACKAGES:
        raise PrepareError(
            f"SOURCE {text!r}: unsupported URI scheme '{scheme}://'; expected a local directory, "
            "gs://bucket/path or hf://org/repo[@revision][/path]"
        )
    if not text[match.end() :].strip("/"):
        raise PrepareError(f"SOURCE {text!r}: the URI names no bucket or repository")
    return Source(text, scheme, text)


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    relative: str
    size: int


class Progress:
    """Files and bytes so far, on stderr, at most every couple of seconds and once at the end."""

    def __init__(self, total_files: int, total_bytes: int) -> None:
        self.total_files, self.total_bytes = total_files, total_bytes
        self.files = self.bytes = 0
        self._last = 0.0
        self._start = time.monotonic()

    def advance(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL_S or self.files == self.total_files:
            self._last = now
            mib_s = self.bytes / 2**20 / max(now - self._start, 1e-6)
            _say(
                f"{self.files}/{self.total_files} files, {_size(self.bytes)}/{_size(self.total_bytes)} "
                f"({mib_s:.1f} MiB/s)"
            )


def _say(message: str) -> None:
    print(f"[prepare_checkpoint] {message}", file=sys.stderr, flush=True)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def remote_filesystem(scheme: str) -> Any:
    """The fsspec filesystem for ``scheme``, imported only when needed; a missing package is named."""
    module, package = REMOTE_PACKAGES[scheme]
    try:
        __import__(module)
        import fsspec
    except ImportError:
        raise PrepareError(
            f"reading {scheme}:// checkpoints needs the '{package}' package: pip install {package}"
        ) from None
    return fsspec.filesystem("gcs" if scheme == "gs" else "hf")


def _list_local(root: pathlib.Path) -> list[RemoteFile]:
    if not root.is_dir():
        raise PrepareError(f"SOURCE {str(root)!r} does not exist or is not a directory")
    return [
        RemoteFile(str(p.relative_to(root)), p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    ]


def _list_remote(fs: Any, source: Source) -> tuple[str, list[RemoteFile]]:
    root = fs._strip_protocol(source.location).rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    files = []
    for path, info in sorted(found.items()):
        if info.get("type", "file") != "file" or not path.startswith(root + "/"):
            continue
        files.append(RemoteFile(path[len(root) + 1 :], int(info.get("size") or 0)))
    if not files:
        raise PrepareError(f"SOURCE {source.text!r} holds no files (wrong path, or no access)")
    return root, files


def _copy_all(
    files: list[RemoteFile], target: pathlib.Path, fetch: Callable[[RemoteFile, pathlib.Path], None]
) -> Progress:
    progress = Progress(len(files), sum(f.size for f in files))
    _say(f"copying {progress.total_files} files, {_size(progress.total_bytes)}")
    for item in files:
        destination = target / item.relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        fetch(item, destination)
        progress.advance(item.size)
    return progress


def fetch_into(source: Source, target: pathlib.Path) -> Progress:
    """Copies every file of ``source`` into the (empty) folder ``target``."""
    if source.scheme == "local":
        root = pathlib.Path(source.location)
        return _copy_all(_list_local(root), target, lambda f, dest: shutil.copy2(root / f.relative, dest))
    fs = remote_filesystem(source.scheme)
    root, files = _list_remote(fs, source)
    return _copy_all(files, target, lambda f, dest: fs.get_file(f"{root}/{f.relative}", str(dest)))


@dataclasses.dataclass(frozen=True)
class CheckedCheckpoint:
    path: pathlib.Path
    asset_ids: tuple[str, ...]
    param_leaves: int


def _leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, Mapping):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


def check_checkpoint(path: pathlib.Path) -> CheckedCheckpoint:
    """What the native runtime reads, without loading the weights: the orbax tree's metadata (every array's
    shape) and every ``assets/<asset_id>/norm_stats.json``."""
    import orbax.checkpoint as ocp

    try:
        resolved = checkpoint.resolve_checkpoint_dir(path)
        metadata = ocp.PyTreeCheckpointer().metadata(resolved / "params")
        tree = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
        if "params" not in tree:
            raise checkpoint.CheckpointError(f"{resolved / 'params'} has no top-level 'params' item")
        assets = resolved / "assets"
        asset_ids = tuple(
            sorted(str(p.parent.relative_to(assets)) for p in assets.rglob("norm_stats.json"))
            if assets.is_dir()
            else ()
        )
        if not asset_ids:
            raise checkpoint.CheckpointError(f"{assets} holds no <asset_id>/norm_stats.json")
        for asset_id in asset_ids:
            checkpoint.load_norm_stats(resolved, asset_id)
    except (checkpoint.CheckpointError, ValueError, OSError) as exc:
        raise PrepareError(f"not a usable openpi checkpoint: {exc}") from None
    return CheckedCheckpoint(resolved, asset_ids, sum(1 for _ in _leaves(tree["params"])))


def default_cache() -> pathlib.Path:
    home = os.environ.get("OPENPI_TRITON_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "openpi-triton")
    return pathlib.Path(home) / "checkpoints"


def _read_marker(target: pathlib.Path) -> dict[str, Any] | None:
    marker = target / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None


def prepare(
    source_text: str, cache: pathlib.Path, name: str | None = None, *, force: bool = False
) -> CheckedCheckpoint:
    """Copies ``source_text`` to ``cache/name`` unless an identical prepared copy is there; returns it checked."""
    source = parse_source(source_text)
    name = name or source.default_name
    if not name or "/" in name or name.startswith("."):
        raise PrepareError(f"--name {name!r}: expected a plain folder name (no '/', not starting with '.')")
    target = cache.expanduser().resolve() / name
    marker = _read_marker(target)
    if marker is not None and marker.get("source") == source.location and not force:
        _say(f"{target} is already prepared from {source.text}; nothing to do (--force copies again)")
        return check_checkpoint(target)
    if target.exists() and not force:
        what = f"prepared from {marker.get('source')!r}" if marker else "not prepared by this tool"
        raise PrepareError(f"{target} exists ({what}); choose another --name, or --force to replace it")
    if source.scheme == "local" and pathlib.Path(source.location) == target:
        raise PrepareError(f"SOURCE and target are the same folder ({target})")

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
    try:
        _say(f"{source.text} -> {target}")
        progress = fetch_into(source, staging)
        checked = check_checkpoint(staging)
        record = {
            "source": source.location,
            "files": progress.files,
            "bytes": progress.bytes,
            "asset_ids": list(checked.asset_ids),
            "prepared_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        (staging / MARKER).write_text(json.dumps(record, indent=1) + "\n")  # last: marks the copy complete
        if target.exists():  # --force: the old copy goes only once the new one is complete
            old = target.with_name(f".{name}.old-{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(checked, path=target)


def parameter_line(path: pathlib.Path) -> str:
    return f'parameters {{ key: "checkpoint_dir" value: {{ string_value: "{path}" }} }}'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m openpi_triton.prepare_checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SOURCE", help="local dir, gs://bucket/path or hf://org/repo[/path]")
    parser.add_argument("--cache", type=pathlib.Path, default=None, help=f"cache folder (default {default_cache()})")
    parser.add_argument("--name", default=None, help="folder name in the cache (default: SOURCE's last component)")
    parser.add_argument("--force", action="store_true", help="copy again even if a prepared copy is there")
    args = parser.parse_args(argv)
    try:
        checked = prepare(args.source, args.cache or default_cache(), args.name, force=args.force)
    except PrepareError as exc:
        print(f"[prepare_checkpoint] error: {exc}", file=sys.stderr)
        return 1
    _say(f"checked: {checked.param_leaves} parameter arrays, norm stats for {', '.join(checked.asset_ids)}")
    _say("set it in the config.pbtxt of `action` (and `planner` for pi0.5), as the server sees this path:")
    print(parameter_line(checked.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
