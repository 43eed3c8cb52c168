"""The server's TLS material: read once at start, checked, and re-read when the files change (certificate rotation).

One `CertificateReloader` serves every port: gRPC asks it before each new connection's handshake
(`grpc.dynamic_ssl_server_credentials` calls its fetcher then), REST (aiohttp) and metrics get a `ReloadingSSLContext`
whose `wrap_bio` / `wrap_socket` hand each new connection to the context of the newest material. Connections already
open keep the session they negotiated: nothing is dropped when a certificate is renewed.

Renewals are noticed by the files' `stat` signature (inode, size, modification time), looked at no more than once per
`CHECK_INTERVAL_S` whatever the connection rate. Kubernetes updates a Secret volume by pointing its `..data` symlink at
a new folder, so every file changes at once; a renewal written file by file can be caught half-way (a new certificate
with the old key), which `load_cert_chain` refuses: the old material is kept and the next check tries again.

The material comes from PEM files (`--tls-cert`, `--tls-key`, `--tls-client-ca`) or from a TF Serving `SSLConfig` text
file (`--ssl-config-file`: server_key, server_cert and custom_ca hold the PEM text itself, client_verify asks for
client certificates), which is watched in the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError
from kdeploy.wire.tls import read_pem

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
"""How often, at most, the files are looked at for a renewal (only when a connection arrives)."""


@dataclass(frozen=True)
class TlsSource:
    """Where the server's TLS material comes from: PEM files, or one TF Serving `SSLConfig` file."""

    cert: Path | None = None
    """Certificate chain (PEM), the server's own certificate first."""
    key: Path | None = None
    """Private key of the certificate (PEM, unencrypted)."""
    client_ca: Path | None = None
    """CA certificates (PEM) that client certificates must chain to; set: mutual TLS, clients without one refused."""
    ssl_config_file: Path | None = None
    """TF Serving's SSLConfig text file, instead of the three files."""

    @property
    def watched(self) -> tuple[Path, ...]:
        """The files whose change means new material."""
        if self.ssl_config_file is not None:
            return (self.ssl_config_file,)
        return tuple(p for p in (self.cert, self.key, self.client_ca) if p is not None)

    def describe(self) -> str:
        if self.ssl_config_file is not None:
            return f"--ssl-config-file {self.ssl_config_file}"
        return f"--tls-cert {self.cert}"


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes the server presents and checks clients against."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    """Set for mutual TLS."""

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side context for REST and metrics (TLS 1.2 or newer).

        Raises:
            ssl.SSLError: when the key does not belong to the certificate, or a PEM block cannot be read.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with _pem_file(self.cert_chain) as cert, _pem_file(self.key) as key:
            # A callable password that raises: an encrypted key is refused rather than prompted for on a terminal.
            context.load_cert_chain(cert, key, password=_no_password)
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self.client_ca.decode("ascii", errors="replace"))
        return context

    def grpc_configuration(self) -> Any:
        """The same material as gRPC's `ServerCertificateConfiguration`."""
        import grpc

        return grpc.ssl_server_certificate_configuration([(self.key, self.cert_chain)],
                                                         root_certificates=self.client_ca)


def _no_password() -> bytes:
    raise ValueError("the private key is encrypted; kdeploy needs an unencrypted key (as gRPC and cert-manager use)")


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path holding `data`, for OpenSSL calls that read files only: an anonymous in-memory file where Linux has
    them (a key never lands on disk), else a private temporary file removed at once."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("kdeploy-tls", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="kdeploy-tls-") as folder:
        path = Path(folder) / "pem"
        path.write_bytes(data)
        yield str(path)


def read_material(source: TlsSource) -> TlsMaterial:
    """Read and check the material: every file there, PEM, the key matching the certificate, the CA readable.

    Raises:
        UsageError: naming the flag and file that is wrong.
    """
    if source.ssl_config_file is not None:
        from kdeploy.serve.ssl_config import material_from_ssl_config

        material = material_from_ssl_config(source.ssl_config_file)
        what = f"--ssl-config-file {source.ssl_config_file}"
        cert_what = key_what = ca_what = what
    else:
        if source.cert is None or source.key is None:
            raise UsageError("--tls-cert and --tls-key go together")
        material = TlsMaterial(read_pem(source.cert, "--tls-cert"), read_pem(source.key, "--tls-key"),
                               read_pem(source.client_ca, "--tls-client-ca") if source.client_ca else None)
        cert_what, key_what = f"--tls-cert {source.cert}", f"--tls-key {source.key}"
        ca_what = f"--tls-client-ca {source.client_ca}"
    try:
        with _pem_file(material.cert_chain) as cert, _pem_file(material.key) as key:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
    except ValueError as exc:
        raise UsageError(f"{key_what}: {exc}") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise UsageError(f"{key_what}: the key does not belong to the certificate of {cert_what}") from None
        raise UsageError(f"{cert_what} / {key_what}: cannot load the certificate and key ({exc.reason or exc})") \
            from None
    if material.client_ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=material.client_ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            raise UsageError(f"{ca_what}: cannot read the CA certificates ({getattr(exc, 'reason', None) or exc})") \
                from None
    return material


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...] | None:
    """What changes when a file is replaced or rewritten (`stat` follows the `..data` symlinks)."""
    try:
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in (os.stat(p) for p in paths))
    except OSError:
        return None  # a file missing mid-swap: try again at the next check


