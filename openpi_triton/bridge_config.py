"""The bridge's configuration: one JSON file (openpi-flash's field names) with ``OPENPI_`` environment overrides.

Precedence: environment > JSON file > defaults. Nested fields use ``__`` (``OPENPI_ACTION_TRANSPORT__WEBSOCKET_PORT``).
Unknown keys are errors. A slot is enabled by giving it an object (``"action": {}``); configuring the
planner slot also routes the action slot through ``combined_ensemble``.

It lives outside the bridge because the orchestrator reads it too (the ports and sockets to check and wait
for, the slots that get a QUIC sidecar): the bridge and the orchestrator both import it, neither the other.
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from openpi_triton import limits as default_limits
from openpi_triton.limits import FrameLimits, InputLimits
from openpi_triton.prompt_format import DEFAULT_GENERATION_PROMPT_FORMAT, validate_prompt_format


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``"10.0.0.10"``, ``"10.0.0.10:5353"`` or ``"fd00::a"`` as (address, port); anything else is an error."""
    host, port = spec, "53"
    if spec.count(":") == 1:
        host, port = spec.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"name server {spec!r}: expected an IP address or 'address:port'") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"name server {spec!r}: expected an IP address or 'address:port'")
    return host, int(port)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActionTransport(_Strict):
    """Ports and socket of the action slot (openpi-flash's defaults); each field can be overridden alone."""

    websocket_port: int = Field(default=8000, ge=0, le=65535)
    quic_port: int = Field(default=5555, ge=0, le=65535)
    unix_socket_path: str = "/tmp/openpi-action.sock"


class PlannerTransport(_Strict):
    websocket_port: int = Field(default=8002, ge=0, le=65535)
    quic_port: int = Field(default=5556, ge=0, le=65535)
    unix_socket_path: str = "/tmp/openpi-planner.sock"


class ActionSlot(_Strict):
    """The action slot; the model is ``combined_ensemble`` when a planner is configured, else ``action``."""

    model: str | None = None


class PlannerSlot(_Strict):
    model: str = "planner"
    generation_prompt_format: str = DEFAULT_GENERATION_PROMPT_FORMAT

    @field_validator("generation_prompt_format")
    @classmethod
    def _safe_format(cls, value: str) -> str:
        return validate_prompt_format(value)


# Every bridge asks the cluster's DNS once per refresh; Kubernetes' DNS keeps a record 5 s, so re-reading much
# faster than this only adds load on it without finding pods sooner.
MIN_DISCOVERY_REFRESH_S = 0.5


class TritonDiscovery(_Strict):
    """Triton servers found by DNS name: every IPv4 address of ``name`` (a Kubernetes headless Service lists its
    ready pods), read again every ``refresh_s``; a server that leaves finishes its requests in flight.

    A name ending in ``.`` is absolute: looked up as it is, without the search domains of /etc/resolv.conf (a
    pod's ``ndots:5`` would otherwise try each search domain first, one NXDOMAIN each, on every refresh)."""

    name: str = Field(min_length=1)
    port: int = Field(default=8001, ge=1, le=65535)
    refresh_s: float = Field(default=5.0, ge=MIN_DISCOVERY_REFRESH_S)
    # DNS servers to ask ("address" or "address:port"); empty: the system's (/etc/resolv.conf).
    nameservers: list[str] = Field(default_factory=list)

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for spec in value:
            parse_nameserver(spec)
        return value


class FleetBatching(_Strict):
    """Batches that keep a closed-loop fleet together (bridge/fleet_gate.py, docs/performance.md): a model's
    requests wait in the bridge while its instances are busy, and the next batch waits for the robots just
    answered that come straight back (within ``max_return_ms`` of their answer; the longest it waits for one).
    Off by default: it pays where a batch costs far less than its size in single calls (a GPU), together with a
    queue delay of 1-2 ms on the model; on a CPU, where a batch costs about its size, the model idles while a
    batch's answers travel. Off: Triton's dynamic batcher alone."""

    enabled: bool = False
    # Room for a loaded host: a robot behind a QUIC client sidecar can take tens of ms to come back, and one
    # taken for a pacer splits the fleet into two batches.
    max_return_ms: float = Field(default=50.0, ge=0, le=1000)

    @property
    def max_return_s(self) -> float | None:
        return self.max_return_ms / 1000.0 if self.enabled else None


