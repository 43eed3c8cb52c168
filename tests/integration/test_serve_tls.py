"""TLS and mutual TLS end to end: `kdeploy serve` with certificates made here, the official clients over TLS, refusals,
TF Serving's ssl_config file, the health-only port, renewals under load, and the TLS flags of loadtest and verify."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.bare_models import linear, write_linear_onnx
from tests.certificates import SERVER_NAME, Pki, SecretVolume, der, make_pki
from tests.conftest import start_server
from tests.integration.test_serve_lifecycle import metric

ROWS = np.array([[1, 2, 3], [0, -1, 0.5]], dtype=np.float32)
NAME_OVERRIDE = (("grpc.ssl_target_name_override", SERVER_NAME),)
REFUSED = (urllib.error.URLError, ssl.SSLError, ConnectionError)
"""How an HTTPS client sees a refused handshake: in the handshake (TLS 1.2) or at its first read (TLS 1.3)."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def linear_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("linear-repo")
    write_linear_onnx(repo / "linear" / "1" / "model.onnx")
    return repo


def mtls_flags(secret: SecretVolume) -> list[object]:
    return ["--tls-cert", secret.cert, "--tls-key", secret.key, "--tls-client-ca", secret.ca]


@pytest.fixture(scope="module")
def server(pki, linear_repo):
    proc = start_server("--repository", linear_repo, *mtls_flags(pki.secret), "--health-port", "0")
    yield proc
    assert proc.stop() == 0


def grpc_credentials(pki: Pki, client: str | None = "ours") -> grpc.ChannelCredentials:
    """Trusting the test CA; presenting our client certificate, a foreign CA's, or none."""
    pair = {"ours": (pki.client_key, pki.client_cert), "foreign": (pki.foreign_key, pki.foreign_cert)}.get(client)
    return grpc.ssl_channel_credentials(pki.ca.pem, *(p.read_bytes() for p in pair) if pair else ())


def https_context(pki: Pki, client: str | None = "ours") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    pair = {"ours": (pki.client_cert, pki.client_key), "foreign": (pki.foreign_cert, pki.foreign_key)}.get(client)
    if pair:
        context.load_cert_chain(*map(str, pair))
    return context


def https(url: str, context: ssl.SSLContext, body: object | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    with opener.open(request, timeout=10) as response:
        return response.status, response.read()


def tfs_predict(address: str, credentials: grpc.ChannelCredentials) -> np.ndarray:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(ROWS))
    with grpc.secure_channel(address, credentials, options=NAME_OVERRIDE) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    return tf.make_ndarray(response.outputs["scores"])


def test_official_tf_serving_client_predicts_over_mutual_tls(server, pki):
    assert "tls=mutual" in server.banner
    np.testing.assert_allclose(tfs_predict(server.grpc, grpc_credentials(pki)), linear(ROWS), rtol=1e-6)


def test_tritonclient_infers_over_ssl(server, pki):
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(server.grpc, ssl=True, root_certificates=str(pki.ca_file),
                                          private_key=str(pki.client_key), certificate_chain=str(pki.client_cert))
    try:
        assert client.is_server_live() and client.is_model_ready("linear")
        inputs = [triton.InferInput("features", list(ROWS.shape), "FP32")]
        inputs[0].set_data_from_numpy(ROWS)
        result = client.infer("linear", inputs)
        np.testing.assert_allclose(result.as_numpy("scores"), linear(ROWS), rtol=1e-6)
    finally:
        client.close()


def test_rest_and_metrics_over_https_with_the_ca(server, pki):
    context = https_context(pki)
    status, body = https(f"https://{server.rest}/v1/models/linear:predict", context, {"instances": ROWS.tolist()})
    assert status == 200
    np.testing.assert_allclose(json.loads(body)["predictions"], linear(ROWS), rtol=1e-6)
    status, text = https(f"https://{server.metrics}/metrics", context)
    assert status == 200
    assert metric(text.decode(), "kdeploy_requests_total", model="linear", protocol="tfserving-rest", status="OK") >= 1
    # kdeploy's clients check the name they are told (--tls-server-name), not the address dialled.
    from kdeploy.wire.tls import ClientTls

    for name, verified in ((SERVER_NAME, True), ("elsewhere.example", False)):
        context = ClientTls(pki.ca_file, pki.client_cert, pki.client_key, server_name=name).ssl_context()
        try:
            assert https(f"https://{server.rest}/v1/models/linear", context)[0] == 200 and verified
        except urllib.error.URLError as error:
            assert not verified and isinstance(error.reason, ssl.SSLCertVerificationError), error


