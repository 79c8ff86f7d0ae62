"""Observations to Triton gRPC calls (tritonclient's asyncio API), using only what Triton says about a model."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from openpi_bridge import offload, request_timing
from openpi_bridge.errors import ObservationError, ServingError, StaleObservationError, TritonCallError
from openpi_bridge.fleet_gate import Admission, FleetGate, GateTimeoutError
from openpi_bridge.metrics import BridgeMetrics
from openpi_bridge.shared_memory import Region, SharedMemoryPool
from openpi_bridge.triton_discovery import DiscoveryError, DnsDiscovery
from openpi_triton import tensor_names
from openpi_triton.contract import images as image_ops
from openpi_triton.contract import io_names
from openpi_triton.contract.robot_metadata import robot_metadata
from openpi_triton.limits import DEFAULT_INPUT_LIMITS, InputLimits

logger = logging.getLogger("openpi_bridge")

TRITON_DTYPES = {"UINT8": np.uint8, "FP64": np.float64, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64}
# How long a model's interface is reused before it is read from Triton again (model swaps are picked up).
DESCRIBE_TTL_S = 2.0


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
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)
    # The model's queue deadline (dynamic_batching.default_queue_policy), None when it has none.
    stale_after_ms: float | None = None
    # Batches one Triton server computes at once: its devices (see ``_devices``); the most requests in one batch.
    devices: int = 1
    max_batch_size: int = 1
    # How long Triton's dynamic batcher gathers a batch (max_queue_delay_microseconds).
    queue_delay_s: float = 0.0

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
    parameters = {k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()}
    batching = config.get("dynamic_batching") or {}
    policy = batching.get("default_queue_policy") or {}
    timeout_us = int(policy.get("default_timeout_microseconds", 0) or 0)
    stale_after_ms = timeout_us / 1000.0 if timeout_us else None
    return ModelInterface(
        name,
        inputs,
        outputs,
        robot_metadata(config),
        time.monotonic(),
        parameters,
        stale_after_ms,
        devices=_devices(config),
        max_batch_size=max(1, int(config.get("max_batch_size", 0) or 0)),
        queue_delay_s=int(batching.get("max_queue_delay_microseconds", 0) or 0) / 1e6,
    )


def _devices(config: Mapping[str, Any]) -> int:
    """Devices a model's instances compute on, on one server: each GPU its ``KIND_GPU`` groups list (Triton's
    normalised config lists them; a group without the list counts once per instance), and the host once for
    all other groups. Instances on one device take turns there (a GPU runs one batch after another): a second
    instance on a GPU prepares the next batch while the first computes, it does not double the compute."""
    gpus: set[int] = set()
    unlisted = 0
    on_host = False
    for group in config.get("instance_group") or []:
        if group.get("kind") == "KIND_GPU":
            listed = {int(g) for g in group.get("gpus") or []}
            gpus |= listed
            unlisted += 0 if listed else int(group.get("count", 1) or 1)
        else:
            on_host = True
    return max(1, len(gpus) + unlisted + int(on_host))


def robot_name(tensor: str) -> str:
    """A tensor name in the robot's terms: its observation key path (``images/cam_high``)."""
    return "/".join(tensor_names.key_path(tensor))


def _shape_text(dims: Sequence[int]) -> str:
    """Declared dims for a robot: ``-1`` (any size) reads as a letter, as robot engineers write shapes."""
    letters = iter("HWCDEFG") if len(dims) == 3 else iter("NMKLPQR")
    return "[" + ", ".join(str(d) if d >= 0 else next(letters) for d in dims) + "]"


def check_shape(spec: InputSpec, array: np.ndarray) -> None:
    """The robot's value against the model's declared dims (without Triton's batch dimension)."""
    dims = spec.dims
    if len(dims) != array.ndim or any(d >= 0 and d != n for d, n in zip(dims, array.shape, strict=False)):
        what = "image" if spec.datatype == "UINT8" else "value"
        raise ObservationError(
            f"'{robot_name(spec.name)}': expected {what} of shape {_shape_text(dims)}, got {list(array.shape)}"
        )


