"""What decoding one frame of N bytes costs in memory: hostile and benign frames for both codecs.

    python -m perf.decode_cost                       # sizes 1 KiB .. 32 MiB
    python -m perf.decode_cost --max-bytes 8388608   # stop at 8 MiB

Every case runs in a fresh interpreter: build the frame (N bytes), reset the peak RSS (``VmHWM``), decode it
with the bridge's codec (``openpi_triton.protocols.msgpack_numpy.unpackb`` for WebSocket frames,
``openpi_triton.protocols.local_frame.unpack`` for the sidecar socket), read the peak RSS. The extra peak
is what the decode cost; ``peak / N`` is the amplification. A decoder that refuses a hostile frame early costs
about nothing; one that builds a Python object per input byte costs 30-60x N (an empty list is 56 bytes, the
list slot pointing to it 8 more).

Rule (stated, checked by ``perf.attack``): extra peak <= ``AMPLIFICATION_LIMIT`` x N + ``SLACK_BYTES`` for every
case. The slack covers what the peak RSS cannot resolve below a few pages (allocator arenas, the decoder's first
objects), so frames of a few KiB only show that they are not absurd.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

AMPLIFICATION_LIMIT = 4.0
SLACK_BYTES = 2 * 2**20
SIZES = (2**10, 2**16, 2**20, 8 * 2**20, 32 * 2**20)


# ------------------------------------------------------------------------------------------- msgpack frames


def _array32(count: int) -> bytes:
    return b"\xdd" + struct.pack(">I", count)


def msgpack_empty_arrays(n: int) -> bytes:
    """``[[], [], ...]``: one byte per list (the 32 MB frame of the issue)."""
    return _array32(n - 5) + b"\x90" * (n - 5)


def msgpack_empty_maps(n: int) -> bytes:
    """``[{}, {}, ...]``: one byte per dict, each also passed through the ndarray object hook."""
    return _array32(n - 5) + b"\x80" * (n - 5)


def msgpack_small_ints(n: int) -> bytes:
    """``[0, 0, ...]``: one byte per value, 8 per list slot (small ints are shared)."""
    return _array32(n - 5) + b"\x00" * (n - 5)


def msgpack_deep(n: int) -> bytes:
    """``[[[[...]]]]`` nested as deep as the frame allows."""
    return b"\x91" * (n - 1) + b"\xc0"


def msgpack_benign(n: int) -> bytes:
    """A robot observation: a prompt and one uint8 image of about N bytes."""
    import numpy as np

    from openpi_triton.protocols import msgpack_numpy

    image = np.zeros(max(n - 200, 1), np.uint8)
    return msgpack_numpy.packb({"images": {"cam_high": image}, "prompt": "fold the towel"})


# ---------------------------------------------------------------------------------------- LocalFrame bodies


def local_frame_body(arrays: bytes, count: int, scalar_json: bytes) -> bytes:
    """``[schema_id_len][schema_id][num_arrays u16] arrays [json_len u32][json]`` (see protocols.local_frame)."""
    return b"\x01x" + struct.pack(">H", count) + arrays + struct.pack(">I", len(scalar_json)) + scalar_json


def _json_list(item: bytes, n: int) -> bytes:
    count = max((n - 8) // (len(item) + 1), 1)
    return b'{"a":[' + (item + b",") * (count - 1) + item + b"]}"  # one N-byte buffer, no list of pieces


def local_frame_json_arrays(n: int) -> bytes:
    """Scalar JSON ``{"a": [[], [], ...]}``: one list per 3 bytes."""
    return local_frame_body(b"", 0, _json_list(b"[]", n))


def local_frame_json_objects(n: int) -> bytes:
    return local_frame_body(b"", 0, _json_list(b"{}", n))


def local_frame_json_zeros(n: int) -> bytes:
    return local_frame_body(b"", 0, _json_list(b"0", n))


def local_frame_json_deep(n: int) -> bytes:
    depth = max((n - 8) // 2, 1)
    return local_frame_body(b"", 0, b'{"a":' + b"[" * depth + b"]" * depth + b"}")


def local_frame_benign(n: int) -> bytes:
    import numpy as np

    from openpi_triton.protocols import local_frame

    return local_frame.pack({"images": {"cam_high": np.zeros(max(n - 200, 1), np.uint8)}, "prompt": "fold the towel"})


CASES: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "msgpack/benign-image": ("msgpack", msgpack_benign),
    "msgpack/empty-arrays": ("msgpack", msgpack_empty_arrays),
    "msgpack/empty-maps": ("msgpack", msgpack_empty_maps),
    "msgpack/small-ints": ("msgpack", msgpack_small_ints),
    "msgpack/deep-nesting": ("msgpack", msgpack_deep),
    "localframe/benign-image": ("localframe", local_frame_benign),
    "localframe/json-empty-arrays": ("localframe", local_frame_json_arrays),
    "localframe/json-empty-objects": ("localframe", local_frame_json_objects),
    "localframe/json-zeros": ("localframe", local_frame_json_zeros),
    "localframe/json-deep": ("localframe", local_frame_json_deep),
}


# ---------------------------------------------------------------------------------------------- measurement


@dataclasses.dataclass(frozen=True)
class DecodeCost:
    case: str
    frame_bytes: int
    peak_extra_bytes: int
    decode_ms: float
    outcome: str  # "decoded" | "refused: <error>" | "crashed: <why>"

    @property
    def ratio(self) -> float:
        return self.peak_extra_bytes / self.frame_bytes

    @property
    def within_rule(self) -> bool:
        return self.peak_extra_bytes <= AMPLIFICATION_LIMIT * self.frame_bytes + SLACK_BYTES


def _status_bytes(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Resets the peak RSS (VmHWM) to the current RSS, so building the frame does not hide the decode's peak."""
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmHWM")


