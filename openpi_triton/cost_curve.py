"""A GPU cost curve: milliseconds per batched model call as a function of the batch size.

The simulated runtime sleeps for ``ms(batch)`` instead of computing, so a CPU-only machine can measure what
our serving stack does with a GPU's batching economics. A curve is a small JSON file::

    {"name": "...", "description": "...", "source": "...", "ms_per_call": {"1": 73, "2": 90, "4": 119}}

Between points the cost is interpolated linearly; beyond the largest point the last segment's slope
continues (a GPU that is saturated pays about the same per extra row); below the smallest point the cost
is that point's (a batch is never cheaper than the smallest one measured). Names resolve in this
package's ``openpi_triton/cost_curves/``; anything ending in ``.json`` is a path.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
from collections.abc import Mapping
from typing import Any

# Shipped with the package (package data), so a curve name works in an installed image too.
CURVES_DIR = pathlib.Path(__file__).resolve().parent / "cost_curves"
DEFAULT_CURVE = "pi05_published"


class CostCurveError(ValueError):
    """A cost curve that cannot be read; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class CostCurve:
    name: str
    points: tuple[tuple[int, float], ...]  # (batch, ms per call), batch strictly increasing
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.points:
            raise CostCurveError(f"cost curve {self.name!r}: 'ms_per_call' needs at least one point")
        batches = [b for b, _ in self.points]
        if batches != sorted(set(batches)) or batches[0] < 1:
            raise CostCurveError(f"cost curve {self.name!r}: batch sizes must be distinct integers >= 1, got {batches}")
        costs = [ms for _, ms in self.points]
        if any(ms <= 0 for ms in costs) or costs != sorted(costs):
            raise CostCurveError(
                f"cost curve {self.name!r}: ms per call must be positive and not fall with the batch, got {costs}"
            )

    def ms(self, batch: int) -> float:
        """Milliseconds of one call with ``batch`` observations."""
        if batch < 1:
            raise ValueError(f"batch: expected >= 1, got {batch}")
        points = self.points
        if batch <= points[0][0]:
            return points[0][1]
        for (b0, ms0), (b1, ms1) in itertools.pairwise(points):
            if batch <= b1:
                return ms0 + (ms1 - ms0) * (batch - b0) / (b1 - b0)
        if len(points) == 1:
            return points[0][1] * batch  # one point: nothing says a batch is cheaper than its rows
        (b0, ms0), (b1, ms1) = points[-2], points[-1]
        return ms1 + (ms1 - ms0) / (b1 - b0) * (batch - b1)

    def throughput_hz(self, batch: int) -> float:
        """Observations per second when every call carries ``batch`` observations."""
        return batch * 1000.0 / self.ms(batch)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "ms_per_call": {str(b): ms for b, ms in self.points},
        }


def from_dict(data: Mapping[str, Any], where: str) -> CostCurve:
    if not isinstance(data, Mapping):
        raise CostCurveError(f"{where}: expected a JSON object, got {type(data).__name__}")
    raw = data.get("ms_per_call")
    if not isinstance(raw, Mapping):
        raise CostCurveError(f"{where}: 'ms_per_call' must be an object {{batch: ms}}, got {raw!r}")
    points = []
    for key, value in raw.items():
        if not str(key).isdigit() or isinstance(value, bool) or not isinstance(value, int | float):
            raise CostCurveError(f"{where}: 'ms_per_call' entry {key!r}: {value!r}: expected \"<batch>\": <ms>")
        points.append((int(key), float(value)))
    try:
        return CostCurve(
            name=str(data.get("name") or pathlib.Path(where).stem),
            points=tuple(sorted(points)),
            description=str(data.get("description", "")),
            source=str(data.get("source", "")),
        )
    except CostCurveError as exc:
        raise CostCurveError(f"{where}: {exc}") from None


def resolve(name_or_path: str) -> pathlib.Path:
    """A curve name (``pi05_published``) -> its file in ``openpi_triton/cost_curves/``; a ``.json`` path is itself."""
    if name_or_path.endswith(".json"):
        return pathlib.Path(name_or_path).expanduser()
    if not name_or_path or "/" in name_or_path:
        raise CostCurveError(
            f"cost curve: expected a name in {CURVES_DIR} or a path ending in .json, got {name_or_path!r}"
        )
    return CURVES_DIR / f"{name_or_path}.json"


def available() -> list[str]:
    return sorted(p.stem for p in CURVES_DIR.glob("*.json"))


def load(name_or_path: str = DEFAULT_CURVE) -> CostCurve:
    path = resolve(name_or_path)
    if not path.is_file():
        raise CostCurveError(f"cost curve {name_or_path!r}: no file {path} (curves here: {available()})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CostCurveError(f"{path}: not valid JSON ({exc})") from None
    return from_dict(data, str(path))