def _to_uint8_image(value: Any, name: str, limits: InputLimits) -> np.ndarray:
    try:
        array = np.asarray(value)  # lists are bounded by the frame's value limit; arrays are not copied
    except ValueError:
        raise ObservationError(f"image '{name}': expected a uint8 array, got a ragged sequence") from None
    try:
        limits.check_image(name, array.shape)  # before any conversion: its cost grows with the pixels
    except ValueError as exc:
        raise ObservationError(str(exc)) from None
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        try:
            image_ops.require_unit_range(array, name)
        except ValueError as exc:
            raise ObservationError(str(exc)) from None
        return image_ops.convert_to_uint8(array)
    raise ObservationError(f"image '{name}': expected uint8 (or float in [0, 1]), got {array.dtype}")


def _to_text(spec: InputSpec, value: Any, limits: InputLimits) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "US":
        value = value.item()
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise ObservationError(f"'{robot_name(spec.name)}': expected a string, got {type(value).__name__}")
    try:
        limits.check_text(robot_name(spec.name), value)
    except ValueError as exc:
        raise ObservationError(str(exc)) from None
    return np.array([[value]], dtype=np.object_)


def _to_numbers(spec: InputSpec, value: Any) -> np.ndarray:
    name, expected = robot_name(spec.name), f"numbers of shape {_shape_text(spec.dims)}"
    dtype = TRITON_DTYPES.get(spec.datatype)
    if dtype is None:
        raise ObservationError(f"'{name}': the model expects {spec.datatype}, which the bridge cannot send")
    try:
        array = np.asarray(value)
    except ValueError:
        raise ObservationError(f"'{name}': expected {expected}, got a ragged sequence") from None
    if array.dtype.kind not in "biuf":
        raise ObservationError(f"'{name}': expected {expected}, got {array.dtype}")
    if array.ndim == 0 and spec.dims == (1,):
        array = array.reshape(1)  # scalars such as DROID's gripper_position
    check_shape(spec, array)
    if np.dtype(dtype).kind == "i" and array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
        raise ObservationError(f"'{name}': expected whole numbers, got {array.reshape(-1).tolist()[:4]}")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(array.astype(dtype, copy=False))
    if converted.dtype.kind == "f" and not np.all(np.isfinite(converted)):
        # Checked after the cast: 1e308 is finite in float64 but inf in the model's float32.
        bad = array.reshape(-1)[~np.isfinite(converted.reshape(-1))][0]
        raise ObservationError(f"'{name}': values must be finite in {np.dtype(dtype).name}, got {bad!r}")
    return converted[None]


def _to_tensor(spec: InputSpec, value: Any, limits: InputLimits) -> np.ndarray:
    """One robot value -> the model's wire type, batch dimension added; shape and limits checked first."""
    if spec.datatype == "BYTES":
        return _to_text(spec, value, limits)
    if spec.datatype == "UINT8":
        image = _to_uint8_image(value, robot_name(spec.name), limits)
        check_shape(spec, image)
        return image[None]
    return _to_numbers(spec, value)


def build_inputs(
    interface: ModelInterface,
    obs: Mapping[str, Any],
    extra: Mapping[str, Any],
    limits: InputLimits = DEFAULT_INPUT_LIMITS,
) -> list[tuple[InputSpec, np.ndarray]]:
    """Robot observation (+ bridge-supplied tensors) -> (input, batch-1 array) pairs; unknown keys next to
    inputs are errors, other unknown keys are ignored as openpi ignores them. CPU work proportional to the
    observation: the bridge runs it off its event loop."""
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
        arrays.append((spec, _to_tensor(spec, value, limits)))
    missing = sorted(robot_name(n) for n, s in interface.inputs.items() if not s.optional and n not in flat)
    if missing:
        raise ObservationError(f"observation is missing {missing}; the served model '{interface.name}' needs them")
    return arrays


def _fill_tensors(arrays: list[tuple[InputSpec, np.ndarray]], region: Region | None) -> list[Any]:
    """gRPC inputs: images copied into ``region`` when there is one, everything else serialised (copies that
    grow with the images: on the event loop only up to ``offload.INLINE_MAX_BYTES``)."""
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
    return tensors


def is_local(url: str) -> bool:
    host = url.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


