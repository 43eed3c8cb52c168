"""The storage interface against real S3 (rclone) and Azure Blob Storage (Azurite) servers on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kdeploy.storage.errors import DENIED, EXISTS, UNREACHABLE, StorageError
from kdeploy.storage.objects import ObjectStorage
from kdeploy.storage.urls import parse_url
from tests.storage_servers import free_port


@pytest.fixture(params=["s3", "azure"])
def store(request, tmp_path):
    """An empty folder in a store (this process has the credentials that reach it), and its URL scheme."""
    request.getfixturevalue("s3_env" if request.param == "s3" else "azure_env")
    scheme = "s3" if request.param == "s3" else "az"
    return ObjectStorage(parse_url(f"{scheme}://models/{request.node.name.replace('[', '-').rstrip(']')}")), scheme


def test_files_go_up_and_come_back_in_parallel_parts(store, tmp_path):
    storage, scheme = store
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024 + 12345))
    small = tmp_path / "small.txt"
    small.write_text("hello")
    seen: list[int] = []
    storage.upload(big, "m/1/variables/big.bin", progress=seen.append)
    storage.upload(small, "m/1/small.txt")
    storage.upload(small, "m/config.pbtxt")
    assert sum(seen) == big.stat().st_size
    assert storage.list_folders() == ["m"] and storage.list_folders("m") == ["1"]
    files = {f.path: f for f in storage.list_files("m/1")}
    assert sorted(files) == ["small.txt", "variables/big.bin"]
    assert files["variables/big.bin"].size == big.stat().st_size and files["small.txt"].etag
    out = tmp_path / "out"
    chunks: list[int] = []
    written = storage.download([(files["variables/big.bin"], out / "big.bin"), (files["small.txt"], out / "s.txt")],
                               "m/1", workers=4, part_bytes=1024 * 1024, progress=chunks.append)
    assert written == big.stat().st_size + 5 and sum(chunks) == written  # progress counts every byte once
    # Azurite answers ranged reads: six 1 MiB parts of the big file and the small one. rclone's S3 server sends
    # the whole object for a ranged read: noticed, and each object is read whole (the small one, maybe already
    # read whole before that was noticed, is not read again).
    assert len(chunks) == (7 if scheme == "az" else 2)
    assert (out / "big.bin").read_bytes() == big.read_bytes() and (out / "s.txt").read_text() == "hello"
    assert storage.read_bytes("m/config.pbtxt") == b"hello"
    assert storage.exists("m/1/small.txt") and not storage.exists("m/1/nothing")
    storage.delete(["m/1/small.txt", "m/1/variables/big.bin"])
    assert storage.list_files("m/1") == []


def test_create_only_writes_refuse_an_existing_object_on_azure(azure_env, tmp_path):
    storage = ObjectStorage(parse_url("az://models/create-only"))
    body = tmp_path / "manifest.json"
    body.write_text("{}")
    storage.upload(body, "1/manifest.json", create_only=True)
    with pytest.raises(StorageError) as caught:
        storage.upload(body, "1/manifest.json", create_only=True)
    assert caught.value.kind == EXISTS
    assert "az://models/create-only/1/manifest.json: writing failed" in str(caught.value)


def test_a_missing_bucket_is_named_in_one_line(s3_env):
    with pytest.raises(StorageError) as caught:
        ObjectStorage(parse_url("s3://no-such-bucket/repo")).list_files()
    assert str(caught.value).startswith("s3://no-such-bucket/repo: listing failed: 404")
    assert "\n" not in str(caught.value)


def test_a_store_that_is_down_is_unreachable_quickly(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(StorageError) as caught:
        ObjectStorage(parse_url("s3://models/repo")).list_files()
    assert caught.value.kind == UNREACHABLE and "store unreachable" in str(caught.value)


@pytest.mark.parametrize("cloud", ["s3", "azure"])
def test_wrong_credentials_are_denied_without_showing_the_secret(cloud, request, tmp_path):
    """In a child process, as a user would meet it: the secret must not appear in what it prints or logs."""
    server = request.getfixturevalue("s3_server" if cloud == "s3" else "azurite")
    secret = "V3J3b25nLXNlY3JldC1kby1ub3Qtc2hvdw=="  # valid base64, as an Azure key must be
    env = {**os.environ, **server.env(secret)}
    url = "s3://models/repo" if cloud == "s3" else "az://models/repo"
    code = ("import logging, sys; logging.basicConfig(level=logging.DEBUG)\n"
            "from kdeploy.storage.objects import ObjectStorage\nfrom kdeploy.storage.urls import parse_url\n"
            f"try:\n    ObjectStorage(parse_url({url!r})).list_files()\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc.kind, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.stdout.startswith(f"StorageError {DENIED} {url}: listing failed: 403"), output
    assert secret not in output
