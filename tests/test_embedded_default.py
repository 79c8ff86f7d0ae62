"""The embedded default model: built locally in seconds, loads in the native runtime, serves both slots."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import numpy as np

from openpi_triton.native import checkpoint, tokenizer, variants
from openpi_triton.native.planner import SubtaskPlanner
from openpi_triton.native.policy import NativePolicy
from openpi_triton.native.tiny import EmbeddedDefault, ensure_embedded_default


def test_builds_in_seconds_via_the_cli(tmp_path: pathlib.Path) -> None:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "openpi_triton.native.tiny", "--out", str(tmp_path / "default")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert time.perf_counter() - start < 60
    paths = json.loads(result.stdout)
    assert paths["model_config_name"] == "pi05_aloha"
    assert (pathlib.Path(paths["checkpoint_dir"]) / "params" / "_METADATA").exists()
    assert (pathlib.Path(paths["checkpoint_dir"]) / "assets" / "trossen" / "norm_stats.json").exists()


def test_second_call_reuses_the_complete_copy(embedded_default: EmbeddedDefault) -> None:
    before = embedded_default.tokenizer_path.stat().st_mtime_ns
    again = ensure_embedded_default(embedded_default.root)
    assert again.tokenizer_path.stat().st_mtime_ns == before


def test_checkpoint_is_a_pi05_with_openpi_layout(embedded_default: EmbeddedDefault) -> None:
    params = checkpoint.load_params(embedded_default.checkpoint_dir)
    spec = variants.infer_spec(params)
    assert (
        spec.pi05 and spec.llm == variants.GEMMA_VARIANTS["dummy"] and spec.expert == variants.GEMMA_VARIANTS["dummy"]
    )
    assert spec.vocab_size == 1024
    stats = checkpoint.load_norm_stats(embedded_default.checkpoint_dir, "trossen")
    assert stats["state"].q01 is not None and stats["actions"].mean.shape == (14,)


def test_tokenizer_has_paligemma_special_ids(embedded_default: EmbeddedDefault) -> None:
    sp = tokenizer.load_sentencepiece(embedded_default.tokenizer_path)
    assert sp.vocab_size() == 1024
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    ids = sp.encode("Task: fold the towel, State: 12 255;\nAction: ")
    assert sp.decode(ids) == "Task: fold the towel, State: 12 255;\nAction: "


def test_policy_and_planner_answer(tiny_policy: NativePolicy, tiny_planner: SubtaskPlanner) -> None:
    obs = tiny_policy.config.embodiment.example(np.random.default_rng(3), "fold the towel")
    result = tiny_policy.infer(obs)
    assert result["actions"].shape == (50, 14) and np.all(np.isfinite(result["actions"]))
    assert tiny_policy.metadata["action_horizon"] == 50
    assert tiny_policy.metadata["reset_pose"] == [0, -1.5, 1.5, 0, 0, 0]
    assert next(s["path"] for s in tiny_policy.metadata["image_specs"]) == ["images", "cam_high"]
    subtask = tiny_planner.generate("Fold the towel.", obs["images"])
    assert len(subtask.token_ids) == 20 and subtask.ms > 0
    assert subtask.text == tiny_planner.detokenize(subtask.token_ids)


def test_default_rng_sequence_matches_openpi_policy(tiny_policy: NativePolicy) -> None:
    """Without caller noise, consecutive calls draw fresh noise (openpi's key(0) split per call)."""
    obs = tiny_policy.config.embodiment.example(np.random.default_rng(4), "fold the towel")
    first, second = tiny_policy.infer(obs)["actions"], tiny_policy.infer(obs)["actions"]
    assert not np.allclose(first, second)
