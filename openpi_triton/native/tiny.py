"""The embedded default model: a tiny, seeded, random-weight pi0.5 ALOHA checkpoint and a tiny tokenizer.

``make serve`` and the tests use it when no checkpoint is configured. It is built locally in a few seconds
(no download): an openpi-layout checkpoint (orbax ``params/`` + ``assets/trossen/norm_stats.json``) and a
1024-piece SentencePiece BPE model trained on a generated robot-task corpus, with PaliGemma's special ids
(pad 0, eos 1, bos 2, unk 3). Random weights produce meaningless actions and subtasks; the shapes, the
protocol and the compute path are the real ones.

    python -m openpi_triton.native.tiny [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "pi05_aloha"
VOCAB_SIZE = 1024
SEED = 20261123
TINY_SIGLIP = "mu/56"
_COMPLETE_MARKER = "embedded_default.json"


@dataclasses.dataclass(frozen=True)
class EmbeddedDefault:
    root: pathlib.Path

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        return self.root / "checkpoint"

    @property
    def tokenizer_path(self) -> pathlib.Path:
        return self.root / "tokenizer.model"

    @property
    def config_name(self) -> str:
        return DEFAULT_CONFIG_NAME


def default_root() -> pathlib.Path:
    """``$OPENPI_TRITON_HOME/default`` or ``~/.cache/openpi-triton/default``."""
    home = os.environ.get("OPENPI_TRITON_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "openpi-triton")
    return pathlib.Path(home) / "default"


_WORDS = (
    "pick up place put the a an red blue green yellow cube cup bowl towel fold drawer open close spoon fork knife "
    "plate bottle marker pen uncap transfer left right arm hand over into onto from on in to and with of it top "
    "bottom table sponge wipe clean faucet turn apple basket tupperware food grasp release move lift lower rotate "
    "push pull slide stack unstack drop grab reach handle lid box shelf door button press water pour striped small "
    "large white black gripper joint state action subtask task do something warmup test prompt then next"
).split()


def _corpus(rng: np.random.Generator, lines: int = 6000) -> list[str]:
    out = []
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    for i in range(lines):
        words = list(rng.choice(_WORDS, size=int(rng.integers(2, 9))))
        if i % 3 == 0:
            words.append("".join(rng.choice(letters, size=int(rng.integers(3, 8)))))
        task = " ".join(words)
        state = " ".join(str(int(v)) for v in rng.integers(-1, 256, size=14))
        kind = i % 4
        if kind == 0:
            out.append(f"Task: {task}, State: {state};\nAction: ")
        elif kind == 1:
            out.append(f"Task: {task}. Subtask: {' '.join(rng.choice(_WORDS, size=3))}")
        elif kind == 2:
            out.append(task.capitalize() + ".")
        else:
            out.append(task.upper() + "?")
    return out


def train_tokenizer(path: pathlib.Path, seed: int = SEED) -> None:
    """Trains the 1024-piece BPE tokenizer (about a second)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(np.random.default_rng(seed))),
        model_writer=model,
        vocab_size=VOCAB_SIZE,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        byte_fallback=False,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())


def _norm_stats(rng: np.random.Generator, width: int) -> dict[str, list[float]]:
    mean = rng.uniform(-0.5, 0.5, width)
    std = rng.uniform(0.2, 1.0, width)
    return {
        "mean": np.round(mean, 4).tolist(),
        "std": np.round(std, 4).tolist(),
        "q01": np.round(mean - 2 * std, 4).tolist(),
        "q99": np.round(mean + 2 * std, 4).tolist(),
    }


def write_checkpoint(checkpoint_dir: pathlib.Path, seed: int = SEED) -> None:
    """Writes the tiny pi0.5 (openpi's dummy Gemma for both experts, SigLIP mu/56, vocab 1024) in openpi's layout."""
    import orbax.checkpoint as ocp

    from openpi_triton.native import random_init, variants

    spec = variants.named_spec(paligemma="dummy", action_expert="dummy", siglip=TINY_SIGLIP, vocab_size=VOCAB_SIZE)
    params = random_init.to_numpy(random_init.random_params(spec, seed))
    ocp.PyTreeCheckpointer().save((checkpoint_dir / "params").resolve(), {"params": params})
    rng = np.random.default_rng(seed)
    assets = checkpoint_dir / "assets" / "trossen"
    assets.mkdir(parents=True)
    stats = {"norm_stats": {"state": _norm_stats(rng, 14), "actions": _norm_stats(rng, 14)}}
    (assets / "norm_stats.json").write_text(json.dumps(stats, indent=1))


def ensure_embedded_default(root: pathlib.Path | None = None, *, force: bool = False) -> EmbeddedDefault:
    """Builds the embedded default under ``root`` unless it is already complete; safe under concurrent calls."""
    target = EmbeddedDefault(pathlib.Path(root) if root else default_root())
    if (target.root / _COMPLETE_MARKER).exists() and not force:
        return target
    target.root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".default-", dir=target.root.parent))
    try:
        built = EmbeddedDefault(staging)
        print(f"[openpi-triton] building the embedded default model in {target.root} ...", file=sys.stderr, flush=True)
        train_tokenizer(built.tokenizer_path)
        write_checkpoint(built.checkpoint_dir)
        (staging / _COMPLETE_MARKER).write_text(json.dumps({"config_name": DEFAULT_CONFIG_NAME, "seed": SEED}))
        if force and target.root.exists():
            shutil.rmtree(target.root)
        try:
            staging.rename(target.root)
        except OSError:
            # Another process finished first; its copy is identical (same seed).
            if not (target.root / _COMPLETE_MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"[openpi-triton] embedded default ready in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the embedded default model (tiny random pi0.5 ALOHA).")
    parser.add_argument("--out", type=pathlib.Path, default=None, help=f"folder (default {default_root()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    args = parser.parse_args(argv)
    built = ensure_embedded_default(args.out, force=args.force)
    print(
        json.dumps(
            {
                "model_config_name": built.config_name,
                "checkpoint_dir": str(built.checkpoint_dir),
                "tokenizer_path": str(built.tokenizer_path),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
