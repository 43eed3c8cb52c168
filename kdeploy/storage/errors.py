"""Object-store failures as one secret-free line: what was refused, where, and the store's own reason.

The storage library's messages span many lines (a debug dump of the request) and carry the request URL, whose query
string may hold a SAS token. `StorageError` keeps the first useful line, drops query strings, and replaces every
credential value kdeploy knows of (`kdeploy.storage.credentials.secret_values`) with `***`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from kdeploy.common.errors import UsageError

DENIED, NOT_FOUND, EXISTS, UNREACHABLE = "denied", "not_found", "exists", "unreachable"
REFUSED, OTHER = "refused", "other"
ERROR_KINDS: tuple[str, ...] = (DENIED, NOT_FOUND, EXISTS, UNREACHABLE, REFUSED, OTHER)
"""How a store failed (`refused`: a version that does not match its manifest): the `kind` label of
`kdeploy_repository_poll_errors_total`."""

_STATUS = re.compile(r"status code: (\d{3})(?: [A-Za-z ]+)?")
_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<\n]+)")
_JSON_MESSAGE = re.compile(r'"message"\s*:\s*"([^"]+)"')
_URL_QUERY = re.compile(r"(https?://[^\s?\"'<>]+)\?[^\s\"'<>]*")
_MAX_REASON = 240


class StorageError(UsageError):
    """An object store refused or could not be reached; `kind` is one of `ERROR_KINDS`."""

    def __init__(self, message: str, kind: str = OTHER) -> None:
        super().__init__(message)
        self.kind = kind


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` without URL query strings (SAS tokens) and with every secret value replaced by `***`."""
    text = _URL_QUERY.sub(r"\1?***", text)
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def kind_of(exc: BaseException) -> str:
    """Classify a storage library exception (by its class name and HTTP status; no import of the library)."""
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) or name == "NotFoundError":
        return NOT_FOUND
    if name in ("PermissionDeniedError", "UnauthenticatedError"):
        return DENIED
    if name in ("AlreadyExistsError", "PreconditionError"):
        return EXISTS
    status = _STATUS.search(str(exc))
    if status:
        code = int(status.group(1))
        if code in (401, 403):
            return DENIED
        if code == 404:
            return NOT_FOUND
        if code in (409, 412):
            return EXISTS
        if code >= 500 or code == 429:
            return UNREACHABLE
        return OTHER
    text = str(exc)
    if "error sending request" in text or "timed out" in text or "connect" in text.lower() or name == "TimeoutError":
        return UNREACHABLE
    return OTHER


def reason_of(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """The store's reason in a few words: the HTTP status and the store's own error code and message."""
    text = str(exc)
    status = _STATUS.search(text)
    if status:
        reason = status.group(0).removeprefix("status code: ").strip()
        code, message = _XML_CODE.search(text), _XML_MESSAGE.search(text) or _JSON_MESSAGE.search(text)
        if code:
            reason += f" {code.group(1)}"
        if message:
            reason += f": {message.group(1).strip()}"
    elif kind_of(exc) == UNREACHABLE:
        reason = "store unreachable (" + ("timed out" if "timed out" in text else "connection failed") + ")"
    else:
        reason = text.split("\n", 1)[0].strip() or type(exc).__name__
    reason = redact(reason, secrets)
    return reason if len(reason) <= _MAX_REASON else reason[:_MAX_REASON - 3] + "..."
