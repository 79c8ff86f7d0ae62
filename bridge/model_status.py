"""What each Triton server behind the bridge serves, for ``GET /models`` on the admin API.

Per server and model: Triton's state and reason (a load that failed says why here), and for a model that
is loaded, what it serves: its config, checkpoint and runtime, or which action model it follows (the
planner and the ensemble inherit what they leave empty, see ``openpi_triton.triton.inherit``).
"""

from __future__ import annotations

from typing import Any

from openpi_bridge.triton_gateway import TritonGateway

QUERY_TIMEOUT_S = 10.0
SHOWN_PARAMETERS = ("model_config_name", "checkpoint_dir", "runtime", "dtype", "embodiment")


def _served(config: dict[str, Any]) -> dict[str, Any]:
    params = {k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()}
    served: dict[str, Any] = {k: params[k] for k in SHOWN_PARAMETERS if params.get(k)}
    if "checkpoint_dir" in params and not params["checkpoint_dir"] and "action_model" not in params:
        served["checkpoint_dir"] = "(embedded default)"
    if "action_model" in params:
        served["follows"] = params["action_model"] or "action"
    return served


def failed_loads() -> list[dict[str, Any]]:
    """Loads that failed and were not fixed since (poll mode keeps the old copy READY meanwhile), as the
    models recorded them on this host (``openpi_triton.load_status``); empty for a Triton on another host."""
    from openpi_triton import load_status

    return load_status.failures()


async def model_status(gateway: TritonGateway) -> list[dict[str, Any]]:
    servers = []
    for endpoint in gateway.endpoints:
        server: dict[str, Any] = {"url": endpoint.url, "models": []}
        try:
            index = await endpoint.client.get_model_repository_index(as_json=True, client_timeout=QUERY_TIMEOUT_S)
        except Exception as exc:  # down or restarting: say so, the other servers still answer
            server["error"] = str(exc)
            servers.append(server)
            continue
        for entry in index.get("models", []):
            model: dict[str, Any] = {"name": entry["name"], "state": entry.get("state", "UNKNOWN")}
            if entry.get("reason"):
                model["reason"] = entry["reason"]
            if model["state"] == "READY":
                try:
                    config = await endpoint.client.get_model_config(
                        entry["name"], as_json=True, client_timeout=QUERY_TIMEOUT_S
                    )
                    model["serves"] = _served(config["config"])
                except Exception as exc:
                    model["reason"] = f"config unreadable: {exc}"
            server["models"].append(model)
        servers.append(server)
    return servers
