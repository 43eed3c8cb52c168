"""Certificates made in the tests with `cryptography`: a CA, server and client certificates, a foreign CA, and
renewals written the way Kubernetes updates a Secret volume (a `..data` symlink swapped to a new folder)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "kdeploy-server"
"""The DNS name in the server certificates, besides localhost and 127.0.0.1."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Authority:
    """A CA that signs server and client certificates."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> Authority:
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        return cls(name, key, cert)

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    def issue(self, common_name: str, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf certificate: for a server (DNS and IP names of this machine) or a client."""
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName(SERVER_NAME), x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


@dataclass
class Pki:
    """Files of one test PKI: the CA, a server and a client of it, and a client of a foreign CA."""

    folder: Path
    ca: Authority
    ca_file: Path
    client_cert: Path
    client_key: Path
    foreign_cert: Path
    foreign_key: Path
    secret: SecretVolume
    """The server's certificate, key and CA as a Kubernetes Secret volume (tls.crt, tls.key, ca.crt)."""


def write_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, folder: Path, stem: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert_pem(cert))
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path


def make_pki(folder: Path) -> Pki:
    ca, foreign = Authority.create("kdeploy test CA"), Authority.create("another CA")
    ca_file = folder / "ca.crt"
    folder.mkdir(parents=True, exist_ok=True)
    ca_file.write_bytes(ca.pem)
    client_cert, client_key = write_pair(*ca.issue("load generator", server=False), folder, "client")
    foreign_cert, foreign_key = write_pair(*foreign.issue("stranger", server=False), folder, "foreign")
    secret = SecretVolume(folder / "secret")
    secret.write_server_certificate(ca)
    return Pki(folder, ca, ca_file, client_cert, client_key, foreign_cert, foreign_key, secret)


class SecretVolume:
    """A folder laid out as the kubelet writes a Secret volume: `tls.crt -> ..data/tls.crt`, `..data ->
    ..TIMESTAMP/`; an update writes a new `..TIMESTAMP/` and swaps `..data` in one rename."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cert = folder / "tls.crt"
        self.key = folder / "tls.key"
        self.ca = folder / "ca.crt"
        self.served: x509.Certificate | None = None

    def write_server_certificate(self, ca: Authority) -> x509.Certificate:
        """Issue a new server certificate and publish it with its key and the CA (a renewal after the first)."""
        cert, key = ca.issue(SERVER_NAME, server=True)
        self.write({"tls.crt": cert_pem(cert), "tls.key": key_pem(key), "ca.crt": ca.pem})
        self.served = cert
        return cert

    def write(self, files: dict[str, bytes]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        version = self.folder / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        version.mkdir()
        for name, data in files.items():
            (version / name).write_bytes(data)
        staging = self.folder / "..data_tmp"
        os.symlink(version.name, staging)
        os.replace(staging, self.folder / "..data")
        for name in files:
            link = self.folder / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