@pytest.mark.parametrize("client", ["no certificate", "foreign CA", "plaintext"])
@pytest.mark.parametrize("port", ["grpc", "rest", "metrics"])
def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(server, pki, port, client):
    address = getattr(server, port)
    if port == "grpc":
        with pytest.raises(grpc.RpcError) as error:
            if client == "plaintext":
                with grpc.insecure_channel(address) as channel:
                    _health(channel)
            else:
                credentials = grpc_credentials(pki, None if client == "no certificate" else "foreign")
                with grpc.secure_channel(address, credentials, options=NAME_OVERRIDE) as channel:
                    _health(channel)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    else:
        path = "/v1/models/linear" if port == "rest" else "/metrics"
        with pytest.raises(REFUSED):
            if client == "plaintext":
                urllib.request.urlopen(f"http://{address}{path}", timeout=10).read()
            else:
                https(f"https://{address}{path}", https_context(pki, None if client == "no certificate" else "foreign"))
    # Refusals cost the server nothing: a good client is answered right after.
    np.testing.assert_allclose(tfs_predict(server.grpc, grpc_credentials(pki)), linear(ROWS), rtol=1e-6)


def _health(channel: grpc.Channel) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_the_health_port_answers_health_alone_in_plaintext(server):
    from grpc_health.v1 import health_pb2
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    health = server.banner.split("health=")[1].split()[0]
    with grpc.insecure_channel(health) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_tf_serving_ssl_config_file_is_accepted(pki, linear_repo, tmp_path):
    # TF Serving's --ssl_config_file: the PEM text inside an SSLConfig text proto.
    quoted = {name: json.dumps(path.read_text()) for name, path in
              (("key", pki.secret.key), ("cert", pki.secret.cert), ("ca", pki.ca_file))}
    (tmp_path / "ssl.config").write_text(f"server_key: {quoted['key']}\nserver_cert: {quoted['cert']}\n"
                                         f"custom_ca: {quoted['ca']}\nclient_verify: true\n")
    proc = start_server("--repository", linear_repo, "--ssl-config-file", tmp_path / "ssl.config", "--no-metrics")
    try:
        assert "tls=mutual" in proc.banner
        np.testing.assert_allclose(tfs_predict(proc.grpc, grpc_credentials(pki)), linear(ROWS), rtol=1e-6)
        with pytest.raises(grpc.RpcError):
            tfs_predict(proc.grpc, grpc_credentials(pki, None))
        status, _ = https(f"https://{proc.rest}/v1/models/linear", https_context(pki))  # REST too, unlike TF Serving
        assert status == 200
    finally:
        assert proc.stop() == 0


def loadtest_command(target: str, protocol: str, out: Path, pki: Pki, duration: str) -> list[str]:
    return [sys.executable, "-m", "kdeploy", "loadtest", "--target", target, "--protocol", protocol,
            "--model", "linear", "--signature-from-server", "--users", "2", "--duration", duration, "--out", str(out),
            "--tls-ca", str(pki.ca_file), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
            "--tls-server-name", SERVER_NAME]


