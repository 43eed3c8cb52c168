"""Exceptions that the command line maps to exit codes.

Library code raises these; only `kdeploy.cli` turns them into exit statuses, so every stage can be used from
Python with ordinary exceptions.
"""


class KdeployError(Exception):
    """Base class of the errors kdeploy expects and reports without a traceback."""

    exit_code = 1


class UsageError(KdeployError):
    """Bad usage or bad input (missing file, unknown recipe, not a Keras model): exit status 2."""

    exit_code = 2


class CheckFailedError(KdeployError):
    """A check ran and failed (parity out of tolerance, a format that did not convert): exit status 1."""

    exit_code = 1
