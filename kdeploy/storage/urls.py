"""Repository locations: a local folder, or a folder in an object store named by URL (standard library only).

Accepted URLs, the spellings TF Serving, Triton and KServe users already write:
- `s3://BUCKET/PREFIX` (Amazon S3 and S3-compatible stores: the endpoint comes from `AWS_ENDPOINT_URL`);
- `gs://BUCKET/PREFIX` (Google Cloud Storage);
- `az://CONTAINER/PREFIX` (Azure Blob Storage; the account from the environment), Triton's
  `as://ACCOUNT/CONTAINER/PREFIX` and KServe's `https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX`.
Anything without `SCHEME://` is a local path, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kdeploy.common.errors import UsageError

SCHEMES: dict[str, str] = {"s3": "s3", "gs": "gs", "az": "az", "as": "az"}
"""URL scheme -> cloud (`as` is Triton's spelling of Azure, with the account first)."""

_AZURE_HTTPS = re.compile(r"^https://([a-z0-9]+)\.blob\.core\.windows\.net(?:/(.*))?$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


@dataclass(frozen=True)
class StorageUrl:
    """A folder in an object store: cloud, bucket (or Azure container), prefix inside it and, for Azure, the account."""

    cloud: str
    """`s3`, `gs` or `az`."""
    bucket: str
    prefix: str = ""
    """Folder inside the bucket, without leading or trailing slashes ("" for the bucket's root)."""
    account: str | None = None
    """Azure storage account, when the URL names it (`as://` and `https://ACCOUNT.blob...`)."""

    def __str__(self) -> str:
        if self.cloud == "az" and self.account:
            head = f"as://{self.account}/{self.bucket}"
        else:
            head = f"{self.cloud}://{self.bucket}"
        return f"{head}/{self.prefix}" if self.prefix else head

    def child(self, *parts: str) -> StorageUrl:
        """The URL of a folder below this one."""
        joined = "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))
        return StorageUrl(self.cloud, self.bucket, joined, self.account)

    @property
    def name(self) -> str:
        """The last part of the prefix (the model's name for a model folder)."""
        return self.prefix.rsplit("/", 1)[-1] if self.prefix else self.bucket

    @property
    def parent(self) -> StorageUrl:
        head, _, _ = self.prefix.rpartition("/")
        return StorageUrl(self.cloud, self.bucket, head, self.account)

    def cache_key(self) -> Path:
        """A relative folder naming this location uniquely in a local cache (`s3/BUCKET/PREFIX`)."""
        account = [self.account] if self.account else []
        return Path(self.cloud, *account, self.bucket, *[p for p in self.prefix.split("/") if p])


Location = Path | StorageUrl
"""Where a repository (or a model folder) is: a local path or an object-store URL."""


def parse_url(text: str) -> StorageUrl:
    """Parse an object-store URL.

    Raises:
        UsageError: for a scheme kdeploy does not read, or a URL without a bucket.
    """
    text = text.strip()
    azure = _AZURE_HTTPS.match(text)
    if azure:
        container, _, prefix = (azure.group(2) or "").partition("/")
        if not container:
            raise UsageError(f"{text}: expected https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]")
        return StorageUrl("az", container, prefix.strip("/"), azure.group(1))
    match = _SCHEME.match(text)
    if not match or match.group(1).lower() not in SCHEMES:
        raise UsageError(f"{text}: unsupported repository URL; use a local path, s3://BUCKET/PREFIX, "
                         "gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, as://ACCOUNT/CONTAINER/PREFIX or "
                         "https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX")
    scheme, rest = match.group(1).lower(), match.group(2).strip("/")
    parts = [p for p in rest.split("/") if p]
    account = None
    if scheme == "as":
        if len(parts) < 2:
            raise UsageError(f"{text}: expected as://ACCOUNT/CONTAINER[/PREFIX]")
        account, parts = parts[0], parts[1:]
    if not parts:
        raise UsageError(f"{text}: the URL names no bucket")
    return StorageUrl(SCHEMES[scheme], parts[0], "/".join(parts[1:]), account)


def is_url(text: str | Path) -> bool:
    """Whether a repository argument is a URL (`SCHEME://...`) rather than a local path."""
    return isinstance(text, str) and _SCHEME.match(text.strip()) is not None


def parse_location(text: str | Path) -> Location:
    """A local path, or the object-store URL `text` names (argparse's `type=` for every `--repository`).

    Raises:
        UsageError: for a URL kdeploy cannot read.
    """
    if isinstance(text, Path) or not is_url(text):
        return Path(text)
    return parse_url(str(text))
