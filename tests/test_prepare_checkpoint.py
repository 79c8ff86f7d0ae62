"""``python -m openpi_triton.prepare_checkpoint``: copies, checks, skips a second time, refuses bad sources."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from openpi_triton import prepare_checkpoint as pc
from openpi_triton.native.checkpoint import load_params
from openpi_triton.native.tiny import EmbeddedDefault


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openpi_triton.prepare_checkpoint", *args], capture_output=True, text=True, timeout=300
    )


def test_prepares_a_local_checkpoint_then_skips_it(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "pi05_tiny"
    shutil.copytree(embedded_default.checkpoint_dir, source)
    cache = tmp_path / "cache"

    first = _run(str(source), "--cache", str(cache))
    assert first.returncode == 0, first.stderr
    target = cache / "pi05_tiny"
    assert first.stdout.strip() == f'parameters {{ key: "checkpoint_dir" value: {{ string_value: "{target}" }} }}'
    assert "files," in first.stderr and "norm stats for trossen" in first.stderr, first.stderr
    marker = json.loads((target / pc.MARKER).read_text())
    assert marker["source"] == str(source.resolve()) and marker["asset_ids"] == ["trossen"]
    assert marker["bytes"] == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    # What the runtime loads is what was copied.
    copied, original = load_params(target), load_params(source)
    copied_leaves, copied_tree = jax.tree.flatten(copied)
    original_leaves, original_tree = jax.tree.flatten(original)
    assert copied_tree == original_tree
    assert all(np.array_equal(a, b) for a, b in zip(copied_leaves, original_leaves, strict=True))
    assert [p.name for p in cache.iterdir()] == ["pi05_tiny"], "the staging folder was left behind"

    mtime = (target / pc.MARKER).stat().st_mtime_ns
    second = _run(str(source), "--cache", str(cache))
    assert second.returncode == 0 and "already prepared" in second.stderr, second.stderr
    assert second.stdout == first.stdout
    assert (target / pc.MARKER).stat().st_mtime_ns == mtime, "a complete copy was copied again"


def test_force_replaces_and_name_chooses_the_folder(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    checked = pc.prepare(str(embedded_default.checkpoint_dir), cache, "tiny")
    assert checked.path == cache / "tiny" and checked.asset_ids == ("trossen",) and checked.param_leaves > 10
    again = pc.prepare(str(embedded_default.checkpoint_dir), cache, "tiny", force=True)
    assert again.path == cache / "tiny" and sorted(os.listdir(cache)) == ["tiny"]


def test_an_unrelated_folder_in_the_way_is_not_overwritten(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> None:
    cache = tmp_path / "cache"
    (cache / "checkpoint").mkdir(parents=True)
    (cache / "checkpoint" / "mine.txt").write_text("keep me")
    with pytest.raises(pc.PrepareError, match="not prepared by this tool"):
        pc.prepare(str(embedded_default.checkpoint_dir), cache)
    assert (cache / "checkpoint" / "mine.txt").read_text() == "keep me"


def test_missing_source_directory_is_an_error(tmp_path: pathlib.Path) -> None:
    result = _run(str(tmp_path / "nowhere"), "--cache", str(tmp_path / "cache"))
    assert result.returncode == 1
    assert f"SOURCE '{tmp_path / 'nowhere'}' does not exist or is not a directory" in result.stderr, result.stderr
    assert not (tmp_path / "cache" / "nowhere").exists()


def test_a_folder_that_is_no_checkpoint_is_refused_and_nothing_is_left(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "not_a_checkpoint"
    (source / "params").mkdir(parents=True)
    (source / "params" / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(pc.PrepareError, match=r"not a usable openpi checkpoint: .*no params/_METADATA"):
        pc.prepare(str(source), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_norm_stats_are_required(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "no_assets"
    shutil.copytree(embedded_default.checkpoint_dir, source)
    shutil.rmtree(source / "assets")
    with pytest.raises(pc.PrepareError, match=re.escape("holds no <asset_id>/norm_stats.json")):
        pc.prepare(str(source), tmp_path / "cache")


@pytest.mark.parametrize("uri", ["s3://bucket/pi05_base", "https://example.com/pi05_base", "ftp://x/y"])
def test_unsupported_uri_schemes_are_refused(uri: str, tmp_path: pathlib.Path) -> None:
    result = _run(uri, "--cache", str(tmp_path))
    scheme = uri.split("://")[0]
    assert result.returncode == 1
    assert f"unsupported URI scheme '{scheme}://'" in result.stderr, result.stderr
    assert "gs://bucket/path or hf://org/repo" in result.stderr


def test_remote_sources_name_the_package_they_need(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as it does where the package is not installed.
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(pc.PrepareError, match=r"needs the 'gcsfs' package: pip install gcsfs"):
        pc.remote_filesystem("gs")
    with pytest.raises(pc.PrepareError, match=r"needs the 'huggingface_hub' package: pip install huggingface_hub"):
        pc.remote_filesystem("hf")


def test_source_parsing() -> None:
    assert pc.parse_source("gs://openpi-assets/checkpoints/pi05_base/").default_name == "pi05_base"
    assert pc.parse_source("hf://lerobot/pi05_base@main").default_name == "pi05_base"
    assert pc.parse_source("file:///ckpt/pi0_aloha").location == "/ckpt/pi0_aloha"
    with pytest.raises(pc.PrepareError, match="names no bucket"):
        pc.parse_source("gs://")
    with pytest.raises(pc.PrepareError, match=re.escape("--name '../x'")):
        pc.prepare("/nonexistent", pathlib.Path("/tmp"), "../x")
