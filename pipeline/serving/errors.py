"""Status codes shared by the REST and gRPC front ends, as TensorFlow Serving maps them."""
from __future__ import annotations

import enum
import re


class Code(enum.IntEnum):
    """``tensorflow.error.Code`` (= gRPC status codes)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# model_servers/http_server.cc ToHTTPStatusCode. FAILED_PRECONDITION is 400, not 412.
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request failure with the status code and the bare message the real server would return."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def from_exception(exc: BaseException) -> ServingError:
    """Map an exception raised while running a model to a status (TF op errors keep their code)."""
    if isinstance(exc, ServingError):
        return exc
    code = getattr(exc, "error_code", None)  # tf.errors.OpError
    if code is not None:
        try:
            return ServingError(Code(int(code)), _session_message(getattr(exc, "message", str(exc))))
        except ValueError:
            pass
    if isinstance(exc, (TypeError, ValueError)):
        return ServingError(Code.INVALID_ARGUMENT, str(exc))
    return ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")


_EAGER_PREFIX = re.compile(r"^Graph execution error:\s*(?:Detected at node .*?\n(?:.*?\n)*?<stack traces unavailable>\n)?",
                           re.DOTALL)
_EAGER_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]\s*$")


def _session_message(message: str) -> str:
    """An eager op error's message as a Session run reports it (no Python call-site preamble)."""
    return _EAGER_SUFFIX.sub("", _EAGER_PREFIX.sub("", message))
