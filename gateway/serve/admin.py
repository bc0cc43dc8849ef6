"""The admin listener: metrics, health and admin endpoints on their own address and port.

``[admin] port`` turns it on; it starts and stops with the gateway app (a cleanup context
after the upstream session's, so plugins have opened their stores) and serves:

=========================  ======  =========================================================
``GET /healthz``           open    the process is alive
``GET /readyz``            open    config loaded, upstream session open, every plugin's
                                   ``gateway_ready`` checks pass (Redis reachable); 503
                                   naming what is not ready otherwise
``GET /metrics``           open    Prometheus text (:mod:`gateway.metrics`)
``GET /admin/teams``       token   teams (digest prefixes only), with what plugins add to
                                   each (``gateway_admin_team``: the rate-limit state)
``GET /admin/config``      token   the effective config, secrets masked
``POST /admin/reload``     token   re-read the config file and swap it in under traffic
                                   (:mod:`gateway.serve.reload`); in a worker, ask the supervisor
                                   (SIGHUP), which validates it and reloads every worker
=========================  ======  =========================================================

Plugins add their own routes (``gateway_admin_routes``: the ``cache`` plugin's
``POST /admin/cache/purge``); the listener serves those of the current generation.

*token*: ``Authorization: Bearer <admin token>``, for every path under ``/admin/``,
plugins' included; the token's SHA-256 is compared in constant time with ``[admin]
token_sha256``. Without a digest configured every token is refused. Refusals and errors
are Stripe-shaped JSON, like the gateway's own.

With several worker processes sharing the port (``reuse_port``), each request reaches one
of them: ``/metrics`` is summed over all of them (multiprocess mode); a plugin's route
passes a request on to every other worker with :func:`fan_out`, over the workers' private
Unix sockets (``STRIPE_GATEWAY_RUN_DIR``), as the cache purge does so that it reaches
every worker's memory cache; a reload goes through the supervisor (SIGHUP); ``/readyz``
and ``/admin/teams`` answer for the worker that got the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import (
    UrlMappingMatchInfo,
)

from gateway import __version__
from gateway.context import new_request_id
from gateway.errors import ErrorType, error_response
from gateway.headers import listener_refusal
from gateway.keys import (
    ADMIN_URLS,
    GATEWAY_APP,
    GENERATIONS,
    METRICS,
    RELOAD,
    REUSE_PORT,
    SESSION,
)
from gateway.metrics import CONTENT_TYPE_LATEST, exposition
from gateway.public import GenerationRoutes
from gateway.serve.workers import RUN_DIR_ENV, worker_role

if TYPE_CHECKING:
    from gateway.serve.reload import Generation

__all__ = [
    "FANOUT_HEADER",
    "PeerAnswer",
    "admin_listener",
    "create_admin_app",
    "fan_out",
    "form_value",
    "masked_config",
]

_HEALTH = orjson.dumps({"status": "ok", "version": __version__})
_JSON = "application/json"
#: seconds /readyz waits for one plugin's checks
_READY_TIMEOUT = 2.0
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^@/\s]*@", re.I)
_SECRET_NAME = re.compile(r"pass|secret|token|credential|(?<![a-z])key(?![a-z_]*(?:env|prefix))")


def admin_error(
    status: int, message: str, *, code: str | None = None, type: ErrorType | None = None
) -> web.Response:
    """A Stripe-shaped error for an admin route (plugins' routes too), with a request id;
    ``api_error`` for 5xx, else ``invalid_request_error``."""
    return error_response(
        status,
        message,
        request_id=new_request_id(),
        type=type or ("api_error" if status >= 500 else "invalid_request_error"),
        code=code,
    )


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=_JSON)


def _short(digest: str) -> str:
    return digest[:12] + "…"


# ------------------------------------------------------------------ middleware


@web.middleware
async def _errors_and_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Stripe-shaped errors for everything, ambiguous headers refused before anything else
    (:func:`~gateway.headers.listener_problem`: two ``Authorization`` headers, say, where
    which token was checked would be a guess; ``Connection`` naming one it reads; faulty
    framing, such as an HTTP/1.0 request with a Transfer-Encoding, RFC 9112 §6.1: answered,
    then the connection closed), and the token check for ``/admin/*``."""
    refusal = listener_refusal(request, _READS)
    if refusal is not None:
        return refusal
    if request.path.startswith("/admin/") and not _authorized(request):
        return admin_error(
            401,
            "Admin endpoints need 'Authorization: Bearer <admin token>'; this request had "
            "none, or a wrong one.",
            code="admin_unauthorized",
        )
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            return admin_error(404, f"Unrecognized admin URL ({request.method}: {request.path}).")
        if exc.status == 405:
            return admin_error(405, f"{request.method} is not allowed on {request.path}.")
        return admin_error(exc.status, exc.reason)


def _current(gateway: web.Application) -> Generation:
    """The generation requests are served with now."""
    return gateway[GENERATIONS].current


def _authorized(request: web.Request) -> bool:
    # the current config's digest: a reload rotates or revokes the token at once
    digest = _current(request.app[GATEWAY_APP]).config.admin.token_sha256
    expected = bytes.fromhex(digest) if digest else b""
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    # compare even when nothing usable was sent, so timing says nothing about the header
    same = hmac.compare_digest(presented, expected)
    return same and bool(expected) and scheme.lower() == "bearer" and bool(token)


# ------------------------------------------------------------------ open endpoints


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(body=_HEALTH, content_type=_JSON)


async def _readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_APP]
    session = gateway.get(SESSION)
    checks: dict[str, bool] = {
        "config": True,  # the app exists, so its config was loaded and validated
        "upstream_session": session is not None and not session.closed,
    }
    host = _current(gateway).host
    for impl in reversed(host.pm.hook.gateway_ready.get_hookimpls()):
        name = impl.plugin_name
        try:
            kwargs = {"app": gateway}
            got: Any = impl.function(*(kwargs[a] for a in impl.argnames))
            if inspect.isawaitable(got):
                got = await asyncio.wait_for(got, _READY_TIMEOUT)
        except Exception:
            host.log.exception("plugin_failed", plugin=name, hook="gateway_ready")
            checks[f"plugin:{name}"] = False
            continue
        if got:
            checks.update({str(k): bool(v) for k, v in dict(got).items()})
    not_ready = sorted(name for name, ok in checks.items() if not ok)
    body: dict[str, Any] = {"status": "not_ready" if not_ready else "ready", "checks": checks}
    if not_ready:
        body["not_ready"] = not_ready
    return _json(body, 503 if not_ready else 200)


