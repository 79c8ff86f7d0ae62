"""PaliGemma SentencePiece tokenizer and openpi's prompt rules for pi0 and pi0.5."""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
import sentencepiece

logger = logging.getLogger(__name__)

PAD_ID = 0
EOS_ID = 1


def default_tokenizer_path() -> pathlib.Path:
    """Where openpi caches the PaliGemma tokenizer: ``$OPENPI_DATA_HOME/big_vision/paligemma_tokenizer.model``."""
    home = os.environ.get("OPENPI_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "openpi")
    return pathlib.Path(home) / "big_vision" / "paligemma_tokenizer.model"


def load_sentencepiece(path: str | pathlib.Path | None = None) -> sentencepiece.SentencePieceProcessor:
    """Loads a SentencePiece model; ``None`` means openpi's cache location."""
    resolved = pathlib.Path(path).expanduser() if path else default_tokenizer_path()
    if not resolved.is_file():
        raise FileNotFoundError(
            f"tokenizer model {str(resolved)!r} not found. Copy PaliGemma's tokenizer there "
            "(`gsutil cp gs://big_vision/paligemma_tokenizer.model <path>`, as openpi caches it) "
            "or set the tokenizer path explicitly."
        )
    return sentencepiece.SentencePieceProcessor(model_file=str(resolved))


def clean_action_prompt(prompt: str) -> str:
    """openpi's cleaning for the action model: strip, '_' and newlines become spaces."""
    return prompt.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """256 bins over [-1, 1]; values below -1 give -1 and above 1 give 255, exactly as openpi."""
    return np.digitize(state, bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1


class PromptTokenizer:
    """openpi's ``PaligemmaTokenizer.tokenize``: BOS + prompt (pi0: + "\\n"; pi0.5: state in the text), padded."""

    def __init__(self, sp: sentencepiece.SentencePieceProcessor, max_len: int) -> None:
        self.sp = sp
        self.max_len = max_len

    def prompt_text(self, prompt: str, state: np.ndarray | None) -> str:
        cleaned = clean_action_prompt(prompt)
        if state is None:
            return cleaned
        state_str = " ".join(map(str, discretize_state(state)))
        return f"Task: {cleaned}, State: {state_str};\nAction: "

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns (int32 tokens [max_len], bool mask [max_len]); ``state`` given = pi0.5 discrete-state prompt."""
        text = self.prompt_text(prompt, state)
        tokens = self.sp.encode(text, add_bos=True)
        if state is None:
            # pi0 marks the start of the answer with a separately tokenized newline.
            tokens = tokens + self.sp.encode("\n")
        if len(tokens) > self.max_len:
            logger.warning("prompt is %d tokens, more than max_token_len %d: truncated", len(tokens), self.max_len)
            tokens = tokens[: self.max_len]
        ids = np.zeros(self.max_len, dtype=np.int32)
        ids[: len(tokens)] = tokens
        mask = np.zeros(self.max_len, dtype=bool)
        mask[: len(tokens)] = True
        return ids, mask
