"""The server's TLS material: the files checked, TF Serving's SSLConfig, renewals taken up when files change."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.serve.config import ServeConfig
from kdeploy.serve.ssl_config import material_from_ssl_config
from kdeploy.serve.tls import CertificateReloader, TlsSource, read_material
from tests.certificates import SecretVolume, cert_pem, der, key_pem, make_pki, write_pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def served_der(reloader: CertificateReloader) -> bytes:
    """The server certificate of the reloader's current material (DER)."""
    from cryptography import x509

    return der(x509.load_pem_x509_certificate(reloader.material.cert_chain))


def test_good_files_give_material_and_a_server_context(pki):
    material = read_material(TlsSource(pki.secret.cert, pki.secret.key, pki.secret.ca))
    assert material.client_ca == pki.ca.pem
    context = material.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert read_material(TlsSource(pki.secret.cert, pki.secret.key)).ssl_context().verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(("change", "message"), [
    ("missing cert", "--tls-cert {folder}/nothing.crt: no such file"),
    ("not pem", "--tls-key {folder}/junk: not a PEM file"),
    ("foreign key", "--tls-key {folder}/foreign.key: the key does not belong to the certificate of --tls-cert"),
    ("encrypted key", "the private key is encrypted"),
    ("bad ca", "--tls-client-ca {folder}/bad-ca.pem: cannot read the CA certificates"),
])
def test_bad_files_are_one_line_naming_the_flag_and_file(pki, tmp_path, change, message):
    cert, key, ca = pki.secret.cert, pki.secret.key, None
    if change == "missing cert":
        cert = pki.folder / "nothing.crt"
    elif change == "not pem":
        key = pki.folder / "junk"
        key.write_text("hello")
    elif change == "foreign key":
        key = pki.foreign_key
    elif change == "encrypted key":
        certificate, private = pki.ca.issue("x", server=True)
        cert, key = tmp_path / "x.crt", tmp_path / "x.key"
        cert.write_bytes(cert_pem(certificate))
        key.write_bytes(key_pem(private, password=b"secret"))
    else:
        ca = pki.folder / "bad-ca.pem"
        ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError) as error:
        read_material(TlsSource(cert, key, ca))
    assert message.format(folder=pki.folder) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({"tls_client_ca": Path("ca.crt")}, "--tls-client-ca needs --tls-cert and --tls-key"),
    ({"tls_cert": Path("a.crt")}, "--tls-cert and --tls-key go together"),
    ({"tls_key": Path("a.key")}, "--tls-cert and --tls-key go together"),
    ({"ssl_config_file": Path("ssl.cfg"), "tls_cert": Path("a.crt"), "tls_key": Path("a.key")},
     "give --ssl-config-file or --tls-cert/--tls-key, not both"),
])
def test_flag_combinations_that_make_no_sense_are_refused(fields, message):
    with pytest.raises(UsageError, match=message):
        ServeConfig(models=(), **fields).check_tls()


def _ssl_config(path: Path, pki, client_verify: bool, with_ca: bool = True) -> Path:
    cert, key = pki.secret.cert.read_text(), pki.secret.key.read_text()
    lines = [f"server_key: {key!r}".replace("'", '"'), f"server_cert: {cert!r}".replace("'", '"')]
    if with_ca:
        lines.append(f"custom_ca: {pki.ca.pem.decode()!r}".replace("'", '"'))
    if client_verify:
        lines.append("client_verify: true")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tf_serving_ssl_config_file_holds_the_pem_text(pki, tmp_path):
    # The text format of tensorflow_serving/config/ssl_config.proto, as TF Serving's docs write it.
    material = material_from_ssl_config(_ssl_config(tmp_path / "ssl.cfg", pki, client_verify=True))
    assert material.cert_chain == pki.secret.cert.read_bytes() and material.client_ca == pki.ca.pem
    # As TF Serving: without client_verify the custom CA is not used (no client certificate asked for).
    assert material_from_ssl_config(_ssl_config(tmp_path / "b.cfg", pki, client_verify=False)).client_ca is None
    assert read_material(TlsSource(ssl_config_file=tmp_path / "ssl.cfg")).key == pki.secret.key.read_bytes()


