"""The baseline: openpi's own WebSocket server (PyPI ``openpi-server``, unchanged) serving the native runtime.

    python -m perf.baseline_server --port 8300 --checkpoint DIR --tokenizer PATH [--config pi05_aloha]
    python -m perf.baseline_server ... --cost-curve pi05_published   # the simulated runtime (GPU cost curve)

This is what a robot team runs without Triton: one process, ``WebsocketPolicyServer(policy).serve_forever()``,
one ``policy.infer(obs)`` at a time. The policy is the same ``NativePolicy`` (same checkpoint, dtype, flow steps)
that the Triton ``action`` model runs, so the comparison is about serving, not the model; with
``--cost-curve`` both serve the same ``SimulatedPolicy`` (real transforms, the curve's wait). Prints
``baseline ready`` once the policy is compiled and the port is open.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from openpi_client import base_policy

from openpi_triton.native.policy import PolicyOptions, load_policy


class ServedPolicy(base_policy.BasePolicy):
    """What ``WebsocketPolicyServer`` calls: ``infer(obs) -> dict``; openpi's serve script passes ``metadata``."""

    def __init__(self, policy: Any):  # NativePolicy or SimulatedPolicy
        self._policy = policy

    def infer(self, obs: dict) -> dict:
        return self._policy.infer(obs)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._policy.metadata


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"openpi-server did not open port {port}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config", default="pi05_aloha")
    parser.add_argument("--checkpoint", type=pathlib.Path, required=True)
    parser.add_argument("--tokenizer", type=pathlib.Path, required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--cost-curve", default="", help="serve the simulated runtime with this GPU cost curve")
    args = parser.parse_args(argv)
    from openpi_server import WebsocketPolicyServer

    # One robot call at a time: only batch 1 is ever compiled (as openpi's serve_policy does).
    options = PolicyOptions(
        dtype=args.dtype, num_steps=args.num_steps, batch_buckets=(1,), tokenizer_path=str(args.tokenizer)
    )
    if args.cost_curve:
        from openpi_triton import cost_curve
        from openpi_triton.simulated_policy import load_simulated_policy

        policy: Any = load_simulated_policy(args.config, args.checkpoint, options, cost_curve.load(args.cost_curve))
    else:
        policy = load_policy(args.config, args.checkpoint, options)
    policy.warmup()
    served = ServedPolicy(policy)
    server = WebsocketPolicyServer(served, host=args.host, port=args.port, metadata=served.metadata)
    # serve_forever() blocks; announce readiness from a helper thread once the port accepts connections.
    announcer = threading.Thread(
        target=lambda: (_wait_for_port(args.port, 60), print("baseline ready", flush=True)), daemon=True
    )
    announcer.start()
    try:
        server.serve_forever()
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
