"""JAX's persistent compilation cache for the Triton models that compile JAX programs (native action, planner).

Compiling the batch buckets (and their RTC programs) is most of a model's load. With the cache a restarted
tritonserver, a reloaded model or a second instance reads those programs from disk instead of compiling them
again. The cache key covers the program, the JAX/XLA version and the device, so a different model or machine
never gets another's program.

- ``OPENPI_TRITON_COMPILE_CACHE``: the cache folder, or ``off``; default ``$OPENPI_TRITON_HOME/jax-compile-cache``
  (``~/.cache/openpi-triton/jax-compile-cache``).
- ``OPENPI_TRITON_COMPILE_CACHE_MAX_BYTES``: its bound (least recently used programs go first); default 2 GiB.
"""

from __future__ import annotations

import functools
import os
import pathlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 2 * 2**30
# Programs that compile faster than this are not worth a disk entry (JAX's own default).
MIN_COMPILE_SECONDS = 1.0


class CompileCacheError(ValueError):
    """An invalid cache setting (names the variable, what was expected and what it holds)."""


@dataclass(frozen=True)
class CacheSetting:
    directory: pathlib.Path | None  # None: off
    max_bytes: int

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> CacheSetting:
        raw_max = env.get("OPENPI_TRITON_COMPILE_CACHE_MAX_BYTES", "") or str(DEFAULT_MAX_BYTES)
        try:
            max_bytes = int(raw_max)
        except ValueError:
            max_bytes = -1
        if max_bytes <= 0:
            raise CompileCacheError(
                f"OPENPI_TRITON_COMPILE_CACHE_MAX_BYTES: expected a positive number of bytes, got {raw_max!r}"
            )
        folder = env.get("OPENPI_TRITON_COMPILE_CACHE", "")
        if folder.lower() == "off":
            return cls(None, max_bytes)
        if not folder:
            home = env.get("OPENPI_TRITON_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "openpi-triton")
            folder = os.path.join(home, "jax-compile-cache")
        return cls(pathlib.Path(folder), max_bytes)


class _HitCounter:
    """Programs this process read from the cache (JAX reports each hit as a monitoring event)."""

    def __init__(self) -> None:
        self.hits = 0
        self._lock = threading.Lock()

    def __call__(self, event: str, **_: object) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            with self._lock:
                self.hits += 1


HITS = _HitCounter()


@functools.cache  # once per process, before its first compilation (JAX reads the setting then)
def enable() -> CacheSetting:
    """Turns the cache on as the environment says; returns the setting."""
    import jax
    from jax import monitoring

    setting = CacheSetting.from_environment()
    if setting.directory is None:
        return setting
    setting.directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(setting.directory))
    jax.config.update("jax_compilation_cache_max_size", setting.max_bytes)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    monitoring.register_event_listener(HITS)
    return setting


def report() -> str:
    """For a model's ready line: how many programs came from the cache, where it is (``""`` in a process that
    never turned it on: a runtime that compiles no JAX)."""
    if enable.cache_info().currsize == 0:
        return ""
    setting = enable()
    if setting.directory is None:
        return "compile cache off"
    return f"{HITS.hits} programs read from the compile cache {setting.directory}"
