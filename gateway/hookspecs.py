"""The plugin contract: every hook a stripe-gateway plugin can implement.

Specs are listed in the order the gateway meets them: start-up, then the life of one
request, then shutdown. A plugin is any object (module or class instance) with functions
marked ``@hookimpl`` whose names match these specs; a misspelt hook name stops start-up.

**Async.** Any request hook may be ``async def``; the host awaits it. pluggy itself is
synchronous, so the gateway never lets pluggy combine results: it walks the
implementations in hook order (``tryfirst`` first, then the most recently registered
first, ``trylast`` last) through :mod:`gateway.host`, awaiting each one before calling
the next. Hook wrappers (``wrapper=True``/``hookwrapper=True``) are not supported on
request hooks; measure time in the core, not in wrappers.

**Early answers.** Hooks marked *early answer* may return an ``aiohttp.web.StreamResponse``
to answer the request without going upstream; the first non-``None`` answer wins and no
later implementation of that hook runs.

**Failures.** Each spec says whether an exception in a plugin *fails closed* (the request is
answered with a Stripe-shaped 500 ``api_error`` and nothing goes upstream; at start-up,
start-up stops) or is *logged and skipped* (logged with the plugin's name; the request goes
on as if the hook had returned ``None``). Specs that fail closed are marked
``@fails_closed`` here; the host reads the mark (:func:`fails_closed_hook`), so no caller
chooses the policy. :class:`gateway.errors.StripeErrorResponse` raised from
``gateway_authenticate``, ``gateway_request`` or ``gateway_upstream_headers`` is not a
failure: it is the plugin's chosen answer, sent to the client as is. Raised from
``gateway_response_headers`` or ``gateway_request_finished`` (when the response is already
decided) it is logged and ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiohttp import web
    from multidict import CIMultiDict
    from structlog.typing import Processor

    from gateway.config import GatewayConfig, TeamConfig
    from gateway.context import RequestContext
    from gateway.host import PluginHost
    from gateway.metrics import GatewayMetrics

__all__ = ["PROJECT", "fails_closed", "fails_closed_hook", "hookimpl", "hookspec"]

PROJECT = "stripe_gateway"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

MaybeAwaitable = Any  # T | Awaitable[T]; pluggy cannot express it, the host resolves it

_F = TypeVar("_F", bound=Callable[..., Any])
_FAILS_CLOSED = "stripe_gateway_fails_closed"


def fails_closed(spec: _F) -> _F:
    """Mark a hook spec whose implementations fail closed when they raise."""
    setattr(spec, _FAILS_CLOSED, True)
    return spec


def fails_closed_hook(name: str) -> bool:
    """Whether the hook ``name`` fails closed (its spec is marked :func:`fails_closed`)."""
    return bool(getattr(globals().get(name), _FAILS_CLOSED, False))


# --------------------------------------------------------------------------- start-up


@hookspec
@fails_closed
def gateway_configure(config: GatewayConfig, settings: Any) -> None:
    """Prepare this plugin's state from its settings. Fires once, at start-up and for
    ``stripe-gateway check-config``, before any socket is opened.

    **Declared settings.** A plugin declares its ``[plugins.<name>]`` table as a pydantic
    model class in a ``settings_model`` attribute (on the plugin class, instance or module),
    best derived from :class:`gateway.settings.Settings` (strict, closed, frozen). The host
    validates the table (``{}`` when absent) against it before this hook, with the core's
    key-path errors (``plugins.cache.default_ttl: must be a number > 0``), also when the
    plugin does not implement this hook; the validation context holds ``config``. Every
    built-in plugin with settings declares one, and ``stripe-gateway config-reference``
    documents them.

    :param config: the whole validated gateway config (teams, upstreams, server).
    :param settings: the validated, frozen ``settings_model`` instance; a plugin that
        declares no model gets its raw table as a ``dict`` (``{}`` when absent) and must
        reject keys it does not know itself.

    Return value: ignored. Must be synchronous.

    Failure: raise :class:`gateway.errors.ConfigError` with the key path below the table
    (``"teams.nobody"``, not ``"plugins.rate_limit.teams.nobody"``) for what the model
    cannot check alone (cross-checks with ``config``); the host prefixes the table's path.
    Start-up stops with exit code 2. Any other exception also stops start-up.
    """


@hookspec
@fails_closed
def gateway_log_processors(config: GatewayConfig) -> list[Processor] | None:
    """Contribute structlog processors to every log pipeline the gateway builds: the audit
    line, the error log, and stdlib logging (aiohttp's own loggers among them) routed
    through structlog. Fires once, at start-up, after every plugin's
    :func:`gateway_configure` and before any logger is built.

    :param config: the whole validated gateway config.

    Return value: a list of processors ``(logger, method_name, event_dict) -> event_dict``,
    or ``None`` for none. Every pipeline runs them after exception formatting
    (``exception`` holds the formatted traceback) and in front of its renderer, so no sink
    can bypass them. The lists of all plugins are joined in hook call order; the
    ``redaction`` plugin's implementation is ``trylast``, so its processor runs last, just
    before the renderer, and sees whatever the others added. A processor runs for every
    line the process writes: it must be fast, must not raise and must not log. Must be
    synchronous.

    Failure: start-up stops (fails closed): the gateway never runs with a log pipeline
    that lacks a processor.
    """


@hookspec
@fails_closed
def gateway_startup(
    app: web.Application, host: PluginHost, metrics: GatewayMetrics
) -> MaybeAwaitable:
    """Open resources (connections, files, background tasks) and register metrics. Fires
    once, when the aiohttp application starts, after the upstream client session is open;
    and once more on every config reload, on the new generation's plugins (new
    instances), while the outgoing generation still serves the requests it started.

    :param app: the aiohttp application (its keys: :mod:`gateway.keys`).
    :param host: the plugin host of the generation being started: ``host.config`` is its
        config, ``host.log`` the gateway's error log (a structlog logger).
    :param metrics: the app's metrics; register this plugin's own with
        ``metrics.counter(name, help, labels)`` (or ``histogram``, ``gauge``). A name is
        registered once per app: the next generation's call gets the same metric back.

    Return value: ignored; may be a coroutine, which is awaited.

    Failure: start-up stops (fails closed).
    """


@hookspec
def gateway_carry_over(previous: object) -> MaybeAwaitable:
    """Take over state from the plugin this one replaces on a config reload (SIGHUP or
    ``app[gateway.keys.RELOAD]``). Fires once per reload, on each plugin of the new
    generation that has a namesake in the outgoing one, after every
    :func:`gateway_startup` of the new generation succeeded and before it receives its
    first request. Never fires at start-up.

    :param previous: the outgoing generation's plugin of the same name (usually, but not
        necessarily, an instance of the same class). It is still serving the requests that
        started before the reload, and its :func:`gateway_shutdown` runs once they are done.

    A plugin may adopt state that is safe to share (the built-in ``cache`` keeps its
    memory store when its settings did not change, ``rate_limit`` its in-process buckets);
    it must then release what its own :func:`gateway_startup` opened for that state, and
    make sure ``previous``'s :func:`gateway_shutdown` does not close what it adopted.

    Return value: ignored; may be a coroutine, which is awaited.

    Failure: logged and skipped; the plugin keeps the state its own start-up made.
    """


# --------------------------------------------------------------------------- a request


@hookspec
@fails_closed
def gateway_authenticate(ctx: RequestContext) -> MaybeAwaitable:
    """Identify the caller and decide whether it may make this request. *Early answer.*
    Fires first for every proxied request (not for ``/healthz``).

    :param ctx: the request context; set ``ctx.team`` and ``ctx.upstream_key`` here.

    Return value: ``None`` lets the request go on to the next implementation and then
    to :func:`gateway_request`; a ``StreamResponse`` (or a raised
    :class:`~gateway.errors.StripeErrorResponse`) refuses it.

    Failure: fails closed (500 ``api_error``); a broken authenticator never lets a request
    through.
    """


@hookspec
def gateway_request(ctx: RequestContext) -> MaybeAwaitable:
    """Look at an authenticated request before it goes upstream. *Early answer.*
    Fires after :func:`gateway_authenticate` accepted the request. Rate limits, cache
    lookups and short-circuiting plugins live here.

    :param ctx: the request context (``ctx.team`` is set when the auth plugin is on).

    Return value: ``None`` continues; a ``StreamResponse`` answers the request without
    going upstream (the host still runs :func:`gateway_response_headers` for it unless it
    was already prepared, and always :func:`gateway_request_finished`).

    Failure: logged and skipped.
    """


@hookspec
@fails_closed
def gateway_upstream_headers(ctx: RequestContext, headers: CIMultiDict[str]) -> MaybeAwaitable:
    """Change the headers about to be sent upstream, in place (e.g. inject an
    ``Idempotency-Key``). Fires once per request that goes upstream, before its first
    attempt, after hop-by-hop headers were removed and ``Authorization`` was set from
    ``ctx.upstream_key``; a retry sends the same headers (the same ``Idempotency-Key``).

    Return value: ignored.

    Failure: fails closed (500 ``api_error``, nothing sent upstream).
    """


@hookspec
def gateway_upstream_response(ctx: RequestContext, headers: CIMultiDict[str]) -> MaybeAwaitable:
    """Look at Stripe's answer before anything of it reaches the client. *Early answer.*
    Fires once per request that went upstream: when Stripe's status and headers have
    arrived (``ctx.status``, ``ctx.upstream_request_id`` set; ``headers`` are Stripe's
    response headers), or when the gateway is about to answer 502/504 because Stripe could
    not be reached or timed out (``ctx.error`` set, ``headers`` are the error's headers).

    Return value: ``None`` lets Stripe's answer (or the 502/504) go on to the client; a
    ``StreamResponse`` replaces it (the rest of Stripe's body is discarded), e.g. a cached
    copy served when Stripe fails. Invalidating caches after a successful write belongs
    here: it runs before the client sees the answer.

    Failure: logged and skipped.
    """


@hookspec
def gateway_response_body(
    ctx: RequestContext, headers: CIMultiDict[str], body: bytes
) -> MaybeAwaitable:
    """Change a JSON answer's body before it goes to the client (rewrite a URL, a key).
    Fires only for a request on which a plugin set ``ctx.response_body_limit`` (in
    :func:`gateway_request`, or in :func:`gateway_upstream_response` once the status is
    known), and only for an answer, Stripe's or an early one, whose ``Content-Type`` is
    JSON, that has no ``Content-Encoding`` and whose whole body is within that many bytes;
    every other answer streams untouched (to get Stripe's answers uncompressed, send
    ``Accept-Encoding: identity`` from :func:`gateway_upstream_headers`). Fires once per
    answer, after :func:`gateway_upstream_response` and before
    :func:`gateway_response_headers`; for a HEAD request, never.

    :param ctx: ``ctx.status`` holds the status about to be sent.
    :param headers: the response's headers (read them; the core sets ``Content-Length``).
    :param body: the body so far: Stripe's (or the early answer's), or what the plugins
        before this one made of it.

    Return value: the new body (``bytes``), which the next implementation gets; ``None``
    keeps the body as it is. Keep it cheap when there is nothing to change: look for a
    marker in the bytes before parsing them.

    Failure: logged and skipped: the body goes on as the previous plugin left it.
    """


@hookspec
def gateway_response_headers(ctx: RequestContext, headers: CIMultiDict[str]) -> MaybeAwaitable:
    """Change the headers of the response about to go to the client, in place. Fires once,
    before the first byte of the response is written, for upstream responses and for
    early answers alike (not for responses already prepared by the plugin that made them).

    :param ctx: ``ctx.status`` holds the status about to be sent.

    Return value: ignored.

    Failure: logged and skipped.
    """


@hookspec
def gateway_request_finished(ctx: RequestContext) -> MaybeAwaitable:
    """The request is over: its response was sent in full, or broken off. Fires exactly
    once per request that reached the plugin host, including refused and failed ones.

    :param ctx: complete: status, bytes, latencies, upstream ``Request-Id``, ``error``.

    Return value: ignored.

    Failure: logged and skipped (the response is already gone). The audit plugin guards
    its own sink: see :mod:`plugins.audit`.
    """


@hookspec
def gateway_audit_fields(ctx: RequestContext) -> dict[str, Any] | None:
    """Contribute fields to the request's audit line (the ``cache`` plugin adds ``cache``,
    ``rate_limit`` adds ``rate_limit``). Fires once per request the audit plugin logs, in
    its :func:`gateway_request_finished`, on the plugins that implement it only.

    :param ctx: complete, as in :func:`gateway_request_finished`.

    Return value: a dict of field name to JSON-able value, or ``None`` for none. Fields
    never replace the line's core fields (request id, team, status, ...). Keep it cheap:
    it runs on every request. Must be synchronous.

    Failure: logged and skipped; the line is written without this plugin's fields.
    """


@hookspec
def gateway_audit_line(line: dict[str, Any]) -> None:
    """See a request's audit line as it was written: after every log processor ran (the
    ``redaction`` plugin's among them), so nothing in it is unredacted. Fires once per line
    the audit plugin writes, right after :func:`gateway_audit_fields` made it, on the plugins
    that implement it only (the built-in ``console`` keeps the recent lines for the admin
    listener's console).

    :param line: the processed fields of the line (``timestamp``, ``request_id``, ``team``,
        ``status``, the contributed fields, ...). Read it, never change it: copy what you
        keep. Keep it cheap: it runs on every request.

    Return value: ignored. Must be synchronous.

    Failure: logged and skipped; the line is written all the same.
    """


# --------------------------------------------------------------------------- operations


@hookspec
def gateway_ready(app: web.Application) -> MaybeAwaitable:
    """Say whether what this plugin depends on can be used now (a Redis it shares state
    through, say). Fires for every ``GET /readyz`` on the admin listener, never on the
    request path.

    :param app: the gateway's aiohttp application.

    Return value: a dict of check name to readiness (``{"cache_redis": False}``), or
    ``None`` when the plugin depends on nothing; may be a coroutine, which is awaited.
    Keep it quick (one ping with a short timeout): ``/readyz`` waits for every answer.

    Failure: logged and skipped; the check ``plugin:<name>`` then reports not ready.
    """


@hookspec
@fails_closed
def gateway_admin_routes() -> Iterable[web.AbstractRouteDef] | None:
    """Add routes to the admin listener (``[admin] port``), as ``aiohttp`` route
    definitions: ``[web.post("/admin/cache/purge", self.purge)]``. Fires once per
    generation, after its :func:`gateway_startup`; the listener serves the routes of the
    current generation (a reload swaps them with the plugins).

    A path under ``/admin/`` needs the admin token (``Authorization: Bearer <token>``),
    checked before the handler runs; other paths are open. The core's own paths
    (``/healthz``, ``/readyz``, ``/metrics``, ``/admin/teams``, ``/admin/config``,
    ``/admin/reload``) win over a plugin's. Handlers answer errors Stripe-shaped
    (:func:`gateway.errors.error_response`); ``request.app[gateway.keys.GATEWAY_APP]`` is
    the gateway app. With ``serve --workers N`` a request reaches one worker:
    :func:`gateway.serve.admin.fan_out` passes it on to the others.

    Return value: the route definitions, or ``None`` for none. Must be synchronous.

    Failure: fails closed (start-up stops; a reload is refused).
    """


@hookspec
@fails_closed
def gateway_public_routes() -> Iterable[web.AbstractRouteDef] | None:
    """Serve inbound routes on the main listener, without a gateway key: a webhook
    receiver, say (``[web.post("/webhooks/stripe", self.receive)]``). Fires once per
    generation, after its :func:`gateway_startup`; a reload swaps the routes with the
    plugins.

    The routes are matched before the proxy's catch-all, and only their exact paths: every
    other request goes to the proxy unchanged. They run no request hook (no
    authentication, rate limit, cache) and do not count as proxied requests. The core
    gives each request a gateway request id (``request[gateway.keys.REQUEST_ID]``, sent back
    as ``Request-Id``), answers a raised :class:`~gateway.errors.StripeErrorResponse` as
    is, any other exception with a Stripe-shaped 500 and a wrong method with a
    Stripe-shaped 405, and writes one ``public_request`` line at info level to the gateway
    log (request id, method, path, status, duration, client, and the fields the handler
    put in ``request[gateway.keys.PUBLIC_AUDIT]``). The body is the handler's to read,
    under a cap of its own (``request.read()`` stops at ``[server] max_body_bytes``; a
    streamed read does not). Paths the core serves
    (``/healthz``) win; a path under ``/v1/`` or ``/v2/`` would shadow Stripe's API and is
    refused at start-up, as is a method and path another plugin serves already.

    Return value: the route definitions, or ``None`` for none. Must be synchronous.

    Failure: fails closed (start-up stops; a reload is refused).
    """


@hookspec
def gateway_objects_changed(object_ids: list[str], source: str) -> MaybeAwaitable:
    """Stripe objects changed outside the gateway (an event said so): forget what is known
    about them. Fires when a plugin calls it, never from the core: the built-in
    ``webhooks`` plugin does for every verified event whose object has an id (``await
    host.each("gateway_objects_changed", object_ids=[...], source="webhooks")``). The
    built-in ``cache`` plugin purges every cached variant of each object (as a write through
    the gateway does, in this process's store; with ``serve --workers N`` and the memory
    backend, the other workers keep theirs until their TTL).

    :param object_ids: Stripe object ids (``cus_...``, ``frr_...``).
    :param source: who says so (a plugin name), for logs and metrics.

    Return value: ignored; may be a coroutine, which is awaited.

    Failure: logged and skipped; the other plugins still hear of the change.
    """


@hookspec
def gateway_audit_event(event: str, fields: dict[str, Any]) -> MaybeAwaitable:
    """Record something that is not a proxied request in the audit log: a webhook event
    received, a delivery attempt. Fires when a plugin calls it (``await
    host.each("gateway_audit_event", event="webhook_received", fields={...})``), never from
    the core: the built-in ``webhooks`` plugin does for every request to a webhook source
    (``webhook_received``, rejected ones included) and every delivery attempt
    (``webhook_delivery``). The built-in ``audit`` plugin writes one line named ``event``
    with ``fields`` where it writes its request lines (its file, or standard output),
    through the same log processors (redaction), with the worker's index and pid under
    ``serve --workers N``; a line it cannot write goes to the gateway's error log with the
    reason, as its request lines do. Check ``"gateway_audit_event" in host.implemented``
    first to skip the call when no plugin records these.

    :param event: the line's name, a ``snake_case`` word (``webhook_delivery``).
    :param fields: JSON-able values for the line; never secrets (the line is redacted all
        the same). Implementations must not change the dict; the keys ``event``, ``level``
        and ``timestamp`` are the line's own and are ignored.

    Return value: ignored; may be a coroutine, which is awaited.

    Failure: logged and skipped; the other plugins still record the event.
    """


@hookspec
def gateway_admin_team(team: TeamConfig) -> dict[str, Any] | None:
    """Contribute fields to one team's entry in the admin listener's ``GET /admin/teams``
    (the ``rate_limit`` plugin adds ``rate_limit``: the team's limits and levels). Fires
    for each team on every such request, and for the ``console`` plugin's summary (at most
    once a second), never on the request path.

    :param team: the team's config, from the current generation.

    Return value: a dict of field name to JSON-able value, or ``None`` for none; never
    secrets. Must be synchronous.

    Failure: logged and skipped (the entry goes without this plugin's fields).
    """


@hookspec
def gateway_reopen_logs(app: web.Application) -> MaybeAwaitable:
    """Reopen the log files this plugin writes, by path, as nginx does on ``USR1``: an
    operator (or logrotate) has renamed or removed them. Fires on every ``SIGUSR1`` the
    serving process gets (one that arrives before it listens, once it does; with ``serve
    --workers N`` the supervisor passes the signal on to every worker), on the current
    generation's plugins only, never on the request path; also through
    ``await app[gateway.keys.REOPEN_LOGS]()``.

    :param app: the gateway's aiohttp application.

    Write from now on to a file freshly opened at the configured path (creating it), then
    close the old one; lines not yet written go to the new file. A plugin that cannot
    reopen should fail closed the way its writes do (the built-in ``audit`` plugin answers
    503 ``audit_unavailable`` until the path can be opened again).

    Return value: ignored; may be a coroutine, which is awaited.

    Failure: logged and skipped; the other plugins still reopen theirs.
    """


# --------------------------------------------------------------------------- shutdown


@hookspec
def gateway_shutdown(app: web.Application) -> MaybeAwaitable:
    """Flush and close what :func:`gateway_startup` opened. Fires once per generation:
    at stop, after in-flight requests have drained (or the drain timeout passed), before
    the upstream session closes; after a config reload, on the outgoing generation's
    plugins once the last request that started on it has finished (``app[...]`` keys then
    already show the new generation: keep what you need from start-up).

    Return value: ignored; may be a coroutine, which is awaited.

    Failure: logged and skipped, so every plugin gets its turn.
    """