def measure_here(case: str, size: int) -> DecodeCost:
    """Runs in the child interpreter: one frame, one decode."""
    from openpi_triton.protocols import local_frame, msgpack_numpy

    codec, build = CASES[case]
    decode = msgpack_numpy.unpackb if codec == "msgpack" else local_frame.unpack
    frame = build(size)
    try:  # imports and first-call caches are not the frame's cost
        decode(build(1024))
    except Exception:  # a small hostile frame may be refused already: the warm-up happened all the same
        pass
    before = reset_peak()
    began = time.perf_counter()
    try:
        decoded = decode(frame)
        outcome = "decoded"
        del decoded
    except Exception as exc:  # the codec's own errors (and RecursionError) are outcomes, not harness failures
        outcome = f"refused: {type(exc).__name__}: {str(exc)[:120]}"
    decode_ms = (time.perf_counter() - began) * 1000.0
    return DecodeCost(case, len(frame), max(_status_bytes("VmHWM") - before, 0), round(decode_ms, 1), outcome)


def measure(case: str, size: int, timeout_s: float = 120.0) -> DecodeCost:
    """One case in a fresh interpreter (so ``VmHWM``, reset first starts from nothing of the previous case)."""
    command = [sys.executable, "-m", "perf.decode_cost", "--one", case, str(size)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return DecodeCost(case, size, 0, timeout_s * 1000.0, f"crashed: no result within {timeout_s:.0f} s")
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return DecodeCost(case, size, 0, 0.0, f"crashed: {why[:160]}")
    return DecodeCost(**json.loads(done.stdout.strip().splitlines()[-1]))


def measure_all(sizes: Sequence[int] = SIZES, cases: Sequence[str] = tuple(CASES)) -> list[DecodeCost]:
    return [measure(case, size) for case in cases for size in sizes]


def format_costs(costs: Sequence[DecodeCost]) -> str:
    lines = [
        f"[decode-cost] rule: extra peak RSS <= {AMPLIFICATION_LIMIT:g} x N + {SLACK_BYTES // 2**20} MiB",
        f"{'case':30} {'N':>10} {'peak extra':>12} {'peak/N':>8} {'ms':>8}  verdict  outcome",
    ]
    for c in costs:
        verdict = "PASS" if c.within_rule else "FAIL"
        lines.append(
            f"{c.case:30} {c.frame_bytes:>10} {c.peak_extra_bytes / 2**20:>9.1f} MiB {c.ratio:>8.2f} "
            f"{c.decode_ms:>8.1f}  {verdict:7}  {c.outcome[:70]}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--max-bytes", type=int, default=max(SIZES))
    parser.add_argument("--json", type=str, default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(dataclasses.asdict(measure_here(args.one[0], int(args.one[1])))))
        return 0
    costs = measure_all([s for s in SIZES if s <= args.max_bytes])
    print(format_costs(costs), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([dataclasses.asdict(c) for c in costs], out, indent=1)
    return 0 if all(c.within_rule for c in costs) else 1


if __name__ == "__main__":
    sys.exit(main())
