"""The bridge's CPU work: small frames decode on the event loop, large or many-valued ones on its threads, and
either way the result (or the error) is the one the configured frame limits give."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
from openpi_client import msgpack_numpy as client_msgpack

from openpi_bridge import offload
from openpi_triton.limits import DEFAULT_FRAME_LIMITS, FrameLimits
from openpi_triton.protocols import local_frame, msgpack_numpy


def _aloha_like() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    images = {f"cam_{i}": rng.integers(0, 256, (3, 224, 224), dtype=np.uint8) for i in range(4)}
    return {"images": images, "state": rng.standard_normal(14), "prompt": "fold the towel"}


class Recorder:
    """A decoder that notes the thread and limits of each call, then decodes for real."""

    def __init__(self, decode: Any) -> None:
        self.decode = decode
        self.calls: list[tuple[bool, FrameLimits]] = []

    def __call__(self, data: bytes | memoryview, limits: FrameLimits) -> Any:
        self.calls.append((threading.current_thread() is threading.main_thread(), limits))
        return self.decode(data, limits)


def _decode(recorder: Recorder, data: bytes | memoryview, limits: FrameLimits = DEFAULT_FRAME_LIMITS) -> Any:
    return asyncio.run(offload.decode(recorder, data, limits))


def test_an_observation_frame_decodes_on_the_loop() -> None:
    frame = client_msgpack.packb(_aloha_like())
    recorder = Recorder(msgpack_numpy.unpackb)
    obs = _decode(recorder, frame)
    np.testing.assert_array_equal(obs["images"]["cam_2"], _aloha_like()["images"]["cam_2"])
    assert [on_loop for on_loop, _ in recorder.calls] == [True]
    assert recorder.calls[0][1].max_values == offload.INLINE_MAX_VALUES


def test_a_frame_of_many_values_decodes_on_a_thread_within_the_configured_limits() -> None:
    frame = client_msgpack.packb({"values": list(range(offload.INLINE_MAX_VALUES * 2))})
    recorder = Recorder(msgpack_numpy.unpackb)
    assert _decode(recorder, frame)["values"][-1] == offload.INLINE_MAX_VALUES * 2 - 1
    assert [on_loop for on_loop, _ in recorder.calls] == [True, False]  # refused on the loop after a few steps
    assert recorder.calls[1][1] == DEFAULT_FRAME_LIMITS


def test_a_large_frame_goes_straight_to_a_thread() -> None:
    frame = client_msgpack.packb({"image": np.zeros(offload.INLINE_MAX_BYTES + 1, np.uint8)})
    recorder = Recorder(msgpack_numpy.unpackb)
    assert _decode(recorder, frame)["image"].size == offload.INLINE_MAX_BYTES + 1
    assert [on_loop for on_loop, _ in recorder.calls] == [False]


@pytest.mark.parametrize(
    "frame",
    [b"\xc1", client_msgpack.packb({"values": list(range(100))}) + b"\x00", client_msgpack.packb([[[[1]]]] * 40)],
    ids=["not-msgpack", "trailing-bytes", "over-the-configured-limits"],
)
def test_a_bad_frame_gets_the_error_of_the_configured_limits(frame: bytes) -> None:
    limits = FrameLimits(max_values=64, max_depth=3)
    with pytest.raises(msgpack_numpy.DecodeError) as direct:
        msgpack_numpy.unpackb(frame, limits)
    with pytest.raises(msgpack_numpy.DecodeError) as via_offload:
        _decode(Recorder(msgpack_numpy.unpackb), frame, limits)
    assert str(via_offload.value) == str(direct.value)


def test_local_frames_follow_the_same_rule() -> None:
    recorder = Recorder(local_frame.unpack)
    _, obs = _decode(recorder, memoryview(local_frame.pack(_aloha_like())))
    assert obs["prompt"] == "fold the towel"
    long_prompt = {**_aloha_like(), "prompt": "x" * (offload.INLINE_MAX_JSON_BYTES + 1)}
    _, obs = _decode(recorder, local_frame.pack(long_prompt))
    assert len(obs["prompt"]) == offload.INLINE_MAX_JSON_BYTES + 1
    assert [on_loop for on_loop, _ in recorder.calls] == [True, True, False]


def test_run_sized_keeps_large_copies_off_the_loop() -> None:
    def where() -> bool:
        return threading.current_thread() is threading.main_thread()

    assert asyncio.run(offload.run_sized(offload.INLINE_MAX_BYTES, where)) is True
    assert asyncio.run(offload.run_sized(offload.INLINE_MAX_BYTES + 1, where)) is False
