"""Transport overheads, side by side in one run: direct gRPC, WebSocket via the bridge, QUIC via the sidecars.

    python perf/bench_bridge.py [--iters 200] [--results perf/results/bridge-<date>]

Bridge overhead = WebSocket round trip through the bridge minus the direct gRPC round trip to the same
model. The QUIC path is FlashTransportPolicy -> client binary -> QUIC -> server binary -> bridge.

Starts tritonserver (the `action` model on the embedded default with 1 flow step, to keep the model's
share of the noise small), the bridge and a QUIC sidecar on free ports through the orchestrator, then
alternates: one call through the bridge with openpi's `WebsocketClientPolicy`, one direct `tritonclient`
gRPC call with the same ALOHA-sized observation (4 x 3x224x224 uint8 images, state, prompt, noise).
Paired differences cancel the drift of this shared machine; p50 / p99 of both paths and of the difference are printed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from openpi_triton.domain.embodiments import EMBODIMENTS  # noqa: E402
from openpi_triton.native.tiny import ensure_embedded_default  # noqa: E402
from openpi_triton.orchestrator import Orchestrator, TritonRole  # noqa: E402
from openpi_triton.triton.launcher import ServerOptions, free_ports  # noqa: E402
from tests.triton_helpers import copy_model, infer_inputs  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def write_results(results: pathlib.Path, iters: int, paths: dict[str, list[float]], argv: list[str] | None) -> None:
    from perf import results_files

    summary = {
        n: {"p50_ms": round(percentile(v, 50), 2), "p99_ms": round(percentile(v, 99), 2)} for n, v in paths.items()
    }
    command = "python perf/bench_bridge.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {**results_files.stamp(command), "iters": iters, "paths": summary}
    lines = [
        "# Bridge overhead",
        "",
        f"Command: `{report['command']}`. Machine: {report['machine']}. {report['date']}. {iters} alternating "
        "rounds, ALOHA observation (four 3x224x224 images), `action` on the embedded default with 1 flow step.",
        "",
        "| path | p50 ms | p99 ms |",
        "| --- | --- | --- |",
        *(f"| {name} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} |" for name, v in summary.items()),
    ]
    results_files.write(results, "bridge", report, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--results", type=pathlib.Path, help="also write bridge.json and bridge.md here")
    args = parser.parse_args(argv)
    import tritonclient.grpc as grpcclient
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from openpi_triton.flash_client import FlashTransportPolicy

    ensure_embedded_default()
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    copy_model(work / "repo", "action", "action", {"num_steps": "1", "batch_buckets": "1"})
    http, grpc, metrics, ws, quic = free_ports(5)
    bridge_config = {
        "action": {},
        "host": "127.0.0.1",
        "admin": {"enabled": False},
        "action_transport": {"websocket_port": ws, "quic_port": quic, "unix_socket_path": str(work / "a.sock")},
        "triton": {"url": f"127.0.0.1:{grpc}"},
    }
    (work / "bridge.json").write_text(json.dumps(bridge_config))
    outputs = [open(work / "triton.log", "w"), open(work / "bridge.log", "w")]
    triton = TritonRole(ServerOptions(work / "repo", http, grpc, metrics), ("action",), 600, log_stream=outputs[0])
    stack = Orchestrator(("triton", "bridge", "sidecars"), work / "bridge.json", triton, bridge_out=outputs[1])
    quic_client = None
    try:
        stack.start()  # each part waited for by its readiness (openpi_triton.orchestrator)
        robot = WebsocketClientPolicy(host="127.0.0.1", port=ws)
        quic_client = FlashTransportPolicy("127.0.0.1", port=quic, local_port=0)
        direct = grpcclient.InferenceServerClient(triton.grpc_url)
        obs = EMBODIMENTS["aloha"].example(np.random.default_rng(0), "fold the towel")
        noise = np.random.default_rng(1).standard_normal((50, 32)).astype(np.float32)
        for _ in range(10):  # warm every path
            robot.infer({**obs, "noise": noise})
            quic_client.infer({**obs, "noise": noise})
            direct.infer("action", infer_inputs(obs, {"noise": noise}))
        ws_ms, grpc_ms, diff_ms, quic_ms = [], [], [], []
        for _ in range(args.iters):
            start = time.perf_counter()
            robot.infer({**obs, "noise": noise})
            mid = time.perf_counter()
            direct.infer("action", infer_inputs(obs, {"noise": noise}))
            end = time.perf_counter()
            quic_client.infer({**obs, "noise": noise})
            quic_ms.append((time.perf_counter() - end) * 1000)
            ws_ms.append((mid - start) * 1000)
            grpc_ms.append((end - mid) * 1000)
            diff_ms.append(ws_ms[-1] - grpc_ms[-1])
        print(f"{'path':<28} {'p50 ms':>8} {'p99 ms':>8}")
        paths = {
            "WebSocket via the bridge": ws_ms,
            "QUIC via client + server sidecars + bridge": quic_ms,
            "direct gRPC to the same model": grpc_ms,
            "bridge overhead (WebSocket minus direct gRPC, paired)": diff_ms,
        }
        for name, values in paths.items():
            print(f"{name:<28} {percentile(values, 50):>8.2f} {percentile(values, 99):>8.2f}")
        print(f"median of overhead: {statistics.median(diff_ms):.2f} ms over {args.iters} pairs")
        if args.results is not None:
            write_results(args.results, args.iters, paths, argv)
    finally:
        if quic_client is not None:
            quic_client.close()
        stack.close()
        for output in outputs:
            output.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
