"""How a store finds its endpoint, credentials and CA: the environment each cloud's own tools read.

The storage library (obstore) already reads the standard variables and default chains itself:
- S3: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
  `AWS_ENDPOINT_URL(_S3)`, web identity (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, as EKS IRSA sets them),
  the ECS container endpoint, then the instance metadata service;
- GCS: `GOOGLE_APPLICATION_CREDENTIALS` (service account or authorized-user JSON), then the metadata server (GKE
  workload identity);
- Azure: `AZURE_STORAGE_ACCOUNT_NAME` + `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_TOKEN`, a service principal
  (`AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`/`AZURE_TENANT_ID`), workload identity (`AZURE_FEDERATED_TOKEN_FILE`, as
  AKS sets it), then managed identity.
This module adds what it does not read: `AZURE_STORAGE_CONNECTION_STRING` (Azure's tools read it first),
`STORAGE_EMULATOR_HOST` (Google's clients' emulator switch), a CA bundle (`AWS_CA_BUNDLE`, or
`KDEPLOY_STORAGE_CA_BUNDLE` for any cloud), plain-HTTP endpoints (S3-compatible stores and emulators), and
timeouts and retries suited to a server that polls.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError
from kdeploy.storage.urls import StorageUrl

CA_BUNDLE_VARIABLES: dict[str, tuple[str, ...]] = {
    "s3": ("KDEPLOY_STORAGE_CA_BUNDLE", "AWS_CA_BUNDLE"),
    "gs": ("KDEPLOY_STORAGE_CA_BUNDLE",),
    "az": ("KDEPLOY_STORAGE_CA_BUNDLE",),
}
SECRET_VARIABLES: tuple[str, ...] = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_TOKEN", "AWS_SSE_CUSTOMER_KEY_BASE64",
    "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_MASTER_KEY", "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_CONNECTION_STRING", "GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_BEARER_TOKEN",
)
"""Variables whose values never appear in a log line or an error (the connection string's parts neither)."""

RETRY = {"max_retries": 3, "retry_timeout": dt.timedelta(seconds=30),
         "backoff": {"init_backoff": dt.timedelta(milliseconds=100), "max_backoff": dt.timedelta(seconds=2),
                     "base": 2}}
"""A few quick retries per request: a poll that fails is retried by the poll loop's own backoff, and a long retry
inside one request would hold the poll (the library's default retries for up to 3 minutes)."""
CLIENT = {"connect_timeout": dt.timedelta(seconds=5), "read_timeout": dt.timedelta(seconds=60),
          "timeout": dt.timedelta(minutes=30)}
"""Fail fast on a store that is down; let a large part download take its time as long as bytes keep coming."""


def parse_connection_string(text: str) -> dict[str, str]:
    """An Azure Storage connection string (`Key=Value;...`) as a dictionary (keys as Azure spells them)."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key:
            fields[key.strip()] = value.strip()
    return fields


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every credential value in the environment (to redact from messages)."""
    env = os.environ if environ is None else environ
    values = [env[name] for name in SECRET_VARIABLES if env.get(name)]
    connection = env.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        fields = parse_connection_string(connection)
        values += [fields[k] for k in ("AccountKey", "SharedAccessSignature") if fields.get(k)]
    return values


def _ca_certificate(url: StorageUrl, env: Mapping[str, str]) -> str | None:
    for name in CA_BUNDLE_VARIABLES[url.cloud]:
        path = env.get(name)
        if path:
            try:
                return Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"{name}={path}: cannot read the CA bundle ({exc.strerror or exc})") from None
    return None


def _azure_config(url: StorageUrl, env: Mapping[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if url.account:
        config["account_name"] = url.account
    connection = env.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        fields = parse_connection_string(connection)
        if fields.get("UseDevelopmentStorage", "").lower() == "true":
            config["use_emulator"] = True
        if fields.get("AccountName") and not url.account:
            config["account_name"] = fields["AccountName"]
        if fields.get("AccountKey"):
            config["account_key"] = fields["AccountKey"]
        if fields.get("SharedAccessSignature"):
            config["sas_key"] = fields["SharedAccessSignature"]
        if fields.get("BlobEndpoint"):
            config["endpoint"] = fields["BlobEndpoint"].rstrip("/")
        elif fields.get("EndpointSuffix") and config.get("account_name"):
            protocol = fields.get("DefaultEndpointsProtocol", "https")
            config["endpoint"] = f"{protocol}://{config['account_name']}.blob.{fields['EndpointSuffix']}"
    return config


def _gcs_config(env: Mapping[str, str]) -> dict[str, Any]:
    emulator = env.get("STORAGE_EMULATOR_HOST")
    if not emulator:
        return {}
    base = emulator if "://" in emulator else f"http://{emulator}"
    # The library's way to talk to an emulator without OAuth: a service account that says so.
    key = {"gcs_base_url": base.rstrip("/"), "disable_oauth": True, "client_email": "", "private_key": "",
           "private_key_id": ""}
    return {"service_account_key": json.dumps(key)}


def _endpoint(url: StorageUrl, config: Mapping[str, Any], env: Mapping[str, str]) -> str:
    if url.cloud == "s3":
        return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT") or ""
    if url.cloud == "az":
        return str(config.get("endpoint") or env.get("AZURE_STORAGE_ENDPOINT") or env.get("AZURE_ENDPOINT") or "")
    return env.get("STORAGE_EMULATOR_HOST", "")


def store_arguments(url: StorageUrl, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for the storage library's store of `url`: config, client options and retries.

    Raises:
        UsageError: when a CA bundle named in the environment cannot be read.
    """
    env = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    if url.cloud == "az":
        config = _azure_config(url, env)
    elif url.cloud == "gs":
        config = _gcs_config(env)
    client: dict[str, Any] = dict(CLIENT)
    endpoint = _endpoint(url, config, env)
    use_emulator = bool(config.get("use_emulator")) or env.get("AZURE_STORAGE_USE_EMULATOR", "").lower() == "true"
    plain = endpoint.startswith("http://") or (url.cloud == "gs" and bool(endpoint) and "://" not in endpoint)
    if plain or (url.cloud == "az" and use_emulator):
        client["allow_http"] = True  # an S3-compatible store or an emulator on plain HTTP, as the user configured
    certificate = _ca_certificate(url, env)
    if certificate:
        client["root_certificate"] = certificate
    return {"config": config, "client_options": client, "retry_config": RETRY}
