"""What a robot reads when its request fails: the problem in its own terms, never the bridge's internals.

Robot mistakes (a bad frame, a wrong field, a limit) and Triton's answers carry messages written for robots;
anything else is a bug of ours: logged here with its traceback, and the robot gets a short line that says so.
"""

from __future__ import annotations

import logging

from openpi_triton.protocols.local_frame import FrameError
from openpi_triton.protocols.msgpack_numpy import DecodeError

logger = logging.getLogger("openpi_bridge")


class RobotError(ValueError):
    """The robot's request cannot be served as sent; the message says why, in the robot's terms."""


class ServingError(RuntimeError):
    """The server cannot answer this request correctly (e.g. the model produced non-finite actions)."""


# ObservationError and TritonCallError (triton_gateway) derive from ValueError / RuntimeError with messages
# written for robots; they are matched by name so that this module imports nothing of the gateway.
_EXPLAINED = (RobotError, ServingError, DecodeError, FrameError)
_EXPLAINED_NAMES = {"ObservationError", "TritonCallError"}


def robot_message(exc: BaseException, slot: str) -> str:
    if type(exc).__name__ == "TritonCallError":
        return _triton_message(exc)
    if isinstance(exc, _EXPLAINED) or type(exc).__name__ in _EXPLAINED_NAMES:
        return f"{type(exc).__name__}: {exc}"
    logger.exception("%s slot: unexpected error while serving a request", slot, exc_info=exc)
    return f"internal error in the bridge ({type(exc).__name__}); the bridge log has the details"


def outcome_of(exc: BaseException) -> str:
    """The metrics outcome of a failed request (see :mod:`openpi_bridge.metrics`)."""
    name = type(exc).__name__
    if name == "TritonCallError":
        status = str(getattr(exc, "status", ""))
        if getattr(exc, "invalid_argument", False):
            return "robot_error"
        return "timeout" if "DEADLINE" in status.upper() else "triton_error"
    if isinstance(exc, RobotError | DecodeError | FrameError) or name == "ObservationError":
        return "robot_error"
    if isinstance(exc, ServingError):
        return "server_error"
    return "internal"


def _triton_message(exc: BaseException) -> str:
    """A model's own words: a robot mistake it found reads like one the bridge found; other failures name the
    model and Triton's status in plain words (no gRPC enum names)."""
    message = str(getattr(exc, "triton_message", exc))
    if getattr(exc, "invalid_argument", False):
        return f"ObservationError: {message}"
    status = str(getattr(exc, "status", "")).removeprefix("StatusCode.").replace("_", " ").lower()
    model = getattr(exc, "model", "the model")
    return f"TritonCallError: model '{model}' failed ({status or 'no status'}): {message}"
