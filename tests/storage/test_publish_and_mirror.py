"""Publishing versions to a store and mirroring them into a cache, against real S3 (rclone) and Azure (Azurite)."""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import checksum_problems
from kdeploy.storage.errors import UNREACHABLE
from kdeploy.storage.layout import CLAIM_FILE
from kdeploy.storage.mirror import MirroredModel, RepositoryMirror
from kdeploy.storage.objects import ObjectStorage
from kdeploy.storage.publish import publish_version
from kdeploy.storage.urls import parse_url

pytestmark = pytest.mark.slow  # the exported versions come from TensorFlow conversions (shared per session)


class Observer:
    """A mirror observer that keeps what it is told."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.synced_log: list[str] = []
        self.refused_log: list[tuple[str, int, str]] = []

    def poll_error(self, model: str, kind: str) -> None:
        self.errors.append((model, kind))

    def synced(self, model: str, seconds: float, downloaded_bytes: int) -> None:
        self.synced_log.append(model)

    def refused(self, model: str, version: int, reason: str) -> None:
        self.refused_log.append((model, version, reason))


def mirror_of(url: str, cache: Path, settle: float = 3600.0, policy=sorted) -> tuple[RepositoryMirror, Observer]:
    observer = Observer()
    model = MirroredModel("digits", parse_url(url), cache / "digits", policy)
    return RepositoryMirror([model], observer, settle_seconds=settle), observer


def latest(versions: list[int]) -> list[int]:
    return versions[-1:]


def test_publish_writes_the_manifest_last_and_the_mirror_checks_every_file(exported_repo, s3_env, s3_server,
                                                                         tmp_path):
    storage = ObjectStorage(parse_url("s3://models/pub/digits"))
    url = publish_version(exported_repo / "digits" / "1", storage, "1", progress=lambda _: None)
    assert url == "s3://models/pub/digits/1"
    # The store's own log: the last object to land is manifest.json (rclone moves each upload into place).
    landed = re.findall(r"Moved \(server-side\) to: models/pub/digits/1/(\S+)", s3_server.log_path.read_text())
    assert landed[-1] == "manifest.json" and len(landed) > 5
    assert CLAIM_FILE not in {f.path for f in storage.list_files("1")}
    mirror, observer = mirror_of("s3://models/pub/digits", tmp_path)
    assert mirror.poll(raise_errors=True)
    cached = tmp_path / "digits" / "1"
    from kdeploy.contract.manifest import read_manifest

    assert checksum_problems(cached, read_manifest(cached)) == []
    assert (cached / "assets").is_dir()  # the SavedModel's empty folder came back (a marker object in the store)
    assert observer.synced_log == ["digits"] and observer.errors == []


def test_a_corrupted_file_is_refused_with_the_reason_and_not_fetched_again(exported_repo, s3_env, s3_server,
                                                                           tmp_path):
    storage = ObjectStorage(parse_url("s3://models/corrupt/digits"))
    publish_version(exported_repo / "digits" / "1", storage, "1", progress=lambda _: None)
    publish_version(exported_repo / "digits" / "1", storage, "2", progress=lambda _: None)
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx model")
    storage.upload(broken, "2/model.onnx")
    mirror, observer = mirror_of("s3://models/corrupt/digits", tmp_path / "cache", policy=latest)
    mirror.poll()
    assert observer.refused_log and observer.refused_log[0][1] == 2
    assert "onnx: model.onnx does not match the sha256 in manifest.json" in observer.refused_log[0][2]
    assert ("digits", "refused") in observer.errors
    # The policy falls back to the newest good version; the refused one is not in the cache.
    assert sorted(p.name for p in (tmp_path / "cache" / "digits").iterdir() if not p.name.startswith(".")) == ["1"]
    gets = len(s3_server.requests("GET OBJECT"))
    mirror.poll()
    assert len(s3_server.requests("GET OBJECT")) == gets  # same listing: not downloaded again
    storage.upload(exported_repo / "digits" / "1" / "model.onnx", "2/model.onnx")  # repaired
    assert mirror.poll()
    assert (tmp_path / "cache" / "digits" / "2").is_dir() and not (tmp_path / "cache" / "digits" / "1").exists()


def test_an_interrupted_publish_leaves_nothing_behind(exported_repo, s3_env, tmp_path):
    storage = ObjectStorage(parse_url("s3://models/interrupted/digits"))
    cancel = threading.Event()
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if line.startswith("upload [4/"):
            cancel.set()  # SIGTERM arrives while the fourth file uploads

    with pytest.raises(KeyboardInterrupt):
        publish_version(exported_repo / "digits" / "1", storage, "1", progress=progress, cancel=cancel)
    assert storage.list_files() == []


def test_a_version_is_published_once_unless_forced(exported_repo, s3_env, tmp_path):
    storage = ObjectStorage(parse_url("s3://models/force/digits"))
    publish_version(exported_repo / "digits" / "1", storage, "1", progress=lambda _: None)
    with pytest.raises(UsageError, match=r"version s3://models/force/digits/1 already exists; pass --force"):
        publish_version(exported_repo / "digits" / "1", storage, "1", progress=lambda _: None)
    extra = tmp_path / "stale.txt"
    extra.write_text("left from an older export")
    storage.upload(extra, "1/stale.txt")
    publish_version(exported_repo / "digits" / "1", storage, "1", force=True, progress=lambda _: None)
    assert "stale.txt" not in {f.path for f in storage.list_files("1")}
    storage.upload(extra, "2/model.onnx")  # another tool's half upload
    with pytest.raises(UsageError, match=r"holds files but no manifest\.json"):
        publish_version(exported_repo / "digits" / "1", storage, "2", progress=lambda _: None)


def test_unfinished_versions_are_never_mirrored_and_settled_bare_ones_are(exported_repo, s3_env, tmp_path):
    storage = ObjectStorage(parse_url("s3://models/unfinished/digits"))
    version = exported_repo / "digits" / "1"
    publish_version(version, storage, "1", progress=lambda _: None)
    # 2: an export stopped before its manifest, unable to clean up (its claim is still there)
    for name in ("model.onnx", "saved_model.pb"):
        storage.upload(version / name, f"2/{name}")
    claim = tmp_path / "claim"
    claim.write_text("{}")
    storage.upload(claim, f"2/{CLAIM_FILE}")
    # 3: another tool's version without a manifest, just written
    storage.upload(version / "model.onnx", "3/model.onnx")
    mirror, _ = mirror_of("s3://models/unfinished/digits", tmp_path / "a", settle=3600, policy=latest)
    mirror.poll(raise_errors=True)
    assert sorted(p.name for p in (tmp_path / "a" / "digits").iterdir() if p.is_dir()) == ["1"]
    settled, _ = mirror_of("s3://models/unfinished/digits", tmp_path / "b", settle=0, policy=sorted)
    settled.poll(raise_errors=True)
    assert sorted(p.name for p in (tmp_path / "b" / "digits").iterdir() if p.is_dir()) == ["1", "3"]


def test_a_warm_cache_fetches_only_what_changed(exported_repo, s3_env, s3_server, tmp_path):
    storage = ObjectStorage(parse_url("s3://models/warm/digits"))
    publish_version(exported_repo / "digits" / "1", storage, "1", progress=lambda _: None)
    first, _ = mirror_of("s3://models/warm/digits", tmp_path)
    first.poll(raise_errors=True)
    before = s3_server.requests("GET OBJECT")
    restarted, _ = mirror_of("s3://models/warm/digits", tmp_path)  # a new process, the same cache
    assert not restarted.poll(raise_errors=True)
    assert s3_server.requests("GET OBJECT") == before
    changed = tmp_path / "validation.npz"
    changed.write_bytes((exported_repo / "digits" / "1" / "validation.npz").read_bytes() + b"\0")
    storage.upload(changed, "1/validation.npz")
    assert restarted.poll(raise_errors=True)
    fetched = s3_server.requests("GET OBJECT")[len(before):]
    assert len(fetched) == 1 and fetched[0].endswith("warm/digits/1/validation.npz")


def test_polls_survive_a_store_outage_and_back_off(exported_repo, s3_server, s3_env, tmp_path):
    storage = ObjectStorage(parse_url("s3://models/outage/digits"))
    publish_version(exported_repo / "digits" / "1", storage, "1", progress=lambda _: None)
    mirror, observer = mirror_of("s3://models/outage/digits", tmp_path, policy=latest)
    mirror.poll(raise_errors=True)
    s3_server.stop()
    try:
        assert not mirror.poll() and not mirror.poll()
        assert observer.errors == [("digits", UNREACHABLE)] * 2
        assert (tmp_path / "digits" / "1" / "manifest.json").is_file()  # the cache is untouched
        rng = random.Random(0)
        delays = [mirror.next_delay(10.0, rng)]
        mirror.poll()
        delays.append(mirror.next_delay(10.0, rng))
        assert 16 <= delays[0] <= 24 and 32 <= delays[1] <= 48  # 2x, then 4x the interval, +-20%
    finally:
        s3_server.start()
    publish_version(exported_repo / "digits" / "1", storage, "2", progress=lambda _: None)
    assert mirror.poll() and mirror.consecutive_errors == 0
    assert 8 <= mirror.next_delay(10.0) <= 12
    assert (tmp_path / "digits" / "2").is_dir()


def test_azure_publish_and_mirror(exported_repo, azure_env, tmp_path):
    storage = ObjectStorage(parse_url("az://models/repo/digits"))
    publish_version(exported_repo / "digits" / "1", storage, "1", progress=lambda _: None)
    mirror, observer = mirror_of("az://models/repo/digits", tmp_path)
    assert mirror.poll(raise_errors=True) and observer.refused_log == []
    assert (tmp_path / "digits" / "1" / "model.onnx").read_bytes() == (
        exported_repo / "digits" / "1" / "model.onnx").read_bytes()


def test_downloads_left_by_a_killed_process_are_removed_once_stale(tmp_path):
    import os
    import time

    from kdeploy.storage.sync import STALE_SECONDS, remove_stale

    model_dir = tmp_path / "digits"
    (model_dir / "1").mkdir(parents=True)
    old, fresh = model_dir / ".staging-2-abc", model_dir / ".staging-3-def"
    for path in (old, fresh):
        path.mkdir()
        (path / "model.onnx").write_bytes(b"partial")
    long_ago = time.time() - STALE_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    assert remove_stale(model_dir) == 1
    assert not old.exists() and fresh.is_dir() and (model_dir / "1").is_dir()  # another worker's may be running


def test_a_cache_that_cannot_be_written_is_a_counted_poll_error(exported_repo, s3_env, tmp_path):
    storage = ObjectStorage(parse_url("s3://models/badcache/digits"))
    publish_version(exported_repo / "digits" / "1", storage, "1", progress=lambda _: None)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    mirror, observer = mirror_of("s3://models/badcache/digits", blocker)
    assert not mirror.poll()
    assert observer.errors == [("digits", "other")] and mirror.consecutive_errors == 1
    with pytest.raises(UsageError, match=r"s3://models/badcache/digits: caching into .*not-a-folder/digits failed"):
        mirror.poll(raise_errors=True)
