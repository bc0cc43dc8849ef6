"""Every typed ``aiohttp`` app key the gateway defines, in one place.

This module imports nothing from the gateway at run time (the types are for the type
checker only), so any module, plugins included, can import it without a cycle and without
importing the app factory.

The gateway app (built by :func:`gateway.app.create_app`):

* :data:`GENERATIONS` what the app serves with now: ``app[GENERATIONS].current`` has
  ``config``, ``host`` (the :class:`~gateway.host.PluginHost`) and ``proxy``; a config
  reload replaces ``current`` (see :mod:`gateway.serve.reload`)
* :data:`METRICS` the app's metrics registry (:class:`~gateway.metrics.GatewayMetrics`)
* :data:`SESSION` the upstream client (:class:`~gateway.upstream.UpstreamClient`), shared by
  every generation
* :data:`RELOAD`, :data:`REOPEN_LOGS` what SIGHUP and SIGUSR1 run
* :data:`SERVER_CONFIG` the ``[server]`` limits :class:`~gateway.serve.server.GatewayRunner`
  applies
* :data:`REUSE_PORT`, :data:`ADMIN_URLS` the admin listener's socket option and addresses

The admin app (:mod:`gateway.serve.admin`): :data:`GATEWAY_APP`, the gateway app it serves for
(``request.app[GATEWAY_APP]`` in a plugin's admin route).

A request to a plugin's public route (``gateway_public_routes``): :data:`REQUEST_ID`, its
gateway request id, and :data:`PUBLIC_AUDIT`, fields for its ``public_request`` log line.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from gateway.config import ServerConfig
    from gateway.metrics import GatewayMetrics
    from gateway.serve.reload import Generations, ReloadResult
    from gateway.upstream import UpstreamClient

__all__ = [
    "ADMIN_URLS",
    "GATEWAY_APP",
    "GENERATIONS",
    "METRICS",
    "PUBLIC_AUDIT",
    "RELOAD",
    "REOPEN_LOGS",
    "REQUEST_ID",
    "REUSE_PORT",
    "SERVER_CONFIG",
    "SESSION",
]

#: the app's generations; ``app[GENERATIONS].current`` is the one new requests start on
GENERATIONS: web.AppKey[Generations] = web.AppKey("generations")
#: the app's metrics: core metrics, and where plugins register theirs
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics")
#: the upstream client session (set while the app runs)
SESSION: web.AppKey[UpstreamClient] = web.AppKey("session")
#: ``await app[RELOAD]()``: re-read the config and swap it in under traffic; returns a
#: JSON-able ``{"reloaded": bool, "error": str | None, ...}`` (see Generations.reload)
RELOAD: web.AppKey[Callable[[], Coroutine[Any, Any, ReloadResult]]] = web.AppKey("reload")
#: ``await app[REOPEN_LOGS]()``: the current generation's plugins reopen their log files
#: by path (``gateway_reopen_logs``); the CLI calls it on SIGUSR1
REOPEN_LOGS: web.AppKey[Callable[[], Coroutine[Any, Any, None]]] = web.AppKey("reopen_logs")
#: the ``[server]`` table (without it the defaults apply)
SERVER_CONFIG: web.AppKey[ServerConfig] = web.AppKey("server_config")
#: bind the admin port with SO_REUSEPORT (every worker process binds it)
REUSE_PORT: web.AppKey[bool] = web.AppKey("reuse_port")
#: the URLs the admin listener bound, once started (empty when it is off)
ADMIN_URLS: web.AppKey[list[str]] = web.AppKey("admin_urls")
#: on the admin app: the gateway app it serves for
GATEWAY_APP: web.AppKey[web.Application] = web.AppKey("gateway_app")
#: on a public route's request: its gateway request id (also sent as ``Request-Id``)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
#: on a public route's request: fields the handler adds to its ``public_request`` line
PUBLIC_AUDIT: web.RequestKey[dict[str, Any]] = web.RequestKey("public_audit")
