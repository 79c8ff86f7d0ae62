"""JAX's persistent compilation cache: a second load of the same model reads its programs from disk and serves
the same actions; the settings are read from the environment with clear errors."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from openpi_triton.native.compile_cache import DEFAULT_MAX_BYTES, CacheSetting, CompileCacheError
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton.launcher import TritonServer

# One process = one model load (as one Triton stub): the cache on, warm-up, one call; hits and actions out.
LOAD_AND_CALL = """
import json, sys
import numpy as np
from openpi_triton.native import compile_cache
from openpi_triton.native.policy import PolicyOptions, load_policy
compile_cache.enable()
checkpoint, tokenizer = sys.argv[1:3]
policy = load_policy("pi05_aloha", checkpoint, PolicyOptions(batch_buckets=(1,), tokenizer_path=tokenizer, rtc=False))
policy.warmup()
obs = policy.config.embodiment.example(np.random.default_rng(0))
noise = np.zeros((policy.config.action_horizon, policy.config.action_dim), np.float32)
actions = policy.infer(obs, noise)["actions"]
print(json.dumps({"hits": compile_cache.HITS.hits, "report": compile_cache.report(), "actions": actions.tolist()}))
"""


def _load_and_call(embedded_default: EmbeddedDefault, cache: str, home: pathlib.Path | None = None) -> dict:
    env = {**os.environ, "OPENPI_TRITON_COMPILE_CACHE": cache, **({"OPENPI_TRITON_HOME": str(home)} if home else {})}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_AND_CALL,
            str(embedded_default.checkpoint_dir),
            str(embedded_default.tokenizer_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_load_reads_its_programs_from_the_cache(
    embedded_default: EmbeddedDefault, tmp_path: pathlib.Path
) -> None:
    cache = tmp_path / "cache"
    first = _load_and_call(embedded_default, str(cache))
    assert first["hits"] == 0 and any(cache.iterdir()), "a cold cache: every program compiled and written"
    second = _load_and_call(embedded_default, str(cache))
    assert second["hits"] > 0, second["report"]
    assert f"{second['hits']} programs read from the compile cache {cache}" == second["report"]
    assert second["actions"] == first["actions"]


def test_off_writes_nothing(embedded_default: EmbeddedDefault, tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    result = _load_and_call(embedded_default, "off", home)
    assert result["hits"] == 0 and result["report"] == "compile cache off"
    assert not (home / "jax-compile-cache").exists()


def test_settings_from_the_environment(tmp_path: pathlib.Path) -> None:
    default = CacheSetting.from_environment({"OPENPI_TRITON_HOME": str(tmp_path)})
    assert default == CacheSetting(tmp_path / "jax-compile-cache", DEFAULT_MAX_BYTES)
    assert CacheSetting.from_environment({"OPENPI_TRITON_COMPILE_CACHE": "OFF"}).directory is None
    chosen = CacheSetting.from_environment(
        {"OPENPI_TRITON_COMPILE_CACHE": str(tmp_path / "c"), "OPENPI_TRITON_COMPILE_CACHE_MAX_BYTES": "1000"}
    )
    assert chosen == CacheSetting(tmp_path / "c", 1000)
    for bad in ("0", "-5", "2GiB"):
        with pytest.raises(
            CompileCacheError, match=f"OPENPI_TRITON_COMPILE_CACHE_MAX_BYTES: expected a positive .*'{bad}'"
        ):
            CacheSetting.from_environment({"OPENPI_TRITON_COMPILE_CACHE_MAX_BYTES": bad})


def test_the_triton_models_compile_into_the_cache(
    triton_server: TritonServer, embedded_default: EmbeddedDefault
) -> None:
    """The session's Triton runs with OPENPI_TRITON_HOME = the embedded default's home: its action and planner
    stubs turned the cache on there (the default) and wrote their programs."""
    cache = embedded_default.root.parent / "jax-compile-cache"
    assert cache.is_dir() and any(entry.name.endswith("-cache") for entry in cache.iterdir()), sorted(cache.iterdir())
