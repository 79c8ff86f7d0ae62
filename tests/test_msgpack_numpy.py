"""Our msgpack-numpy codec against openpi-client's, and the bridge decoder under random input."""

from __future__ import annotations

import gc
import json
import pathlib
import subprocess
import sys
import tracemalloc

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from openpi_client import msgpack_numpy as reference

from openpi_triton.limits import DEFAULT_FRAME_LIMITS, FrameLimits
from openpi_triton.protocols import msgpack_numpy as ours
from openpi_triton.protocols import msgpack_scan

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

dtypes = st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|b1", "<i4", "<f2"])
arrays = st.tuples(dtypes, st.lists(st.integers(0, 4), max_size=3)).map(
    lambda spec: (np.arange(int(np.prod(spec[1])) if spec[1] else 1) % 7).astype(spec[0]).reshape(spec[1])
)
leaves = st.one_of(arrays, st.text(max_size=8), st.integers(-100, 100), st.floats(allow_nan=False), st.booleans())
trees = st.recursive(leaves, lambda inner: st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.text(max_size=6), trees, max_size=4))
@settings(max_examples=200, deadline=None)
def test_same_bytes_as_openpi_client_and_round_trip(obs: dict) -> None:
    packed = ours.packb(obs)
    assert packed == reference.packb(obs)
    decoded = ours.unpackb(packed)
    expected = reference.unpackb(packed)

    def compare(a: object, b: object) -> None:
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        elif isinstance(b, dict):
            assert isinstance(a, dict) and a.keys() == b.keys()
            for key in b:
                compare(a[key], b[key])
        else:
            assert a == b

    compare(decoded, expected)


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_random_bytes_give_decode_errors_only(data: bytes) -> None:
    try:
        ours.unpackb(data)
    except ours.DecodeError:
        pass


@given(
    st.dictionaries(
        st.binary(max_size=12),
        st.one_of(st.binary(max_size=20), st.text(max_size=5), st.integers(-(2**63), 2**64 - 1)),
        max_size=5,
    )
)
@settings(max_examples=300, deadline=None)
def test_forged_ndarray_maps_are_checked(fields: dict) -> None:
    forged = {b"__ndarray__": True, **fields}
    try:
        ours.unpackb(msgpack.packb({"x": forged}))
    except ours.DecodeError:
        pass


# ------------------------------------------------------------------------------------- bounded decoding

msgpack_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), st.text(max_size=40),
        st.binary(max_size=300),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=30,
)  # fmt: skip


@given(msgpack_values)
@settings(max_examples=300, deadline=None)
def test_the_walk_accepts_every_frame_msgpack_writes_and_counts_its_values(value: object) -> None:
    packed = msgpack.packb(value, use_bin_type=True)

    def count(v: object) -> int:
        if isinstance(v, list):
            return 1 + sum(count(x) for x in v)
        if isinstance(v, dict):
            return 1 + sum(1 + count(x) for x in v.values())
        return 1

    assert msgpack_scan.scan(packed, FrameLimits()) == count(value)
    assert ours.unpackb(packed) == msgpack.unpackb(packed, raw=False)


def _decode_error(data: bytes, limits: FrameLimits = DEFAULT_FRAME_LIMITS) -> str:
    try:
        ours.unpackb(data, limits)
    except ours.DecodeError as exc:
        return str(exc)
    raise AssertionError("decoded a frame that should be refused")


def test_amplifying_frames_are_refused_before_anything_is_built() -> None:
    empty_arrays = b"\xdd" + (8 * 2**20).to_bytes(4, "big") + b"\x90" * (8 * 2**20)  # 8 Mi empty arrays
    assert "more than 8192 msgpack values" in _decode_error(empty_arrays)
    empty_maps = msgpack.packb({"k": [{} for _ in range(20_000)]})
    assert "max_frame_values" in _decode_error(empty_maps)
    deep = b"\x91" * 100 + b"\xc0"  # 100 nested one-element arrays
    assert "more than 32 deep" in _decode_error(deep)
    lying = b"\xdd\xff\xff\xff\xff\xc0"  # claims 4 Gi values, holds one
    assert "declares" in _decode_error(lying)
    assert "not a msgpack type" in _decode_error(b"\xc1")
    # Limits are the config's: a smaller value budget refuses an ordinary observation.
    obs = ours.packb({"state": np.zeros(14), "images": {"cam": np.zeros((3, 4, 4), np.uint8)}})
    assert "more than 5" in _decode_error(obs, FrameLimits(max_values=5))


def _peak_decode_bytes(frame: bytes) -> int:
    gc.collect()  # garbage of earlier work is not finalized (and its finalizers do not allocate) mid-decode
    tracemalloc.start()
    try:
        ours.unpackb(frame)
    except ours.DecodeError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def _decode_peaks() -> dict[str, tuple[int, int]]:
    """Each bounded frame's size and the peak bytes its decode allocates (run in a process of its own)."""
    mib = 2**20
    frames = {
        "image observation": ours.packb({"images": {"cam": np.zeros((3, 1024, 1024), np.uint8)}, "prompt": "x"}),
        "8 Mi empty arrays": b"\xdd" + (8 * mib).to_bytes(4, "big") + b"\x90" * (8 * mib),
        "8192 one-char strings": msgpack.packb(["a"] * 8190),
        "8190 small ints in maps": msgpack.packb([{"a": 1} for _ in range(2700)]),
        "long string": msgpack.packb("x" * (4 * mib)),
    }
    return {name: (len(frame), _peak_decode_bytes(frame)) for name, frame in frames.items()}


def test_decoding_a_frame_of_n_bytes_allocates_at_most_n_plus_one_mib() -> None:
    """The bound docs/bridge.md states: payload bytes are copied once, every other object is counted by the walk.

    Measured in a fresh interpreter: tracemalloc counts every thread's allocations, and in a test session other
    threads (server log pumps, clients of earlier tests) and the finalizers of earlier tests' garbage, which the
    decode's many dicts make the cyclic collector run, allocate during the decode."""
    code = "import json; from tests.test_msgpack_numpy import _decode_peaks; print(json.dumps(_decode_peaks()))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for name, (size, peak) in json.loads(run.stdout.splitlines()[-1]).items():
        assert peak <= size + 2**20, f"{name}: {peak} bytes to decode {size}"
