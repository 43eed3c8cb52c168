"""The loadtest image runs `kdeploy loadtest` against the server container: 0 when the SLO holds, 2 for a model
the server does not serve."""

from __future__ import annotations

import pytest

from tests.images.containers import HARDENED, Container, read_only_root, unique_name

pytestmark = pytest.mark.images


def run_loadtest(engine, image: str, *args: str):
    """`kdeploy loadtest ARGS` in a one-off, hardened loadtest container (report under its /tmp)."""
    name = unique_name("loadtest")
    try:
        return engine.run(["run", "--name", name, "--network", "host", *read_only_root(engine), *HARDENED, image,
                           "kdeploy", "loadtest", "--out", "/tmp/report", *args], check=False, timeout=300)
    finally:
        engine.remove_container(name)


def test_loadtest_holds_its_slo(engine, image, server: Container):
    result = run_loadtest(engine, image("loadtest"), "--target", f"127.0.0.1:{server.ports['grpc']}",
                          "--model", "digits", "--repository", "/models", "--users", "4", "--duration", "8s",
                          "--slo", "errors<0.1%,p99<1000ms")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "digits" in result.stdout + result.stderr


def test_loadtest_of_a_model_not_served_exits_2(engine, image, server: Container):
    result = run_loadtest(engine, image("loadtest"), "--target", f"127.0.0.1:{server.ports['grpc']}",
                          "--model", "not-served", "--signature-from-server", "--users", "1", "--duration", "3s")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not-served" in result.stderr, result.stderr
