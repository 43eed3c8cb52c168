"""One small interface to a folder in an object store, over obstore (S3, GCS and Azure in one library).

The shape is Triton's filesystem interface: list folders, list files, read a small file, bring files to a local
folder, write, delete. Paths are relative to the URL's folder and use `/`. Every failure becomes a `StorageError`
naming the URL, what was refused and the store's reason, with no secret in it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdeploy.storage.credentials import secret_values, store_arguments
from kdeploy.storage.errors import StorageError, kind_of, reason_of
from kdeploy.storage.urls import StorageUrl

logger = logging.getLogger(__name__)

PART_BYTES = 8 * 1024 * 1024
"""Files larger than this download in parts of this size, several at a time (ranged GETs)."""
DOWNLOAD_WORKERS = 8
"""Parts (of one or several files) downloading at once."""
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
"""Large uploads go in multipart chunks of this size (progress is reported per chunk)."""
_STREAM_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """One object (file) as a listing shows it."""

    path: str
    """Relative to the folder listed, `/`-separated."""
    size: int
    etag: str
    modified: float
    """Last modification, seconds since the epoch (the store's clock)."""


class ObjectStorage:
    """A folder (`StorageUrl`) in S3, GCS or Azure Blob Storage.

    Args:
        url: the folder; every path below is relative to it.
        store: an obstore store for that folder (tests pass their own); default: one built from the URL and the
            environment (`kdeploy.storage.credentials`).
    """

    def __init__(self, url: StorageUrl, store: Any = None) -> None:
        self.url = url
        self._secrets = secret_values()
        self._store = store if store is not None else self._open()
        self._ranges = True
        """Whether the store answers ranged reads with the range (some S3-compatible servers send it all)."""

    def _open(self) -> Any:
        from obstore.store import AzureStore, GCSStore, S3Store

        arguments = store_arguments(self.url)
        config = arguments.pop("config")
        prefix = self.url.prefix or None
        with self._refused("opening the store", ""):
            if self.url.cloud == "s3":
                return S3Store(self.url.bucket, prefix=prefix, config=config or None, **arguments)
            if self.url.cloud == "gs":
                return GCSStore(self.url.bucket, prefix=prefix, config=config or None, **arguments)
            return AzureStore(self.url.bucket, prefix=prefix, config=config or None, **arguments)

    def where(self, path: str = "") -> str:
        """The URL of a path below the folder."""
        return str(self.url.child(path)) if path else str(self.url)

    @contextmanager
    def _refused(self, action: str, path: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:  # the library raises its own classes, FileNotFoundError and ValueError
            raise StorageError(f"{self.where(path)}: {action} failed: {reason_of(exc, self._secrets)}",
                               kind_of(exc)) from None

    def list_folders(self, path: str = "") -> list[str]:
        """Names of the folders directly below `path` (one LIST request per 1,000 names)."""
        import obstore

        prefix = f"{path.strip('/')}/" if path.strip("/") else None
        with self._refused("listing", path):
            listing = obstore.list_with_delimiter(self._store, prefix)
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listing["common_prefixes"])

    def list_files(self, path: str = "") -> list[ObjectInfo]:
        """Every object below `path`, recursively, relative to it (one LIST request per 1,000 objects)."""
        import obstore

        base = path.strip("/")
        prefix = f"{base}/" if base else None
        found = []
        with self._refused("listing", path):
            for batch in obstore.list(self._store, prefix, chunk_size=1000):
                for meta in batch:
                    relative = meta["path"][len(prefix):] if prefix else meta["path"]
                    modified = meta["last_modified"]
                    found.append(ObjectInfo(relative, int(meta["size"]), str(meta.get("e_tag") or ""),
                                            modified.timestamp() if isinstance(modified, dt.datetime) else 0.0))
        return sorted(found, key=lambda o: o.path)

    def read_bytes(self, path: str) -> bytes:
        """A small object's bytes (a manifest)."""
        import obstore

        with self._refused("reading", path):
            return bytes(obstore.get(self._store, path).bytes())

    def exists(self, path: str) -> bool:
        import obstore

        try:
            with self._refused("checking", path):
                obstore.head(self._store, path)
        except StorageError as exc:
            if exc.kind == "not_found":
                return False
            raise
        return True

    def download(self, files: Sequence[tuple[ObjectInfo, Path]], path: str = "",
                 workers: int = DOWNLOAD_WORKERS, part_bytes: int = PART_BYTES,
                 progress: Callable[[int], None] | None = None) -> int:
        """Stream objects below `path` into local files, large ones in parallel ranged parts.

        Memory stays flat whatever the size: each part is written as it arrives (`os.pwrite` at its offset). A
        store that ignores ranges (some S3-compatible servers answer a ranged GET with the whole object) is noticed
        on the first large file and then read one whole object per worker.

        Args:
            files: (object, local file) pairs; the object's path is relative to `path`.
            path: the folder the objects' paths are relative to.
            workers: parts downloading at once.
            part_bytes: size of a part.
            progress: called with the bytes of each part written.

        Returns:
            Bytes written.

        Raises:
            StorageError: when an object cannot be read or came shorter than listed.
        """
        handles: list[int] = []
        try:
            targets = []
            for info, target in files:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                handles.append(fd)
                os.ftruncate(fd, info.size)
                name = f"{path.strip('/')}/{info.path}" if path.strip("/") else info.path
                targets.append((name, fd, info.size))
            whole: set[str] = set()  # objects already written whole (each counted once, in bytes and progress)
            try:
                return self._download_parts(targets, workers, part_bytes if self._ranges else 0, progress, whole)
            except _RangesIgnoredError:
                self._ranges = False
                logger.info("%s ignores ranged reads: downloading whole objects in parallel", self.where())
                rest = [target for target in targets if target[0] not in whole]
                done = sum(size for name, _, size in targets if name in whole)
                return done + self._download_parts(rest, workers, 0, progress, whole)
        finally:
            for fd in handles:
                os.close(fd)

    def _download_parts(self, targets: list[tuple[str, int, int]], workers: int, part_bytes: int,
                        progress: Callable[[int], None] | None, whole: set[str]) -> int:
        """Download `targets`' parts in a pool; adds each object read whole to `whole` once it is written."""
        parts = []  # (object path, fd, start, end, the whole object); part_bytes 0: whole objects only
        for name, fd, size in targets:
            if part_bytes <= 0 or size <= part_bytes:
                parts.append((name, fd, 0, size, True))
            else:
                parts += [(name, fd, start, min(start + part_bytes, size), False)
                          for start in range(0, size, part_bytes)]
        parts.sort(key=lambda part: part[3] - part[2], reverse=True)  # largest first: the pool ends together

        def fetch(part: tuple[str, int, int, int, bool]) -> int:
            written = self._fetch_part(*part)
            if part[4]:
                whole.add(part[0])
            if progress is not None:
                progress(written)
            return written

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="download") as pool:
            return sum(pool.map(fetch, parts))  # re-raises the first failure

    def _fetch_part(self, name: str, fd: int, start: int, end: int, whole: bool) -> int:
        import obstore

        if end == start:
            return 0
        offset = start
        try:
            with self._refused("downloading", name):
                result = obstore.get(self._store, name, options={} if whole else {"range": (start, end)})
                for chunk in result.stream(min_chunk_size=_STREAM_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        done = os.pwrite(fd, view, offset)
                        offset += done
                        view = view[done:]
        except StorageError as exc:
            if not whole and "non-partial response" in str(exc):
                raise _RangesIgnoredError(str(exc)) from None
            raise
        if offset != end:
            raise StorageError(f"{self.where(name)}: downloading failed: got {offset - start} bytes of "
                               f"{end - start} (the object changed or the connection broke)", "other")
        return end - start

    def upload(self, local: Path, path: str, *, create_only: bool = False,
               progress: Callable[[int], None] | None = None) -> None:
        """Write a local file to `path` (atomically: readers see the old object or the whole new one).

        Args:
            local: the file.
            path: where, relative to the folder.
            create_only: fail with kind `exists` when the object is there already (a conditional write; stores
                that ignore the condition overwrite).
            progress: called with the bytes of each chunk sent.
        """
        import obstore

        size = local.stat().st_size
        with self._refused("writing", path):
            if create_only or size <= UPLOAD_CHUNK_BYTES:
                obstore.put(self._store, path, local.read_bytes() if create_only else local,
                            mode="create" if create_only else "overwrite", use_multipart=False)
                if progress is not None:
                    progress(size)
                return
            obstore.put(self._store, path, _chunks(local, progress), chunk_size=UPLOAD_CHUNK_BYTES,
                        max_concurrency=4)

    def delete(self, paths: Sequence[str]) -> None:
        """Remove objects (missing ones are not an error)."""
        import obstore

        if not paths:
            return
        with self._refused("deleting", paths[0]):
            obstore.delete(self._store, list(paths))


class _RangesIgnoredError(StorageError):
    """The store answered a ranged read with the whole object."""


def _chunks(local: Path, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    with open(local, "rb") as handle:
        for block in iter(lambda: handle.read(UPLOAD_CHUNK_BYTES), b""):
            yield block
            if progress is not None:
                progress(len(block))
