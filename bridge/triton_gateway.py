"""Observations to Triton gRPC calls (tritonclient's asyncio API), using only what Triton says about a model."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from openpi_bridge.shared_memory import Region, SharedMemoryPool
from openpi_triton import tensor_names
from openpi_triton.metadata import robot_metadata

logger = logging.getLogger("openpi_bridge")

TRITON_DTYPES = {"UINT8": np.uint8, "FP64": np.float64, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64}
# How long a model's interface is reused before it is read from Triton again (model swaps are picked up).
DESCRIBE_TTL_S = 2.0


class ObservationError(ValueError):
    """The robot sent something the served model cannot take; the message says what."""


class TritonCallError(RuntimeError):
    """Triton answered with an error (or could not be reached)."""

    def __init__(self, model: str, status: str, message: str) -> None:
        super().__init__(f"{model}: {status}: {message}" if status else f"{model}: {message}")
        self.status = status
        self.invalid_argument = "INVALID_ARG" in status


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str  # Triton wire type: UINT8, FP64, FP32, BYTES
    dims: tuple[int, ...]
    optional: bool


@dataclasses.dataclass(frozen=True)
class ModelInterface:
    name: str
    inputs: dict[str, InputSpec]
    outputs: tuple[str, ...]
    metadata: dict[str, Any]
    fetched_at: float

    @property
    def groups(self) -> set[tuple[str, ...]]:
        """Key-path prefixes that hold inputs (``("images",)``): unknown keys inside them are robot mistakes."""
        return {tensor_names.key_path(n)[:-1] for n in self.inputs if len(tensor_names.key_path(n)) > 1}


def _wire_type(config_type: str) -> str:
    return "BYTES" if config_type == "TYPE_STRING" else config_type.removeprefix("TYPE_")


def interface_from_config(name: str, config: Mapping[str, Any]) -> ModelInterface:
    inputs = {
        i["name"]: InputSpec(
            i["name"], _wire_type(i["data_type"]), tuple(int(d) for d in i.get("dims", [])), bool(i.get("optional"))
        )
        for i in config.get("input", [])
    }
    outputs = tuple(o["name"] for o in config.get("output", []))
    return ModelInterface(name, inputs, outputs, robot_metadata(config), time.monotonic())


def _to_uint8_image(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0):
            raise ObservationError(f"image '{name}': float images must hold values in [0, 1]; send uint8 for 0..255")
        return (255 * array).astype(np.uint8)  # openpi's convert_to_uint8 (truncation)
    raise ObservationError(f"image '{name}': expected uint8 (or float in [0, 1]), got {array.dtype}")


def _to_tensor(spec: InputSpec, value: Any) -> np.ndarray:
    """One robot value -> the model's wire type, batch dimension added."""
    if spec.datatype == "BYTES":
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "US":
            value = value.item()
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes):
            raise ObservationError(f"'{spec.name}': expected a string, got {type(value).__name__}")
        return np.array([[value]], dtype=np.object_)
    if spec.datatype == "UINT8":
        return _to_uint8_image(value, spec.name)[None]
    dtype = TRITON_DTYPES.get(spec.datatype)
    if dtype is None:
        raise ObservationError(f"'{spec.name}': the model expects {spec.datatype}, which the bridge cannot send")
    try:
        array = np.asarray(value)
    except ValueError:
        raise ObservationError(
            f"'{spec.name}': expected {spec.datatype} {list(spec.dims)}, got a ragged sequence"
        ) from None
    if array.dtype.kind not in "biuf":
        raise ObservationError(
            f"'{spec.name}': expected numbers ({spec.datatype} {list(spec.dims)}), got {array.dtype}"
        )
    if array.ndim == 0 and spec.dims == (1,):
        array = array.reshape(1)  # scalars such as DROID's gripper_position
    return np.ascontiguousarray(array.astype(dtype, copy=False))[None]


def build_inputs(
    interface: ModelInterface, obs: Mapping[str, Any], extra: Mapping[str, Any]
) -> list[tuple[InputSpec, np.ndarray]]:
    """Robot observation (+ bridge-supplied tensors) -> (input, batch-1 array) pairs; unknown keys next to
    inputs are errors, other unknown keys are ignored as openpi ignores them."""
    if not isinstance(obs, Mapping):
        raise ObservationError(f"observation: expected a dict, got {type(obs).__name__}")
    try:
        flat = {**tensor_names.flatten(obs), **extra}
    except ValueError as exc:
        raise ObservationError(str(exc)) from None
    groups = interface.groups
    arrays = []
    for name, value in flat.items():
        spec = interface.inputs.get(name)
        if spec is None:
            path = tensor_names.key_path(name)
            if path[:-1] in groups:
                known = sorted(n for n in interface.inputs if tensor_names.key_path(n)[:-1] == path[:-1])
                raise ObservationError(f"unknown input '{'/'.join(path)}'; the served model takes {known}")
            continue  # keys the model does not use (openpi ignores them too)
        arrays.append((spec, _to_tensor(spec, value)))
    return arrays


