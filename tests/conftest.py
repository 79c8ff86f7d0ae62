"""Shared fixtures: the embedded default model built once per test session in a unique temp folder."""

from __future__ import annotations

import pathlib

import pytest

from openpi_triton.native.planner import PlannerOptions, SubtaskPlanner, load_planner
from openpi_triton.native.policy import NativePolicy, PolicyOptions, load_policy
from openpi_triton.native.tiny import EmbeddedDefault, ensure_embedded_default

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
