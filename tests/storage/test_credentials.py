"""Endpoints, credentials and CA bundles from the environment each cloud's tools read; secrets kept out of messages."""

from __future__ import annotations

import json

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.storage.credentials import parse_connection_string, secret_values, store_arguments
from kdeploy.storage.errors import DENIED, UNREACHABLE, kind_of, reason_of, redact
from kdeploy.storage.urls import parse_url


def test_azure_connection_string_gives_account_key_and_endpoint():
    env = {"AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=http;AccountName=dev;AccountKey=c2VjcmV0;"
                                              "BlobEndpoint=http://127.0.0.1:10000/dev/;"}
    arguments = store_arguments(parse_url("az://models/repo"), env)
    assert arguments["config"] == {"account_name": "dev", "account_key": "c2VjcmV0",
                                   "endpoint": "http://127.0.0.1:10000/dev"}
    assert arguments["client_options"]["allow_http"] is True


def test_azure_connection_string_with_suffix_and_sas_and_the_urls_account_wins():
    env = {"AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=other;"
                                              "EndpointSuffix=core.windows.net;SharedAccessSignature=sv=1&sig=abc"}
    arguments = store_arguments(parse_url("https://acct.blob.core.windows.net/c/p"), env)
    assert arguments["config"] == {"account_name": "acct", "sas_key": "sv=1&sig=abc",
                                   "endpoint": "https://acct.blob.core.windows.net"}
    assert "allow_http" not in arguments["client_options"]
    assert parse_connection_string("UseDevelopmentStorage=true") == {"UseDevelopmentStorage": "true"}
    assert store_arguments(parse_url("az://c"), {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
                           )["config"] == {"use_emulator": True}


def test_s3_compatible_endpoints_on_plain_http_and_ca_bundles(tmp_path):
    url = parse_url("s3://b/p")
    assert store_arguments(url, {})["client_options"].get("allow_http") is None
    assert store_arguments(url, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})["client_options"]["allow_http"]
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    arguments = store_arguments(url, {"AWS_CA_BUNDLE": str(bundle)})
    assert arguments["client_options"]["root_certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert store_arguments(parse_url("gs://b"), {"KDEPLOY_STORAGE_CA_BUNDLE": str(bundle)}
                           )["client_options"]["root_certificate"]
    with pytest.raises(UsageError, match=r"AWS_CA_BUNDLE=.*missing\.pem: cannot read the CA bundle"):
        store_arguments(url, {"AWS_CA_BUNDLE": str(tmp_path / "missing.pem")})


def test_gcs_emulator_host_turns_oauth_off():
    arguments = store_arguments(parse_url("gs://b/p"), {"STORAGE_EMULATOR_HOST": "127.0.0.1:4443"})
    key = json.loads(arguments["config"]["service_account_key"])
    assert key["gcs_base_url"] == "http://127.0.0.1:4443" and key["disable_oauth"] is True
    assert arguments["client_options"]["allow_http"] is True
    assert store_arguments(parse_url("gs://b/p"), {})["config"] == {}


def test_secrets_are_collected_and_redacted():
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_ACCESS_KEY_ID": "AKIAPUBLIC",
           "AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=a2V5a2V5;SharedAccessSignature=sig=zzz"}
    secrets = secret_values(env)
    assert {"s3cr3t-value", "a2V5a2V5", "sig=zzz"} <= set(secrets) and "AKIAPUBLIC" not in secrets
    text = "GET https://a.blob.core.windows.net/c/x?sv=2020&sig=zzzz failed with s3cr3t-value and a2V5a2V5"
    cleaned = redact(text, secrets)
    assert "zzzz" not in cleaned and "s3cr3t-value" not in cleaned and "a2V5a2V5" not in cleaned
    assert "https://a.blob.core.windows.net/c/x?***" in cleaned


class FakeLibraryError(Exception):
    """Stands in for obstore's exception classes, which are matched by name."""


def test_store_messages_become_one_line_reasons():
    text = ("Generic S3 error: Error performing GET http://127.0.0.1:1/b?list-type=2&prefix=p in 1ms - Server "
            "returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>InvalidAccessKeyId"
            "</Code><Message>The key is wrong</Message></Error>\n\nDebug source:\nGeneric {...}")
    exc = FakeLibraryError(text)
    assert kind_of(exc) == DENIED
    assert reason_of(exc) == "403 Forbidden InvalidAccessKeyId: The key is wrong"
    down = FakeLibraryError("Generic S3 error: Error performing GET http://x in 1ms, after 3 retries - HTTP error: "
                            "error sending request\n\nDebug source: ...")
    assert kind_of(down) == UNREACHABLE and reason_of(down) == "store unreachable (connection failed)"
    assert kind_of(FileNotFoundError("x")) == "not_found"
