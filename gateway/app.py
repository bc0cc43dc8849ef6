"""The application factory: ``create_app(config)`` builds one self-contained gateway.

Everything an app needs (config, plugin host, upstream session, loggers) hangs off typed
app keys; there is no module-level state, so tests can run several apps side by side.

Requests are served by the app's current :class:`~gateway.serve.reload.Generation` (config,
plugin host, proxy), which ``app[RELOAD]()`` replaces under traffic (see
:mod:`gateway.serve.reload`); ``app[GENERATIONS].current`` always shows it. The keys live in
:mod:`gateway.keys`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import BinaryIO, cast

import orjson
from aiohttp import web
from aiohttp.web_urldispatcher import (
    AbstractResource,
    AbstractRoute,
    UrlDispatcher,
    UrlMappingMatchInfo,
)

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.expect import continue_at_once, continue_later
from gateway.headers import listener_refusal
from gateway.host import PluginHost
from gateway.keys import (
    GENERATIONS,
    METRICS,
    RELOAD,
    REOPEN_LOGS,
    REUSE_PORT,
    SERVER_CONFIG,
    SESSION,
)
from gateway.logs import make_error_logger
from gateway.metrics import GatewayMetrics
from gateway.proxy import Proxy
from gateway.public import PublicRoutes
from gateway.serve.admin import admin_listener
from gateway.serve.reload import Generation, Generations
from gateway.upstream import UpstreamClient

__all__ = ["create_app", "log_started"]

_HEALTH = orjson.dumps({"status": "ok", "version": __version__})


async def _healthz(request: web.Request) -> web.Response:
    # it reads no header, but a SINGLE one twice or faulty framing (an HTTP/1.0 request
    # with a Transfer-Encoding) is refused as on the gateway's other listeners
    refusal = listener_refusal(request)
    if refusal is not None:
        return refusal
    return web.Response(body=_HEALTH, content_type="application/json")


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    generations = app[GENERATIONS]
    config = generations.current.config
    # the gateway's own pooled client (gateway/upstream/): it never retries behind the
    # proxy's back (the proxy tries a GET/HEAD once more itself, counted in the audit line)
    session = UpstreamClient(limit=config.upstream.max_connections)
    app[SESSION] = session
    generations.current.proxy.session = session
    try:
        await generations.start()
        yield
    finally:
        await generations.close()  # every generation's gateway_shutdown
        await session.close()


def log_started(app: web.Application) -> None:
    """Log ``gateway_started`` (plugins, teams, api upstream) on the gateway's log. Whoever
    serves the app calls it once its listeners are bound (the CLI's ``serve``, the demo),
    so a gateway that could not listen never says it started."""
    current = app[GENERATIONS].current
    current.host.log.info(
        "gateway_started",
        plugins=current.host.plugin_names(),
        teams=[t.name for t in current.config.teams],
        upstream_api=current.config.upstream.api,
    )


#: paths no other route may take (gateway/public.py reserves them for the proxy)
_PROXY_ONLY = ("/v1/", "/v2/")


class _EverythingRouter(UrlDispatcher):
    """A router whose every miss is the proxy's catch-all route."""

    fallback: AbstractRoute
    #: the routes are create_app's own: a ``/v1/`` or ``/v2/`` path can only be the
    #: catch-all's, so it is matched without walking the resources (and the catch-all's
    #: regex); a route registered later turns this off
    direct = False

    def register_resource(self, resource: AbstractResource) -> None:
        self.direct = False
        super().register_resource(resource)

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        if self.direct:
            path = request.rel_url.path
            if path.startswith(_PROXY_ONLY):
                return UrlMappingMatchInfo({"tail": path[1:]}, self.fallback)
        match = await super().resolve(request)
        if match.http_exception is None:
            return match
        return UrlMappingMatchInfo({"tail": ""}, self.fallback)


def create_app(
    config: GatewayConfig,
    *,
    host: PluginHost | None = None,
    error_stream: BinaryIO | None = None,
    reuse_port: bool = False,
    reload_from: Callable[[], GatewayConfig] | None = None,
) -> web.Application:
    """Build the gateway app for ``config`` (plugins are loaded and configured here).

    The gateway's own log goes to ``error_stream`` (default: standard error). With
    ``[admin] port`` set, the admin listener (:mod:`gateway.serve.admin`) starts and stops with
    the app; ``reuse_port`` binds it with SO_REUSEPORT, for worker processes sharing it.
    ``reload_from`` reads the config anew for ``app[RELOAD]`` (the CLI re-reads its file);
    without it a reload answers an error.
    """
    host = host or PluginHost(config)
    host.log = make_error_logger(error_stream, extra_processors=host.log_processors)
    app = web.Application(
        handler_args={
            "max_field_size": config.server.max_header_bytes,
            "max_line_size": config.server.max_header_bytes,
            "keepalive_timeout": config.server.keepalive_timeout,
            # a request body reaches the proxy as sent (one with a Content-Encoding is
            # refused there), never inflated: a small gzip could inflate past any limit
            "auto_decompress": False,
        },
        client_max_size=config.server.max_body_bytes,
    )
    proxy = Proxy(config=config, host=host)
    app[SERVER_CONFIG] = config.server
    app[METRICS] = GatewayMetrics.create()
    app[REUSE_PORT] = reuse_port
    generations = Generations(
        app,
        Generation(config, host, proxy, 1),
        load=reload_from,
        error_stream=error_stream,
    )
    app[GENERATIONS] = generations
    app[RELOAD] = generations.reload
    app[REOPEN_LOGS] = generations.reopen_logs
    app.router.add_get("/healthz", _healthz, allow_head=True, expect_handler=continue_at_once)
    # the plugins' public routes (gateway_public_routes), of the current generation
    app.router.register_resource(PublicRoutes(app))
    catch_all = app.router.add_route(
        "*", "/{tail:.*}", generations.handle, expect_handler=continue_later
    )
    # The catch-all route cannot match every request target (`OPTIONS *`, `CONNECT
    # host:443`, a path with an encoded newline): the router sends those to the proxy too,
    # which answers them Stripe-shaped, with a request id and an audit line. (A router
    # subclass, not a middleware: nothing is added to the requests that match.)
    app.router.__class__ = _EverythingRouter
    router = cast(_EverythingRouter, app.router)
    router.fallback = catch_all
    router.direct = True
    app.cleanup_ctx.append(_upstream_session)
    # after the session's: plugins have opened their stores when /readyz can first be asked
    app.cleanup_ctx.append(admin_listener)
    return app
