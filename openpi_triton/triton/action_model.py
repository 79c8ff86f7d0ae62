"""The ``action`` model: robot observation tensors in, an action chunk out, all requests of one ``execute``
stacked into one batched call of the configured runtime (:mod:`openpi_triton.runtimes`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from openpi_triton.contract.robot_metadata import publish_instruction, unpublished_metadata
from openpi_triton.runtime_api import Placement, PolicyRuntime, get_runtime
from openpi_triton.triton import backend, batched_execute, io_spec, served_config
from openpi_triton.triton.model_params import ActionParams, read_parameters


class ActionModel:
    policy: PolicyRuntime

    @classmethod
    def auto_complete_config(cls, auto_complete_model_config: Any) -> Any:
        def complete() -> Any:
            config = served_config.interface_config(read_parameters(auto_complete_model_config.as_dict()))
            inputs, outputs = io_spec.action_inputs(config), io_spec.action_outputs(config)
            return backend.add_io(auto_complete_model_config, inputs, outputs)

        return backend.guarded_auto_complete(cls, auto_complete_model_config, (), complete)

    def initialize(self, args: dict[str, str]) -> None:
        backend.record_load(args, (), lambda: self._initialize(args))

    def _initialize(self, args: dict[str, str]) -> None:
        self.params = backend.parse_parameters(ActionParams.parse, args)
        runtime = get_runtime(self.params.runtime)
        self.policy = backend.load_or_fail(args, lambda: runtime.load(self.params, Placement.of_instance(args)))
        self._check_metadata_is_published(args)
        self.inputs = io_spec.action_inputs(self.policy.config)
        served = backend.served_labels(self.policy.config.name, self.params.checkpoint_dir)
        self.batched = batched_execute.BatchedModel(
            model_name=args["model_name"],
            served_config=self.policy.config.name,
            call_name="action inference",
            read=self._read,
            call=self._sample,
            respond=self._respond,
            metrics=backend.ModelMetrics.create(args["model_name"], "action", served),
            failures=backend.RequestFailures.create(args["model_name"], served),
        )
        seconds = self.policy.warmup()
        backend.log_info(f"{args['model_name']} ready: {self.policy.describe()}, warm-up {seconds}")

    def _check_metadata_is_published(self, args: dict[str, str]) -> None:
        """Robots read the policy metadata (ALOHA's reset_pose) from this model's config; a policy whose
        metadata the config does not carry fails to load, saying the line to add."""
        missing = unpublished_metadata(self.policy.config.metadata, json.loads(args["model_config"]))
        if missing:
            raise pb_utils.TritonModelException(
                f"{args['model_name']}: config {self.policy.config.name!r} has policy metadata robots would not "
                f"receive ({sorted(missing)}); add to config.pbtxt: {publish_instruction(missing)}"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        self._started, self._batch = time.time(), 0  # for model_timing: wall clock, comparable across processes
        return batched_execute.execute(self.batched, requests)

    def _sample(self, rows: list[Any]) -> Sequence[Any]:
        self._batch = len(rows)
        return self.policy.sample(rows)

    def _read(self, request: Any) -> list[Any]:
        rows = backend.read_rows(request, self.inputs, self.params.limits)
        return [
            self.policy.prepare(backend.observation(row, exclude=(io_spec.NOISE,)), row.get(io_spec.NOISE))
            for row in rows
        ]

    def _respond(self, prepared: list[Any], raw: Sequence[Any], ms: float) -> Any:
        actions = [self.policy.finish(item, r) for item, r in zip(prepared, raw, strict=True)]
        if not all(np.all(np.isfinite(a)) for a in actions):
            # Never hand a controller inf/NaN; the robot learns it from the error instead.
            return backend.internal("the model produced non-finite actions for this observation")
        outputs = [
            backend.float_tensor(io_spec.ACTIONS, actions),
            backend.float_tensor(io_spec.POLICY_INFER_MS, [[ms]] * len(prepared)),
            self._timing(len(prepared), ms),
        ]
        echoes = [self.policy.rtc_echo(item, a) for item, a in zip(prepared, actions, strict=True)]
        if any(e is not None for e in echoes):  # robots that send no ``rtc`` see no new output
            reports = [json.dumps(e if e is not None else {"applied": False}) for e in echoes]
            outputs.append(backend.string_tensor(io_spec.RTC_ECHO, reports))
        return pb_utils.InferenceResponse(outputs)

    def _timing(self, rows: int, ms: float) -> Any:
        nan = float("nan")
        row = [self._started, time.time(), ms, float(self._batch), nan, nan]
        return pb_utils.Tensor(io_spec.MODEL_TIMING, np.asarray([row] * rows, dtype=np.float64))
