"""Shared fixtures: the embedded default model built once per test session in a unique temp folder."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from openpi_triton.native.planner import PlannerOptions, SubtaskPlanner, load_planner
from openpi_triton.native.policy import NativePolicy, PolicyOptions, load_policy
from openpi_triton.native.tiny import EmbeddedDefault, ensure_embedded_default
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def embedded_default(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedDefault:
    return ensure_embedded_default(tmp_path_factory.mktemp("openpi-triton-home") / "default")


@pytest.fixture(scope="session")
def tiny_policy(embedded_default: EmbeddedDefault) -> NativePolicy:
    options = PolicyOptions(tokenizer_path=str(embedded_default.tokenizer_path), batch_buckets=(1, 2, 4, 8))
    return load_policy(embedded_default.config_name, embedded_default.checkpoint_dir, options)


@pytest.fixture(scope="session")
def tiny_planner(embedded_default: EmbeddedDefault) -> SubtaskPlanner:
    options = PlannerOptions(tokenizer_path=str(embedded_default.tokenizer_path), batch_buckets=(1, 2, 4))
    return load_planner(embedded_default.checkpoint_dir, options)


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    if not (GOLDEN_DIR / "manifest.json").exists():
        pytest.fail(f"golden vectors not found at {GOLDEN_DIR} (shared/ must sit beside the checkout)")
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def triton_server(
    embedded_default: EmbeddedDefault, golden_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """One real tritonserver for the session: action, planner, combined_ensemble on the embedded default, plus
    ``golden_action`` serving the pi05_aloha golden checkpoint in float32."""
    from tests.triton_helpers import copy_model

    repo = tmp_path_factory.mktemp("model-repository")
    for name in ("action", "planner", "combined_ensemble"):
        copy_model(repo, name, name)
    copy_model(
        repo,
        "action",
        "golden_action",
        {
            "checkpoint_dir": str(golden_dir / "pi05_aloha" / "checkpoint"),
            "tokenizer_path": str(golden_dir / "tokenizer.model"),
            "batch_buckets": "1,2",
        },
    )
    http, grpc, metrics = free_ports(3)
    server = TritonServer(
        ServerOptions(repo, http, grpc, metrics, env={"OPENPI_TRITON_HOME": str(embedded_default.root.parent)}),
        log_stream=open(tmp_path_factory.mktemp("logs") / "triton.log", "w"),
    )
    server.start()
    try:
        server.wait_ready(["action", "planner", "combined_ensemble", "golden_action"], timeout=600)
        yield server
    finally:
        server.stop()
