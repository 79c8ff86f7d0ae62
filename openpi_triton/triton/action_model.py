"""The ``action`` model: robot observation tensors in, an action chunk out, all requests of one ``execute``
stacked into one batched native-runtime call.
"""

from __future__ import annotations

import time
from typing import Any

import triton_python_backend_utils as pb_utils

from openpi_triton.native.configs import get_policy_config
from openpi_triton.native.policy import NativePolicy, PolicyOptions, PreparedObservation, load_policy
from openpi_triton.triton import backend, io_spec
from openpi_triton.triton.model_params import ActionParams, read_parameters


class ActionModel:
    policy: NativePolicy

    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        params = read_parameters(auto_complete_model_config.as_dict())
        config = get_policy_config(params.get("model_config_name", ""))
        return backend.add_io(auto_complete_model_config, io_spec.action_inputs(config), io_spec.action_outputs(config))

    def initialize(self, args: dict[str, str]) -> None:
        self.params = backend.parse_parameters(ActionParams.parse, args)
        if self.params.runtime != "native":
            raise pb_utils.TritonModelException(
                f"parameter 'runtime': {self.params.runtime!r} is not available in this build (issue #6); use 'native'"
            )
        checkpoint_dir, tokenizer_path = backend.resolve_weights(self.params.checkpoint_dir, self.params.tokenizer_path)
        options = PolicyOptions(
            dtype=self.params.dtype,
            num_steps=self.params.num_steps,
            batch_buckets=self.params.batch_buckets,
            default_prompt=self.params.default_prompt,
            tokenizer_path=tokenizer_path,
        )
        device = backend.jax_device(args)
        self.policy = backend.load_or_fail(
            args, lambda: load_policy(self.params.config.name, checkpoint_dir, options, device)
        )
        self.inputs = io_spec.action_inputs(self.params.config)
        self.metrics = backend.ModelMetrics.create(args["model_name"], "action")
        seconds = self.policy.warmup()
        backend.logger.warning("%s ready: %s, warm-up %s", args["model_name"], self.policy.spec.describe(), seconds)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batches: list[tuple[int, list[PreparedObservation]]] = []
        for index, request in enumerate(requests):
            try:
                rows = backend.read_rows(request, self.inputs)
                batches.append((index, [self._prepare(row) for row in rows]))
            except ValueError as exc:
                responses[index] = backend.invalid(str(exc))
        flat = [item for _, items in batches for item in items]
        if flat:
            start = time.perf_counter()
            try:
                raw = self.policy.sample(flat)
            except Exception as exc:  # the model call itself failed: every request of it gets the error
                for index, _ in batches:
                    responses[index] = backend.internal(f"action inference failed: {type(exc).__name__}: {exc}")
                return responses
            ms = (time.perf_counter() - start) * 1000.0
            self.metrics.observe(len(flat), ms)
            row = 0
            for index, items in batches:
                actions = [self.policy.finish(item, raw[row + k]) for k, item in enumerate(items)]
                row += len(items)
                responses[index] = pb_utils.InferenceResponse(
                    [
                        backend.float_tensor(io_spec.ACTIONS, actions),
                        backend.float_tensor(io_spec.POLICY_INFER_MS, [[ms]] * len(items)),
                    ]
                )
        return responses

    def _prepare(self, row: dict[str, Any]) -> PreparedObservation:
        noise = row.get(io_spec.NOISE)
        obs = backend.observation(row, exclude=(io_spec.NOISE,))
        return self.policy.prepare(obs, noise)
