"""What every embodiment shares: declared observation fields, their validation, and the robot frame they produce.

An embodiment turns one robot observation (the dict a robot sends, e.g. over openpi's WebSocket) into a
:class:`RobotFrame` (model image slots as uint8 HWC, masks, the robot's state vector, the prompt) and turns
the model's un-normalised actions back into the robot's action format. Validation errors are ``ValueError``
naming the field, what was expected and what arrived.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from openpi_triton.contract import images as image_ops
from openpi_triton.contract.images import MODEL_IMAGE_SIZE

Layout = Literal["CHW", "HWC"]
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class ImageField:
    """A camera in the robot observation.

    ``slot``: the model image slot it feeds (``None``: accepted but unused, like ALOHA's ``cam_low``).
    ``layout``: what robots send; ``strict_layout`` False means a ``[3, H, W]`` array is also accepted.
    """

    path: tuple[str, ...]
    slot: str | None
    required: bool
    layout: Layout
    strict_layout: bool = True

    @property
    def name(self) -> str:
        return "/".join(self.path)

    def describe(self) -> str:
        shape = "[3, H, W]" if self.layout == "CHW" else "[H, W, 3]"
        return f"uint8 {shape} (or float in [0, 1])"

    def spec(self) -> dict[str, Any]:
        """openpi-flash's ``image_specs`` entry: the shape robots should pre-resize to."""
        shape = (
            [3, MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE] if self.layout == "CHW" else [MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE, 3]
        )
        return {"path": list(self.path), "target_shape": shape, "dtype": "uint8"}


@dataclasses.dataclass(frozen=True)
class StateField:
    """A numeric vector in the robot observation; ``allow_scalar`` accepts a 0-d value for width 1."""

    path: tuple[str, ...]
    width: int
    allow_scalar: bool = False

    @property
    def name(self) -> str:
        return "/".join(self.path)


@dataclasses.dataclass
class RobotFrame:
    """One observation after the robot's input transform (openpi's ``*Inputs``), before normalisation."""

    images: dict[str, np.ndarray]
    image_masks: dict[str, bool]
    state: np.ndarray
    prompt: str | None


def lookup(obs: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` or ``None``; nested dicts are walked one key at a time."""
    node: Any = obs
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def parse_image(value: Any, field: ImageField) -> np.ndarray:
    """Validates one camera image and returns it as uint8 HWC (openpi's conversion rules)."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"image '{field.name}': expected a numpy array {field.describe()}, got {type(value).__name__}")
    if value.ndim != 3:
        raise ValueError(
            f"image '{field.name}': expected 3 dimensions {field.describe()}, got shape {list(value.shape)}"
        )
    if value.dtype != np.uint8 and not np.issubdtype(value.dtype, np.floating):
        raise ValueError(f"image '{field.name}': expected dtype uint8 or float, got {value.dtype}")
    if np.issubdtype(value.dtype, np.floating):
        image_ops.require_unit_range(value, field.name)
    chw = value.shape[0] == 3 and (field.layout == "CHW" or not field.strict_layout)
    if field.layout == "CHW" and field.strict_layout and value.shape[0] != 3:
        raise ValueError(
            f"image '{field.name}': expected channels first {field.describe()}, got shape {list(value.shape)}"
        )
    if not chw and value.shape[2] != 3:
        raise ValueError(f"image '{field.name}': expected {field.describe()}, got shape {list(value.shape)}")
    if min(value.shape) < 1:
        raise ValueError(f"image '{field.name}': empty image of shape {list(value.shape)}")
    value = image_ops.convert_to_uint8(value)
    if chw:
        value = np.transpose(value, (1, 2, 0))
    return value


def parse_state(value: Any, field: StateField) -> np.ndarray:
    """Validates a numeric vector of the declared width (finite values)."""
    if value is None:
        raise ValueError(f"observation is missing '{field.name}': expected float [{field.width}]")
    try:
        array = np.asarray(value)
    except ValueError:
        raise ValueError(f"'{field.name}': expected float [{field.width}], got a ragged sequence") from None
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"'{field.name}': expected float [{field.width}], got dtype {array.dtype}")
    if array.ndim == 0 and field.allow_scalar and field.width == 1:
        array = array[np.newaxis]
    if array.shape != (field.width,):
        raise ValueError(f"'{field.name}': expected shape [{field.width}], got {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"'{field.name}': values must be finite, got {array.tolist()}")
    too_large = np.abs(array) > FLOAT32_MAX  # finite in float64, inf in the model's float32
    if np.any(too_large):
        raise ValueError(f"'{field.name}': values must be finite in float32, got {array[too_large][0]!r}")
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float64)
    return array


def parse_prompt(value: Any) -> str | None:
    """A prompt is a str, UTF-8 bytes or a 0-d numpy string; anything else is rejected."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "US":
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"'prompt': expected UTF-8 text, got undecodable bytes ({exc.reason})") from None
    if not isinstance(value, str):
        raise ValueError(f"'prompt': expected a string, got {type(value).__name__}")
    return value


class Embodiment:
    """Base for robot embodiments. Subclasses declare fields and implement ``assemble_state`` / ``outputs``.

    - ``image_fields``: cameras, in the order they fill model slots; a slot with no camera gets a zero image
      and mask False (openpi's rule for missing optional cameras).
    - ``state_fields``: concatenated, in order, into the robot state vector.
    - ``action_dim``: width of the actions returned to the robot.
    - ``allow_unknown_images_under``: a dict key whose unknown sub-keys are errors (ALOHA's ``images``).
    """

    name: str = ""
    image_fields: tuple[ImageField, ...] = ()
    state_fields: tuple[StateField, ...] = ()
    action_dim: int = 0
    closed_image_dict: tuple[str, ...] | None = None
    model_slots: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")

    def inputs(self, obs: Mapping[str, Any]) -> RobotFrame:
        if not isinstance(obs, Mapping):
            raise ValueError(f"observation: expected a dict, got {type(obs).__name__}")
        self._check_closed_image_dict(obs)
        images: dict[str, np.ndarray] = {}
        masks: dict[str, bool] = {}
        for field in self.image_fields:
            value = lookup(obs, field.path)
            if value is None:
                if field.required:
                    raise ValueError(
                        f"observation is missing required image '{field.name}': expected {field.describe()}"
                    )
                continue
            parsed = parse_image(value, field)
            if field.slot is not None:
                images[field.slot] = parsed
                masks[field.slot] = True
        reference = next(iter(images.values()))
        for slot in self.model_slots:
            if slot not in images:
                images[slot] = np.zeros_like(reference)
                masks[slot] = False
        state = self.assemble_state([parse_state(lookup(obs, f.path), f) for f in self.state_fields])
        return RobotFrame(images=images, image_masks=masks, state=state, prompt=parse_prompt(obs.get("prompt")))

    def _check_closed_image_dict(self, obs: Mapping[str, Any]) -> None:
        if self.closed_image_dict is None:
            return
        container = lookup(obs, self.closed_image_dict)
        if container is None:
            return
        if not isinstance(container, Mapping):
            raise ValueError(f"'{'/'.join(self.closed_image_dict)}': expected a dict of camera images")
        known = {f.path[-1] for f in self.image_fields if f.path[:-1] == self.closed_image_dict}
        unknown = sorted(str(k) for k in set(container) - known)
        if unknown:
            raise ValueError(
                f"'{'/'.join(self.closed_image_dict)}': unknown cameras {unknown}; expected a subset of {sorted(known)}"
            )

    def assemble_state(self, parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def outputs(self, actions: np.ndarray) -> np.ndarray:
        """Model actions (un-normalised, absolute, padded width) -> the robot's actions."""
        return np.asarray(actions[..., : self.action_dim])

    def image_specs(self) -> list[dict[str, Any]]:
        return [f.spec() for f in self.image_fields]

    def example(self, rng: np.random.Generator, prompt: str = "warmup") -> dict[str, Any]:
        """A valid random observation (warm-up, benchmarks, tests), with every camera present."""
        obs: dict[str, Any] = {}
        for f in self.image_fields:
            shape = (
                (3, MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE)
                if f.layout == "CHW"
                else (MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE, 3)
            )
            _set(obs, f.path, rng.integers(0, 256, size=shape, dtype=np.uint8))
        for s in self.state_fields:
            _set(obs, s.path, rng.uniform(-1.0, 1.0, size=(s.width,)))
        obs["prompt"] = prompt
        return obs


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
