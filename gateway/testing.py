"""Test a plugin without the whole stack (mitmproxy's ``taddons.context()`` is the model).

:class:`PluginTest` builds a real :class:`~gateway.host.PluginHost` with the plugins you
choose and their settings (the built-ins are off unless named), runs their start-up and
shutdown on a bare app, and calls their hooks the way the proxy does; :func:`request_context`
makes a :class:`~gateway.context.RequestContext` for a method, path, headers and body,
without a server::

    async def test_whoami_answers_for_the_team() -> None:
        async with PluginTest(WhoAmIPlugin(), settings={"whoami": {"header": "X-Team"}}) as t:
            ctx = t.context("GET", "/v1/gateway/whoami", team="billing")
            answer = await t.request(ctx)
            assert answer is not None and answer.status == 200
            await t.finish(ctx)
            assert t.audit_fields(ctx) == {"whoami": "billing"}

Hooks run in the host's order and with its failure policy: a fail-closed hook that raises
makes :meth:`PluginTest.request` raise :class:`~gateway.host.PluginFailure`. What needs
real sockets (the admin token check, streaming, the upstream) is tested against a real
gateway (``tests/helpers.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import urllib.parse
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from unittest import mock

import orjson
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config import GatewayConfig, parse_config
from gateway.context import RequestContext, new_request_id
from gateway.errors import StripeErrorResponse
from gateway.host import DEFAULT_PLUGINS, PluginHost
from gateway.keys import GATEWAY_APP, GENERATIONS, METRICS
from gateway.logs import make_error_logger
from gateway.metrics import GatewayMetrics
from gateway.proxy import Proxy
from gateway.routing import upstream_for
from gateway.serve.reload import Generation, Generations

__all__ = [
    "ANALYTICS_KEY",
    "BILLING_KEY",
    "TEAMS",
    "PluginTest",
    "mocked_request",
    "request_context",
]

#: the gateway keys of :data:`TEAMS` (what a client sends as ``Authorization: Bearer``)
BILLING_KEY = "gw_test_billing_0000000000000001"
ANALYTICS_KEY = "gw_test_analytics_00000000000001"
#: the teams of a :class:`PluginTest` config unless it names its own: ``billing`` (its
#: requests go upstream with ``sk_test_billing``) and ``analytics`` (``sk_test_analytics``)
TEAMS: tuple[dict[str, Any], ...] = (
    {
        "name": "billing",
        "key_sha256": [hashlib.sha256(BILLING_KEY.encode()).hexdigest()],
        "upstream_key_env": "PLUGIN_TEST_BILLING_KEY",
    },
    {
        "name": "analytics",
        "key_sha256": [hashlib.sha256(ANALYTICS_KEY.encode()).hexdigest()],
        "upstream_key_env": "PLUGIN_TEST_ANALYTICS_KEY",
    },
)
_ENVIRON = {
    "PLUGIN_TEST_BILLING_KEY": "sk_test_billing",
    "PLUGIN_TEST_ANALYTICS_KEY": "sk_test_analytics",
}
_FORM = "application/x-www-form-urlencoded"


def request_context(
    method: str = "GET",
    path: str = "/v1/customers",
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    app: web.Application | None = None,
) -> RequestContext:
    """A :class:`RequestContext` for a request that never touched a socket (the core's
    fields at their start values: no team, status 0). With a ``body``, call it from a
    coroutine (the body is a stream bound to the running loop)."""
    request = mocked_request(method, path, headers, body, app=app)
    name = upstream_for(request.method, request.path)
    return RequestContext(
        request=request,
        request_id=new_request_id(),
        upstream_name=name,
        upstream_url="https://api.stripe.com" if name is not None else "",
    )


def mocked_request(
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    app: web.Application | None = None,
    match_info: Mapping[str, str] | None = None,
) -> web.Request:
    """An ``aiohttp`` request with no connection behind it (``make_mocked_request``)."""
    fields = CIMultiDict(headers or {})
    payload: StreamReader = EMPTY_PAYLOAD
    if body:
        fields.setdefault("Content-Length", str(len(body)))
        payload = StreamReader(mock.Mock(), 1 << 16, loop=asyncio.get_running_loop())
        payload.feed_data(body)
        payload.feed_eof()
    return make_mocked_request(
        method,
        path,
        headers=fields,
        app=app,
        payload=payload,
        match_info=dict(match_info or {}),
    )


def _name_of(plugin: object) -> str:
    name = getattr(plugin, "name", None) or getattr(plugin, "__name__", None)
    if not name:
        raise ValueError(f"{plugin!r} has no name: give it a `name` attribute")
    return str(name)


class PluginTest:
    """A plugin host with chosen ``plugins`` (objects or classes with a ``name``), no server.

    ``settings`` are the ``[plugins.<name>]`` tables, ``builtins`` the built-in plugins to
    keep on (``("auth",)`` to have teams authenticated); ``config`` is any further config
    (``teams`` defaults to :data:`TEAMS`; ``environ`` gives the environment it is read
    with). Use it as ``async with``, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *plugins: object,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        builtins: Iterable[str] = (),
        config: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        named = [(_name_of(p), p) for p in plugins]
        keep = set(builtins)
        data: dict[str, Any] = {"teams": [dict(t) for t in TEAMS], **(config or {})}
        tables = dict(data.get("plugins", {}))
        given = {name for name, _ in named}
        tables.setdefault(
            "disable",
            [name for name, _ in DEFAULT_PLUGINS if name not in keep and name not in given],
        )
        tables.update({name: dict(table) for name, table in (settings or {}).items()})
        data["plugins"] = tables
        self.config: GatewayConfig = parse_config(
            data, source="<gateway.testing>", environ={**_ENVIRON, **(environ or {})}
        )
        self._log = io.BytesIO()
        self.host = PluginHost(
            self.config,
            entry_points_enabled=False,
            plugins=named,
        )
        self.host.log = make_error_logger(self._log, extra_processors=self.host.log_processors)
        self.metrics = GatewayMetrics.create()
        #: a bare gateway app with the keys a plugin may read (no route, no listener)
        self.app = web.Application()
        self.app[METRICS] = self.metrics
        proxy = Proxy(config=self.config, host=self.host)
        self.app[GENERATIONS] = Generations(self.app, Generation(self.config, self.host, proxy, 1))
        self._admin = web.Application()
        self._admin[GATEWAY_APP] = self.app
        self._started = False

    def plugin(self, name: str) -> Any:
        """The registered plugin called ``name``."""
        plugin = self.host.pm.get_plugin(name)
        if plugin is None:
            raise KeyError(f"no plugin named {name!r}")
        return plugin

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """``gateway_startup`` (with ``app``, ``host``, ``metrics``), then admin routes."""
        await self.app[GENERATIONS].start()
        self._started = True

    async def stop(self) -> None:
        """``gateway_shutdown``."""
        if self._started:
            self._started = False
            await self.app[GENERATIONS].close()

    async def __aenter__(self) -> PluginTest:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------- requests

    def context(
        self,
        method: str = "GET",
        path: str = "/v1/customers",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        team: str | None = None,
    ) -> RequestContext:
        """:func:`request_context`, with ``ctx.team`` and ``ctx.upstream_key`` set as the
        auth plugin would for the team called ``team``."""
        ctx = request_context(method, path, headers, body, app=self.app)
        if team is not None:
            found = [t for t in self.config.teams if t.name == team]
            if not found:
                raise KeyError(f"no team named {team!r}")
            ctx.team = found[0]
            secret = found[0].upstream_key
            ctx.upstream_key = secret.get_secret_value() if secret is not None else None
        return ctx

    async def request(self, ctx: RequestContext) -> web.StreamResponse | None:
        """``gateway_authenticate`` then ``gateway_request``, as the proxy calls them: the
        first answer (a raised ``StripeErrorResponse`` becomes its response), or ``None``
        when the request would go upstream."""
        try:
            for hook in ("gateway_authenticate", "gateway_request"):
                answer = await self.host.first(hook, ctx=ctx)
                if answer is not None:
                    return answer
        except StripeErrorResponse as exc:
            return exc.to_response(ctx.request_id)
        return None

    async def upstream_headers(
        self, ctx: RequestContext, headers: Mapping[str, str] | None = None
    ) -> CIMultiDict[str]:
        """``gateway_upstream_headers`` on a copy of ``headers``; returns what goes up."""
        out = CIMultiDict(headers or {})
        await self.host.each("gateway_upstream_headers", ctx=ctx, headers=out)
        return out

    async def response_body(
        self,
        ctx: RequestContext,
        body: bytes,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """``gateway_upstream_response`` then, as the proxy does, ``gateway_response_body``
        when a plugin asked for bodies (``ctx.response_body_limit``) and ``body`` is within
        the limit: the body the client would get (a JSON answer by default)."""
        sent = CIMultiDict(headers or {"Content-Type": "application/json"})
        ctx.status = status
        await self.host.first("gateway_upstream_response", ctx=ctx, headers=sent)
        if 0 < len(body) <= ctx.response_body_limit:
            body = await self.host.rewrite("gateway_response_body", body, ctx=ctx, headers=sent)
        return body

    async def finish(
        self,
        ctx: RequestContext,
        status: int = 200,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        outcome: str = "ok",
    ) -> CIMultiDict[str]:
        """The request ends with ``status`` (and ``body``, a JSON answer by default):
        ``gateway_response_headers`` then ``gateway_request_finished``. Returns the
        response headers the plugins set."""
        sent = CIMultiDict(headers or {"Content-Type": "application/json"})
        ctx.status = status
        await self.host.each("gateway_response_headers", ctx=ctx, headers=sent)
        if body is not None:
            ctx.bytes_out = len(body)
            if len(body) <= ctx.capture_limit:
                ctx.response_body, ctx.response_headers = body, CIMultiDict(sent)
        ctx.outcome = outcome
        await self.host.each("gateway_request_finished", ctx=ctx)
        return sent

    def audit_fields(self, ctx: RequestContext) -> dict[str, Any]:
        """The fields the plugins add to the request's audit line (``gateway_audit_fields``
        and ``ctx.audit``), as the audit plugin merges them."""
        return {**ctx.audit, **self.host.fields("gateway_audit_fields", ctx=ctx)}

    # ----------------------------------------------------------------- operations

    async def admin(
        self,
        method: str,
        path: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Call the plugins' admin route for ``method path`` (``data`` as a form). The
        admin token check is the listener's: it is not made here."""
        router = self.host.admin_router
        if router is None:
            raise RuntimeError("start() first: admin routes are collected at start-up")
        fields = dict(headers or {})
        body = b""
        if data is not None:
            body = urllib.parse.urlencode(dict(data)).encode()
            fields.setdefault("Content-Type", _FORM)
        match = await router.resolve(mocked_request(method, path, fields, app=self._admin))
        if match.http_exception is not None:
            return match.http_exception
        request = mocked_request(method, path, fields, body, app=self._admin, match_info=match)
        response: web.StreamResponse = await match.handler(request)
        return response

    async def public(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Call the plugins' public route for ``method path`` (``gateway_public_routes``)
        with ``body``, as the main listener does: with a request id, Stripe-shaped errors
        and the ``public_request`` log line (:meth:`logs`)."""
        router = self.host.public_router
        if router is None:
            raise RuntimeError("no public route: start() first, or no plugin serves one")
        fields = dict(headers or {})
        match = await router.resolve(mocked_request(method, path, fields, app=self.app))
        if match.http_exception is not None:
            return match.http_exception
        request = mocked_request(method, path, fields, body, app=self.app, match_info=match)
        response: web.StreamResponse = await match.handler(request)
        return response

    def admin_team(self, team: str) -> dict[str, Any]:
        """The fields the plugins add to ``team``'s entry in ``GET /admin/teams``."""
        (config,) = [t for t in self.config.teams if t.name == team]
        return self.host.fields("gateway_admin_team", team=config)

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """A sample's value in the app's registry (``stripe_gateway_cache_requests_total``)."""
        self.metrics.flush()
        return self.metrics.registry.get_sample_value(name, dict(labels or {}))

    def logs(self) -> list[dict[str, Any]]:
        """The lines the plugins wrote to the gateway's error log, parsed."""
        return [orjson.loads(line) for line in self._log.getvalue().splitlines() if line]
