"""The ``action`` model: robot observation tensors in, an action chunk out, all requests of one ``execute``
stacked into one batched call of the configured runtime (``native`` or ``openpi``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from openpi_triton.native.policy import PolicyOptions, load_policy
from openpi_triton.triton import backend, io_spec, served_config
from openpi_triton.triton.model_params import ActionParams, read_parameters


class ActionModel:
    policy: Any  # NativePolicy or OpenpiPolicy: the same prepare / sample / finish stages

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
        if self.params.runtime == "openpi":
            self.policy = self._load_openpi(args)
        else:
            self.policy = self._load_native(args)
        self.inputs = io_spec.action_inputs(self.policy.config)
        self.model_name = args["model_name"]
        served = backend.served_labels(self.policy.config.name, self.params.checkpoint_dir)
        self.metrics = backend.ModelMetrics.create(args["model_name"], "action", served)
        self.failures = backend.RequestFailures.create(args["model_name"], served)
        seconds = self.policy.warmup()
        backend.log_info(f"{args['model_name']} ready: {self.policy.describe()}, warm-up {seconds}")

    def _load_native(self, args: dict[str, str]) -> Any:
        checkpoint_dir, tokenizer_path = backend.resolve_weights(self.params.checkpoint_dir, self.params.tokenizer_path)
        options = PolicyOptions(
            dtype=self.params.dtype,
            num_steps=self.params.num_steps,
            batch_buckets=self.params.batch_buckets,
            default_prompt=self.params.default_prompt,
            tokenizer_path=tokenizer_path,
        )
        device = backend.jax_device(args)
        assert self.params.config is not None
        name = self.params.config.name
        return backend.load_or_fail(args, lambda: load_policy(name, checkpoint_dir, options, device))

    def _load_openpi(self, args: dict[str, str]) -> Any:
        from openpi_triton.openpi_runtime import environment
        from openpi_triton.openpi_runtime.policy import OpenpiOptions, load_openpi_policy

        # Before JAX or torch start in this stub process: see only this instance's device.
        torch_device = environment.pin_device(
            args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", "0"))
        )
        options = OpenpiOptions(
            weight_dtype=self.params.dtype,
            batch_buckets=self.params.batch_buckets,
            default_prompt=self.params.default_prompt,
            num_steps=self.params.num_steps,
            embodiment=self.params.embodiment,
            setup_script=self.params.openpi_setup_script,
            torch_device=torch_device,
        )
        try:
            return backend.load_or_fail(
                args, lambda: load_openpi_policy(self.params.model_config_name, self.params.checkpoint_dir, options)
            )
        except environment.OpenpiUnavailableError as exc:
            raise pb_utils.TritonModelException(f"{args['model_name']}: {exc}") from None

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batches: list[tuple[int, list[Any]]] = []
        for index, request in enumerate(requests):
            refusal = backend.config_mismatch(request, self.model_name, self.policy.config.name)
            if refusal is not None:
                responses[index] = refusal
                continue
            try:
                rows = backend.read_rows(request, self.inputs, self.params.limits)
                batches.append((index, [self._prepare(row) for row in rows]))
            except ValueError as exc:
                responses[index] = backend.invalid(str(exc))
        flat = [item for _, items in batches for item in items]
        if flat:
            start = time.perf_counter()
            try:
                raw = self.policy.sample(flat)
            except Exception as exc:  # the model call itself failed: every request of it gets the error
                backend.logger.exception("action inference failed for a batch of %d", len(flat))
                for index, _ in batches:
                    responses[index] = backend.internal(f"action inference failed: {type(exc).__name__}: {exc}")
                return backend.finish_responses(requests, responses, self.failures)
            ms = (time.perf_counter() - start) * 1000.0
            self.metrics.observe(len(flat), ms)
            row = 0
            for index, items in batches:
                own_rows = raw[row : row + len(items)]
                row += len(items)
                try:
                    actions = [self.policy.finish(item, r) for item, r in zip(items, own_rows, strict=True)]
                except Exception as exc:  # output transforms of this request alone: the others still answer
                    backend.logger.exception("action output transforms failed")
                    responses[index] = backend.internal(f"action output transforms failed: {type(exc).__name__}: {exc}")
                    continue
                if not all(np.all(np.isfinite(a)) for a in actions):
                    # Never hand a controller inf/NaN; the robot learns it from the error instead.
                    responses[index] = backend.internal("the model produced non-finite actions for this observation")
                    continue
                responses[index] = pb_utils.InferenceResponse(
                    [
                        backend.float_tensor(io_spec.ACTIONS, actions),
                        backend.float_tensor(io_spec.POLICY_INFER_MS, [[ms]] * len(items)),
                    ]
                )
        return backend.finish_responses(requests, responses, self.failures)

    def _prepare(self, row: dict[str, Any]) -> Any:
        noise = row.get(io_spec.NOISE)
        obs = backend.observation(row, exclude=(io_spec.NOISE,))
        return self.policy.prepare(obs, noise)
