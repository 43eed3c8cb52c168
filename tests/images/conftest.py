"""Fixtures for the image tests: the engine, the built images, and a hardened server container on free ports.

These tests run only under `make test-images` (`pytest -m images`), after `python -m tools.images test` has made
the base image, the model repository and the images. Every container is removed by the fixture that started it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.images.containers import HARDENED, Container, free_port, read_only_root, unique_name, wait_serving
from tools.engine import Engine, EngineError, detect
from tools.images import MODELS, REPORT, image_name


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return detect()
    except EngineError as error:
        pytest.fail(f"{error}; run the image tests with `make test-images`")


@pytest.fixture(scope="session")
def build_report(engine: Engine) -> dict:
    if not REPORT.is_file():
        pytest.fail(f"{REPORT} is missing: `make images` (or `make test-images`) builds the images first")
    return json.loads(REPORT.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def image(engine: Engine, build_report: dict):
    """`image(target)`: the built image's name; fails when it was not built."""
    def named(target: str) -> str:
        name = image_name(target)
        if not engine.image_exists(name):
            pytest.fail(f"{name} was not built: `make images`")
        return name
    return named


def start_server(engine: Engine, image: str, name: str, *extra: str, env: dict[str, str] | None = None) -> Container:
    """The server image run as the Deployment runs it: read-only root, /tmp tmpfs, uid 10001, no capabilities."""
    ports = {"grpc": free_port(), "rest": free_port(), "metrics": free_port()}
    settings = {"KDEPLOY_HOST": "127.0.0.1", "KDEPLOY_GRPC_PORT": str(ports["grpc"]),
                "KDEPLOY_REST_PORT": str(ports["rest"]), "KDEPLOY_METRICS_PORT": str(ports["metrics"]),
                **(env or {})}
    container = Container(engine, name, ports)
    container.start(image, *read_only_root(engine), *HARDENED,
                    *[arg for key, value in settings.items() for arg in ("--env", f"{key}={value}")], *extra)
    return container


@pytest.fixture(scope="module")
def server(engine: Engine, image) -> Iterator[Container]:
    """A hardened server container from the server image, SERVING on free ports of 127.0.0.1."""
    container = start_server(engine, image("server"), unique_name("server"))
    try:
        container.startup_seconds = wait_serving(f"127.0.0.1:{container.ports['grpc']}", container.running,
                                                 container.logs)
        yield container
    finally:
        container.remove()


@pytest.fixture(scope="session")
def models_dir():
    assert (MODELS / "digits" / "1" / "manifest.json").is_file(), f"{MODELS} holds no digits model"
    return MODELS