@pytest.mark.parametrize(("text", "message"), [
    ("server_key: 'x'\nunknown_field: 1\n", "not a TF Serving SSLConfig text proto"),
    ("client_verify: true\n", "server_key and server_cert must both hold PEM text"),
])
def test_bad_ssl_config_files_are_refused(tmp_path, text, message):
    (tmp_path / "ssl.cfg").write_text(text)
    with pytest.raises(UsageError, match=message):
        material_from_ssl_config(tmp_path / "ssl.cfg")


def test_client_verify_without_a_custom_ca_is_refused(pki, tmp_path):
    with pytest.raises(UsageError, match="client_verify needs custom_ca"):
        material_from_ssl_config(_ssl_config(tmp_path / "ssl.cfg", pki, client_verify=True, with_ca=False))


def test_a_renewal_is_taken_up_once_a_check_is_due(pki, tmp_path):
    secret = SecretVolume(tmp_path / "secret")
    first = secret.write_server_certificate(pki.ca)
    clock = Clock()
    reloader = CertificateReloader(TlsSource(secret.cert, secret.key, secret.ca), check_interval_s=1.0, clock=clock)
    context = reloader.ssl_context()
    assert served_der(reloader) == der(first)
    renewed = secret.write_server_certificate(pki.ca)
    clock.now = 0.5  # not due: the files are not even looked at
    assert not reloader.refresh() and reloader.ssl_context() is context and reloader.generation == 0
    clock.now = 1.5
    assert reloader.ssl_context() is not context and reloader.generation == 1
    assert served_der(reloader) == der(renewed)
    clock.now = 3.0  # unchanged files: nothing re-read
    assert not reloader.refresh() and reloader.generation == 1


def test_a_half_written_renewal_keeps_the_old_material_until_it_is_whole(pki, tmp_path, caplog):
    folder = tmp_path / "plain"
    cert, key = write_pair(*pki.ca.issue("a", server=True), folder, "server")
    clock = Clock()
    reloader = CertificateReloader(TlsSource(cert, key), check_interval_s=1.0, clock=clock)
    before = reloader.material
    new_cert, new_key = pki.ca.issue("b", server=True)
    cert.write_bytes(cert_pem(new_cert))  # the certificate is written, its key not yet
    clock.now = 2.0
    assert not reloader.refresh() and reloader.material is before
    assert "cannot be used yet" in caplog.text
    key.write_bytes(key_pem(new_key))
    clock.now = 4.0
    assert reloader.refresh() and reloader.material.cert_chain == cert_pem(new_cert)


def test_mutual_tls_is_not_dropped_by_a_renewal_without_a_ca(pki, tmp_path):
    ssl_config = _ssl_config(tmp_path / "ssl.cfg", pki, client_verify=True)
    clock = Clock()
    reloader = CertificateReloader(TlsSource(ssl_config_file=ssl_config), check_interval_s=1.0, clock=clock)
    assert reloader.mutual
    _ssl_config(ssl_config, pki, client_verify=False)
    clock.now = 2.0
    assert not reloader.refresh() and reloader.mutual


def test_grpc_fetcher_hands_over_each_renewal_once(pki, tmp_path):
    import grpc

    secret = SecretVolume(tmp_path / "secret")
    secret.write_server_certificate(pki.ca)
    clock = Clock()
    reloader = CertificateReloader(TlsSource(secret.cert, secret.key, secret.ca), check_interval_s=1.0, clock=clock)
    fetch = reloader.grpc_fetcher()
    assert fetch() is None  # gRPC keeps the configuration it started with
    secret.write_server_certificate(pki.ca)
    assert fetch() is None  # renewed on disk, but no check is due yet
    clock.now = 2.0
    assert isinstance(fetch(), grpc.ServerCertificateConfiguration)
    assert fetch() is None and reloader.generation == 1
