"""Running an app: listening socket, Stripe-shaped protocol errors, graceful drain.

aiohttp answers requests it cannot parse (oversized headers, bad request lines) with a
plain-text page before any handler runs; :class:`GatewayRunner` swaps in a protocol
handler that answers those with a Stripe-shaped JSON error instead.

A client that goes away while its request is handled is normal (a load generator ending
its run): it costs one info line, not an error with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from gateway.context import new_request_id
from gateway.errors import error_response

__all__ = ["GatewayRunner", "serve"]


class _GatewayRequestHandler(RequestHandler):
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
        if status == 500:
            self.log_exception("Error handling request", exc_info=exc)
            text = "The gateway hit an unexpected error. Nothing more is known about it here."
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


class _GatewayServer(Server):
    def __call__(self) -> RequestHandler:
        return _GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose protocol-level errors are Stripe-shaped JSON."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _GatewayServer
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
    **runner_kwargs: Any,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT (or ``stop``), then drain and return.

    On a stop signal the listener closes at once, in-flight requests get up to
    ``drain_timeout`` seconds to finish, then the app's cleanup runs (plugins flush).

    ``reuse_port`` binds with ``SO_REUSEPORT``, so several processes (the workers of
    ``serve --workers N``) share the port and the kernel spreads connections among them.
    ``on_hangup`` is called on SIGHUP once the socket is open (the CLI reloads the
    config); it is installed before ``on_listening`` is called.
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
    try:
        site = web.TCPSite(
            runner, host, port, backlog=1024, reuse_address=True, reuse_port=reuse_port or None
        )
        await site.start()
        if on_hangup is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(signal.SIGHUP, on_hangup)
                installed.append(signal.SIGHUP)
        listening = [
            f"http://[{a[0]}]:{a[1]}" if ":" in a[0] else f"http://{a[0]}:{a[1]}"
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
        await runner.cleanup()
