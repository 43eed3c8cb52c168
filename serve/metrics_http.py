"""`GET /metrics` over HTTP or HTTPS: prometheus-client's WSGI app on a threaded server of our own.

prometheus-client's `start_http_server` can serve TLS, but it wraps the listening socket with one fixed context and
does each handshake inside its accept loop, so one client that connects and sends nothing stops every scrape. Here
the accepted socket is wrapped without a handshake; the handshake happens in the connection's own thread (OpenSSL
runs it on the first read), under a timeout, with a context that follows certificate renewals.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

logger = logging.getLogger(__name__)

CONNECTION_TIMEOUT_S = 30.0
"""A scrape connection (handshake included) that stays silent this long is closed."""


class _Handler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        """No access line per scrape on standard error."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    tls_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A refused handshake (plaintext, no or a foreign client certificate) is the client's problem, not a crash.
        logger.debug("metrics connection from %s failed", client_address, exc_info=True)


def serve_metrics(registry: CollectorRegistry, host: str, port: int,
                  tls_context: ssl.SSLContext | None = None) -> tuple[Any, int]:
    """Serve `registry` on host:port (0 picks a free port) on a daemon thread; HTTPS when `tls_context` is given.

    Returns:
        The server (call `shutdown()` to stop it) and its bound port.

    Raises:
        OSError: when the address cannot be bound.
    """
    server_class = type("MetricsServer", (_Server,), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "tls_context": tls_context})
    server: WSGIServer = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server, server.server_address[1]
