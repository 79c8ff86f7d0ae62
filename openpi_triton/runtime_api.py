"""The runtime seam: what every runtime's policy offers the serving layers, and how runtimes are found.

A runtime is one module in :mod:`openpi_triton.runtimes` whose ``RUNTIME`` is a :class:`RuntimeSpec`; its
module name is the value of the ``runtime`` parameter in ``config.pbtxt``. Nothing else names runtimes, so
a third one is one new module. Runtime modules import their heavy dependencies (JAX, openpi) inside
``load`` only: parameter checks and auto-complete run without them.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from openpi_triton.domain.configs import PolicyConfig

if TYPE_CHECKING:
    from openpi_triton.triton.model_params import ActionParams


class PolicyRuntime(Protocol):
    """A loaded policy, in three stages so that each request of a batch gets its own error.

    ``prepare`` checks and transforms one observation (a ``ValueError`` names the field), ``sample`` makes one
    batched model call for many prepared observations (one raw row per observation, in order), ``finish``
    applies the output transforms to one row and returns the robot's actions.
    """

    config: PolicyConfig

    def prepare(self, obs: Mapping[str, Any], noise: Any = None) -> Any: ...

    def sample(self, prepared: Sequence[Any]) -> Sequence[Any]: ...

    def finish(self, prepared: Any, raw: Any) -> np.ndarray: ...

    def rtc_echo(self, prepared: Any, robot_actions: np.ndarray) -> dict[str, Any] | None:
        """The response's ``rtc`` report for a row that sent an ``rtc`` request, ``None`` for one that did not
        (a runtime without RTC refuses such requests in ``prepare``)."""
        ...

    def warmup(self) -> dict[int, float]: ...

    def describe(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where Triton put this model instance: ``kind`` is ``CPU`` or ``GPU``, ``device_id`` Triton's GPU index."""

    kind: str = "CPU"
    device_id: int = 0

    @classmethod
    def of_instance(cls, args: Mapping[str, str]) -> Placement:
        return cls(args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", "0")))


class RuntimeUnavailableError(RuntimeError):
    """The runtime's own dependencies are missing in this Python environment; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
    name: str
    # Parameters no other runtime reads (naming one under another runtime is an error).
    own_parameters: tuple[str, ...]
    default_dtype: str
    # True when the runtime serves only the configs of this project's table (openpi_triton.domain.configs).
    needs_known_config: bool
    # Runtime-specific rules on the raw parameters; raises ParameterError naming the parameter.
    check_parameters: Callable[[Mapping[str, str]], None]
    # The config whose robot inputs and outputs the parameters serve (may import the runtime's library).
    serving_config: Callable[[ActionParams], PolicyConfig]
    load: Callable[[ActionParams, Placement], PolicyRuntime]


def runtime_names() -> tuple[str, ...]:
    from openpi_triton import runtimes

    return tuple(sorted(module.name for module in pkgutil.iter_modules(runtimes.__path__)))


def get_runtime(name: str) -> RuntimeSpec:
    if name not in runtime_names():
        raise ValueError(f"expected one of {list(runtime_names())}, got {name!r}")
    spec = importlib.import_module(f"openpi_triton.runtimes.{name}").RUNTIME
    assert isinstance(spec, RuntimeSpec) and spec.name == name, f"openpi_triton.runtimes.{name}: bad RUNTIME"
    return spec
