"""The ``planner`` model: pi0.5 subtask text from the task prompt and the robot's cameras, batched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import triton_python_backend_utils as pb_utils

from openpi_triton.domain.configs import get_policy_config
from openpi_triton.native.planner import PlannerInput, PlannerOptions, SubtaskPlanner, load_planner
from openpi_triton.runtime_api import Placement
from openpi_triton.triton import backend, batched_execute, inherit, io_spec
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
        device = backend.jax_device(Placement.of_instance(args))
        self.planner = backend.load_or_fail(args, lambda: load_planner(checkpoint_dir, options, device))
        self.inputs = io_spec.planner_inputs(self.params.config)
        served = backend.served_labels(self.params.config.name, self.params.checkpoint_dir)
        self.batched = batched_execute.BatchedModel(
            model_name=args["model_name"],
            served_config=self.params.config.name,
            call_name="subtask generation",
            read=self._read,
            call=lambda rows: self.planner.generate_batch([prepared for _, prepared in rows]),
            respond=self._respond,
            metrics=backend.ModelMetrics.create(args["model_name"], "planner", served),
            failures=backend.RequestFailures.create(args["model_name"], served),
        )
        seconds = self.planner.warmup()
        backend.log_info(f"{args['model_name']} ready, warm-up {seconds}")

    def execute(self, requests: list[Any]) -> list[Any]:
        return batched_execute.execute(self.batched, requests)

    def _read(self, request: Any) -> list[tuple[str, PlannerInput]]:
        """Each row's task prompt (spliced into the action prompt) and its prepared planner input."""
        rows = backend.read_rows(request, self.inputs, self.params.limits)
        return [
            (
                row.get(io_spec.PROMPT, ""),
                self.planner.prepare_observation(
                    backend.observation(row, exclude=(io_spec.GENERATION_PROMPT_FORMAT,)),
                    row.get(io_spec.GENERATION_PROMPT_FORMAT),
                ),
            )
            for row in rows
        ]

    def _respond(self, rows: list[tuple[str, PlannerInput]], subtasks: Sequence[Any], ms: float) -> Any:
        texts = [s.text for s in subtasks]
        template = self.params.action_prompt_template
        return pb_utils.InferenceResponse(
            [
                backend.string_tensor(io_spec.SUBTASK, texts),
                backend.float_tensor(io_spec.SUBTASK_MS, [[ms]] * len(rows)),
                backend.string_tensor(
                    io_spec.ACTION_PROMPT,
                    [splice_action_prompt(template, task, s) for (task, _), s in zip(rows, texts, strict=True)],
                ),
            ]
        )
