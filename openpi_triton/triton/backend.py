"""Helpers shared by the Python-backend models (importable only inside a Triton stub).

Requests become observation dicts through the key-path rule of :mod:`openpi_triton.tensor_names`; every
problem with one request becomes that request's own ``TritonError(INVALID_ARG)`` so the rest of the batch
is served.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import triton_python_backend_utils as pb_utils

from openpi_triton.limits import InputLimits
from openpi_triton.runtime_api import Placement, RuntimeUnavailableError
from openpi_triton.tensor_names import key_path, unflatten
from openpi_triton.triton.io_spec import TensorSpec

logger = logging.getLogger("openpi_triton.triton")
T = TypeVar("T")

# Before any JAX backend starts: each stub allocates what it uses instead of most of the GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


class RequestError(ValueError):
    """A bad request: becomes INVALID_ARG for that request only."""


def log_info(message: str) -> None:
    """Lifecycle lines at INFO through Triton's own log (its format, its --log-info switch)."""
    try:
        pb_utils.Logger.log_info(message)
    except AttributeError:  # a Python backend without the Logger API
        logger.info(message)


def log_failure(message: str) -> None:
    """An error with the traceback being handled, through Triton's log (its --log-error switch)."""
    text = f"{message}\n{traceback.format_exc()}"
    try:
        pb_utils.Logger.log_error(text)
    except AttributeError:  # a Python backend without the Logger API
        logger.error(text)


def invalid(message: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def internal(message: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))


# Triton 2.51's BLS hands a child model's error back with code INTERNAL whatever the child set (Triton issue
# 7804), so a robot's mistake found by ``action`` would reach the robot as INTERNAL through the ensemble. The
# BLS therefore asks its children (a request parameter) to repeat the code at the end of the message, and
# strips it again: direct clients never see the tag.
ERROR_CODE_PARAMETER = "openpi_error_code_in_message"
_CODE_NAMES = ("INVALID_ARG", "INTERNAL", "UNAVAILABLE", "NOT_FOUND", "UNSUPPORTED", "ALREADY_EXISTS", "CANCELLED")
_CODE_TAG = re.compile(r" \[triton code ([A-Z_]+)\]$")


# The config a BLS parent was loaded for: a child serving another one (a half-done model swap) refuses the
# request with one clear error instead of failing on some tensor.
EXPECTED_CONFIG_PARAMETER = "openpi_expected_config"


def _request_parameters(request: Any) -> dict[str, Any]:
    try:
        parameters = json.loads(request.parameters() or "{}")
    except (AttributeError, ValueError):
        return {}
    return parameters if isinstance(parameters, dict) else {}


def _wants_code_tag(request: Any) -> bool:
    return bool(_request_parameters(request).get(ERROR_CODE_PARAMETER))


def config_mismatch(request: Any, model: str, served: str) -> Any | None:
    """An UNAVAILABLE response when the request's BLS parent expects another config than ``served``."""
    expected = _request_parameters(request).get(EXPECTED_CONFIG_PARAMETER)
    if not expected or expected == served:
        return None
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(
            f"the ensemble was loaded for {expected!r} but '{model}' now serves {served!r}: the models are being "
            "swapped or were edited apart (requests fail until both serve the same config)",
            pb_utils.TritonError.UNAVAILABLE,
        )
    )


def _code_name(error: Any) -> str:
    return next((n for n in _CODE_NAMES if error.code() == getattr(pb_utils.TritonError, n)), "INTERNAL")


def finish_responses(requests: Sequence[Any], responses: list[Any], failures: RequestFailures) -> list[Any]:
    """Counts the error responses by code (Triton 2.51 counts them as successes) and, for a BLS parent that
    asked for it, repeats each one's code at the end of its message."""
    for index, (request, response) in enumerate(zip(requests, responses, strict=True)):
        if response is None or not response.has_error():
            continue
        error = response.error()
        name = _code_name(error)
        failures.count(name)
        if _wants_code_tag(request):
            responses[index] = pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"{error.message()} [triton code {name}]", error.code())
            )
    return responses


