"""The one table that maps an error's kind to its gRPC status code and HTTP status.

Code below the adapters raises `ServeError(kind, message)` (`kdeploy.wire.errors`); the adapters never pick a
status themselves.
"""

from __future__ import annotations

import grpc

from kdeploy.wire.errors import ErrorKind

GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_INPUT: 400,
    ErrorKind.FAILED_PRECONDITION: 400,  # as TF Serving's REST maps it
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.DEADLINE: 504,
    ErrorKind.UNIMPLEMENTED: 501,
    ErrorKind.INTERNAL: 500,
}

WHEN: dict[ErrorKind, str] = {
    ErrorKind.NOT_FOUND: "unknown model, version or label",
    ErrorKind.INVALID_INPUT: (
        "missing or unexpected input, wrong dtype, rank or dimension, `tensor_content` length not matching the "
        "shape, empty request, unknown output; unknown signature in Classify, Regress, MultiInference or REST; a "
        "value TensorFlow refuses (a `tf.Example` it cannot parse: TensorFlow's message)"),
    ErrorKind.FAILED_PRECONDITION: "unknown signature in a gRPC Predict (as TF Serving answers it)",
    ErrorKind.TOO_LARGE: "message over `--max-message-mb`, or a typed tensor whose expansion would exceed 4 times that",
    ErrorKind.UNAVAILABLE: "model not loaded or failed to load; batching queue full; server draining",
    ErrorKind.DEADLINE: "the request's deadline passed while it was queued (it is dropped, not computed)",
    ErrorKind.UNIMPLEMENTED: "a MultiInference task whose signature method is neither classify nor regress",
    ErrorKind.INTERNAL: "the runtime failed on the request (logged with model and version; the client gets a "
                        "generic message)",
}
"""When each kind is raised: the reference page's error table (docs/reference/errors.md) is written from this."""

HTTP_TO_GRPC_NAME: dict[int, str] = {200: "OK"} | {
    code: GRPC_STATUS[kind].name for kind, code in reversed(HTTP_STATUS.items())
}
"""REST answers counted under the gRPC status name of the same error, so one metric covers every protocol (an HTTP
status several kinds share counts under the first kind's: 400 is INVALID_ARGUMENT)."""

INTERNAL_MESSAGE = "internal error while serving the request; the server log has the details"
