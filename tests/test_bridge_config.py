"""Bridge configuration: JSON file, OPENPI_ environment overrides, validation with the field named."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from pydantic import ValidationError

from openpi_triton.bridge_config import BridgeConfig, load_config


def test_defaults_are_openpi_flash_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OPENPI_"):
            monkeypatch.delenv(key)
    config = BridgeConfig()
    assert (config.action_transport.websocket_port, config.action_transport.quic_port) == (8000, 5555)
    assert config.action_transport.unix_socket_path == "/tmp/openpi-action.sock"
    assert (config.planner_transport.websocket_port, config.planner_transport.quic_port) == (8002, 5556)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 8001)
    assert config.action_model == "action" and config.planner is None


def test_planner_routes_the_action_slot_through_the_ensemble(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bridge.json"
    path.write_text(json.dumps({"planner": {}}))
    assert load_config(path).action_model == "combined_ensemble"


def test_environment_overrides_one_field(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bridge.json"
    path.write_text(json.dumps({"action_transport": {"websocket_port": 9100}, "triton": {"url": "10.0.0.1:8001"}}))
    monkeypatch.setenv("OPENPI_ACTION_TRANSPORT__QUIC_PORT", "6000")
    monkeypatch.setenv("OPENPI_TRITON__URL", "127.0.0.1:9101")
    config = load_config(path)
    assert (config.action_transport.websocket_port, config.action_transport.quic_port) == (9100, 6000)
    assert config.triton.url == "127.0.0.1:9101"


def test_the_fleet_gate_is_off_by_default_and_one_variable_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BridgeConfig().triton.fleet_batching.max_return_s is None
    monkeypatch.setenv("OPENPI_TRITON__FLEET_BATCHING__ENABLED", "true")
    assert BridgeConfig().triton.fleet_batching.max_return_s == 0.05


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"bogus": 1}, "bogus"),
        ({"planner": {"generation_prompt_format": "no task"}}, "generation_prompt_format"),
        ({"action": None}, "at least one"),
        ({"action_transport": {"websocket_port": 70000}}, "websocket_port"),
        ({"triton": {"shared_memory": "maybe"}}, "shared_memory"),
        ({"triton": {"urls": ["a:8001"], "discovery": {"name": "triton"}}}, "either 'urls'.*or 'discovery'"),
        ({"triton": {"discovery": {"name": "triton", "refresh_s": 0}}}, "refresh_s"),
        ({"triton": {"discovery": {"name": "triton", "refresh_s": 0.1}}}, r"refresh_s\n.*greater than or equal to 0.5"),
        ({"triton": {"discovery": {"name": ""}}}, "discovery.name"),
        ({"triton": {"discovery": {"name": "t", "nameservers": ["dns.local"]}}}, "name server 'dns.local'"),
        ({"triton": {"fleet_batching": {"max_return_ms": -1}}}, r"fleet_batching.max_return_ms\n.*greater than or"),
        ({"triton": {"fleet_batching": {"window": 5}}}, "fleet_batching.window"),
    ],
)
def test_invalid_configs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        BridgeConfig(**data)


def test_cli_exits_2_on_a_bad_config(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bridge.json"
    path.write_text("{not json")
    result = subprocess.run(
        [sys.executable, "-m", "openpi_bridge", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "not valid JSON" in result.stderr


def test_discovery_takes_an_absolute_name_and_a_refresh_at_the_floor() -> None:
    """The chart renders the headless Service's name with a trailing dot (no search-domain lookups)."""
    name = "fleet-openpi-triton-triton.robots.svc.cluster.local."
    config = BridgeConfig(triton={"discovery": {"name": name, "refresh_s": 0.5}})
    assert config.triton.discovery is not None
    assert (config.triton.discovery.name, config.triton.discovery.refresh_s) == (name, 0.5)
