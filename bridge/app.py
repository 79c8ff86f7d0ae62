"""Starts every endpoint of the bridge in one event loop and stops them together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from typing import Any

import uvicorn

from openpi_bridge.admin import create_admin_app
from openpi_bridge.local_socket import LocalSocketEndpoint
from openpi_bridge.metrics import BridgeMetrics
from openpi_bridge.slots import ActionSlot, PlannerSlot, RuntimeConfig, Slot
from openpi_bridge.triton_discovery import DnsDiscovery
from openpi_bridge.triton_gateway import TritonGateway
from openpi_bridge.websocket_server import WebSocketEndpoint
from openpi_triton.bridge_config import BridgeConfig

logger = logging.getLogger("openpi_bridge")


@dataclasses.dataclass
class RunningBridge:
    config: BridgeConfig
    gateway: TritonGateway
    slots: dict[str, Slot]
    runtime: RuntimeConfig | None
    servers: list[Any] = dataclasses.field(default_factory=list)
    admin: uvicorn.Server | None = None
    admin_task: asyncio.Task[None] | None = None
    websocket_ports: dict[str, int] = dataclasses.field(default_factory=dict)

    async def stop(self) -> None:
        if self.admin is not None:
            self.admin.should_exit = True
        if self.admin_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.admin_task, timeout=5)
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=5)
        await self.gateway.close()


def build_slots(config: BridgeConfig, gateway: TritonGateway) -> tuple[dict[str, Slot], RuntimeConfig | None]:
    runtime = RuntimeConfig(config.planner.generation_prompt_format) if config.planner is not None else None
    slots: dict[str, Slot] = {}
    action = None
    if config.action is not None:
        action = ActionSlot(gateway, config.action_model, runtime)
        slots["action"] = action
    if config.planner is not None and runtime is not None:
        slots["planner"] = PlannerSlot(gateway, config.planner.model, runtime, action)
    return slots, runtime


async def start_bridge(config: BridgeConfig) -> RunningBridge:
    metrics = BridgeMetrics()
    discovery = config.triton.discovery
    gateway = TritonGateway(
        [] if discovery else config.triton_urls,
        config.triton.request_timeout_s,
        config.triton.shared_memory,
        config.limits.inputs,
        metrics,
        DnsDiscovery(discovery.name, discovery.port, discovery.nameservers) if discovery else None,
        discovery.refresh_s if discovery else 5.0,
        config.triton.fleet_batching.max_return_s,
    )
    await gateway.start()
    slots, runtime = build_slots(config, gateway)
    bridge = RunningBridge(config, gateway, slots, runtime)
    transports = {"action": config.action_transport, "planner": config.planner_transport}
    try:
        for name, slot in slots.items():
            transport = transports[name]
            ws = WebSocketEndpoint(
                slot,
                api_key=config.api_key,
                max_message_bytes=config.max_message_bytes,
                max_connections=config.max_connections,
                max_connections_per_address=config.limits.max_connections_per_address,
                idle_timeout_s=config.limits.idle_timeout_s,
                frame_limits=config.limits.frame,
                metrics=metrics,
            )
            server = await ws.start(config.host, transport.websocket_port)
            bridge.servers.append(server)
            bridge.websocket_ports[name] = next(iter(server.sockets)).getsockname()[1]
            local = LocalSocketEndpoint(
                slot,
                max_message_bytes=config.max_message_bytes,
                max_connections=config.max_connections,
                frame_limits=config.limits.frame,
                metrics=metrics,
            )
            bridge.servers.append(await local.start(transport.unix_socket_path))
            logger.info(
                "%s slot -> Triton model '%s': WebSocket ws://%s:%d, sidecar socket %s",
                name,
                slot.model,
                config.host,
                bridge.websocket_ports[name],
                transport.unix_socket_path,
            )
        if config.admin.enabled:
            admin_config = uvicorn.Config(
                create_admin_app(runtime, gateway, config.api_key, config.admin.max_body_bytes, metrics),
                host=config.admin.host,
                port=config.admin.port,
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
            bridge.admin = uvicorn.Server(admin_config)
            bridge.admin_task = asyncio.create_task(bridge.admin.serve())
            # "bridge ready" must mean the admin port answers too (scripts call it right after start-up).
            while not bridge.admin.started and not bridge.admin_task.done():
                await asyncio.sleep(0.01)
            if not bridge.admin.started:
                raise RuntimeError(f"the admin API could not listen on {config.admin.host}:{config.admin.port}")
            logger.info("admin API on http://%s:%d (docs at /docs)", config.admin.host, config.admin.port)
    except BaseException:
        await bridge.stop()
        raise
    return bridge


async def serve_forever(config: BridgeConfig) -> None:
    bridge = await start_bridge(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logger.info("bridge ready (Triton at %s)", bridge.gateway.source)
    try:
        await stop.wait()
    finally:
        await bridge.stop()
