"""Slots (as openpi-flash): what an observation on the action or planner endpoint turns into.

- action slot -> ``combined_ensemble`` when a planner is configured (``obs["mode"]`` is forwarded),
  else ``action``. Response: ``actions`` (float64, as openpi returns them), ``policy_timing``, and
  ``subtask`` ``{"text", "ms"}`` when the planner ran; ``subtask_only`` gives exactly ``{"subtask"}``.
- planner slot -> ``planner``. Response: ``{"subtask": {"text", "ms"}}``; a failed generation gives
  ``{"text": "", "ms": <elapsed>}`` as openpi-flash does, bad input is an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from openpi_bridge import consistency
from openpi_bridge.errors import ObservationError, ServingError, TritonCallError
from openpi_bridge.triton_gateway import TritonGateway
from openpi_triton.contract import io_names

logger = logging.getLogger("openpi_bridge")


@dataclasses.dataclass
class RuntimeConfig:
    """Settings the admin endpoint may change while serving; read by every request."""

    generation_prompt_format: str


def _text(array: np.ndarray) -> str:
    item = array.reshape(-1)[0]
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)


def _subtask(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {"text": _text(outputs[io_names.SUBTASK]), "ms": _finite_ms(outputs[io_names.SUBTASK_MS])}


def _finite_ms(array: np.ndarray) -> float:
    value = float(array.reshape(-1)[0])
    return value if np.isfinite(value) else 0.0


def _actions(outputs: Mapping[str, np.ndarray], model: str) -> np.ndarray:
    """The chunk as openpi returns it (float64); non-finite values never reach a robot's controller."""
    actions = outputs[io_names.ACTIONS][0].astype(np.float64)
    if not np.all(np.isfinite(actions)):
        raise ServingError(f"model '{model}' returned non-finite actions; they were not sent to the robot")
    return actions


class Slot:
    name: str
    model: str

    def __init__(self, gateway: TritonGateway) -> None:
        self.gateway = gateway

    async def ready(self) -> bool:
        return await self.health() is None

    async def health(self) -> str | None:
        """None when this slot can serve a request end to end now, else the reason it cannot."""
        if not await self.gateway.ready(self.model):
            return f"Triton or the model '{self.model}' is not ready"
        try:
            return await self.mismatch()
        except TritonCallError as exc:
            return f"cannot read the served models' configs: {exc}"

    async def mismatch(self) -> str | None:
        """Why the models behind this slot disagree (a half-done swap), or None."""
        return None

    async def metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    async def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class ActionSlot(Slot):
    name = "action"

    def __init__(self, gateway: TritonGateway, model: str, runtime: RuntimeConfig | None) -> None:
        super().__init__(gateway)
        self.model = model
        self.runtime = runtime

    async def _action_model(self) -> str:
        """The model that serves the actions: the slot's model, or the action model behind its ensemble."""
        children = (await self.gateway.describe(self.model)).parameters
        return (children.get("action_model", "") or "action") if "action_model" in children else self.model

    async def metadata(self) -> dict[str, Any]:
        # The action model names the served config (the ensemble follows it): its metadata is the robot's.
        return dict((await self.gateway.describe(await self._action_model())).metadata)

    async def mismatch(self, needs_planner: bool = True) -> str | None:
        interface = await self.gateway.describe(self.model)
        children = interface.parameters
        if "action_model" not in children:
            return None  # the action model itself: nothing behind it to disagree with
        action = await self.gateway.describe(await self._action_model())
        problem = consistency.action_mismatch(interface, action)
        if problem is None and needs_planner and self.runtime is not None and children.get("planner_model"):
            problem = consistency.planner_mismatch(interface, await self.gateway.describe(children["planner_model"]))
        return problem

    async def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        # action_only requests never reach the planner: a planner still loading does not hold them back.
        problem = await self.mismatch(needs_planner=obs.get(io_names.MODE) != "action_only")
        if problem is not None:
            raise ServingError(problem)
        interface = await self.gateway.describe(self.model)
        extra: dict[str, Any] = {}
        if self.runtime is not None and io_names.GENERATION_PROMPT_FORMAT in interface.inputs:
            extra[io_names.GENERATION_PROMPT_FORMAT] = self.runtime.generation_prompt_format
        try:
            outputs = await self.gateway.infer(self.model, obs, extra)
        except ObservationError as exc:
            # A robot of another embodiment (say, after a swap) learns what this server serves now.
            served = (await self.gateway.describe(await self._action_model())).parameters.get("model_config_name")
            raise ObservationError(f"{exc} (this server serves {served!r})" if served else str(exc)) from None
        response: dict[str, Any] = {}
        if io_names.ACTIONS in outputs:
            response["actions"] = _actions(outputs, self.model)
            response["policy_timing"] = {"infer_ms": _finite_ms(outputs[io_names.POLICY_INFER_MS])}
        if io_names.SUBTASK in outputs:
            response["subtask"] = _subtask(outputs)
        if io_names.RTC_ECHO in outputs:
            response["rtc"] = json.loads(_text(outputs[io_names.RTC_ECHO]))
        return response


class PlannerSlot(Slot):
    name = "planner"

    def __init__(self, gateway: TritonGateway, model: str, runtime: RuntimeConfig, action: ActionSlot | None) -> None:
        super().__init__(gateway)
        self.model = model
        self.runtime = runtime
        self.action = action

    async def metadata(self) -> dict[str, Any]:
        # openpi-flash: the action slot's image specs in combined mode, nothing in planner-only mode.
        if self.action is None:
            return {}
        return {"image_specs": (await self.action.metadata()).get("image_specs", [])}

    async def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        extra = {io_names.GENERATION_PROMPT_FORMAT: self.runtime.generation_prompt_format}
        try:
            outputs = await self.gateway.infer(self.model, obs, extra)
        except TritonCallError as exc:
            if exc.invalid_argument:
                raise
            logger.warning("planner failed, answering an empty subtask: %s", exc)
            return {"subtask": {"text": "", "ms": (time.perf_counter() - start) * 1000.0}}
        return {"subtask": _subtask(outputs)}
