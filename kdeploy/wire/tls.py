"""TLS for kdeploy's clients (`verify --endpoint`, `loadtest`, the load generator's users): one set of flags, checked
once, turned into gRPC channel credentials or an `ssl.SSLContext` for HTTPS.

Standard library at import (gRPC only inside the functions that need it): the load-test configuration, which must
stay importable without gRPC, carries a `ClientTls`.
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError

SERVER_NAME_OPTION = "grpc.ssl_target_name_override"


@dataclass(frozen=True)
class ClientTls:
    """How a client connects over TLS: whom it trusts, what it presents, which name it expects."""

    ca: Path | None = None
    """PEM CA certificates the server's certificate must chain to (None: the system's trusted CAs)."""
    cert: Path | None = None
    """PEM client certificate chain, for servers that require one (mutual TLS)."""
    key: Path | None = None
    """PEM private key of `cert`."""
    server_name: str | None = None
    """The name the server's certificate must carry, when it is not the host dialled (e.g. an IP address)."""

    def check(self) -> None:
        """Check the files before any connection: present, PEM, the key belonging to the certificate.

        Raises:
            UsageError: naming the flag and file.
        """
        if (self.cert is None) != (self.key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        for flag, path in (("--tls-ca", self.ca), ("--tls-cert", self.cert), ("--tls-key", self.key)):
            if path is not None:
                read_pem(path, flag)
        try:
            self.ssl_context()
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise UsageError(f"--tls-key {self.key}: the key does not belong to the certificate of "
                                 f"--tls-cert {self.cert}") from None
            raise UsageError(f"cannot use the TLS files ({exc.reason or exc})") from None

    def grpc_credentials(self) -> Any:
        """`grpc.ssl_channel_credentials` with these files."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca, "--tls-ca") if self.ca else None,
            private_key=read_pem(self.key, "--tls-key") if self.key else None,
            certificate_chain=read_pem(self.cert, "--tls-cert") if self.cert else None)

    def grpc_options(self) -> tuple[tuple[str, Any], ...]:
        """Channel options: the expected server name, when one is given."""
        return ((SERVER_NAME_OPTION, self.server_name),) if self.server_name else ()

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the server (against `ca`, else the system's CAs) and presents `cert`.

        Built on `ssl.SSLContext` as the process has it when called: in a Locust process that is gevent's (Locust
        patches `ssl` before anything else is imported), so the load generator's HTTPS stays cooperative.
        """
        base = ssl.SSLContext
        cls = _named_context_class(base) if self.server_name else base
        context = cls(ssl.PROTOCOL_TLS_CLIENT)
        if self.server_name:
            context.expected_server_name = self.server_name  # type: ignore[attr-defined]
        if self.ca is not None:
            context.load_verify_locations(cafile=str(self.ca))
        else:
            context.load_default_certs()
        if self.cert is not None:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return context


def read_pem(path: Path, flag: str) -> bytes:
    """The bytes of a PEM file given with `flag`.

    Raises:
        UsageError: naming the flag and file when it is missing, unreadable or not PEM.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise UsageError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


_NAMED_CLASSES: dict[type, type] = {}


def _named_context_class(base: type[ssl.SSLContext]) -> type[ssl.SSLContext]:
    """A subclass of `base` that checks the certificate against `expected_server_name` whatever host was dialled
    (HTTP clients pass the URL's host, here usually an IP address, as `server_hostname`)."""
    if base not in _NAMED_CLASSES:
        def wrap_socket(self: Any, sock: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["server_hostname"] = self.expected_server_name
            return base.wrap_socket(self, sock, *args, **kwargs)

        def wrap_bio(self: Any, incoming: Any, outgoing: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["server_hostname"] = self.expected_server_name
            return base.wrap_bio(self, incoming, outgoing, *args, **kwargs)

        _NAMED_CLASSES[base] = type(f"Named{base.__name__}", (base,),
                                    {"wrap_socket": wrap_socket, "wrap_bio": wrap_bio})
    return _NAMED_CLASSES[base]


def secure_channel(address: str, tls: ClientTls | None, options: tuple[tuple[str, Any], ...] | list[Any] = ()) -> Any:
    """A gRPC channel to `address`: TLS with `tls`, plaintext without."""
    import grpc

    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.grpc_credentials(), options=[*options, *tls.grpc_options()])


def http_opener(tls: ClientTls | None) -> Any:
    """A urllib opener that never goes through a proxy, over TLS with `tls` (HTTPS URLs), plaintext without: the
    HTTP twin of `secure_channel`."""
    import urllib.request

    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=tls.ssl_context()))
    return urllib.request.build_opener(*handlers)


def add_tls_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """`--tls`, `--tls-ca`, `--tls-cert`, `--tls-key`, `--tls-server-name` on a client command."""
    group = parser.add_argument_group("TLS", "connect over TLS (any --tls-* flag turns it on)")
    group.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs unless --tls-ca is given")
    group.add_argument("--tls-ca", type=Path, metavar="FILE", help="PEM CA certificates to verify the server with")
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM client certificate (mutual TLS)")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    group.add_argument("--tls-server-name", metavar="NAME",
                       help="name the server's certificate must carry, when not the host in the address")


def client_tls_from_args(args: argparse.Namespace) -> ClientTls | None:
    """The TLS settings of parsed `add_tls_arguments` flags (None: plaintext), checked.

    Raises:
        UsageError: for a missing or unreadable file, or a key that does not match its certificate.
    """
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    tls = ClientTls(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name or None)
    tls.check()
    return tls
