"""Repository URLs: every spelling users bring from TF Serving, Triton and KServe, and clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.storage.urls import StorageUrl, parse_location, parse_url


@pytest.mark.parametrize(("text", "cloud", "bucket", "prefix", "account"), [
    ("s3://models/prod/repo", "s3", "models", "prod/repo", None),
    ("s3://models", "s3", "models", "", None),
    ("s3://models/repo/", "s3", "models", "repo", None),
    ("gs://bucket/a/b", "gs", "bucket", "a/b", None),
    ("az://container/repo", "az", "container", "repo", None),
    ("as://acct/container/repo", "az", "container", "repo", "acct"),
    ("https://acct.blob.core.windows.net/container/x/y", "az", "container", "x/y", "acct"),
    ("S3://Models/Repo", "s3", "Models", "Repo", None),
])
def test_urls_parse_into_cloud_bucket_prefix_and_account(text, cloud, bucket, prefix, account):
    url = parse_url(text)
    assert (url.cloud, url.bucket, url.prefix, url.account) == (cloud, bucket, prefix, account)


@pytest.mark.parametrize("text", ["hdfs://name/x", "s3://", "as://onlyaccount", "https://example.com/x",
                                  "https://acct.blob.core.windows.net"])
def test_urls_kdeploy_cannot_read_are_one_line_usage_errors(text):
    with pytest.raises(UsageError) as caught:
        parse_url(text)
    assert text.rstrip("/") in str(caught.value) and "\n" not in str(caught.value)


def test_local_paths_stay_paths():
    assert parse_location("models/repo") == Path("models/repo")
    assert parse_location("/abs/repo") == Path("/abs/repo")
    assert parse_location(Path("x")) == Path("x")
    assert isinstance(parse_location("s3://b/p"), StorageUrl)


def test_children_names_and_cache_keys():
    url = parse_url("as://acct/container/repo")
    model = url.child("digits")
    assert str(model) == "as://acct/container/repo/digits" and model.name == "digits"
    assert model.parent == url
    assert model.cache_key() == Path("az/acct/container/repo/digits")
    assert parse_url("s3://b").child("m", "1").prefix == "m/1"
    assert str(parse_url("az://c/p")) == "az://c/p"
