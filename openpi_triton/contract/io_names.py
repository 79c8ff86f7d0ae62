"""Names of the Triton tensors that are not robot observation keys (those follow ``tensor_names``)."""

from __future__ import annotations

PROMPT = "prompt"
NOISE = "noise"
MODE = "mode"
GENERATION_PROMPT_FORMAT = "generation_prompt_format"
ACTIONS = "actions"
POLICY_INFER_MS = "policy_infer_ms"
SUBTASK = "subtask"
SUBTASK_MS = "subtask_ms"
ACTION_PROMPT = "action_prompt"

# openpi-flash's modes of the action slot (``obs["mode"]``); empty or absent is ``default``.
MODES = ("default", "subtask_only", "action_only")
