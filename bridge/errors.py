"""What a robot reads when its request fails: the problem in its own terms, never the bridge's internals.

Robot mistakes (a bad frame, a wrong field, a limit) and Triton's answers carry messages written for robots;
anything else is a bug of ours: logged here with its traceback, and the robot gets a short line that says so.
"""

from __future__ import annotations

import logging
import re

from openpi_triton.protocols.local_frame import FrameError
from openpi_triton.protocols.msgpack_numpy import DecodeError

logger = logging.getLogger("openpi_bridge")


class RobotError(ValueError):
    """The robot's request cannot be served as sent; the message says why, in the robot's terms."""


class ServingError(RuntimeError):
    """The server cannot answer this request correctly (e.g. the model produced non-finite actions)."""


class ObservationError(RobotError):
    """The robot sent something the served model cannot take; the message says what."""


class StaleObservationError(RuntimeError):
    """The observation waited in the model's queue past its deadline (Triton's queue policy, set to a control
    period) and was not computed: an answer that late would steer the robot from where it no longer is."""


# Triton's words for a request its queue policy rejected (``timeout_action: REJECT``), direct or through a BLS.
QUEUE_TIMEOUT_MESSAGE = "Request timeout expired"


# Names of the bridge's shared-memory regions are internal: a robot has no use for them.
_REGION_NAME = re.compile(r"openpi_bridge_\d+_\d+")


class TritonCallError(RuntimeError):
    """Triton answered with an error (or could not be reached)."""

    def __init__(self, model: str, status: str, message: str) -> None:
        message = _REGION_NAME.sub("<shared memory>", message)
        if "UNAVAILABLE" in status and "failed to connect" in message:
            # gRPC's own text ("failed to connect to all addresses; last error: ...") says nothing to a robot.
            message = "Triton is not reachable (restarting or down); retry in a few seconds"
        super().__init__(f"{model}: {status}: {message}" if status else f"{model}: {message}")
        self.model = model
        self.triton_message = message
        self.status = status
        self.invalid_argument = "INVALID_ARG" in status
        self.stale = QUEUE_TIMEOUT_MESSAGE in message
        # The server could not be reached or does not have the model: the request never ran there. (A stale
        # rejection is UNAVAILABLE too, but the server is fine: its queue was longer than the deadline.)
        unreachable = "UNAVAILABLE" in status and not self.stale
        self.not_executed = unreachable or ("NOT_FOUND" in status and "unknown model" in message.lower())


def robot_message(exc: BaseException, slot: str) -> str:
    if isinstance(exc, TritonCallError):
        return _triton_message(exc)
    if isinstance(exc, RobotError | ServingError | StaleObservationError | DecodeError | FrameError):
        return f"{type(exc).__name__}: {exc}"
    logger.exception("%s slot: unexpected error while serving a request", slot, exc_info=exc)
    return f"internal error in the bridge ({type(exc).__name__}); the bridge log has the details"


def outcome_of(exc: BaseException) -> str:
    """The metrics outcome of a failed request (see :mod:`openpi_bridge.metrics`)."""
    if isinstance(exc, TritonCallError):
        if exc.invalid_argument:
            return "robot_error"
        return "timeout" if "DEADLINE" in exc.status.upper() else "triton_error"
    if isinstance(exc, RobotError | DecodeError | FrameError):
        return "robot_error"
    if isinstance(exc, ServingError):
        return "server_error"
    if isinstance(exc, StaleObservationError):
        return "stale"
    return "internal"


def _triton_message(exc: TritonCallError) -> str:
    """A model's own words: a robot mistake it found reads like one the bridge found; other failures name the
    model and Triton's status in plain words (no gRPC enum names)."""
    if exc.invalid_argument:
        return f"ObservationError: {exc.triton_message}"
    status = exc.status.removeprefix("StatusCode.").replace("_", " ").lower()
    return f"TritonCallError: model '{exc.model}' failed ({status or 'no status'}): {exc.triton_message}"
