"""The ``planner`` model: pi0.5 subtask text from the task prompt and the robot's cameras, batched."""

from __future__ import annotations

import time
from typing import Any

import triton_python_backend_utils as pb_utils

from openpi_triton.domain.configs import get_policy_config
from openpi_triton.native.planner import PlannerInput, PlannerOptions, SubtaskPlanner, load_planner
from openpi_triton.triton import backend, inherit, io_spec
from openpi_triton.triton.model_params import PlannerParams


def splice_action_prompt(template: str, task: str, subtask: str) -> str:
    """openpi-flash: the action prompt becomes the template only when a subtask was generated."""
    return template.format(task=task, subtask=subtask) if subtask else task


class PlannerModel:
    planner: SubtaskPlanner

    @classmethod
    def auto_complete_config(cls, auto_complete_model_config: Any) -> Any:
        def complete() -> Any:
            params = backend.auto_complete_parameters(cls, auto_complete_model_config, inherit.PLANNER_INHERITS)
            try:
                config = get_policy_config(params.get("model_config_name", ""))
            except ValueError as exc:
                raise pb_utils.TritonModelException(f"parameter 'model_config_name': {exc}") from None
            inputs, outputs = io_spec.planner_inputs(config), io_spec.planner_outputs()
            return backend.add_io(auto_complete_model_config, inputs, outputs)

        return backend.guarded_auto_complete(cls, auto_complete_model_config, inherit.PLANNER_INHERITS, complete)

    def initialize(self, args: dict[str, str]) -> None:
        backend.record_load(args, inherit.PLANNER_INHERITS, lambda: self._initialize(args))

    def _initialize(self, args: dict[str, str]) -> None:
        self.params = backend.parse_parameters(PlannerParams.parse, args, inherit.PLANNER_INHERITS)
        checkpoint_dir, tokenizer_path = backend.resolve_weights(self.params.checkpoint_dir, self.params.tokenizer_path)
        options = PlannerOptions(
            max_generation_tokens=self.params.max_generation_tokens,
            generation_prompt_format=self.params.generation_prompt_format,
            dtype=self.params.dtype,
            batch_buckets=self.params.batch_buckets,
            tokenizer_path=tokenizer_path,
        )
        device = backend.jax_device(args)
        self.planner = backend.load_or_fail(args, lambda: load_planner(checkpoint_dir, options, device))
        self.inputs = io_spec.planner_inputs(self.params.config)
        self.model_name = args["model_name"]
        served = backend.served_labels(self.params.config.name, self.params.checkpoint_dir)
        self.metrics = backend.ModelMetrics.create(args["model_name"], "planner", served)
        self.failures = backend.RequestFailures.create(args["model_name"], served)
        seconds = self.planner.warmup()
        backend.log_info(f"{args['model_name']} ready, warm-up {seconds}")

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batches: list[tuple[int, list[str], list[PlannerInput]]] = []
        for index, request in enumerate(requests):
            refusal = backend.config_mismatch(request, self.model_name, self.params.config.name)
            if refusal is not None:
                responses[index] = refusal
                continue
            try:
                rows = backend.read_rows(request, self.inputs, self.params.limits)
                tasks = [row.get(io_spec.PROMPT, "") for row in rows]
                prepared = [
                    self.planner.prepare_observation(
                        backend.observation(row, exclude=(io_spec.GENERATION_PROMPT_FORMAT,)),
                        row.get(io_spec.GENERATION_PROMPT_FORMAT),
                    )
                    for row in rows
                ]
                batches.append((index, tasks, prepared))
            except ValueError as exc:
                responses[index] = backend.invalid(str(exc))
        flat = [item for _, _, items in batches for item in items]
        if not flat:
            return backend.finish_responses(requests, responses, self.failures)
        start = time.perf_counter()
        try:
            subtasks = self.planner.generate_batch(flat)
        except Exception as exc:
            backend.logger.exception("subtask generation failed for a batch of %d", len(flat))
            for index, _, _ in batches:
                responses[index] = backend.internal(f"subtask generation failed: {type(exc).__name__}: {exc}")
            return backend.finish_responses(requests, responses, self.failures)
        ms = (time.perf_counter() - start) * 1000.0
        self.metrics.observe(len(flat), ms)
        row = 0
        template = self.params.action_prompt_template
        for index, tasks, items in batches:
            texts = [s.text for s in subtasks[row : row + len(items)]]
            row += len(items)
            responses[index] = pb_utils.InferenceResponse(
                [
                    backend.string_tensor(io_spec.SUBTASK, texts),
                    backend.float_tensor(io_spec.SUBTASK_MS, [[ms]] * len(items)),
                    backend.string_tensor(
                        io_spec.ACTION_PROMPT,
                        [splice_action_prompt(template, t, s) for t, s in zip(tasks, texts, strict=True)],
                    ),
                ]
            )
        return backend.finish_responses(requests, responses, self.failures)
