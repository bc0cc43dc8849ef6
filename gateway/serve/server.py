"""Running an app: listening socket, connection limits, Stripe-shaped protocol errors,
graceful drain.

aiohttp answers requests it cannot parse (oversized headers, bad request lines) with a
plain-text page before any handler runs; :class:`GatewayRunner` swaps in a protocol
handler that answers those with a Stripe-shaped JSON error instead.

That handler also bounds what a client holds (the ``[server]`` settings the app carries
under :data:`gateway.keys.SERVER_CONFIG`):

- ``header_timeout``: a request line and headers must be complete within this many seconds
  of the connection opening or, on a kept-alive connection, of the next request's first
  byte. The deadline is total, not per byte: a client trickling its headers is closed too,
  with a Stripe-shaped 408 when it sent part of a request, silently when it sent nothing.
- ``max_connections``: connections accepted over the cap are closed at once.
- ``keepalive_timeout`` (applied by :func:`gateway.app.create_app` as aiohttp's own): idle
  time allowed between requests, and the most a partial next request may take after the
  previous response.

A client that goes away while its request is handled is normal (a load generator ending
its run): it costs one info line, not an error with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server
from prometheus_client import Counter

from gateway.config import ServerConfig
from gateway.context import new_request_id
from gateway.errors import error_response
from gateway.keys import METRICS, SERVER_CONFIG

__all__ = ["GatewayRunner", "serve"]


class _HeaderTimeout(Exception):
    """A request line and headers that did not arrive within ``header_timeout``."""


class _GatewayServer(Server):
    #: seconds a request line and headers may take; 0: no limit
    header_timeout: float = 0.0
    #: open connections allowed; 0: no limit
    max_connections: int = 0
    #: counts the connections the gateway closed itself, by reason
    closed_counter: Counter | None = None

    def closed(self, reason: str) -> None:
        """Count a connection closed for ``reason`` (``header_timeout``,
        ``max_connections``)."""
        if self.closed_counter is not None:
            self.closed_counter.labels(reason).inc()

    def __call__(self) -> RequestHandler:
        return _GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class _GatewayRequestHandler(RequestHandler):
    __slots__ = ("_header_bytes", "_header_count", "_header_handle", "_header_timeout")

    def __init__(self, manager: _GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = manager.header_timeout
        self._header_handle: asyncio.TimerHandle | None = None
        #: requests parsed when the header deadline was set
        self._header_count = 0
        #: whether any byte arrived since the header deadline was set
        self._header_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        assert isinstance(manager, _GatewayServer)
        cap = manager.max_connections
        if cap and len(manager._connections) >= cap:
            # Refused before aiohttp registers it: no task, no timers, nothing parsed.
            self.force_close()
            transport.close()
            manager.closed("max_connections")
            return
        super().connection_made(transport)
        if self._header_timeout:
            self._start_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        handle = self._header_handle
        if handle is not None:
            if self._request_count != self._header_count:  # the headers are complete
                handle.cancel()
                self._header_handle = None
            elif data:
                self._header_bytes = True
        elif (
            data
            and self._header_timeout
            and (waiter := self._waiter) is not None
            and not waiter.done()
        ):
            # A kept-alive connection, idle (waiting for a request), got the first bytes of
            # one without its end: from now on its headers have header_timeout to arrive.
            self._start_header_deadline()
            self._header_bytes = True

    def _start_header_deadline(self) -> None:
        self._header_count = self._request_count
        self._header_bytes = False
        self._header_handle = self._loop.call_later(self._header_timeout, self._header_late)

    def _header_late(self) -> None:
        self._header_handle = None
        if (
            self._force_close
            or self._close
            or self.transport is None
            or self._request_count != self._header_count
        ):
            return
        manager = self._manager
        assert isinstance(manager, _GatewayServer)
        manager.closed("header_timeout")
        if not self._header_bytes:
            self.force_close()
            return
        # Part of a request arrived: answer it like a request aiohttp cannot parse (a
        # Stripe-shaped error from handle_error), then close. Nothing more is parsed.
        self._close = True
        late = _HeaderTimeout(
            f"The request line and headers did not arrive within {self._header_timeout:g} seconds."
        )
        self._messages.append((_ErrInfo(status=408, exc=late, message=str(late)), EMPTY_PAYLOAD))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            transport = request.transport
            if transport is None or transport.is_closing():
                # The client went away mid-request (its response could not be written):
                # normal, so one info line, no traceback, and no answer to send.
                self.logger.info(
                    "Client %s disconnected before its response was complete (%s)",
                    request.remote,
                    type(exc).__name__,
                )
                raise ConnectionError("the client disconnected") from None
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):  # aiohttp says 400 for the request line or a header
            status = 431  # over max_header_bytes: the head is too large, not malformed
        if status == 500:
            self.log_exception("Error handling request", exc_info=exc)
            text = "The gateway hit an unexpected error. Nothing more is known about it here."
        elif isinstance(exc, _HeaderTimeout):
            text = str(exc)
        else:
            phrase = (
                HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
            )
            text = f"The gateway could not read this request: {phrase}."
            if exc is not None and status in (400, 413, 431):
                detail = str(getattr(exc, "message", "") or "").strip()
                if detail:
                    text = f"{text[:-1]} ({detail[:200]})."
        response = error_response(
            status,
            text,
            request_id=new_request_id(),
            type="api_error" if status >= 500 else "invalid_request_error",
            should_retry=False,
        )
        response.force_close()
        return response


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose protocol-level errors are Stripe-shaped JSON, and which
    applies the app's ``[server]`` connection limits (:data:`gateway.keys.SERVER_CONFIG`)."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _GatewayServer
        assert isinstance(server, _GatewayServer)
        settings = self.app.get(SERVER_CONFIG) or ServerConfig()
        server.header_timeout = settings.header_timeout
        server.max_connections = settings.max_connections
        metrics = self.app.get(METRICS)
        if metrics is not None:
            server.closed_counter = metrics.connections_closed
        return server


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    drain_timeout: float,
    ready: asyncio.Event | None = None,
    on_listening: Callable[[list[str]], None] = lambda _: None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
    on_hangup: Callable[[], None] | None = None,
    on_reopen: Callable[[], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **runner_kwargs: Any,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT (or ``stop``), then drain and return.

    On a stop signal the listener closes at once, in-flight requests get up to
    ``drain_timeout`` seconds to finish, then the app's cleanup runs (plugins flush).

    ``reuse_port`` binds with ``SO_REUSEPORT``, so several processes (the workers of
    ``serve --workers N``) share the port and the kernel spreads connections among them.
    ``on_hangup`` is called on SIGHUP once the socket is open (the CLI reloads the
    config); it is installed before ``on_listening`` is called. ``on_reopen`` is called
    on SIGUSR1 the same way (the CLI has the plugins reopen their log files), and stays
    installed through the drain, when lines are still written; after it SIGUSR1 is ignored.
    With ``ssl_context`` the listener speaks HTTPS only (:mod:`gateway.tls`).
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    runner = GatewayRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=drain_timeout, **runner_kwargs
    )
    await runner.setup()
    reopen = False
    try:
        site = web.TCPSite(
            runner,
            host,
            port,
            backlog=1024,
            reuse_address=True,
            reuse_port=reuse_port or None,
            ssl_context=ssl_context,
        )
        await site.start()
        if on_hangup is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(signal.SIGHUP, on_hangup)
                installed.append(signal.SIGHUP)
        if on_reopen is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(signal.SIGUSR1, on_reopen)
                reopen = True
        scheme = "https" if ssl_context is not None else "http"
        listening = [
            f"{scheme}://[{a[0]}]:{a[1]}" if ":" in a[0] else f"{scheme}://{a[0]}:{a[1]}"
            for a in runner.addresses
            if isinstance(a, tuple)
        ]
        on_listening(listening)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if signal.SIGHUP in installed:  # no reload while draining, and no default (fatal) HUP
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            await runner.cleanup()
        finally:
            if reopen:  # logs are written until the plugins shut down; then no default (fatal)
                loop.remove_signal_handler(signal.SIGUSR1)
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
