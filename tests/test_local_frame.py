"""LocalFrame codec (openpi-flash's bytes) and the bridge's sidecar socket over a real unix socket."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openpi_client import msgpack_numpy

from openpi_triton.domain.embodiments import EMBODIMENTS
from openpi_triton.protocols import local_frame
from openpi_triton.protocols.local_frame import FrameError, MessageType
from tests.clients import SidecarClient
from tests.conftest import BridgeProcess

WORKED_EXAMPLE = bytes.fromhex(
    "07756e6b6e6f776e0002"
    "010573746174650a010000000200000000000000080000803f00000040"
    "0206696d616765730863616d5f68696768"
    "0103"
    "000000010000000100000003"
    "0000000000000003"
    "000000"
    "00000024"
    "7b2270726f6d7074223a226869222c226d6f6465223a22616374696f6e5f6f6e6c79227d"
)


def test_spec_worked_example_round_trips_byte_for_byte() -> None:
    obs = {
        "state": np.array([1.0, 2.0], np.float32),
        "images": {"cam_high": np.zeros((1, 1, 3), np.uint8)},
        "prompt": "hi",
        "mode": "action_only",
    }
    assert len(WORKED_EXAMPLE) == 121
    assert local_frame.pack(obs) == WORKED_EXAMPLE
    schema, decoded = local_frame.unpack(WORKED_EXAMPLE)
    assert schema == "unknown" and decoded["prompt"] == "hi" and decoded["mode"] == "action_only"
    assert local_frame.pack(decoded) == WORKED_EXAMPLE
    assert local_frame.envelope(MessageType.INFER, WORKED_EXAMPLE)[:5] == bytes.fromhex("0000007a02")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (WORKED_EXAMPLE[:-3], "truncated"),
        (WORKED_EXAMPLE + b"\0", "trailing"),
        (WORKED_EXAMPLE[:17] + b"\x7f" + WORKED_EXAMPLE[18:], "unknown dtype"),
        (WORKED_EXAMPLE[:23] + struct.pack(">Q", 9) + WORKED_EXAMPLE[31:], "mismatch"),
        (b"\x07unknown\x00\x01\x00", "empty path"),
    ],
)
def test_malformed_frames_are_rejected(body: bytes, needle: str) -> None:
    with pytest.raises(FrameError, match=needle):
        local_frame.unpack(body)


arrays = st.sampled_from([np.uint8, np.int32, np.int64, np.float32, np.float64, np.bool_]).flatmap(
    lambda dtype: st.lists(st.integers(0, 4), min_size=0, max_size=3).map(
        lambda shape: np.arange(int(np.prod(shape)) if shape else 1).astype(dtype).reshape(shape)
    )
)
keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
payloads = st.dictionaries(
    keys,
    st.one_of(arrays, st.text(max_size=10), st.integers(-5, 5), st.dictionaries(keys, arrays, max_size=2)),
    max_size=4,
)


@given(payloads)
@settings(max_examples=150, deadline=None)
def test_pack_unpack_round_trip(payload: dict) -> None:
    _, decoded = local_frame.unpack(local_frame.pack(payload))
    expected = {k: v for k, v in payload.items() if not (isinstance(v, dict) and not v)}
    assert decoded.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            for inner, array in value.items():
                np.testing.assert_array_equal(decoded[key][inner], array)
                assert decoded[key][inner].dtype == array.dtype
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(decoded[key], value)
            assert decoded[key].dtype == value.dtype and decoded[key].shape == value.shape
        else:
            assert decoded[key] == value


def _frame(arrays: int, scalar_json: bytes) -> bytes:
    """A LocalFrame body with ``arrays`` empty uint8 arrays named a0, a1, ... and the given scalar JSON."""
    out = [b"\x07unknown", struct.pack(">H", arrays)]
    for index in range(arrays):
        name = f"a{index}".encode()
        out.append(bytes([1, len(name)]) + name + b"\x01\x01" + struct.pack(">I", 0) + struct.pack(">Q", 0))
    return b"".join([*out, struct.pack(">I", len(scalar_json)), scalar_json])


def test_amplifying_frames_are_refused() -> None:
    with pytest.raises(FrameError, match=r"over the limit of 16384 bytes \(max_scalar_json_bytes\)"):
        local_frame.unpack(_frame(0, b'{"x":[' + b"[]," * 40_000 + b"[]]}"))
    with pytest.raises(FrameError, match=r"more than 8192 values \(max_frame_values\)"):  # under the byte cap
        local_frame.unpack(_frame(0, b'{"x":[' + b"[]," * 5000 + b"[]]}"))
    commas = '{"prompt":"' + "a, b: c" * 2000 + '"}'  # punctuation inside a string is no value
    assert local_frame.unpack(_frame(0, commas.encode()))[1]["prompt"].startswith("a, b: c")
    with pytest.raises(FrameError, match="more than 32 deep"):
        local_frame.unpack(_frame(0, b'{"x":' + b"[" * 40 + b"]" * 40 + b"}"))
    with pytest.raises(FrameError, match="more than 32 deep"):
        local_frame.unpack(_frame(0, b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"))  # json's own recursion limit
    with pytest.raises(FrameError, match=r"9000 arrays, more than 8192 \(max_frame_values\)"):
        local_frame.unpack(_frame(9000, b"{}"))
    _, ok = local_frame.unpack(_frame(3, b'{"prompt":"hi"}'))
    assert sorted(ok) == ["a0", "a1", "a2", "prompt"]


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        local_frame.unpack(data)
    except FrameError:
        pass


def test_sidecar_socket_metadata_infer_reset(bridge: BridgeProcess) -> None:
    client = SidecarClient(str(bridge.action_socket))
    kind, body = client.request(MessageType.METADATA)
    assert kind == MessageType.METADATA_RESPONSE and msgpack_numpy.unpackb(body)["action_horizon"] == 50
    obs = EMBODIMENTS["aloha"].example(np.random.default_rng(1), "fold the towel")
    obs["mode"] = "action_only"
    obs["noise"] = np.random.default_rng(2).standard_normal((50, 32)).astype(np.float32)
    kind, body = client.request(MessageType.INFER, local_frame.pack(obs))
    assert kind == MessageType.INFER_RESPONSE, body
    _, response = local_frame.unpack(body)
    assert response["actions"].shape == (50, 14) and response["policy_timing"]["infer_ms"] > 0
    # The same observation over the WebSocket path gives the same actions.
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    ws = WebsocketClientPolicy(host="127.0.0.1", port=bridge.action_port).infer(obs)
    np.testing.assert_array_equal(ws["actions"], response["actions"])
    assert client.request(MessageType.RESET) == (MessageType.RESET_RESPONSE, b"")


def test_sidecar_socket_errors_keep_the_connection(bridge: BridgeProcess) -> None:
    client = SidecarClient(str(bridge.action_socket))
    kind, body = client.request(MessageType.INFER, WORKED_EXAMPLE)  # not an ALOHA observation
    assert kind == MessageType.ERROR and b"'state': expected value of shape [14], got [2]" in body
    kind, body = client.request(MessageType.INFER, b"\x07unk")
    assert kind == MessageType.ERROR and b"truncated" in body
    assert client.request(MessageType.METADATA)[0] == MessageType.METADATA_RESPONSE


def test_sidecar_socket_refuses_oversized_and_unknown_messages(bridge: BridgeProcess) -> None:
    client = SidecarClient(str(bridge.action_socket))
    client.sock.sendall(struct.pack(">IB", 2**31, MessageType.INFER))
    kind, body = client.read()
    assert kind == MessageType.ERROR and b"length" in body
    with pytest.raises(ConnectionError):
        client.read()
    other = SidecarClient(str(bridge.action_socket))
    kind, body = other.request(MessageType.ERROR)  # a response type sent as a request
    assert kind == MessageType.ERROR and b"unknown message type" in body


def test_many_sidecar_connections_at_once(bridge: BridgeProcess) -> None:
    clients = [SidecarClient(str(bridge.action_socket)) for _ in range(8)]
    for client in clients:
        client.sock.sendall(local_frame.envelope(MessageType.METADATA))
    for client in clients:
        assert client.read()[0] == MessageType.METADATA_RESPONSE
