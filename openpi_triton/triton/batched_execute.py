"""The one ``execute`` of the models that batch (``action``, ``planner``).

Every request is read on its own, so a bad one gets its own INVALID_ARG and the rest are served; all rows of
the readable requests go to the model in one call; each request is answered from its own rows. A failing
model call answers every request of it with INTERNAL, a failing answer only its own request, and both are
logged with their traceback through Triton's log.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from openpi_triton.triton import backend

Row = TypeVar("Row")
Out = TypeVar("Out")


@dataclasses.dataclass(frozen=True)
class BatchedModel(Generic[Row, Out]):
    model_name: str
    # The config this instance serves: a BLS parent expecting another one gets a refusal (half-done swap).
    served_config: str
    # What the model call does, for logs and errors ("action inference", "subtask generation").
    call_name: str
    # One request -> its prepared rows; a ValueError is that request's INVALID_ARG.
    read: Callable[[Any], list[Row]]
    # One model call for the rows of every readable request, one output per row in order.
    call: Callable[[list[Row]], Sequence[Out]]
    # A request's response from its rows, their outputs and the model call's milliseconds.
    respond: Callable[[list[Row], Sequence[Out], float], Any]
    metrics: backend.ModelMetrics
    failures: backend.RequestFailures


def execute(model: BatchedModel[Row, Out], requests: Sequence[Any]) -> list[Any]:
    responses: list[Any] = [None] * len(requests)
    readable: list[tuple[int, list[Row]]] = []
    for index, request in enumerate(requests):
        refusal = backend.config_mismatch(request, model.model_name, model.served_config)
        if refusal is not None:
            responses[index] = refusal
            continue
        try:
            readable.append((index, model.read(request)))
        except ValueError as exc:
            responses[index] = backend.invalid(str(exc))
    rows = [row for _, own in readable for row in own]
    if rows:
        _answer(model, readable, rows, responses)
    return backend.finish_responses(requests, responses, model.failures)


def _answer(
    model: BatchedModel[Row, Out], readable: list[tuple[int, list[Row]]], rows: list[Row], responses: list[Any]
) -> None:
    start = time.perf_counter()
    try:
        outputs = model.call(rows)
    except Exception as exc:  # the model call itself: every request of it gets the error
        backend.log_failure(f"{model.model_name}: {model.call_name} failed for a batch of {len(rows)}")
        for index, _ in readable:
            responses[index] = backend.internal(f"{model.call_name} failed: {type(exc).__name__}: {exc}")
        return
    ms = (time.perf_counter() - start) * 1000.0
    model.metrics.observe(len(rows), ms)
    offset = 0
    for index, own in readable:
        own_outputs = outputs[offset : offset + len(own)]
        offset += len(own)
        try:
            responses[index] = model.respond(own, own_outputs, ms)
        except Exception as exc:  # this request's answer alone (output transforms): the others still answer
            backend.log_failure(f"{model.model_name}: answering a request after {model.call_name} failed")
            responses[index] = backend.internal(
                f"{model.call_name} ran, but this request's output failed: {type(exc).__name__}: {exc}"
            )
