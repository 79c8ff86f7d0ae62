"""Building model repositories and requests for tests against a real tritonserver."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from openpi_triton import tensor_names
from openpi_triton.readiness import udp_port_bound, wait_until
from openpi_triton.triton.config_text import set_parameter

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"

NUMPY_TO_TRITON = {np.dtype(np.uint8): "UINT8", np.dtype(np.float64): "FP64", np.dtype(np.float32): "FP32"}


def copy_model(target_repo: pathlib.Path, source: str, name: str, parameters: Mapping[str, str] = {}) -> pathlib.Path:
    """Copies ``model_repository/<source>`` to ``target_repo/<name>`` with some parameters changed."""
    target = target_repo / name
    shutil.copytree(MODEL_REPOSITORY / source, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = target / "config.pbtxt"
    text = config.read_text()
    for key, value in parameters.items():
        text = set_parameter(text, key, value)
    config.write_text(text)
    return target


def infer_inputs(obs: Mapping[str, Any], extra: Mapping[str, Any] = {}) -> list[grpcclient.InferInput]:
    """A robot observation (plus extra tensors such as noise or mode) as batch-1 gRPC inputs."""
    inputs = []
    for name, value in {**tensor_names.flatten(obs), **extra}.items():
        if isinstance(value, str | bytes):
            data = np.array([[value.encode() if isinstance(value, str) else value]], dtype=np.object_)
            tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
        else:
            array = np.asarray(value)
            if np.issubdtype(array.dtype, np.floating) and name != "noise" and array.dtype != np.float32:
                array = array.astype(np.float64)
            data = array[None]
            tensor = grpcclient.InferInput(name, list(data.shape), NUMPY_TO_TRITON[array.dtype])
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def spawn_module(module: str, args: list[str], log: pathlib.Path, home: pathlib.Path) -> subprocess.Popen[bytes]:
    """``python -m module args`` with output in ``log`` and the embedded default under ``home``."""
    env = {**os.environ, "OPENPI_TRITON_HOME": str(home)}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 right now (for QUIC sidecars)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_udp_bound(port: int, timeout: float = 30.0) -> None:
    """Blocks until a socket is bound to UDP ``port``: the sidecar's QUIC endpoint exists (packets sent to it
    from then on are queued and served), so a robot may connect."""
    wait_until(lambda: udp_port_bound(port), timeout, f"a socket bound to UDP port {port}")


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (what a test started and expects gone)."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def stack_args(
    repository: pathlib.Path, bridge_json: pathlib.Path, ports: tuple[int, ...], ready_file: pathlib.Path | None = None
) -> list[str]:
    """``python -m openpi_triton.stack`` arguments for ``repository``, a bridge config and Triton's three ports;
    ``ready_file`` is written by the stack once every role serves (its explicit ready signal)."""
    http, grpc, metrics = ports
    ready = ["--ready-file", str(ready_file)] if ready_file is not None else []
    return [
        "--model-repository", str(repository), "--bridge-config", str(bridge_json),
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *ready,
    ]  # fmt: skip


def batch_counts(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(inferences, executions) Triton has counted for ``model``: three requests in one batch add (3, 1)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def counts_once_counted(
    client: grpcclient.InferenceServerClient, model: str, since: tuple[int, int], requests: int
) -> tuple[int, int]:
    """:func:`batch_counts` once at least ``requests`` more than ``since`` are counted: Triton counts a batch
    after its execute has returned, which can be after its robots have read their answers."""
    return wait_until(
        lambda: (counts := batch_counts(client, model))[0] - since[0] >= requests and counts,
        30,
        f"Triton's statistics of {model!r} to count {requests} requests",
    )


def counted_since(
    client: grpcclient.InferenceServerClient, model: str, before: tuple[int, int], requests: int
) -> tuple[int, int]:
    """(inferences, executions) of ``model`` since ``before``, once at least ``requests`` are counted."""
    after = counts_once_counted(client, model, before, requests)
    return after[0] - before[0], after[1] - before[1]