def test_loadtest_passes_over_mutual_tls(server, pki, tmp_path):
    # kserve-grpc and tfserving-rest run over mutual TLS in the renewal test below.
    result = subprocess.run(loadtest_command(server.grpc, "tfserving-grpc", tmp_path, pki, "2s"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"] > 50 and summary["failures"] == 0, summary["failures_by_error"]


@pytest.mark.slow
def test_verify_endpoint_passes_over_mutual_tls(pki, exported_repo, tmp_path, kdeploy):
    proc = start_server("--repository", exported_repo, "--model", "digits", *mtls_flags(pki.secret), "--no-metrics")
    try:
        for protocol in ("tfserving-grpc", "kserve-grpc", "tfserving-rest"):
            address = proc.rest if protocol == "tfserving-rest" else proc.grpc
            result = kdeploy("verify", exported_repo / "digits", "--endpoint", address, "--protocol", protocol,
                             "--report", tmp_path / protocol, "--tls-ca", pki.ca_file, "--tls-cert", pki.client_cert,
                             "--tls-key", pki.client_key, "--tls-server-name", SERVER_NAME)
            assert result.code == 0, result.out + result.err
            report = json.loads((tmp_path / protocol / "parity.json").read_text())
            assert report["passed"] and [f["format"] for f in report["formats"]] == [protocol]
        # Without a client certificate the server refuses: one line, exit 2.
        refused = kdeploy("verify", exported_repo / "digits", "--endpoint", proc.grpc, "--tls-ca", pki.ca_file,
                          "--tls-server-name", SERVER_NAME, "--report", tmp_path / "refused")
        assert refused.code == 2 and "cannot reach a gRPC server" in refused.err, refused.err
    finally:
        assert proc.stop() == 0


@pytest.mark.slow
def test_workers_serve_tls_on_every_port(pki, linear_repo):
    import tritonclient.grpc as triton

    proc = start_server("--repository", linear_repo, *mtls_flags(pki.secret), "--workers", "2", "--health-port", "0")
    try:
        assert "workers=2" in proc.banner and "tls=mutual" in proc.banner
        for _ in range(6):  # new connections, spread over the workers by the kernel
            client = triton.InferenceServerClient(proc.grpc, ssl=True, root_certificates=str(pki.ca_file),
                                                  private_key=str(pki.client_key),
                                                  certificate_chain=str(pki.client_cert))
            assert client.is_model_ready("linear")
            client.close()
        status, _ = https(f"https://{proc.rest}/v1/models/linear", https_context(pki))
        assert status == 200
        status, text = https(f"https://{proc.metrics}/metrics", https_context(pki))  # the parent's summed metrics
        assert status == 200 and b'kdeploy_model_version_state{model="linear",version="1"} 30.0' in text
        with pytest.raises(REFUSED):
            https(f"https://{proc.metrics}/metrics", https_context(pki, None))
        with grpc.insecure_channel(proc.banner.split("health=")[1].split()[0]) as channel:
            assert _health(channel) == 1  # SERVING
    finally:
        assert proc.stop() == 0


def peer_certificate(address: str, pki: Pki) -> bytes:
    """The certificate a new TLS connection to `address` is shown (DER), presenting our client certificate."""
    host, port = address.rsplit(":", 1)
    context = https_context(pki)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        return tls.getpeercert(binary_form=True)


@pytest.mark.slow
def test_a_renewed_certificate_is_served_to_the_next_connection_while_a_load_test_sees_no_failure(
        pki, linear_repo, tmp_path):
    secret = SecretVolume(tmp_path / "secret")
    first = secret.write_server_certificate(pki.ca)
    proc = start_server("--repository", linear_repo, *mtls_flags(secret))
    runs = {}
    try:
        addresses = {"grpc": proc.grpc, "rest": proc.rest, "metrics": proc.metrics}
        assert {port: peer_certificate(a, pki) for port, a in addresses.items()} == dict.fromkeys(addresses, der(first))
        # Two long load tests (gRPC and REST): their connections are open across the renewal.
        for protocol, target in (("kserve-grpc", proc.grpc), ("tfserving-rest", proc.rest)):
            runs[protocol] = subprocess.Popen(loadtest_command(target, protocol, tmp_path / protocol, pki, "10s"),
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(5)  # Locust started and sending
        renewed = secret.write_server_certificate(pki.ca)  # as the kubelet does: `..data` swapped in one rename
        deadline = time.monotonic() + 10
        seen = {}
        while time.monotonic() < deadline:
            seen = {port: peer_certificate(a, pki) for port, a in addresses.items()}
            if set(seen.values()) == {der(renewed)}:
                break
            time.sleep(0.2)
        assert seen == dict.fromkeys(addresses, der(renewed)), "a new connection still sees the old certificate"
        for protocol, run in runs.items():
            output = run.communicate(timeout=120)[0]
            assert run.returncode == 0, output
            summary = json.loads((tmp_path / protocol / "summary.json").read_text())
            assert summary["requests"] > 100, (protocol, summary["requests"])
            assert summary["failures"] == 0, (protocol, summary["failures_by_error"])
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
        assert proc.stop() == 0
    assert "TLS certificate renewed" in proc.log()


@pytest.mark.parametrize(("argv", "message"), [
    (["--tls-cert", "{pki}/missing.crt", "--tls-key", "{secret}/tls.key"],
     "--tls-cert {pki}/missing.crt: no such file"),
    (["--tls-cert", "{secret}/tls.crt", "--tls-key", "{pki}/client.key"],
     "--tls-key {pki}/client.key: the key does not belong to the certificate of --tls-cert {secret}/tls.crt"),
    (["--tls-client-ca", "{pki}/ca.crt"], "--tls-client-ca needs --tls-cert and --tls-key"),
    (["--tls-cert", "{secret}/tls.crt"], "--tls-cert and --tls-key go together"),
])
def test_bad_serve_tls_flags_are_one_line_and_exit_2(pki, linear_repo, kdeploy, argv, message):
    paths = {"pki": pki.folder, "secret": pki.secret.folder}
    result = kdeploy("serve", "--repository", linear_repo, "--grpc-port", "0", "--no-rest", "--no-metrics",
                     *[a.format(**paths) for a in argv])
    assert result.code == 2
    [line] = result.err.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"kdeploy serve: error: {message.format(**paths)}"), line


@pytest.mark.parametrize(("command", "argv", "message"), [
    ("loadtest", ["--tls-ca", "{pki}/nope.crt"], "--tls-ca {pki}/nope.crt: no such file"),
    ("loadtest", ["--tls-cert", "{pki}/client.crt", "--tls-key", "{pki}/foreign.key"],
     "--tls-key {pki}/foreign.key: the key does not belong to the certificate of --tls-cert {pki}/client.crt"),
    ("verify", ["--tls-cert", "{pki}/client.crt"], "--tls-cert and --tls-key go together"),
    ("verify", ["--tls-ca", "{pki}/ca.crt"], "--tls and --tls-* are for --endpoint"),
])
def test_bad_client_tls_flags_are_one_line_and_exit_2(pki, linear_repo, tmp_path, kdeploy, command, argv, message):
    argv = [a.format(pki=pki.folder) for a in argv]
    if command == "loadtest":
        result = kdeploy("loadtest", "--target", "127.0.0.1:1", "--model", "linear", "--signature-from-server",
                         "--out", tmp_path, *argv)
    else:
        result = kdeploy("verify", linear_repo / "linear", *argv)
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"kdeploy {command}: error: {message.format(pki=pki.folder)}"), line