def child_error(response: Any, child: str, parent_config: str) -> Any:
    """A BLS child's error with its real code restored from the tag.

    An untagged error never came from the child model: Triton refused the request before the child ran. The
    ensemble forwards exactly the inputs it declares, which are the child's own at the ensemble's load, so a
    refused input means the child now serves another interface (a half-done swap): said so, as UNAVAILABLE.
    Other refusals (the child is not loaded, say) are UNAVAILABLE too, with Triton's words.
    """
    message = response.error().message()
    match = _CODE_TAG.search(message)
    if match is not None:
        code = getattr(pb_utils.TritonError, match.group(1), pb_utils.TritonError.INTERNAL)
        return pb_utils.TritonError(message[: match.start()], code)
    if "input" in message:
        message = (
            f"the ensemble was loaded for {parent_config!r} but '{child}' no longer takes its inputs: the models "
            f"are being swapped or were edited apart (requests fail until both serve the same config); {message}"
        )
    else:
        message = f"'{child}' is unavailable: {message}"
    return pb_utils.TritonError(message, pb_utils.TritonError.UNAVAILABLE)


def is_refusal(error: Any) -> bool:
    """A child refused the request as such (bad input, or it serves another config): not a failure to retry."""
    return bool(error.code() in (pb_utils.TritonError.INVALID_ARG, pb_utils.TritonError.UNAVAILABLE))


