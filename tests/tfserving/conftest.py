"""Fixtures for TF Serving's tests ported to `kdeploy serve`: one server per set of arguments for the session."""

from __future__ import annotations

import pytest

from tests.tfserving.harness import Servers


@pytest.fixture(scope="session")
def servers():
    running = Servers()
    yield running
    running.close()
