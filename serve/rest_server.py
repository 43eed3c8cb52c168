"""TF Serving's REST API and KServe v2 over HTTP: aiohttp on the gRPC front end's event loop (keep-alive on).

The handler only moves bytes: the body in, `RestApi.handle` (routing, decoding, inference, errors), JSON out; paths
under `/v2` (and KServe v1's `GET /v1/models`) go to `KServeRestApi.handle` instead, whose answers may carry binary
tensor data after the JSON. An
oversized body is answered 413 with the same JSON error shape as every other error, after it has been read (a client
still sending when the connection closes would see a broken pipe instead), and while draining new requests are
answered 503 so load balancers and clients retry elsewhere.

Tracing and the access log wrap every request here, in the HTTP layer, so each route (TF Serving's `/v1`, KServe
v2's `/v2`, any added later) is covered without its own code.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from kdeploy.serve.adapters.kserve_rest import KServeRestApi, RestReply, is_kserve_path
from kdeploy.serve.adapters.rest import RestApi
from kdeploy.serve.observe import REQUEST, Observers, http_route
from kdeploy.wire.kserve_rest import INFERENCE_HEADER

logger = logging.getLogger(__name__)

DISCARD_LIMIT_BYTES = 256 << 20
"""An oversized body up to this size is read and dropped before the 413; beyond it the connection is closed."""
DRAINING_MESSAGE = "the server is shutting down; retry (another replica takes new requests)"


class RestServer:
    """One aiohttp site serving `api`; start, refuse and stop run on the event loop."""

    def __init__(self, api: RestApi, observers: Observers | None = None, kserve: KServeRestApi | None = None,
                 metrics_page: tuple[str, Callable[[], bytes]] | None = None) -> None:
        """
        Args:
            api: the TF Serving REST API.
            observers: tracing and the access log (None: off).
            kserve: the KServe v2 REST API on the same port (None: off).
            metrics_page: a path and the Prometheus text to answer there (TF Serving's MonitoringConfig path).
        """
        self._api = api
        self._observers = observers
        self._kserve = kserve
        self._metrics_page = metrics_page
        self._refusing = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int, reuse_port: bool = False,
                    ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (0 picks a free port; HTTPS with `ssl_context`) and return the bound port.

        Raises:
            OSError: when the address cannot be bound.
        """
        # The body limit is enforced by the handler (with a JSON 413); aiohttp's own is set just above it.
        app = web.Application(client_max_size=self._api.max_body_bytes + 1)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=reuse_port or None, backlog=128,
                           ssl_context=ssl_context)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        server: Any = site._server  # noqa: SLF001 - aiohttp exposes the bound sockets nowhere else
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    def refuse(self) -> None:
        """Answer every new request 503 from now on (called on the loop)."""
        self._refusing = True

    async def stop(self) -> None:
        """Stop listening, let handlers in progress finish, close the connections."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if self._observers is None:
            return await self._answer(request)
        return await self._observed(request, self._observers)

    async def _observed(self, request: web.Request, observers: Observers) -> web.Response:
        """`_answer`, traced and access-logged."""
        protocol, operation, model, version = http_route(request.method, request.raw_path)
        scope = observers.begin(protocol, operation, request.headers.items, request.remote or "", kind_rpc=False)
        token = REQUEST.set(scope)
        response: web.Response | None = None
        try:
            response = await self._answer(request)
            return response
        finally:
            REQUEST.reset(token)
            status = response.status if response is not None else 500
            body = response.body if response is not None else b""
            observers.end(scope, model=model, version=version, status=str(status), error=status >= 500,
                          request_bytes=lambda: request.content_length or 0,
                          response_bytes=lambda: len(body) if isinstance(body, bytes) else 0)

    async def _answer(self, request: web.Request) -> web.Response:
        if self._refusing:
            return _json(503, {"error": DRAINING_MESSAGE}, close=True)
        if self._metrics_page is not None and request.method == "GET" and request.path == self._metrics_page[0]:
            return web.Response(body=self._metrics_page[1](), content_type="text/plain", charset="utf-8",
                                headers={"X-Content-Type-Options": "nosniff"})
        body = None
        if request.method == "POST":
            limit = self._api.max_body_bytes
            length = request.content_length
            too_large = length is not None and length > limit
            if not too_large:
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    too_large = True
            if too_large:
                await _discard(request, DISCARD_LIMIT_BYTES)
                size = f"{length} bytes" if length is not None else "the request body"
                return _json(413, {"error": f"{size} is over the limit of {limit} bytes"}, close=True)
        if self._kserve is not None and is_kserve_path(request.raw_path, request.method):
            reply = await self._kserve.handle(request.method, request.raw_path, body,
                                              request.headers.get(INFERENCE_HEADER))
            return _kserve_response(reply)
        status, payload = await self._api.handle(request.method, request.raw_path, body)
        return _json(status, payload)


async def _discard(request: web.Request, limit: int) -> None:
    while limit > 0:
        chunk = await request.content.readany()
        if not chunk:
            return
        limit -= len(chunk)


def _kserve_response(reply: RestReply) -> web.Response:
    if reply.header_length is None:
        return web.Response(body=reply.body, status=reply.status, content_type="application/json")
    return web.Response(body=reply.body, status=reply.status, content_type="application/octet-stream",
                        headers={INFERENCE_HEADER: str(reply.header_length)})


def _json(status: int, payload: dict[str, Any], close: bool = False) -> web.Response:
    response = web.Response(body=json.dumps(payload).encode(), status=status, content_type="application/json")
    if close:
        response.force_close()
    return response