async def _metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_APP]
    metrics = gateway[METRICS]
    _refresh_in_flight(gateway)
    metrics.flush()  # on the loop, where the plugins keep their counts
    text = await asyncio.get_running_loop().run_in_executor(None, exposition, metrics, False)
    return web.Response(body=text, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


def _refresh_in_flight(gateway: web.Application) -> None:
    """``requests_in_flight`` from the route handler's own count (no gauge update on the
    request path): set when scraped, and every second for the other workers' sums."""
    gateway[METRICS].in_flight.set(gateway[GENERATIONS].in_flight)


async def _refresh_every_second(gateway: web.Application) -> None:
    while True:
        await asyncio.sleep(1.0)
        _refresh_in_flight(gateway)


# ------------------------------------------------------------------ admin endpoints


#: set on an admin request one worker passes on to the others (who must not pass it on)
FANOUT_HEADER = "X-Stripe-Gateway-Fanout"
#: the headers the admin listener reads (with :data:`~gateway.headers.SINGLE`'s): each may be
#: sent once, and ``Connection`` may not name one (the middleware's check)
_READS = frozenset({"authorization", FANOUT_HEADER.lower()})


def _run_dir() -> Path | None:
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def _own_socket(run_dir: Path) -> Path:
    return run_dir / f"admin-{os.getpid()}.sock"


def _peer_sockets() -> list[Path]:
    """The other workers' private admin sockets (``serve --workers N``), else none."""
    run_dir = _run_dir()
    if run_dir is None:
        return []
    own = _own_socket(run_dir)
    return sorted(p for p in run_dir.glob("admin-*.sock") if p != own)


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """What one other worker answered to a request passed on by :func:`fan_out`."""

    #: its HTTP status; None when it could not be reached
    status: int | None
    #: its JSON answer (None when it could not be reached)
    body: Any
    #: None when it answered 200; else its error ``code`` (``"failed"`` without one), or
    #: the name of the exception that kept it from answering
    error: str | None


async def fan_out(
    request: web.Request, data: Mapping[str, str], *, timeout: float = 5.0
) -> dict[str, PeerAnswer]:
    """Pass an admin request on to every other worker process of ``serve --workers N``,
    each on its private Unix socket: the same method and path, ``data`` as a form, the same
    ``Authorization``, at once and each within ``timeout`` seconds. Returns each worker's
    answer by socket name: ``{}`` in a single process, and for a request that was itself
    passed on (it is never passed on again)."""
    if request.headers.get(FANOUT_HEADER) is not None:
        return {}
    sockets = _peer_sockets()
    if not sockets:
        return {}
    headers = {FANOUT_HEADER: "1", hdrs.AUTHORIZATION: request.headers.get(hdrs.AUTHORIZATION, "")}
    url = f"http://worker{request.rel_url.path}"

    async def one(path: Path) -> tuple[str, PeerAnswer]:
        try:
            connector = aiohttp.UnixConnector(path=str(path))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.request(
                    request.method,
                    url,
                    data=dict(data),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response,
            ):
                body = await response.json()
                error = None
                if response.status != 200:
                    error = str(body.get("error", {}).get("code") or "failed")
                return path.name, PeerAnswer(response.status, body, error)
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
            return path.name, PeerAnswer(None, None, type(exc).__name__)

    return dict(await asyncio.gather(*(one(path) for path in sockets)))


async def form_value(request: web.Request, name: str) -> str | None:
    """The stripped, non-empty value of ``name`` in the request's form or JSON body."""
    if request.content_type == _JSON:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None
        value = data.get(name) if isinstance(data, dict) else None
    else:
        value = (await request.post()).get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


async def _teams(request: web.Request) -> web.Response:
    current = _current(request.app[GATEWAY_APP])
    host = current.host
    data = []
    for team in current.config.teams:
        upstream = (
            "env" if team.upstream_key_env else "file" if team.upstream_key_file else "passthrough"
        )
        item: dict[str, Any] = {
            "name": team.name,
            "allow": team.allow,
            "stripe_accounts": team.stripe_accounts,
            "key_sha256_prefixes": [_short(d) for d in team.key_sha256],
            "upstream_key": upstream,
        }
        if "gateway_admin_team" in host.implemented:  # plugins add; they never replace
            item = {**host.fields("gateway_admin_team", team=team), **item}
        data.append(item)
    return _json({"object": "list", "data": data})


def masked_config(config: Any) -> dict[str, Any]:
    """The effective config as JSON-able data without secrets: no upstream keys, no
    passwords in URLs, nothing under a secret-looking key, digests shortened."""
    data: dict[str, Any] = config.model_dump(mode="json")
    for team in data.get("teams", []):
        team.pop("upstream_key", None)
        team["key_sha256"] = [_short(d) for d in team.get("key_sha256", [])]
    admin = data.get("admin", {})
    if admin.get("token_sha256"):
        admin["token_sha256"] = _short(admin["token_sha256"])
    for section in ("server", "upstream", "plugins"):
        data[section] = _masked(data.get(section, {}))
    data["source"] = config.source
    return data


def _masked(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_NAME.search(key.lower()):
            return "[masked]"
        return _URL_PASSWORD.sub(r"\g<scheme>[masked]@", value)
    return value


async def _config(request: web.Request) -> web.Response:
    return _json(masked_config(_current(request.app[GATEWAY_APP]).config))


async def _reload(request: web.Request) -> web.Response:
    role = worker_role()
    if role is not None and role.supervisor is not None and os.getppid() == role.supervisor:
        # One worker got this request; every worker must reload, after the supervisor
        # has validated the file: the same path as a SIGHUP sent to the supervisor.
        os.kill(role.supervisor, signal.SIGHUP)
        return _json(
            {
                "reloaded": None,
                "requested": True,
                "error": None,
                "message": "Reload requested from the supervisor: it validates the config "
                "file, then every worker reloads (config_reloaded or config_reload_failed "
                "in the log).",
            },
            status=202,
        )
    reload = request.app[GATEWAY_APP].get(RELOAD)
    if reload is None:
        return admin_error(
            501,
            "Config reload is not available in this gateway process.",
            code="reload_unavailable",
        )
    result = await reload()
    if not result.get("reloaded"):
        return admin_error(
            400,
            f"The config was not reloaded: {result.get('error')}. The running config stays.",
            code="config_invalid",
            type="invalid_request_error",
        )
    return _json(result)


# ------------------------------------------------------------------ the app


class _PluginRoutes(GenerationRoutes):
    """The plugins' admin routes: resolved against the current generation's router
    (:meth:`gateway.host.PluginHost.build_admin_router`), after the core's routes, so a
    reload swaps them with the plugins."""

    no_prefix = "the admin listener's plugin routes take no prefix"

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo | None, set[str]]:
        router = _current(self._gateway).host.admin_router
        if router is None:
            return None, set()
        match = await router.resolve(request)
        exc = match.http_exception
        if exc is None:
            return match, set()
        return None, set(getattr(exc, "allowed_methods", ()))


def create_admin_app(gateway: web.Application) -> web.Application:
    """The admin app for ``gateway`` (built by :func:`gateway.app.create_app`)."""

    admin = web.Application(middlewares=[_errors_and_auth], client_max_size=64 * 1024)
    admin[GATEWAY_APP] = gateway
    admin.router.add_get("/healthz", _healthz, allow_head=True)
    admin.router.add_get("/readyz", _readyz, allow_head=True)
    admin.router.add_get("/metrics", _metrics)
    admin.router.add_get("/admin/teams", _teams)
    admin.router.add_get("/admin/config", _config)
    admin.router.add_post("/admin/reload", _reload)
    admin.router.register_resource(_PluginRoutes(gateway))
    return admin


async def admin_listener(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context of the gateway app: serve the admin app while the gateway runs."""
    config = _current(app).config.admin
    if not config.enabled:
        app[ADMIN_URLS] = []
        yield
        return
    runner = web.AppRunner(create_admin_app(app), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            config.host,
            config.port,
            reuse_address=True,
            reuse_port=app.get(REUSE_PORT, False) or None,
        )
        await site.start()
        app[ADMIN_URLS] = [
            f"http://[{a[0]}]:{a[1]}" if ":" in a[0] else f"http://{a[0]}:{a[1]}"
            for a in runner.addresses
            if isinstance(a, tuple)
        ]
        run_dir = _run_dir()
        if run_dir is not None:
            # a worker: a private socket too, where the other workers reach this one
            # (a purge must reach every worker's memory)
            own = _own_socket(run_dir)
            await web.UnixSite(runner, str(own)).start()
        _current(app).host.log.info("admin_listening", urls=app[ADMIN_URLS])
        refresher = (
            asyncio.get_running_loop().create_task(_refresh_every_second(app))
            if app[METRICS].multiprocess
            else None
        )
        yield
    finally:
        if "refresher" in locals() and refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        await runner.cleanup()
        run_dir = _run_dir()
        if run_dir is not None:
            with contextlib.suppress(OSError):
                _own_socket(run_dir).unlink()
