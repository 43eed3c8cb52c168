"""Errors a server reports to its client, by kind (standard library only).

The wire codecs, the model manager and the inference service raise `ServeError(kind, message)`; only the serving
stage maps a kind to a gRPC status or an HTTP status (`kdeploy.serve.errors`), in one table.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID_INPUT = "invalid_input"
    FAILED_PRECONDITION = "failed_precondition"
    """The request is well-formed but asks for what the model does not have in that form (TF Serving's answer to a
    Predict naming a signature the model lacks)."""
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    DEADLINE = "deadline"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"


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
