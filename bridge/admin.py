"""Admin HTTP (127.0.0.1:8001 by default): health and the runtime planner prompt format, with OpenAPI docs."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, field_validator

from openpi_bridge.slots import RuntimeConfig


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
        if isinstance(value, str) and "{task}" not in value:
            raise ValueError("must contain {task}")
        return value


def create_admin_app(runtime: RuntimeConfig) -> FastAPI:
    app = FastAPI(title="openpi-triton bridge admin", version="1")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/config", response_model=RuntimeConfigView)
    async def get_config() -> RuntimeConfigView:
        return RuntimeConfigView(generation_prompt_format=runtime.generation_prompt_format)

    @app.patch("/config", response_model=RuntimeConfigView)
    async def patch_config(update: RuntimeConfigUpdate) -> RuntimeConfigView:
        """Applied from the next planner request on."""
        if "generation_prompt_format" in update.model_fields_set and update.generation_prompt_format is not None:
            runtime.generation_prompt_format = update.generation_prompt_format
        return RuntimeConfigView(generation_prompt_format=runtime.generation_prompt_format)

    return app
