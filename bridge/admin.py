"""Admin HTTP (127.0.0.1:8001 by default): health, the runtime planner prompt format, model reload; OpenAPI docs.

Every route (docs included) needs the API key when one is configured, and bodies are capped
(:mod:`openpi_bridge.admin_guard`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, field_validator

from openpi_bridge.admin_guard import AdminGuard
from openpi_bridge.metrics import BridgeMetrics
from openpi_bridge.model_reload import POLL_MODE_HINT, ReloadError, reload_model
from openpi_bridge.model_status import failed_loads, model_status
from openpi_bridge.slots import RuntimeConfig
from openpi_bridge.triton_gateway import TritonGateway
from openpi_triton.prompt_format import validate_prompt_format


class RuntimeConfigView(BaseModel):
    generation_prompt_format: str


class RuntimeConfigUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generation_prompt_format: str | None = None

    @field_validator("generation_prompt_format", mode="before")
    @classmethod
    def _valid_format(cls, value: object) -> object:
        if value is None:
            raise ValueError("must be a string containing {task}, not null")
        return validate_prompt_format(value)


class ServerReloadView(BaseModel):
    url: str
    seconds: float


class ReloadView(BaseModel):
    model: str
    servers: list[ServerReloadView]


def create_admin_app(
    runtime: RuntimeConfig | None,
    gateway: TritonGateway | None = None,
    api_key: str | None = None,
    max_body_bytes: int = 64 * 1024,
    metrics: BridgeMetrics | None = None,
) -> Any:
    """``runtime`` is None without a planner slot (no /config); ``gateway`` enables the model reload. Every
    route needs ``Authorization: Api-Key <api_key>`` when the bridge has an API key (as robots' WebSockets do)."""
    app = FastAPI(title="openpi-triton bridge admin", version="1")

    def runtime_config() -> RuntimeConfig:
        if runtime is None:
            raise HTTPException(404, "no planner slot configured: there is no runtime planner config")
        return runtime

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/models")
    async def models() -> dict[str, Any]:
        """Each Triton server's models: state, Triton's reason (why a load failed), what each loaded one serves
        (config, checkpoint, runtime) or which action model it follows; and the loads that failed since the
        last good one (an edit that did not take: poll mode keeps serving the old copy), when recorded on
        this host."""
        if gateway is None:
            raise HTTPException(503, "the admin API has no Triton connection")
        return {"servers": await model_status(gateway), "failed_loads": failed_loads()}

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format; needs no API key (scrapers reach it only where the admin API listens)."""
        body = metrics.exposition() if metrics is not None else b""
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/config", response_model=RuntimeConfigView)
    async def get_config() -> RuntimeConfigView:
        return RuntimeConfigView(generation_prompt_format=runtime_config().generation_prompt_format)

    @app.patch("/config", response_model=RuntimeConfigView)
    async def patch_config(update: RuntimeConfigUpdate) -> RuntimeConfigView:
        """Applied from the next planner request on."""
        config = runtime_config()
        if "generation_prompt_format" in update.model_fields_set and update.generation_prompt_format is not None:
            config.generation_prompt_format = update.generation_prompt_format
        return RuntimeConfigView(generation_prompt_format=config.generation_prompt_format)

    @app.post(
        "/models/{name}/reload",
        response_model=ReloadView,
        responses={
            401: {"description": "the bridge has an API key and the request did not send it"},
            409: {"description": "Triton is not in explicit model control mode (poll mode reloads on file change)"},
            502: {"description": "Triton could not load the model (its message is in 'detail')"},
        },
    )
    async def reload(name: str) -> ReloadView:
        """Loads model ``name`` again on every Triton server, one after the other (Triton explicit mode).

        Triton reads the model's config.pbtxt and files anew, loads and warms the new copy beside the old
        one and switches when it is ready: requests in flight finish on the old copy, none fail. Answers
        when every server has switched (minutes for a real checkpoint)."""
        if gateway is None:
            raise HTTPException(503, "model reload is not available: the admin API has no Triton connection")
        try:
            done = await reload_model(gateway, name)
        except ReloadError as exc:
            reloaded = [s.url for s in exc.reloaded]
            already = f" (already reloaded on {reloaded})" if reloaded else ""
            if exc.refused_by_mode:
                raise HTTPException(409, f"{exc}{already}. {POLL_MODE_HINT}") from None
            raise HTTPException(502, f"{exc}{already}") from None
        return ReloadView(model=name, servers=[ServerReloadView(url=s.url, seconds=s.seconds) for s in done])

    on_unauthorized = metrics.admin_unauthorized.inc if metrics is not None else None
    return AdminGuard(app, api_key=api_key, max_body_bytes=max_body_bytes, on_unauthorized=on_unauthorized)
