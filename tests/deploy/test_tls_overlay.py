"""The onnx-tls overlay (components tls and mtls): cert-manager resources valid against cert-manager's own CRD schemas,
the Secret mounted so renewals reach the server, probes that work without TLS, and the rendered settings run for real
(`kdeploy serve` with the ConfigMap's environment and a folder laid out as the kubelet writes a Secret volume)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from tests.certificates import SecretVolume, make_pki
from tests.conftest import start_server
from tests.deploy.conftest import config_map_data, documents, find

SCHEMAS = Path(__file__).resolve().parent / "schemas"
CERT_MANAGER_KINDS = {"Certificate": "cert-manager.io_certificates.v1.json",
                      "Issuer": "cert-manager.io_issuers.v1.json"}


def strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation (kubectl's default): a field the
    schema does not declare is an error, unless the object says it keeps unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    document = json.loads((SCHEMAS / CERT_MANAGER_KINDS[kind]).read_text())
    assert (document["group"], document["version"], document["kind"]) == ("cert-manager.io", "v1", kind)
    schema = strict(document["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is checked by the API server itself
    return jsonschema.Draft4Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)]


@pytest.fixture(scope="module")
def docs(rendered) -> list[dict[str, Any]]:
    return documents(rendered["onnx-tls"])


def _server(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    pod = find(docs, "Deployment", "model-server")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container, config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])


def test_cert_manager_resources_validate_against_its_crd_schemas(docs):
    custom = [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in custom) == [
        ("Certificate", "kdeploy-ca"), ("Certificate", "model-client-tls"), ("Certificate", "model-server-tls"),
        ("Issuer", "kdeploy-ca"), ("Issuer", "kdeploy-selfsigned")]
    for doc in custom:
        assert doc["apiVersion"] == "cert-manager.io/v1"
        assert crd_errors(doc) == [], doc["metadata"]["name"]


@pytest.mark.parametrize(("path", "value", "error"), [
    (("spec", "secretNme"), "x", "Additional properties are not allowed ('secretNme' was unexpected)"),
    (("spec", "privateKey", "algorithm"), "DSA", "'DSA' is not one of"),
    (("spec", "issuerRef"), None, "'issuerRef' is a required property"),
])
def test_crd_validation_can_fail(docs, path, value, error):
    certificate = copy.deepcopy(find(docs, "Certificate", "model-server-tls"))
    parent = certificate
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    assert any(error in message for message in crd_errors(certificate)), crd_errors(certificate)


def test_the_certificates_secret_is_mounted_whole_where_the_flags_point(docs):
    pod, container, settings = _server(docs)
    certificate = find(docs, "Certificate", "model-server-tls")["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == certificate["secretName"]]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    # A subPath mount is a copy the kubelet never updates: a renewal would not reach the server.
    assert "subPath" not in mount and mount["readOnly"] is True
    # The keys cert-manager writes into a TLS Secret; the CA's is ca.crt (the CA Issuer fills it in).
    assert {settings["KDEPLOY_TLS_CERT"], settings["KDEPLOY_TLS_KEY"], settings["KDEPLOY_TLS_CLIENT_CA"]} == {
        f"{mount['mountPath']}/{key}" for key in ("tls.crt", "tls.key", "ca.crt")}
    # Readable by the server's group (fsGroup), by nobody else.
    assert volume["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 10001


def test_probes_use_the_plaintext_health_port_that_nothing_else_reaches(docs):
    _, container, settings = _server(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == int(settings["KDEPLOY_HEALTH_PORT"]) != ports["grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"], probe
    service_ports = {p["port"] for p in find(docs, "Service", "model-server")["spec"]["ports"]}
    assert ports["health"] not in service_ports
    policy = find(docs, "NetworkPolicy", "model-server")["spec"]
    assert ports["health"] not in {p["port"] for rule in policy["ingress"] for p in rule["ports"]}


def test_issuers_chain_from_a_self_signed_root_to_the_server_and_client_certificates(docs):
    issuers = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Issuer"}
    certificates = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    ca = certificates["kdeploy-ca"]
    assert ca["isCA"] is True and "selfSigned" in issuers[ca["issuerRef"]["name"]]
    assert issuers["kdeploy-ca"]["ca"]["secretName"] == ca["secretName"]
    for name, usage in (("model-server-tls", "server auth"), ("model-client-tls", "client auth")):
        spec = certificates[name]
        assert spec["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": "kdeploy-ca"}, name
        assert usage in spec["usages"] and spec["privateKey"]["rotationPolicy"] == "Always", name
    # Clients in the namespace dial the Service by its name: the certificate must carry it.
    assert find(docs, "Service", "model-server")["metadata"]["name"] in certificates["model-server-tls"]["dnsNames"]
    assert find(docs, "Deployment", "model-server")["spec"]["template"]["metadata"]["annotations"][
        "prometheus.io/scheme"] == "https"


@pytest.mark.slow
def test_the_rendered_settings_serve_mutual_tls_and_answer_the_kubelets_probe(docs, tmp_path):
    """`kdeploy serve` with the ConfigMap's environment, the Secret's mount path mapped to a folder written as the
    kubelet writes a Secret volume, answering the plaintext probe and a client of the CA; ports made free ones."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.bare_models import write_linear_onnx

    _, container, settings = _server(docs)
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
    pki = make_pki(tmp_path / "pki")
    secret = SecretVolume(tmp_path / "secret")
    secret.write_server_certificate(pki.ca)
    env = {k: v.replace(mount, str(secret.folder)) for k, v in settings.items()}
    env["KDEPLOY_HOST"] = "127.0.0.1"
    write_linear_onnx(tmp_path / "models" / "linear" / "1" / "model.onnx")
    proc = start_server("--repository", tmp_path / "models", "--health-port", "0",
                        env={**{k: v for k, v in os.environ.items() if not k.startswith("KDEPLOY_")}, **env})
    try:
        assert "tls=mutual" in proc.banner
        health = proc.banner.split("health=")[1].split()[0]
        with grpc.insecure_channel(health) as channel:  # what kubelet's gRPC probe sends: plaintext, service ""
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        credentials = grpc.ssl_channel_credentials(pki.ca.pem, pki.client_key.read_bytes(),
                                                   pki.client_cert.read_bytes())
        with grpc.secure_channel(proc.grpc, credentials,
                                 options=[("grpc.ssl_target_name_override", "kdeploy-server")]) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert proc.stop() == 0
