"""Model repository variants for benchmarks: copies of ``model_repository/`` with batching, instance count,
device and checkpoint parameters rewritten, so every sweep configuration is a real Triton configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
from collections.abc import Iterator, Mapping, Sequence

from openpi_triton.scheduler import Scheduler
from openpi_triton.triton.config_text import set_field, set_instance_group, set_parameter
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
# Models that run the policy runtime (their instances are the unit that scales); the BLS only forwards.
RUNTIME_MODELS = ("action", "planner")


@dataclasses.dataclass(frozen=True)
class RepositoryVariant:
    """One server configuration.

    ``batching`` False: the model's ``auto_complete_config`` always turns the dynamic batcher on, so "off" means
    ``max_batch_size: 1`` (every request is executed alone) with a single compiled batch bucket.
    """

    batching: bool = True
    instances: int = 1
    gpu: bool = False
    parameters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The action model's dynamic batcher (None: as in model_repository/): see openpi_triton.scheduler.
    scheduler: Scheduler | None = None
    # Instances of the combined_ensemble BLS (None: as in model_repository/).
    bls_instances: int | None = None

    @property
    def label(self) -> str:
        return f"batching={'on' if self.batching else 'off'} instances={self.instances}"

    @property
    def slug(self) -> str:
        return f"batch-{'on' if self.batching else 'off'}_inst-{self.instances}"


def rewrite_config(text: str, model: str, variant: RepositoryVariant) -> str:
    batch = 8 if variant.batching else 1
    text = set_field(text, r"max_batch_size:\s*\d+", f"max_batch_size: {batch}", "max_batch_size")
    if model == "combined_ensemble" and variant.bls_instances is not None:
        text = set_instance_group(text, variant.bls_instances, 0)
    if model in RUNTIME_MODELS:
        text = set_instance_group(text, variant.instances, 1 if variant.gpu else 0)
        if not variant.batching:
            text = set_parameter(text, "batch_buckets", "1")

        for key, value in variant.parameters.items():
            try:
                text = set_parameter(text, key, value)
            except KeyError:  # e.g. num_steps exists for action only
                continue
    return text


def _set_scheduler(text: str, model: str, variant: RepositoryVariant) -> str:
    """The scheduler on the models robots' requests queue at: ``action`` and the BLS in front of it (whose
    instances each hold one batch until its action call returns, so its queue gathers a batch too)."""
    if variant.scheduler is None or model not in ("action", "combined_ensemble"):
        return text
    block = variant.scheduler.dynamic_batching()
    return set_field(text, r"dynamic_batching\s*\{.*?\}(\s*\n|$)", block + "\n", "dynamic_batching")


def build_repository(target: pathlib.Path, variant: RepositoryVariant, models: Sequence[str]) -> pathlib.Path:
    """``target`` = the listed models of ``model_repository/`` rewritten for ``variant``."""
    target.mkdir(parents=True, exist_ok=True)
    for model in models:
        dest = target / model
        shutil.copytree(MODEL_REPOSITORY / model, dest, ignore=shutil.ignore_patterns("__pycache__"))
        config = dest / "config.pbtxt"
        config.write_text(_set_scheduler(rewrite_config(config.read_text(), model, variant), model, variant))
    return target


def models_needed(models: Sequence[str]) -> list[str]:
    """The BLS calls action and planner: they must be in the repository too."""
    needed = list(models)
    if "combined_ensemble" in needed:
        needed += [m for m in RUNTIME_MODELS if m not in needed]
    return needed


def benchmark_server_options(repository: pathlib.Path) -> ServerOptions:
    """Triton on free ports for a benchmark, models loaded once at start (model control mode ``none``). In poll
    mode the stubs' first import writes ``__pycache__`` into the model folders, which Triton takes for an edit
    and answers by reloading (and re-warming) every model in the middle of the measurements."""
    http, grpc, metrics = free_ports(3)
    return ServerOptions(repository, http, grpc, metrics, model_control_mode="none")


@contextlib.contextmanager
def serving(
    repository: pathlib.Path, models: Sequence[str], log: pathlib.Path, timeout: float = 300
) -> Iterator[TritonServer]:
    """A benchmark Triton on ``repository`` until ``models`` are ready; stopped (and its log closed) after."""
    with open(log, "w") as log_stream:
        server = TritonServer(benchmark_server_options(repository), log_stream=log_stream)
        server.start()
        try:
            server.wait_ready(list(models), timeout=timeout)
            yield server
        finally:
            server.stop()
