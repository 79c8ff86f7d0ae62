"""Robot observations for benchmarks and perf_analyzer's ``--input-data`` JSON, for any supported embodiment.

Images are synthetic scenes (gradient background, a textured table, coloured objects that move between
entries, sensor noise): not constant and not white noise, so nothing downstream gets an unrealistically easy
or hard input. The tensor list comes from the served model's I/O declaration (``io_spec``), so the JSON
matches what Triton expects for the same ``model_config_name``.

    python -m perf.input_data --config pi05_aloha --model action --entries 8 --out action.json
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from openpi_triton import tensor_names
from openpi_triton.domain.configs import PolicyConfig, get_policy_config
from openpi_triton.domain.embodiments.base import Embodiment
from openpi_triton.triton import io_spec
from openpi_triton.triton.io_spec import TensorSpec

MODELS = ("action", "planner", "combined_ensemble")
PROMPTS = (
    "fold the towel",
    "pick up the red cube and put it in the bowl",
    "uncap the pen",
    "open the top drawer and put the spoon inside",
    "transfer the cube to the left arm",
    "wipe the table with the sponge",
)
_NUMPY_TYPES = {"TYPE_UINT8": np.uint8, "TYPE_FP64": np.float64, "TYPE_FP32": np.float32, "TYPE_INT32": np.int32}


def scene_image(rng: np.random.Generator, height: int, width: int, step: int) -> np.ndarray:
    """A uint8 ``[H, W, 3]`` camera frame: gradient wall, textured table, three objects at ``step``'s positions."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = yy / height, xx / width
    wall_top, wall_bottom = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    image = wall_top * (1 - y[..., None]) + wall_bottom * y[..., None]
    horizon = rng.uniform(0.35, 0.55)
    table = (y > horizon)[..., None]
    grain = 12 * np.sin(40 * x + 7 * np.sin(9 * y))[..., None]
    image = np.where(table, rng.uniform(80, 170, 3) + grain, image)
    for k in range(3):
        cy = horizon + (1 - horizon) * (0.3 + 0.4 * ((k * 0.37 + 0.05 * step) % 1.0))
        cx = (0.2 + 0.3 * k + 0.03 * step) % 1.0
        ry, rx = rng.uniform(0.04, 0.1), rng.uniform(0.04, 0.12)
        blob = (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) < 1.0
        shade = 1.0 - 0.4 * np.clip((y - cy) / ry, 0, 1)  # lit from above
        image = np.where(blob[..., None], rng.uniform(0, 255, 3) * shade[..., None], image)
    image += rng.normal(0.0, 4.0, image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def observations(
    embodiment: Embodiment, count: int, seed: int = 0, image_size: tuple[int, int] = (224, 224)
) -> list[dict[str, Any]]:
    """``count`` robot observations (nested dicts as a robot sends them) with every camera, state and a prompt."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    result = []
    for step in range(count):
        obs = embodiment.example(rng, PROMPTS[step % len(PROMPTS)])  # the right keys, state widths and layouts
        for field in embodiment.image_fields:
            frame = scene_image(rng, height, width, step)
            node = obs
            for key in field.path[:-1]:
                node = node[key]
            node[field.path[-1]] = np.ascontiguousarray(frame.transpose(2, 0, 1)) if field.layout == "CHW" else frame
        result.append(obs)
    return result


def model_inputs(config: PolicyConfig, model: str) -> list[TensorSpec]:
    if model == "action":
        return io_spec.action_inputs(config)
    if model == "planner":
        return io_spec.planner_inputs(config)
    if model == "combined_ensemble":
        return io_spec.combined_inputs(config)
    raise ValueError(f"model: expected one of {MODELS}, got {model!r}")


def _tensor_entry(spec: TensorSpec, value: Any) -> Any:
    """One tensor in perf_analyzer's JSON: strings as a list, arrays as raw little-endian bytes (b64) + shape."""
    if spec.data_type == "TYPE_STRING":
        return [value.decode() if isinstance(value, bytes) else str(value)]
    array = np.ascontiguousarray(np.asarray(value, dtype=_NUMPY_TYPES[spec.data_type]))
    return {
        "content": {"b64": base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode()},
        "shape": list(array.shape),
    }


@dataclasses.dataclass(frozen=True)
class InputDataOptions:
    config_name: str = "pi05_aloha"
    model: str = "action"
    entries: int = 4
    image_size: tuple[int, int] = (224, 224)
    noise: bool = False  # the optional `noise` input: reproducible calls, same compute
    mode: str | None = None  # combined_ensemble's optional `mode` (None: not sent = default)
    rtc_delay: int | None = None  # an `rtc` request (half a chunk left, this delay in ticks): RTC's cost
    seed: int = 0


def input_data(options: InputDataOptions) -> dict[str, Any]:
    """perf_analyzer's ``{"data": [entry, ...]}``; each entry is one batch-1 request, used round-robin."""
    config = get_policy_config(options.config_name)
    specs = {s.name: s for s in model_inputs(config, options.model)}
    rng = np.random.default_rng(options.seed + 1)
    entries = []
    for obs in observations(config.embodiment, options.entries, options.seed, options.image_size):
        flat = tensor_names.flatten(obs)
        if options.noise and io_spec.NOISE in specs:
            flat[io_spec.NOISE] = rng.standard_normal((config.action_horizon, config.action_dim))
        if options.mode is not None and io_spec.MODE in specs:
            flat[io_spec.MODE] = options.mode
        if options.rtc_delay is not None:
            remainder = config.action_horizon - config.action_horizon // 2
            flat["rtc.prev_actions"] = rng.uniform(-1.0, 1.0, (remainder, config.embodiment.action_dim))
            flat["rtc.inference_delay"] = [options.rtc_delay]
        # Only what the model declares: the planner takes no state, some cameras may be unused.
        entries.append({name: _tensor_entry(specs[name], value) for name, value in flat.items() if name in specs})
    return {"data": entries}


def write_input_data(path: pathlib.Path, options: InputDataOptions) -> pathlib.Path:
    path.write_text(json.dumps(input_data(options)))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pi05_aloha", help="openpi config name of the served model")
    parser.add_argument("--model", choices=MODELS, default="action")
    parser.add_argument("--entries", type=int, default=4)
    parser.add_argument("--image-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--noise", action="store_true", help="also send the optional noise input")
    parser.add_argument("--mode", choices=io_spec.MODES, help="combined_ensemble mode input")
    parser.add_argument("--rtc-delay", type=int, help="also send an rtc request with this inference delay (ticks)")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    options = InputDataOptions(
        args.config, args.model, args.entries, tuple(args.image_size), args.noise, args.mode, args.rtc_delay
    )
    write_input_data(args.out, options)
    print(f"wrote {args.entries} entries for {args.model} ({args.config}) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
