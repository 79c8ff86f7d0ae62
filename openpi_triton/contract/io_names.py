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
# FP64 [6], where a request's time went inside Triton, for the bridge's ``server_timing``: wall-clock seconds
# (time.time()) at the action model's execute start and end, the batched model call's ms, the call's batch
# size, and the BLS's execute start and end (NaN when no BLS was in front).
MODEL_TIMING = "model_timing"
MODEL_TIMING_FIELDS = ("execute_start_s", "execute_end_s", "compute_ms", "batch_size", "bls_start_s", "bls_end_s")
# The report on an observation's ``rtc`` request (JSON text, one per row): the response's ``rtc`` key.
RTC_ECHO = "rtc_echo"

# openpi-flash's modes of the action slot (``obs["mode"]``); empty or absent is ``default``.
MODES = ("default", "subtask_only", "action_only")