def is_local(url: str) -> bool:
    host = url.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


class TritonGateway:
    """One async gRPC channel to Triton shared by every connection of the bridge.

    ``shared_memory``: ``auto`` sends images through system shared memory when Triton is on this host
    (loopback URL) and falls back to the gRPC payload, with a warning, if Triton cannot map the regions
    (e.g. a container without the host's /dev/shm); ``on`` makes that an error; ``off`` never uses it.
    """

    def __init__(self, url: str, request_timeout_s: float, shared_memory: str = "auto") -> None:
        self.url = url
        self.timeout = request_timeout_s
        self.client = grpcaio.InferenceServerClient(url)
        self._interfaces: dict[str, ModelInterface] = {}
        self.shared_memory_mode = shared_memory
        self.use_shared_memory = shared_memory == "on" or (shared_memory == "auto" and is_local(url))
        self.pool = SharedMemoryPool(self.client)

    async def close(self) -> None:
        await self.pool.close()
        await self.client.close()

    async def _region_for(self, images: list[np.ndarray]) -> Region | None:
        if not self.use_shared_memory or not images:
            return None
        try:
            return await self.pool.acquire(sum(a.nbytes for a in images))
        except Exception as exc:
            if self.shared_memory_mode == "on":
                raise TritonCallError("shared memory", "", f"cannot register a region with Triton: {exc}") from None
            logger.warning("Triton cannot use this host's shared memory (%s); sending images in the gRPC payload", exc)
            self.use_shared_memory = False
            return None

    async def _grpc_inputs(self, arrays: list[tuple[InputSpec, np.ndarray]]) -> tuple[list[Any], Region | None]:
        images = [a for spec, a in arrays if spec.datatype == "UINT8"]
        region = await self._region_for(images)
        tensors, offset = [], 0
        for spec, array in arrays:
            tensor = grpcaio.InferInput(spec.name, list(array.shape), spec.datatype)
            if region is not None and spec.datatype == "UINT8":
                region.write(array, offset)
                tensor.set_shared_memory(region.name, array.nbytes, offset)
                offset += array.nbytes
            else:
                tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors, region

    async def describe(self, model: str) -> ModelInterface:
        cached = self._interfaces.get(model)
        if cached is not None and time.monotonic() - cached.fetched_at < DESCRIBE_TTL_S:
            return cached
        try:
            config = await self.client.get_model_config(model, as_json=True, client_timeout=self.timeout)
        except InferenceServerException as exc:
            raise TritonCallError(model, str(exc.status() or ""), exc.message() or str(exc)) from None
        interface = interface_from_config(model, config["config"])
        self._interfaces[model] = interface
        return interface

    async def ready(self, model: str) -> bool:
        try:
            return bool(
                await self.client.is_server_ready(client_timeout=2.0)
                and await self.client.is_model_ready(model, client_timeout=2.0)
            )
        except Exception:
            return False

    async def infer(self, model: str, obs: Mapping[str, Any], extra: Mapping[str, Any] = {}) -> dict[str, np.ndarray]:
        interface = await self.describe(model)
        arrays = build_inputs(interface, obs, extra)
        for attempt in (1, 2):
            inputs, region = await self._grpc_inputs(arrays)
            try:
                result = await self.client.infer(model, inputs, client_timeout=self.timeout)
                break
            except InferenceServerException as exc:
                self._interfaces.pop(model, None)  # the model may have been swapped: read it again next time
                message = exc.message() or str(exc)
                if attempt == 1 and region is not None and "shared memory" in message.lower():
                    # Triton restarted and forgot our regions: register fresh ones and send again.
                    logger.warning("Triton lost the shared-memory registrations (%s); registering again", message)
                    region = None
                    await self.pool.reset()
                    continue
                raise TritonCallError(model, str(exc.status() or ""), message) from None
            finally:
                if region is not None:
                    self.pool.release(region)
        names = [o.name for o in result.get_response().outputs]
        return {name: result.as_numpy(name) for name in names}
