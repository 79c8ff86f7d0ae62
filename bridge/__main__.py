"""``python -m openpi_bridge [--config bridge.json]``: runs the bridge until SIGINT / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from openpi_bridge.app import serve_forever
from openpi_triton.bridge_config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="openpi WebSocket + sidecar socket -> Triton gRPC bridge")
    parser.add_argument("--config", help="JSON config file (openpi-flash field names); OPENPI_* env overrides it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bridge] %(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"[bridge] invalid configuration: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve_forever(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
