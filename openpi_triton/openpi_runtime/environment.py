"""Everything the openpi runtime needs settled before openpi, JAX or torch start: the import itself, the
instance's device, the PyTorch compile mode and an optional setup script.
"""

from __future__ import annotations

import os
import pathlib
import runpy
import sys
from types import ModuleType

from openpi_triton.runtime_api import RuntimeUnavailableError

COMPILE_MODE_ENV = "OPENPI_PYTORCH_COMPILE_MODE"
# torch.compile modes openpi's Pi0Config accepts, plus "none" (eager PyTorch).
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

OPENPI_MISSING = (
    "runtime 'openpi' needs the openpi package, which is not importable in this Python environment ({error}). "
    "Build the serving image with openpi (docker build -f docker/Dockerfile --build-arg OPENPI=main .) or "
    "install openpi into the Python environment of the stub as docs/runtime.md ('openpi runtime') says; or use runtime "
    "'native' for pi0 / pi0.5 JAX checkpoints of the configs it supports."
)


class OpenpiUnavailableError(RuntimeUnavailableError):
    """openpi (or one of its own dependencies) cannot be imported."""


def import_openpi() -> ModuleType:
    """Imports openpi's policy factory; a clear :class:`OpenpiUnavailableError` if that is impossible."""
    try:
        from openpi.policies import policy_config
    except ImportError as exc:
        raise OpenpiUnavailableError(OPENPI_MISSING.format(error=f"{type(exc).__name__}: {exc}")) from exc
    return policy_config


def pytorch_compile_mode(environ: dict[str, str] | None = None) -> str | None:
    """``OPENPI_PYTORCH_COMPILE_MODE`` validated: ``None`` when unset (keep the config's), else one of
    :data:`COMPILE_MODES`; anything else is a ``ValueError`` at load rather than a surprise at first call.
    """
    value = (os.environ if environ is None else environ).get(COMPILE_MODE_ENV, "").strip()
    if not value:
        return None
    if value not in COMPILE_MODES:
        raise ValueError(f"{COMPILE_MODE_ENV}: expected one of {list(COMPILE_MODES)}, got {value!r}")
    return value


def pin_device(instance_kind: str, device_id: int, environ: dict[str, str] | None = None) -> str:
    """Makes this process see only the Triton instance's device; returns the torch device name.

    Every Triton model instance runs in its own stub process, so settings made before JAX and torch
    initialise their backends decide what they see. Without this, openpi's ``restore_params`` replicates
    the weights onto every visible GPU. Triton numbers GPUs within the server's own CUDA_VISIBLE_DEVICES,
    so an id is looked up in that list when it is set.
    """
    env = os.environ if environ is None else environ
    if instance_kind == "GPU":
        visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if visible and device_id >= len(visible):
            raise ValueError(
                f"instance GPU {device_id} is not among CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r}"
            )
        env["CUDA_VISIBLE_DEVICES"] = visible[device_id] if visible else str(device_id)
        return "cuda:0"
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
    if environ is None and "jax" in sys.modules:
        # JAX reads JAX_PLATFORMS when it is imported (the native runtime's modules import it); its config
        # still applies as long as no backend has started, which is the case before the policy loads.
        sys.modules["jax"].config.update("jax_platforms", "cpu")
    return "cpu"


def run_setup_script(path: str) -> None:
    """Runs a Python file before the config is looked up (to register a custom ``TrainConfig``, say)."""
    script = pathlib.Path(path)
    if not script.is_file():
        raise ValueError(f"parameter 'openpi_setup_script': no such file {path!r}")
    runpy.run_path(str(script), run_name="openpi_setup")