def add_io(config: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Any:
    """auto_complete_config: declares the I/O unless config.pbtxt already lists it, turns on dynamic batching."""
    declared = {i["name"] for i in config.as_dict().get("input", [])}
    for spec in inputs:
        if spec.name not in declared:
            entry = spec.as_config()
            ragged = entry.pop("allow_ragged_batch", False)
            config.add_input(entry)
            if ragged:
                _mark_ragged(config, spec.name)
    declared = {o["name"] for o in config.as_dict().get("output", [])}
    for spec in outputs:
        if spec.name not in declared:
            config.add_output(spec.as_config())
    if config.as_dict().get("max_batch_size", 0) == 0:
        config.set_max_batch_size(8)
    config.set_dynamic_batching()
    return config


def _mark_ragged(config: Any, name: str) -> None:
    """``allow_ragged_batch`` on an auto-completed input: pb_utils' ``add_input`` accepts only name, type, dims and
    optional, but Triton reads back the whole config dict, flag included (tested on the served config)."""
    for entry in config.as_dict()["input"]:
        if entry["name"] == name:
            entry["allow_ragged_batch"] = True


def jax_device(placement: Placement) -> Any:
    """The JAX device of this model instance: ``KIND_GPU`` + device id -> that GPU, else the CPU."""
    import jax

    if placement.kind == "GPU":
        device_id = placement.device_id
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            raise pb_utils.TritonModelException(
                "instance_group asks for KIND_GPU but JAX sees no GPU (install jax[cuda12]==0.5.3, or use KIND_CPU)"
            ) from None
        if device_id >= len(gpus):
            raise pb_utils.TritonModelException(f"GPU {device_id} requested but JAX sees {len(gpus)} GPU(s)")
        return gpus[device_id]
    return jax.devices("cpu")[0]


def batch_size_of(request: Any, specs: Sequence[TensorSpec]) -> int:
    for spec in specs:
        tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
        if tensor is not None:
            return int(tensor.shape()[0])
    raise RequestError("request carries none of the model's inputs")


def decode_strings(array: np.ndarray, name: str) -> list[str]:
    """BYTES tensor [n, 1] -> n UTF-8 strings."""
    out = []
    for item in array.reshape(array.shape[0], -1)[:, 0]:
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(
                    f"input '{name}': expected UTF-8 text, got undecodable bytes ({exc.reason})"
                ) from None
        out.append(str(item))
    return out


def check_limits(request: Any, specs: Sequence[TensorSpec], limits: InputLimits) -> None:
    """Image sizes and text lengths against the limits, before any conversion (a direct gRPC client gets the
    same bounds a robot behind the bridge does)."""
    for spec in specs:
        tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
        if tensor is None:
            continue
        name = "/".join(key_path(spec.name))
        if spec.data_type == "TYPE_UINT8":
            limits.check_image(name, tuple(int(d) for d in tensor.shape()[1:]))
        elif spec.data_type == "TYPE_STRING":
            for item in tensor.as_numpy().reshape(-1):
                limits.check_text(name, item if isinstance(item, bytes) else str(item))


def read_rows(request: Any, specs: Sequence[TensorSpec], limits: InputLimits | None = None) -> list[dict[str, Any]]:
    """One flat ``{tensor name: value}`` dict per batch row; strings decoded, absent optional inputs omitted."""
    if limits is not None:
        check_limits(request, specs, limits)
    rows: list[dict[str, Any]] = [{} for _ in range(batch_size_of(request, specs))]
    for spec in specs:
        tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
        if tensor is None:
            continue
        array = tensor.as_numpy()
        if array.shape[0] != len(rows):
            raise RequestError(f"input '{spec.name}': batch dimension {array.shape[0]} != {len(rows)} of the others")
        values: Sequence[Any] = decode_strings(array, spec.name) if spec.data_type == "TYPE_STRING" else list(array)
        for row, value in zip(rows, values, strict=True):
            row[spec.name] = value
    return rows


def observation(row: dict[str, Any], exclude: Sequence[str] = ()) -> dict[str, Any]:
    return unflatten({k: v for k, v in row.items() if k not in exclude})


def string_tensor(name: str, values: Sequence[str]) -> Any:
    return pb_utils.Tensor(name, np.array([[v.encode("utf-8")] for v in values], dtype=np.object_))


def float_tensor(name: str, values: Any) -> Any:
    return pb_utils.Tensor(name, np.ascontiguousarray(np.asarray(values, dtype=np.float32)))


@dataclasses.dataclass
class ModelMetrics:
    """Custom metrics on Triton's metrics port: batch size histogram and per-call milliseconds, labelled with
    the served config and checkpoint so that series from before and after a model swap stay apart."""

    batch_size: Any
    call_ms: Any
    families: tuple[Any, ...]  # a Metric is only valid while its MetricFamily lives

    @classmethod
    def create(cls, model: str, what: str, served: dict[str, str]) -> ModelMetrics:
        sizes = pb_utils.MetricFamily(
            name="openpi_batch_size",
            description="observations per model call (after stacking the requests of one execute)",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        ms = pb_utils.MetricFamily(
            name=f"openpi_{what}_ms",
            description=f"wall milliseconds of one batched {what} call",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        labels = {"model": model, **served}
        return cls(
            batch_size=sizes.Metric(labels=labels, buckets=[1, 2, 4, 8, 16, 32]),
            call_ms=ms.Metric(labels=labels, buckets=[5, 10, 20, 30, 50, 80, 120, 200, 500, 1000, 2000]),
            families=(sizes, ms),
        )

    def observe(self, batch: int, ms: float) -> None:
        self.batch_size.observe(float(batch))
        self.call_ms.observe(float(ms))


def served_labels(config_name: str, checkpoint_dir: str) -> dict[str, str]:
    """Metric labels naming what a model serves (an empty checkpoint is the embedded default)."""
    return {"config": config_name, "checkpoint": checkpoint_dir or "embedded-default"}


@dataclasses.dataclass
class RequestFailures:
    """``openpi_request_failures_total{model, code, ...}``: error responses by code, one series per code seen."""

    family: Any
    labels: dict[str, str]
    counters: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, model: str, served: dict[str, str] | None = None) -> RequestFailures:
        family = pb_utils.MetricFamily(
            name="openpi_request_failures_total",
            description="requests answered with an error, by Triton error code",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        return cls(family=family, labels={"model": model, **(served or {})})

    def count(self, code: str) -> None:
        counter = self.counters.get(code)
        if counter is None:
            counter = self.counters[code] = self.family.Metric(labels={**self.labels, "code": code})
        counter.increment(1.0)


@dataclasses.dataclass
class FailureCounter:
    """A counter on Triton's metrics port for failures Triton itself does not see (e.g. a BLS child's)."""

    counter: Any
    family: Any  # a Metric is only valid while its MetricFamily lives

    @classmethod
    def create(cls, model: str, what: str) -> FailureCounter:
        family = pb_utils.MetricFamily(
            name=f"openpi_{what}_failures_total",
            description=f"{what} calls that failed or timed out (the request went on without them)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        return cls(counter=family.Metric(labels={"model": model}), family=family)

    def increment(self) -> None:
        self.counter.increment(1.0)


def model_parameters(args: dict[str, str]) -> dict[str, str]:
    from openpi_triton.triton.model_params import read_parameters

    return read_parameters(json.loads(args["model_config"]))


def parse_parameters(parse: Callable[[dict[str, str]], T], args: dict[str, str], inherits: Sequence[str] = ()) -> T:
    """Parses config.pbtxt parameters, the empty ones of ``inherits`` taken from the action model's config
    (see :mod:`openpi_triton.triton.inherit`); a bad one fails the load with its message."""
    from openpi_triton.triton.model_params import ParameterError

    try:
        return parse(resolved_parameters(args, inherits))
    except ParameterError as exc:
        raise pb_utils.TritonModelException(str(exc)) from None


def resolved_parameters(args: dict[str, str], inherits: Sequence[str] = ()) -> dict[str, str]:
    from openpi_triton.triton.inherit import inherited
    from openpi_triton.triton.model_params import ParameterError

    params = model_parameters(args)
    if not inherits:
        return params
    try:
        return inherited(params, pathlib.Path(args["model_repository"]), tuple(inherits))
    except ParameterError as exc:
        raise pb_utils.TritonModelException(str(exc)) from None


def model_dir_of(model_class: type) -> pathlib.Path:
    """``<repository>/<model>`` of the ``model.py`` (``<model>/<version>/model.py``) defining ``model_class``."""
    import inspect

    return pathlib.Path(inspect.getfile(model_class)).absolute().parents[1]


def _load_fingerprint(model_dir: pathlib.Path, own: dict[str, str], inherits: Sequence[str]) -> str:
    from openpi_triton import load_status
    from openpi_triton.triton.inherit import action_model_name, inherited

    source = model_dir.parent / action_model_name(own) / "config.pbtxt" if inherits else None
    try:
        checkpoint = inherited(own, model_dir, tuple(inherits)).get("checkpoint_dir", "") if inherits else ""
    except ValueError:
        checkpoint = ""
    return load_status.fingerprint(model_dir, source, checkpoint or own.get("checkpoint_dir", ""))


def guarded_auto_complete(model_class: type, config: Any, inherits: Sequence[str], complete: Callable[[], T]) -> T:
    """Auto-complete is the first step of every load attempt: a load that failed with exactly these inputs
    fails again at once, in one line, instead of loading a checkpoint and printing a traceback every poll;
    a new failure here is recorded like one in ``initialize``."""
    from openpi_triton import load_status
    from openpi_triton.triton.model_params import read_parameters

    model_dir = model_dir_of(model_class)
    current = _load_fingerprint(model_dir, read_parameters(config.as_dict()), inherits)
    previous = load_status.previous_failure(model_dir, current)
    if previous is not None:
        first_line = str(previous.get("message", "")).strip().splitlines()[:1]
        raise pb_utils.TritonModelException(
            f"{model_dir.name}: not loaded again, nothing changed since its load failed at {previous.get('time')}: "
            f"{first_line[0] if first_line else 'see the log of that attempt'}"
        )
    try:
        return complete()
    except Exception as exc:
        load_status.record_failure(model_dir, current, f"{type(exc).__name__}: {exc}")
        raise


def record_load(args: dict[str, str], inherits: Sequence[str], initialize: Callable[[], None]) -> None:
    """Runs a model's ``initialize``; its failure is recorded (see ``openpi_triton.load_status``), a success
    clears the record. The stub is tied to its server first (``openpi_triton.triton.server_watch``)."""
    from openpi_triton import load_status
    from openpi_triton.triton import server_watch

    server_watch.exit_with_server()
    model_dir = pathlib.Path(args["model_repository"])
    current = _load_fingerprint(model_dir, model_parameters(args), inherits)
    try:
        initialize()
    except Exception as exc:
        load_status.record_failure(model_dir, current, f"{type(exc).__name__}: {exc}")
        raise
    load_status.clear(model_dir)


def auto_complete_parameters(model_class: type, config: Any, inherits: Sequence[str]) -> dict[str, str]:
    """Parameters at auto-complete time, when Triton passes no paths: the model's folder is the one of the
    ``model.py`` that defines ``model_class`` (``<repository>/<model>/<version>/model.py``)."""
    from openpi_triton.triton.inherit import inherited
    from openpi_triton.triton.model_params import ParameterError, read_parameters

    model_dir = model_dir_of(model_class)
    try:
        return inherited(read_parameters(config.as_dict()), model_dir, tuple(inherits))
    except ParameterError as exc:
        raise pb_utils.TritonModelException(str(exc)) from None


def load_or_fail(args: dict[str, str], load: Callable[[], T]) -> T:
    """Runs a checkpoint load; a bad checkpoint or tokenizer fails the model load with a clear message."""
    try:
        return load()
    except (ValueError, FileNotFoundError, RuntimeUnavailableError) as exc:
        raise pb_utils.TritonModelException(f"{args['model_name']}: {exc}") from None


def resolve_weights(checkpoint_dir: str, tokenizer_path: str) -> tuple[pathlib.Path, str | None]:
    """Empty ``checkpoint_dir`` -> the embedded default (checkpoint and its tokenizer)."""
    if checkpoint_dir:
        return pathlib.Path(checkpoint_dir), tokenizer_path or None
    from openpi_triton.native.tiny import ensure_embedded_default

    default = ensure_embedded_default()
    logger.warning("no checkpoint_dir configured: serving the embedded default model from %s", default.root)
    return default.checkpoint_dir, tokenizer_path or str(default.tokenizer_path)
