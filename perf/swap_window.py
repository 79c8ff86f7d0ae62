"""How an embodiment swap looks to robots: one edit of the action model's config.pbtxt under ``make serve``.

    python -m perf.swap_window                      # golden vectors in ../shared/golden
    python -m perf.swap_window --golden DIR --results perf/results/swap-<name>

Starts the stack ``make serve`` runs (``perf.attack_stack``: poll mode, both slots, free ports), an ALOHA robot
and a DROID robot (openpi-client, fixed noise, ``action_only``) that ask in turn, each on a fresh connection as a
robot that reconnects after an error would, and a ``/healthz`` probe. Then it edits ``action/config.pbtxt`` from
the embedded ALOHA default to the golden ``pi05_droid`` checkpoint and records every answer, error and health
status against the seconds since the edit, until the DROID robot has been served for ``--after`` seconds.

Reported (``swap.json`` and ``swap.md``): seconds from the edit to the last ALOHA answer and to the first DROID
answer, the window in which the action slot served neither, the errors robots read by kind, the seconds
``/healthz`` said 503, and whether any answer came from a mismatched pair (shape or values not those of the
robot's own embodiment: must be zero).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import json
import os
import pathlib
import sys
import time
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from openpi_triton.readiness import http_status
from perf.attack_stack import cleanup_workdir, start_stack, stop_stack, wait_ready

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _robot(embodiment: str, config: str, checkpoint: pathlib.Path, tokenizer: pathlib.Path, horizon: int) -> dict:
    from openpi_triton.domain.embodiments import EMBODIMENTS
    from openpi_triton.native.policy import PolicyOptions, load_policy

    obs = EMBODIMENTS[embodiment].example(np.random.default_rng(3), "fold the towel")
    noise = np.random.default_rng(4).standard_normal((horizon, 32)).astype(np.float32)
    policy = load_policy(config, checkpoint, PolicyOptions(tokenizer_path=str(tokenizer), batch_buckets=(1,)))
    return {"obs": {**obs, "noise": noise, "mode": "action_only"}, "expected": policy.infer(obs, noise)["actions"]}


def _ask(port: int, api_key: str, robot: dict) -> tuple[str, str]:
    """("ok" | "mismatched" | "error", detail) for one request on a fresh connection."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    try:
        client = WebsocketClientPolicy(host="127.0.0.1", port=port, api_key=api_key)
        try:
            actions = client.infer(robot["obs"])["actions"]
        finally:
            client._ws.close()
    except Exception as exc:  # what the robot reads: kept by kind
        return "error", (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
    expected = robot["expected"]
    if actions.shape != expected.shape or float(np.max(np.abs(actions - expected))) > 1e-4:
        return "mismatched", f"shape {actions.shape}"
    return "ok", ""


def edit_to_golden_droid(repository: pathlib.Path, golden: pathlib.Path) -> None:
    """One atomic edit of ``action/config.pbtxt``: the golden ``pi05_droid`` checkpoint (Triton's poller never
    sees half a file)."""
    from perf.repository import set_parameter

    config = repository / "action" / "config.pbtxt"
    text = set_parameter(config.read_text(), "model_config_name", "pi05_droid")
    text = set_parameter(text, "checkpoint_dir", str(golden / "pi05_droid" / "checkpoint"))
    text = set_parameter(text, "tokenizer_path", str(golden / "tokenizer.model"))
    staged = config.with_suffix(".tmp")
    staged.write_text(text)
    os.replace(staged, config)


def _error_kind(detail: str) -> str:
    for kind in ("being swapped", "this server serves", "not ready", "not reachable", "unavailable"):
        if kind in detail:
            return kind
    return detail[:80]


def measure(golden: pathlib.Path, results: pathlib.Path, after_s: float, timeout_s: float) -> dict[str, Any]:
    from openpi_triton.native.tiny import ensure_embedded_default

    default = ensure_embedded_default()
    aloha = _robot("aloha", "pi05_aloha", default.checkpoint_dir, default.tokenizer_path, 50)
    droid = _robot("droid", "pi05_droid", golden / "pi05_droid" / "checkpoint", golden / "tokenizer.model", 15)
    stack = start_stack(results)
    try:
        print(f"[swap] stack ready in {wait_ready(stack, 900):.0f} s; editing action/config.pbtxt", file=sys.stderr)
        port, key = stack.ports.ws_action, stack.api_key
        if _ask(port, key, aloha)[0] != "ok":
            raise RuntimeError("the ALOHA robot is not served before the edit")
        edit_to_golden_droid(stack.workdir / "model_repository", golden)
        edit = time.monotonic()
        events: list[dict[str, Any]] = []
        first_droid: float | None = None
        while time.monotonic() - edit < timeout_s:
            now = time.monotonic() - edit
            events.append({"t": now, "who": "health", "outcome": str(http_status(port, "/healthz"))})
            for name, robot in (("aloha", aloha), ("droid", droid)):
                outcome, detail = _ask(port, key, robot)
                events.append({"t": time.monotonic() - edit, "who": name, "outcome": outcome, "detail": detail})
                if name == "droid" and outcome == "ok" and first_droid is None:
                    first_droid = events[-1]["t"]
            if first_droid is not None and time.monotonic() - edit > first_droid + after_s:
                break
        return summarize(events, first_droid)
    finally:
        stop_stack(stack)
        cleanup_workdir(stack)


def summarize(events: list[dict[str, Any]], first_droid: float | None) -> dict[str, Any]:
    def times(who: str, outcome: str) -> list[float]:
        return [e["t"] for e in events if e["who"] == who and e["outcome"] == outcome]

    last_aloha = max(times("aloha", "ok"), default=0.0)
    health = [e for e in events if e["who"] == "health"]
    unhealthy = sum(b["t"] - a["t"] for a, b in itertools.pairwise(health) if a["outcome"] != "200")
    errors = collections.Counter(_error_kind(e["detail"]) for e in events if e["outcome"] == "error")
    return {
        "droid_first_answer_s": first_droid,
        "aloha_last_answer_s": last_aloha,
        "served_neither_s": (first_droid - last_aloha) if first_droid is not None else None,
        "healthz_not_200_s": unhealthy,
        "requests": sum(1 for e in events if e["who"] != "health"),
        "mismatched_answers": len(times("aloha", "mismatched")) + len(times("droid", "mismatched")),
        "errors_by_kind": dict(errors.most_common()),
        "events": events,
    }


def write(report: dict[str, Any], results: pathlib.Path, command: str) -> None:
    (results / "swap.json").write_text(json.dumps({"command": command, **report}, indent=1))
    lines = [
        "# Embodiment swap as robots see it (simulated fleet on this machine, tiny models)",
        "",
        f"Command: `{command}`",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| first DROID answer after the edit | {report['droid_first_answer_s']:.1f} s |",
        f"| last ALOHA answer after the edit | {report['aloha_last_answer_s']:.1f} s |",
        f"| action slot served neither | {report['served_neither_s']:.1f} s |",
        f"| /healthz not 200 | {report['healthz_not_200_s']:.1f} s |",
        f"| requests during the run | {report['requests']} |",
        f"| answers from a mismatched pair | {report['mismatched_answers']} |",
        "",
        "Errors robots read, by kind: " + ", ".join(f"{k!r} x{v}" for k, v in report["errors_by_kind"].items()),
        "",
    ]
    (results / "swap.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golden", type=pathlib.Path, default=REPO_ROOT.parent / "shared" / "golden")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.add_argument("--results", type=pathlib.Path, default=REPO_ROOT / "perf" / "results" / f"swap-{stamp}")
    parser.add_argument("--after", type=float, default=5.0, help="seconds to keep asking once DROID is served")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    report = measure(args.golden, args.results, args.after, args.timeout)
    command = "python -m perf.swap_window " + " ".join(sys.argv[1:] if argv is None else argv)
    write(report, args.results, command.strip())
    print((args.results / "swap.md").read_text())
    ok = report["droid_first_answer_s"] is not None and report["mismatched_answers"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
