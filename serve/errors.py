"""Serving errors and the one table that maps them to gRPC status codes and HTTP statuses.

Code below the adapters raises `ServeError(kind, message)`; the adapters never pick a status themselves.
"""

from __future__ import annotations

import enum
import logging

import grpc

logger = logging.getLogger(__name__)


class ErrorKind(enum.Enum):
    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    DEADLINE = "deadline"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"


GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_INPUT: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.DEADLINE: 504,
    ErrorKind.UNIMPLEMENTED: 501,
    ErrorKind.INTERNAL: 500,
}

HTTP_TO_GRPC_NAME: dict[int, str] = {200: "OK"} | {
    code: GRPC_STATUS[kind].name for kind, code in HTTP_STATUS.items()
}
"""REST answers counted under the gRPC status name of the same error, so one metric covers every protocol."""

INTERNAL_MESSAGE = "internal error while serving the request; the server log has the details"


class ServeError(Exception):
    """An error to report to the client, with the kind that picks its status."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def invalid(message: str) -> ServeError:
    return ServeError(ErrorKind.INVALID_INPUT, message)


def not_found(message: str) -> ServeError:
    return ServeError(ErrorKind.NOT_FOUND, message)


def unavailable(message: str) -> ServeError:
    return ServeError(ErrorKind.UNAVAILABLE, message)
