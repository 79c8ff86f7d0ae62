"""Our msgpack-numpy codec against openpi-client's, and the bridge decoder under random input."""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from openpi_client import msgpack_numpy as reference

from openpi_triton.protocols import msgpack_numpy as ours

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
