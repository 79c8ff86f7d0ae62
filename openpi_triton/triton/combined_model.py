"""The ``combined_ensemble`` model (BLS): planner -> prompt splice -> action, with openpi-flash's modes.

- ``default`` (absent or empty too): planner; if it produced text, the action prompt becomes the planner's
  ``action_prompt``; then action. Outputs: actions, policy_infer_ms, subtask, subtask_ms.
- ``subtask_only``: planner only. Outputs: subtask, subtask_ms.
- ``action_only``: action with the original inputs. Outputs: actions, policy_infer_ms.

A planner failure never fails the request (unless the planner found the robot's own input invalid: that is
the robot's INVALID_ARG, as from the action model): the subtask is ``""`` with ``0.0`` ms and the action runs with
the original prompt (openpi-flash's rule). A planner call that takes longer than ``planner_timeout_ms``
counts as failed; every failure is logged and counted (``openpi_planner_failures_total``). An unknown
mode is ``INVALID_ARG`` (openpi-flash silently falls back to default). ``execute`` is a coroutine that
sends the child requests of all requests in the batch at once, so concurrent robots reach ``action``
together and are batched there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from openpi_triton.triton import backend, inherit, io_spec, rtc_inputs, served_config, server_watch
from openpi_triton.triton.model_params import CombinedParams

PLANNER_OUTPUTS = [io_spec.SUBTASK, io_spec.SUBTASK_MS, io_spec.ACTION_PROMPT]
ACTION_OUTPUTS = [io_spec.ACTIONS, io_spec.POLICY_INFER_MS, io_spec.MODEL_TIMING, io_spec.RTC_ECHO]
# The BLS's own execute start and end in model_timing (after the action model's four fields).
BLS_TIMING = slice(4, 6)


def read_mode(request: Any) -> str:
    tensor = pb_utils.get_input_tensor_by_name(request, io_spec.MODE)
    if tensor is None:
        return "default"
    modes = {m or "default" for m in backend.decode_strings(tensor.as_numpy(), io_spec.MODE)}
    unknown = sorted(modes - set(io_spec.MODES))
    if unknown:
        raise backend.RequestError(
            f"input 'mode': expected one of {list(io_spec.MODES)} (or empty), got {unknown[0]!r}"
        )
    if len(modes) != 1:
        raise backend.RequestError(f"input 'mode': all rows of one request must use one mode, got {sorted(modes)}")
    return modes.pop()


class ChildRefusedError(Exception):
    """The planner refused the request itself: the robot's input is invalid (INVALID_ARG), or it serves another
    config than the ensemble (UNAVAILABLE, mid-swap). The request fails with that error; a mismatched pair
    never answers."""

    def __init__(self, error: Any) -> None:
        super().__init__(error.message())
        self.error = error


class CombinedModel:
    @classmethod
    def auto_complete_config(cls, auto_complete_model_config: Any) -> Any:
        raw = backend.auto_complete_parameters(cls, auto_complete_model_config, inherit.ENSEMBLE_INHERITS)
        config = served_config.interface_config(raw)
        return backend.add_io(
            auto_complete_model_config, io_spec.combined_inputs(config), io_spec.combined_outputs(config)
        )

    def initialize(self, args: dict[str, str]) -> None:
        # The BLS loads no runtime (no record_load), but its stub must not outlive the server either.
        server_watch.exit_with_server()
        raw = backend.resolved_parameters(args, inherit.ENSEMBLE_INHERITS)
        self.params = backend.parse_parameters(CombinedParams.parse, args)
        self.config = served_config.interface_config(raw)
        self.planner_failures = backend.FailureCounter.create(args["model_name"], "planner")
        self.failures = backend.RequestFailures.create(args["model_name"], {"config": self.config.name})
        self.action_inputs = [s.name for s in io_spec.action_inputs(self.config)]
        self.planner_inputs = [s.name for s in io_spec.planner_inputs(self.config)]
        self.batch_inputs = io_spec.combined_inputs(self.config)

    async def execute(self, requests: list[Any]) -> list[Any]:
        responses = list(await asyncio.gather(*(self._serve(r) for r in requests)))
        return backend.finish_responses(requests, responses, self.failures)

    async def _serve(self, request: Any) -> Any:
        started = time.time()
        try:
            mode = read_mode(request)
            rows = backend.batch_size_of(request, self.batch_inputs)
        except ValueError as exc:
            return backend.invalid(str(exc))
        subtask = None
        if mode in ("default", "subtask_only"):
            try:
                subtask = await self._plan(request, rows)
            except ChildRefusedError as refusal:  # an error of the request, not a missing subtask
                return pb_utils.InferenceResponse(error=refusal.error)
            if mode == "subtask_only":
                texts, ms, _ = subtask
                return pb_utils.InferenceResponse(
                    [backend.string_tensor(io_spec.SUBTASK, texts), backend.float_tensor(io_spec.SUBTASK_MS, ms)]
                )
        prompt_override = subtask[2] if subtask is not None and any(subtask[0]) else None
        sent_rtc = {
            name: np.asarray(tensor.as_numpy())
            for name in rtc_inputs.NAMES
            if (tensor := pb_utils.get_input_tensor_by_name(request, name)) is not None
        }
        # All six rtc inputs on every child request: robots with and without rtc share the action model's batches.
        completed = rtc_inputs.complete(sent_rtc, rows, self.config.embodiment.action_dim)
        action = await self._child(
            self.params.action_model, request, self.action_inputs, ACTION_OUTPUTS, prompt_override, completed
        )
        if action.has_error():
            return pb_utils.InferenceResponse(
                error=backend.child_error(action, self.params.action_model, self.config.name)
            )
        outputs = [pb_utils.get_output_tensor_by_name(action, name) for name in ACTION_OUTPUTS[:2]]
        timing = np.array(pb_utils.get_output_tensor_by_name(action, io_spec.MODEL_TIMING).as_numpy(), np.float64)
        timing[:, BLS_TIMING] = (started, time.time())
        outputs.append(pb_utils.Tensor(io_spec.MODEL_TIMING, timing))
        echo = pb_utils.get_output_tensor_by_name(action, io_spec.RTC_ECHO)
        if echo is not None and sent_rtc:  # only for requests that sent ``rtc``
            outputs.append(echo)
        if subtask is not None:
            texts, ms, _ = subtask
            outputs += [backend.string_tensor(io_spec.SUBTASK, texts), backend.float_tensor(io_spec.SUBTASK_MS, ms)]
        return pb_utils.InferenceResponse(outputs)

    async def _plan(self, request: Any, rows: int) -> tuple[list[str], list[list[float]], list[str] | None]:
        """(texts, ms, action prompts); a failed planner call gives empty texts, 0 ms and no prompts."""
        try:
            result = await asyncio.wait_for(
                self._child(self.params.planner_model, request, self.planner_inputs, PLANNER_OUTPUTS),
                timeout=self.params.planner_timeout_ms / 1000.0,
            )
            if result.has_error():
                error = backend.child_error(result, self.params.planner_model, self.config.name)
                if backend.is_refusal(error):
                    raise ChildRefusedError(error)
                raise RuntimeError(error.message())
            texts = backend.decode_strings(
                pb_utils.get_output_tensor_by_name(result, io_spec.SUBTASK).as_numpy(), io_spec.SUBTASK
            )
            ms = pb_utils.get_output_tensor_by_name(result, io_spec.SUBTASK_MS).as_numpy().tolist()
            prompts = backend.decode_strings(
                pb_utils.get_output_tensor_by_name(result, io_spec.ACTION_PROMPT).as_numpy(), io_spec.ACTION_PROMPT
            )
            return texts, ms, prompts
        except ChildRefusedError:
            raise
        except Exception as exc:  # openpi-flash: planner failures are logged, never fatal to the action
            reason = f"no answer within {self.params.planner_timeout_ms} ms" if isinstance(exc, TimeoutError) else exc
            backend.logger.warning("planner failed, continuing without a subtask: %s", reason)
            self.planner_failures.increment()
            return [""] * rows, [[0.0]] * rows, None

    async def _child(
        self,
        model: str,
        request: Any,
        names: list[str],
        outputs: list[str],
        prompts: list[str] | None = None,
        replaced: dict[str, np.ndarray] | None = None,
    ) -> Any:
        """The child request: ``names`` from the request, ``prompts`` as its prompt, ``replaced`` tensors instead of
        (or in addition to) the request's own."""
        replaced = replaced or {}
        inputs = [pb_utils.Tensor(name, value) for name, value in replaced.items()]
        for name in names:
            if name in replaced:
                continue
            if name == io_spec.PROMPT and prompts is not None:
                inputs.append(backend.string_tensor(io_spec.PROMPT, prompts))
                continue
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs.append(pb_utils.Tensor(name, np.asarray(tensor.as_numpy())))
        child = pb_utils.InferenceRequest(
            model_name=model,
            inputs=inputs,
            requested_output_names=outputs,
            parameters={backend.ERROR_CODE_PARAMETER: True, backend.EXPECTED_CONFIG_PARAMETER: self.config.name},
        )
        return await child.async_exec()