class CertificateReloader:
    """The current TLS material of one server, re-read when its files change (thread-safe).

    gRPC's core calls `grpc_fetcher` from its own threads, aiohttp builds connections on the event loop, the metrics
    server on its thread: a lock keeps the check and the swap consistent between them.
    """

    def __init__(self, source: TlsSource, check_interval_s: float = CHECK_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Read the material once.

        Raises:
            UsageError: when it cannot be read or is inconsistent (see `read_material`).
        """
        self.source = source
        self._interval = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = _signature(source.watched)
        self._material = read_material(source)
        self._context = self._material.ssl_context()
        self._checked_at = clock()
        self.generation = 0
        """Counts the renewals taken up (0: the material read at start)."""

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        return self._material.client_ca is not None

    @property
    def material(self) -> TlsMaterial:
        self.refresh()
        return self._material

    def ssl_context(self) -> ssl.SSLContext:
        """The context of the newest material (checked for a renewal when one is due)."""
        self.refresh()
        return self._context

    def refresh(self) -> bool:
        """Re-read the material if the files changed since the last read and a check is due.

        Returns:
            Whether new material was taken up.
        """
        now = self._clock()
        if now - self._checked_at < self._interval:
            return False
        with self._lock:
            if now - self._checked_at < self._interval:
                return False
            self._checked_at = now
            signature = _signature(self.source.watched)
            if signature is None or signature == self._signature:
                return False
            try:
                material = read_material(self.source)
                context = material.ssl_context()
            except (UsageError, ssl.SSLError, ValueError) as exc:
                # Half-way through a renewal (or a bad one): keep serving the old material, look again next time.
                logger.warning("TLS material changed but cannot be used yet (keeping the current one): %s", exc)
                return False
            if _signature(self.source.watched) != signature:
                return False  # changed again while being read: take it at the next check, whole
            if material.client_ca is None and self._material.client_ca is not None:
                # gRPC fixed "require a client certificate" at start: dropping the CA would make mTLS fail open.
                logger.warning("the renewed TLS material has no client CA; keeping the current one (restart to "
                               "turn mutual TLS off)")
                return False
            self._signature, self._material, self._context = signature, material, context
            self.generation += 1
        logger.info("TLS certificate renewed from %s (renewal %d)", self.source.describe(), self.generation)
        return True

    def grpc_credentials(self) -> Any:
        """Server credentials that take up renewed material at the next connection's handshake."""
        import grpc

        return grpc.dynamic_ssl_server_credentials(self._material.grpc_configuration(), self.grpc_fetcher(),
                                                   require_client_authentication=self.mutual)

    def grpc_fetcher(self) -> Callable[[], Any]:
        """gRPC's certificate-configuration fetcher: the new configuration once after each renewal, else None.

        gRPC's core calls it before every new connection's handshake; None keeps the configuration it has.
        """
        handed_over = [self.generation]

        def fetch() -> Any:
            self.refresh()
            with self._lock:
                if handed_over[0] == self.generation:
                    return None
                handed_over[0] = self.generation
                material = self._material
            return material.grpc_configuration()

        return fetch

    def reloading_context(self) -> ssl.SSLContext:
        """An `SSLContext` for servers that take one context for good (aiohttp, the metrics server)."""
        return ReloadingSSLContext.create(self)


class ReloadingSSLContext(ssl.SSLContext):
    """Hands every new connection to the reloader's newest context.

    asyncio (and uvloop) build each server-side connection with `context.wrap_bio`, `ssl.SSLSocket.accept` and
    socketserver with `context.wrap_socket`: both are the one place a connection meets its context, so delegating them
    is enough. The object created is the newest context's (`SSLObject.context` names it); open connections keep theirs.
    """

    _reloader: CertificateReloader

    @classmethod
    def create(cls, reloader: CertificateReloader) -> ReloadingSSLContext:
        context = cls(ssl.PROTOCOL_TLS_SERVER)
        context._reloader = reloader
        return context

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return self._reloader.ssl_context().wrap_bio(incoming, outgoing, server_side=server_side,
                                                     server_hostname=server_hostname, session=session)

    def wrap_socket(self, sock: Any, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        return self._reloader.ssl_context().wrap_socket(
            sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=server_hostname, session=session)