HEALTH_INTERVAL_S = 1.0
_MAX_MESSAGE = 2**31 - 1
# gRPC backs off up to 2 minutes between reconnects by default; a restarted Triton must be found in ~1 s.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclasses.dataclass
class Endpoint:
    """One Triton server: its channel, its shared-memory pool, the requests in flight, its health."""

    url: str
    client: Any
    pool: SharedMemoryPool
    use_shared_memory: bool
    outstanding: int = 0
    healthy: bool = True
    # Set while no request is in flight: a server that left DNS is closed once its requests finished.
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def begin(self) -> None:
        self.outstanding += 1
        self.idle.clear()

    def end(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.idle.set()


class TritonGateway:
    """Async gRPC channels to one or more Triton servers, shared by every connection of the bridge.

    Several URLs (``triton.urls``) spread requests by least outstanding work; an endpoint whose call fails
    as unavailable, or that stops answering the health check (every second), gets no new requests until
    it is ready again. Requests in flight on a server that dies fail; later ones go to the others.

    ``shared_memory``: ``auto`` sends images through system shared memory to Triton servers on this host
    (loopback URL) and falls back to the gRPC payload, with a warning, if Triton cannot map the regions
    (e.g. a container without the host's /dev/shm); ``on`` makes that an error; ``off`` never uses it.

    ``discovery`` (``triton.discovery``): the servers are the addresses of a DNS name, read again every
    ``refresh_s`` (a Kubernetes headless Service: its ready pods). A new address gets requests from the next
    pick on; one that left gets no new requests, its requests in flight finish, then its channel is closed. A
    failed or empty lookup keeps the servers known so far (the health check still takes dead ones out).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        request_timeout_s: float,
        shared_memory: str = "auto",
        input_limits: InputLimits = DEFAULT_INPUT_LIMITS,
        metrics: BridgeMetrics | None = None,
        discovery: DnsDiscovery | None = None,
        discovery_refresh_s: float = 5.0,
        fleet_max_return_s: float | None = None,
    ) -> None:
        urls = [urls] if isinstance(urls, str) else list(urls)
        self.input_limits = input_limits
        self.metrics = metrics or BridgeMetrics()
        if not urls and discovery is None:
            raise ValueError("at least one Triton URL is needed")
        self.timeout = request_timeout_s
        self.shared_memory_mode = shared_memory
        self.discovery = discovery
        self.discovery_refresh_s = discovery_refresh_s
        self.endpoints: list[Endpoint] = [self._endpoint(url) for url in urls]
        self._interfaces: dict[str, ModelInterface] = {}
        self._models: set[str] = set()  # models served so far: an endpoint is healthy when all are ready
        self._turn = 0
        self._monitor: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        # Servers that left DNS, closing once their requests finish: close() closes any still open.
        self._retiring: dict[asyncio.Task[None], Endpoint] = {}
        # None: requests go to Triton as they come (its dynamic batcher alone forms batches).
        self.fleet_max_return_s = fleet_max_return_s
        self._gates: dict[str, FleetGate] = {}

    def _endpoint(self, url: str) -> Endpoint:
        client = grpcaio.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        use_shm = self.shared_memory_mode == "on" or (self.shared_memory_mode == "auto" and is_local(url))
        return Endpoint(url, client, SharedMemoryPool(client), use_shm)

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    @property
    def source(self) -> str:
        """Where the servers come from, for logs: the DNS name, or the URLs."""
        return f"DNS name {self.discovery}" if self.discovery is not None else ", ".join(self.urls)

    async def start(self) -> None:
        """With discovery: the first lookup before robots are accepted, then one every ``refresh_s``."""
        if self.discovery is not None:
            await self.refresh_servers()
        self._ensure_monitor()

    async def close(self) -> None:
        retiring = list(self._retiring.values())
        tasks = [t for t in (self._monitor, self._follower, *self._retiring) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for endpoint in [*self.endpoints, *retiring]:
            await endpoint.pool.close()
            await endpoint.client.close()

    def _ensure_monitor(self) -> None:
        loop = asyncio.get_running_loop()
        if (len(self.endpoints) > 1 or self.discovery is not None) and self._monitor is None:
            self._monitor = loop.create_task(self._every("health", HEALTH_INTERVAL_S, self.check_health, first=True))
        if self.discovery is not None and self._follower is None:
            self._follower = loop.create_task(self._every("dns", self.discovery_refresh_s, self.refresh_servers))

    async def _every(
        self, task: str, interval_s: float, step: Callable[[], Awaitable[None]], first: bool = False
    ) -> None:
        """``step`` every ``interval_s`` for the gateway's life. A step that raises is logged with its traceback
        and counted (``openpi_bridge_background_failures_total{task}``), and the next one runs on time: one
        unexpected error must not end DNS following or health checks while the bridge still looks healthy."""
        if not first:
            await asyncio.sleep(interval_s)
        while True:
            try:
                await step()
            except Exception:
                logger.exception("background %s step failed; trying again in %.1f s", task, interval_s)
                self.metrics.background_failures.labels(task).inc()
            await asyncio.sleep(interval_s)

    async def refresh_servers(self) -> None:
        """One lookup of the discovery name; servers that appeared join, servers that left are retired."""
        assert self.discovery is not None
        try:
            found = await self.discovery.urls()
        except DiscoveryError as exc:
            logger.warning("%s; keeping the Triton servers %s", exc, self.urls)
            return
        if not found:
            if self.endpoints:
                logger.warning("%s has no addresses; keeping the Triton servers %s", self.discovery, self.urls)
            return
        known = self.urls
        joined = [url for url in found if url not in known]
        left = [e for e in self.endpoints if e.url not in found]
        for endpoint in left:
            self.endpoints.remove(endpoint)  # no new requests from now on
            task = asyncio.get_running_loop().create_task(self._retire(endpoint))
            self._retiring[task] = endpoint
            task.add_done_callback(self._retired)
        self.endpoints.extend(self._endpoint(url) for url in joined)
        if joined or left:
            logger.info(
                "Triton servers at %s: %s (joined %s, left %s)",
                self.discovery,
                self.urls,
                joined,
                [e.url for e in left],
            )

    async def _retire(self, endpoint: Endpoint) -> None:
        await endpoint.idle.wait()  # its requests in flight finish on the open channel
        await endpoint.pool.close()
        await endpoint.client.close()

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("closing a Triton server that left DNS failed", exc_info=task.exception())
            self.metrics.background_failures.labels("retire").inc()

    async def check_health(self) -> None:
        """One health round over the servers: one that stops answering gets no new requests until it is back."""
        for endpoint in list(self.endpoints):
            ready = await self._endpoint_ready(endpoint)
            if ready != endpoint.healthy:
                logger.warning("Triton %s is %s", endpoint.url, "back" if ready else "not ready: no new requests")
                if ready:
                    await endpoint.pool.reset()  # a restarted server forgot our shared-memory regions
            endpoint.healthy = ready

    async def _endpoint_ready(self, endpoint: Endpoint) -> bool:
        try:
            if not await endpoint.client.is_server_ready(client_timeout=HEALTH_INTERVAL_S):
                return False
            for model in list(self._models):
                if not await endpoint.client.is_model_ready(model, client_timeout=HEALTH_INTERVAL_S):
                    return False
            return True
        except Exception:
            return False

    def _pick(self, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        candidates = [e for e in self.endpoints if e.healthy and e not in exclude]
        if not candidates:
            candidates = [e for e in self.endpoints if e not in exclude]
        if not candidates:
            return None
        self._turn += 1
        n = len(self.endpoints)
        return min(candidates, key=lambda e: (e.outstanding, (self.endpoints.index(e) - self._turn) % n))

    async def _region_for(self, endpoint: Endpoint, images: list[np.ndarray]) -> Region | None:
        size = sum(a.nbytes for a in images)
        if not endpoint.use_shared_memory or not images or not endpoint.pool.fits(size):
            return None
        try:
            return await endpoint.pool.acquire(size)
        except Exception as exc:
            if self.shared_memory_mode == "on":
                raise TritonCallError("shared memory", "", f"cannot register a region with Triton: {exc}") from None
            logger.warning("Triton cannot use this host's shared memory (%s); sending images in the gRPC payload", exc)
            endpoint.use_shared_memory = False
            return None

    async def _grpc_inputs(
        self, endpoint: Endpoint, arrays: list[tuple[InputSpec, np.ndarray]]
    ) -> tuple[list[Any], Region | None]:
        images = [a for spec, a in arrays if spec.datatype == "UINT8"]
        region = await self._region_for(endpoint, images)
        nbytes = sum(a.nbytes for _, a in arrays)
        return await offload.run_sized(nbytes, _fill_tensors, arrays, region), region

    async def describe(self, model: str) -> ModelInterface:
        cached = self._interfaces.get(model)
        if cached is not None and time.monotonic() - cached.fetched_at < DESCRIBE_TTL_S:
            return cached
        error: TritonCallError | None = None if self.endpoints else self._no_servers(model)
        for endpoint in sorted(self.endpoints, key=lambda e: not e.healthy):
            try:
                config = await endpoint.client.get_model_config(model, as_json=True, client_timeout=self.timeout)
            except InferenceServerException as exc:
                error = TritonCallError(model, str(exc.status() or ""), exc.message() or str(exc))
                continue
            interface = interface_from_config(model, config["config"])
            self._interfaces[model] = interface
            return interface
        assert error is not None
        if cached is not None:
            # Reloading (or Triton restarting): a robot connecting now still gets the last metadata, as from
            # openpi's server; its requests fail with a clear error until the model is back.
            logger.warning("model '%s' config unavailable (%s): using the last one read", model, error)
            return cached
        raise error

    def _no_servers(self, model: str) -> TritonCallError:
        return TritonCallError(model, "StatusCode.UNAVAILABLE", f"no Triton server found at {self.source} yet")

    def _expire_all(self) -> None:
        """The next :meth:`describe` of each model reads its config again, keeping the last one as fallback."""
        for model, cached in self._interfaces.items():
            self._interfaces[model] = dataclasses.replace(cached, fetched_at=float("-inf"))

    async def ready(self, model: str) -> bool:
        self._ensure_monitor()
        for endpoint in list(self.endpoints):
            try:
                if await endpoint.client.is_server_ready(client_timeout=2.0) and await endpoint.client.is_model_ready(
                    model, client_timeout=2.0
                ):
                    return True
            except Exception:
                continue
        return False

    async def infer(self, model: str, obs: Mapping[str, Any], extra: Mapping[str, Any] = {}) -> dict[str, np.ndarray]:
        self._ensure_monitor()
        self._models.add(model)
        interface = await self.describe(model)
        try:
            return await self._infer_as(interface, model, obs, extra)
        except TritonCallError as exc:
            if not exc.invalid_argument:
                raise
            # Triton refused the inputs: the robot's mistake, or the model was swapped since its interface was
            # read (the failed call expired it). In the second case the observation is judged again against
            # what is served now, so the robot reads the bridge's clear error (or simply its answer).
            fresh = await self.describe(model)
            if fresh.inputs == interface.inputs:
                raise
            logger.info("model '%s' changed its inputs since they were read: building the request again", model)
            return await self._infer_as(fresh, model, obs, extra)

    async def _infer_as(
        self, interface: ModelInterface, model: str, obs: Mapping[str, Any], extra: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        with request_timing.stage("inputs_ms"):
            arrays = await offload.run(build_inputs, interface, obs, extra, self.input_limits)
        tried: list[Endpoint] = []
        refused: TritonCallError | None = None
        async with self._gate(model).admission() as admission:
            while True:
                endpoint = self._pick(exclude=tried)
                if endpoint is None:
                    raise refused or self._no_servers(model)
                tried.append(endpoint)
                endpoint.begin()
                try:
                    result = await self._infer_on(endpoint, model, arrays, admission)
                    break
                except TritonCallError as exc:
                    # Refused before it ran (server gone, model not loaded there): another server may take it.
                    if not exc.not_executed:
                        raise
                    refused = exc
                finally:
                    endpoint.end()
        names = [o.name for o in result.get_response().outputs]
        outputs = {name: result.as_numpy(name) for name in names}
        timing = outputs.pop(io_names.MODEL_TIMING, None)
        if timing is not None:
            request_timing.current().model_timing(timing, is_local(endpoint.url))
        return outputs

    def _stale_message(self, model: str) -> str:
        cached = self._interfaces.get(model)
        deadline = cached.stale_after_ms if cached is not None else None
        waited = f"more than {deadline:g} ms" if deadline else "past its deadline"
        return (
            f"the observation waited {waited} in the queue of model '{model}' and was not computed (the server is "
            "busier than the control period allows; default_queue_policy in its config.pbtxt); send a fresh one"
        )

    def _gate(self, model: str) -> FleetGate:
        gate = self._gates.get(model)
        if gate is None:
            max_return_s = self.fleet_max_return_s
            gate = FleetGate(
                lambda: self._concurrent_batches(model),
                lambda: self._max_batch(model),
                max_return_s or 0.0,
                self.metrics.fleet_batch_requests.labels(model).observe,
                lambda: self._queue_delay_s(model),
            )
            self._gates[model] = gate
        return gate

    def _concurrent_batches(self, model: str) -> int:
        """Batches of ``model`` that can run at once: its devices (an ensemble's: its action model's, where
        the compute is) on every server that takes requests. Unbounded when the gate is off."""
        if self.fleet_max_return_s is None:
            return 1 << 30
        compute = self._compute_interface(model)
        if compute is None:
            return 1
        servers = sum(1 for e in self.endpoints if e.healthy) or 1
        return compute.devices * servers

    def _queue_delay_s(self, model: str) -> float:
        """How long Triton gathers a batch of ``model``: its own queue delay, and its action model's behind it."""
        interface, compute = self._interfaces.get(model), self._compute_interface(model)
        if interface is None or compute is None:
            return 0.0
        return interface.queue_delay_s + (compute.queue_delay_s if compute is not interface else 0.0)

    def _compute_interface(self, model: str) -> ModelInterface | None:
        """The model that runs the batches: ``model``, or the action model behind an ensemble (when read)."""
        interface = self._interfaces.get(model)
        behind = interface.parameters.get("action_model") if interface is not None else None
        return (self._interfaces.get(behind) if behind else None) or interface

    def _max_batch(self, model: str) -> int:
        interface = self._interfaces.get(model)
        return interface.max_batch_size if interface is not None else 1

    async def _wait_for_batch(self, admission: Admission, model: str) -> None:
        """Holds the request at the fleet gate until its batch leaves; the model's queue deadline counts here too
        (an observation too old for its control period is not sent at all)."""
        if admission.admitted:
            return  # a retry on another server: the request keeps its place
        cached = self._interfaces.get(model)
        deadline_s = cached.stale_after_ms / 1000.0 if cached is not None and cached.stale_after_ms else None
        started = time.perf_counter()
        try:
            with request_timing.stage("fleet_hold_ms"):
                await admission.wait(deadline_s if deadline_s is not None else self.timeout)
            self.metrics.fleet_hold_seconds.labels(model).observe(time.perf_counter() - started)
        except GateTimeoutError:
            if deadline_s is not None:
                raise StaleObservationError(self._stale_message(model)) from None
            raise ServingError(
                f"model '{model}' took no new batch within triton.request_timeout_s = {self.timeout:g} s"
            ) from None

    async def _infer_on(
        self, endpoint: Endpoint, model: str, arrays: list[tuple[InputSpec, np.ndarray]], admission: Admission
    ) -> Any:
        timing = request_timing.current()
        for attempt in (1, 2):
            with timing.stage("inputs_ms"):
                inputs, region = await self._grpc_inputs(endpoint, arrays)
            await self._wait_for_batch(admission, model)
            started, sent_s = time.perf_counter(), time.time()
            try:
                with timing.stage("triton_ms"):
                    result = await endpoint.client.infer(model, inputs, client_timeout=self.timeout)
                self.metrics.triton_call(model, time.perf_counter() - started)
                timing.call_sent_s, timing.call_received_s = sent_s, time.time()
                return result
            except InferenceServerException as exc:
                self._expire_all()  # this model or one behind it may have been swapped: read them again
                message = exc.message() or str(exc)
                status = str(exc.status() or "")
                self.metrics.triton_call(model, time.perf_counter() - started, status.removeprefix("StatusCode."))
                if attempt == 1 and region is not None and "shared memory" in message.lower():
                    # Triton restarted and forgot our regions: register fresh ones and send again.
                    logger.warning("Triton lost the shared-memory registrations (%s); registering again", message)
                    region = None
                    await endpoint.pool.reset()
                    continue
                error = TritonCallError(model, status, message)
                if error.stale:
                    raise StaleObservationError(self._stale_message(model)) from None
                if error.not_executed and (len(self.endpoints) > 1 or self.discovery is not None):
                    endpoint.healthy = False
                    logger.warning(
                        "Triton %s cannot serve %s (%s): no new requests until it is ready", endpoint.url, model, status
                    )
                raise error from None
            finally:
                if region is not None:
                    await endpoint.pool.release(region)
        raise AssertionError("unreachable")