class TritonConfig(_Strict):
    url: str = "127.0.0.1:8101"
    # Several Triton servers (scale-out): requests go to the one with the least outstanding work.
    urls: list[str] | None = None
    # Or the servers behind a DNS name, followed while serving (docs/kubernetes.md).
    discovery: TritonDiscovery | None = None
    action_model: str = "action"
    combined_model: str = "combined_ensemble"
    request_timeout_s: float = Field(default=60.0, gt=0)
    # Images through system shared memory: auto = when Triton's URL is loopback; on; off.
    shared_memory: Literal["auto", "on", "off"] = "auto"
    fleet_batching: FleetBatching = Field(default_factory=lambda: FleetBatching())

    @model_validator(mode="after")
    def _one_source(self) -> TritonConfig:
        if self.discovery is not None and self.urls:
            raise ValueError("give either 'urls' (a fixed list) or 'discovery' (a DNS name), not both")
        return self


class AdminConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    enabled: bool = True
    # Request bodies above this are refused (413) before they are read: the admin API shares the robots' loop.
    max_body_bytes: int = Field(default=64 * 1024, gt=0)


class LimitsConfig(_Strict):
    """What one robot or connection may cost; each limit's error names it (docs/operations.md)."""

    max_image_pixels: int = Field(default=default_limits.DEFAULT_MAX_IMAGE_PIXELS, gt=0)
    max_prompt_bytes: int = Field(default=default_limits.DEFAULT_MAX_PROMPT_BYTES, gt=0)
    max_frame_values: int = Field(default=default_limits.DEFAULT_MAX_FRAME_VALUES, gt=0)
    max_frame_depth: int = Field(default=default_limits.DEFAULT_MAX_FRAME_DEPTH, gt=0)
    max_scalar_json_bytes: int = Field(default=default_limits.DEFAULT_MAX_SCALAR_JSON_BYTES, gt=0)
    # Robots behind one NAT share an address: room for a fleet, not for one client to take every slot.
    max_connections_per_address: int = Field(default=64, gt=0)
    # Seconds a WebSocket may wait between requests; None keeps idle robots (between episodes) connected.
    idle_timeout_s: float | None = Field(default=None, gt=0)

    @property
    def frame(self) -> FrameLimits:
        return FrameLimits(self.max_frame_values, self.max_frame_depth, self.max_scalar_json_bytes)

    @property
    def inputs(self) -> InputLimits:
        return InputLimits(self.max_image_pixels, self.max_prompt_bytes)


class BridgeConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENPI_", env_nested_delimiter="__", extra="forbid")

    action: ActionSlot | None = Field(default_factory=ActionSlot)
    planner: PlannerSlot | None = None
    action_transport: ActionTransport = Field(default_factory=ActionTransport)
    planner_transport: PlannerTransport = Field(default_factory=PlannerTransport)
    triton: TritonConfig = Field(default_factory=TritonConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    host: str = "0.0.0.0"
    api_key: str | None = None
    max_message_bytes: int = Field(default=64 * 2**20, gt=0)
    max_connections: int = Field(default=256, gt=0)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @model_validator(mode="after")
    def _one_slot(self) -> BridgeConfig:
        if self.action is None and self.planner is None:
            raise ValueError("configure at least one of 'action' or 'planner'")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings

    @property
    def triton_urls(self) -> list[str]:
        return self.triton.urls or [self.triton.url]

    @property
    def action_model(self) -> str:
        if self.action is not None and self.action.model:
            return self.action.model
        return self.triton.combined_model if self.planner is not None else self.triton.action_model


def load_config(path: str | pathlib.Path | None) -> BridgeConfig:
    """Reads the JSON file (if any), applies ``OPENPI_*`` overrides, validates; errors name the field."""
    data: dict[str, Any] = {}
    if path is not None:
        file = pathlib.Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"bridge config {str(file)!r} does not exist")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"bridge config {str(file)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"bridge config {str(file)!r} must hold a JSON object")
    return BridgeConfig(**data)
