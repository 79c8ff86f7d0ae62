"""Asks every Triton server behind the bridge to load a model again (Triton's repository API, explicit mode).

Triton loads the new copy beside the old one and switches only once it is ready, so requests in flight and
requests that arrive meanwhile are answered by the old copy. Servers are reloaded one after the other, so
with several servers (``triton.urls``) the others keep their capacity while one compiles. In poll mode
Triton refuses the API: it reloads a model by itself when its ``config.pbtxt`` (or version folder) changes.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from tritonclient.utils import InferenceServerException

from openpi_bridge.triton_gateway import TritonGateway

logger = logging.getLogger("openpi_bridge")

# Loading a real checkpoint and compiling every batch bucket takes minutes on a GPU.
RELOAD_TIMEOUT_S = 1800.0
POLL_MODE_HINT = (
    "Triton accepts model loads only in explicit model control mode (--model-control-mode=explicit). "
    "In poll mode it reloads a model by itself when its config.pbtxt changes: edit the file instead."
)


@dataclasses.dataclass(frozen=True)
class ServerReload:
    url: str
    seconds: float


class ReloadError(RuntimeError):
    """Triton refused to load the model (``refused_by_mode``: its model control mode does not allow it)."""

    def __init__(self, url: str, message: str, reloaded: list[ServerReload]) -> None:
        super().__init__(f"Triton {url}: {message}")
        self.url = url
        self.triton_message = message
        self.reloaded = reloaded
        # Triton 2.5x: "explicit model load / unload is not allowed if polling is enabled" (poll and none).
        self.refused_by_mode = "not allowed" in message.lower()


async def reload_model(gateway: TritonGateway, model: str) -> list[ServerReload]:
    """Reloads ``model`` on every server, one at a time; raises :class:`ReloadError` at the first refusal."""
    done: list[ServerReload] = []
    for endpoint in gateway.endpoints:
        start = time.perf_counter()
        try:
            await endpoint.client.load_model(model, client_timeout=RELOAD_TIMEOUT_S)
        except InferenceServerException as exc:
            raise ReloadError(endpoint.url, exc.message() or str(exc), done) from None
        done.append(ServerReload(endpoint.url, time.perf_counter() - start))
        logger.info("Triton %s reloaded model '%s' in %.1f s", endpoint.url, model, done[-1].seconds)
    return done
