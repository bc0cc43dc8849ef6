"""The admin listener: metrics, health and admin endpoints on their own address and port.

``[admin] port`` turns it on; it starts and stops with the gateway app (a cleanup context
after the upstream session's, so plugins have opened their stores) and serves:

=========================  ======  =========================================================
``GET /healthz``           open    the process is alive
``GET /readyz``            open    config loaded, upstream session open, every plugin's
                                   ``gateway_ready`` checks pass (Redis reachable); 503
                                   naming what is not ready otherwise
``GET /metrics``           open    Prometheus text (:mod:`gateway.metrics`)
``POST /admin/cache/purge`` token  drop every cached variant of ``object_id``
``GET /admin/teams``       token   teams (digest prefixes only) and their rate-limit state
``GET /admin/config``      token   the effective config, secrets masked
``POST /admin/reload``     token   re-read the config file and swap it in under traffic
                                   (:mod:`gateway.reload`); in a worker, ask the supervisor
                                   (SIGHUP), which validates it and reloads every worker
=========================  ======  =========================================================

*token*: ``Authorization: Bearer <admin token>``; the token's SHA-256 is compared in
constant time with ``[admin] token_sha256``. Without a digest configured every token is
refused. Refusals and errors are Stripe-shaped JSON, like the gateway's own.

With several worker processes sharing the port (``reuse_port``), each request reaches one
of them: ``/metrics`` is summed over all of them (multiprocess mode); a purge is passed on
to every other worker over its private Unix socket (``STRIPE_GATEWAY_RUN_DIR``), so it
reaches every worker's memory cache; a reload goes through the supervisor (SIGHUP);
``/readyz`` and ``/admin/teams`` answer for the worker that got the request.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson
from aiohttp import hdrs, web

from gateway import __version__
from gateway.context import OBJECT_ID, new_request_id
from gateway.errors import ErrorType, error_response
from gateway.metrics import CONTENT_TYPE_LATEST, METRICS, exposition

if TYPE_CHECKING:
    from gateway.reload import Generation

__all__ = [
    "ADMIN_URLS",
    "REUSE_PORT",
    "admin_listener",
    "create_admin_app",
    "masked_config",
]

#: bind the admin port with SO_REUSEPORT (every worker process binds it); set by create_app
REUSE_PORT = web.AppKey("reuse_port", bool)
#: the URLs the admin listener bound, once started (empty when it is off)
ADMIN_URLS = web.AppKey("admin_urls", list[str])

_GATEWAY = web.AppKey("gateway", web.Application)
_HEALTH = orjson.dumps({"status": "ok", "version": __version__})
_JSON = "application/json"
#: seconds /readyz waits for one plugin's checks
_READY_TIMEOUT = 2.0
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^@/\s]*@", re.I)
_SECRET_NAME = re.compile(r"pass|secret|token|credential|(?<![a-z])key(?![a-z_]*(?:env|prefix))")


class _CachePurger(Protocol):
    async def purge(self, object_ids: list[str]) -> int: ...


class _TeamLimits(Protocol):
    def team_state(self, team: str) -> dict[str, Any]: ...


def _error(
    status: int, message: str, *, code: str | None = None, type: ErrorType | None = None
) -> web.Response:
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
    """Stripe-shaped errors for everything, and the token check for ``/admin/*``."""
    if request.path.startswith("/admin/") and not _authorized(request):
        return _error(
            401,
            "Admin endpoints need 'Authorization: Bearer <admin token>'; this request had "
            "none, or a wrong one.",
            code="admin_unauthorized",
        )
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            return _error(404, f"Unrecognized admin URL ({request.method}: {request.path}).")
        if exc.status == 405:
            return _error(405, f"{request.method} is not allowed on {request.path}.")
        return _error(exc.status, exc.reason)


def _current(gateway: web.Application) -> Generation:
    """The generation requests are served with now: during a reload, ``app[HOST]`` and
    ``app[CONFIG]`` already show the next one while its plugins start; this does not."""
    from gateway.app import GENERATIONS

    return gateway[GENERATIONS].current


def _authorized(request: web.Request) -> bool:
    # the current config's digest: a reload rotates or revokes the token at once
    digest = _current(request.app[_GATEWAY]).config.admin.token_sha256
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
    from gateway.app import SESSION

    gateway = request.app[_GATEWAY]
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
    gateway = request.app[_GATEWAY]
    metrics = gateway[METRICS]
    _refresh_in_flight(gateway)
    text = await asyncio.get_running_loop().run_in_executor(None, exposition, metrics)
    return web.Response(body=text, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


def _refresh_in_flight(gateway: web.Application) -> None:
    """``requests_in_flight`` from the route handler's own count (no gauge update on the
    request path): set when scraped, and every second for the other workers' sums."""
    from gateway.app import GENERATIONS

    gateway[METRICS].in_flight.set(gateway[GENERATIONS].in_flight)


async def _refresh_every_second(gateway: web.Application) -> None:
    while True:
        await asyncio.sleep(1.0)
        _refresh_in_flight(gateway)


# ------------------------------------------------------------------ admin endpoints


async def _purge(request: web.Request) -> web.Response:
    object_id = await _form_value(request, "object_id")
    if object_id is None:
        return _error(400, "Missing object_id (form field or JSON key).", code="parameter_missing")
    if not OBJECT_ID.match(object_id):
        return _error(
            400,
            "object_id must be a Stripe object id such as cus_1234567890abcdef.",
            code="parameter_invalid",
        )
    cache: _CachePurger | None = _current(request.app[_GATEWAY]).host.pm.get_plugin("cache")
    if cache is None or not hasattr(cache, "purge"):
        return _error(404, "The cache plugin is not enabled.", code="cache_disabled")
    try:
        purged = await cache.purge([object_id])
    except Exception as exc:
        return _error(
            503,
            f"The cache store could not be purged ({type(exc).__name__}).",
            code="cache_unavailable",
        )
    answer: dict[str, Any] = {"object": "cache_purge", "object_id": object_id, "purged": purged}
    peer_sockets = _peer_sockets() if request.headers.get(_FANOUT) is None else []
    if peer_sockets:
        # a worker of `serve --workers N`: every other worker purges its own memory too
        peers = await _fan_out(request, object_id, peer_sockets)
        answer["purged"] += sum(peer.get("purged", 0) for peer in peers.values())
        answer["workers"] = 1 + sum(1 for peer in peers.values() if "purged" in peer)
        failed = {path: peer["error"] for path, peer in peers.items() if "error" in peer}
        if failed:  # those workers' memory may still serve the object: not a success
            listed = ", ".join(f"{name} ({error})" for name, error in sorted(failed.items()))
            return _error(
                502,
                f"Purged {answer['purged']} cached answers of {object_id} on "
                f"{answer['workers']} workers, but {len(failed)} could not be reached: "
                f"{listed}. Retry the purge.",
                code="purge_incomplete",
                type="api_error",
            )
    return _json(answer)


#: set on a purge one worker passes on to the others (who must not pass it on again)
_FANOUT = "X-Stripe-Gateway-Fanout"


def _run_dir() -> Path | None:
    from gateway.workers import RUN_DIR_ENV

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


async def _fan_out(
    request: web.Request, object_id: str, sockets: list[Path]
) -> dict[str, dict[str, Any]]:
    """Ask every other worker, on its private socket (``sockets``), to purge ``object_id``."""
    headers = {_FANOUT: "1", hdrs.AUTHORIZATION: request.headers.get(hdrs.AUTHORIZATION, "")}

    async def one(path: Path) -> tuple[str, dict[str, Any]]:
        try:
            connector = aiohttp.UnixConnector(path=str(path))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.post(
                    "http://worker/admin/cache/purge",
                    data={"object_id": object_id},
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as response,
            ):
                body = await response.json()
                if response.status != 200:
                    return path.name, {"error": body.get("error", {}).get("code", "failed")}
                return path.name, {"purged": int(body.get("purged", 0))}
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return path.name, {"error": type(exc).__name__}

    return dict(await asyncio.gather(*(one(path) for path in sockets)))


async def _form_value(request: web.Request, name: str) -> str | None:
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
    current = _current(request.app[_GATEWAY])
    limiter: _TeamLimits | None = current.host.pm.get_plugin("rate_limit")
    if limiter is not None and not hasattr(limiter, "team_state"):
        limiter = None
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
            "rate_limit": limiter.team_state(team.name) if limiter is not None else None,
        }
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
    return _json(masked_config(_current(request.app[_GATEWAY]).config))


async def _reload(request: web.Request) -> web.Response:
    from gateway.app import RELOAD
    from gateway.workers import worker_role

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
    reload = request.app[_GATEWAY].get(RELOAD)
    if reload is None:
        return _error(
            501,
            "Config reload is not available in this gateway process.",
            code="reload_unavailable",
        )
    result = await reload()
    if not result.get("reloaded"):
        return _error(
            400,
            f"The config was not reloaded: {result.get('error')}. The running config stays.",
            code="config_invalid",
            type="invalid_request_error",
        )
    return _json(result)


# ------------------------------------------------------------------ the app


def create_admin_app(gateway: web.Application) -> web.Application:
    """The admin app for ``gateway`` (built by :func:`gateway.app.create_app`)."""

    admin = web.Application(middlewares=[_errors_and_auth], client_max_size=64 * 1024)
    admin[_GATEWAY] = gateway
    admin.router.add_get("/healthz", _healthz, allow_head=True)
    admin.router.add_get("/readyz", _readyz, allow_head=True)
    admin.router.add_get("/metrics", _metrics)
    admin.router.add_post("/admin/cache/purge", _purge)
    admin.router.add_get("/admin/teams", _teams)
    admin.router.add_get("/admin/config", _config)
    admin.router.add_post("/admin/reload", _reload)
    return admin


async def admin_listener(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context of the gateway app: serve the admin app while the gateway runs."""
    from gateway.app import CONFIG, HOST

    config = app[CONFIG].admin
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
        app[HOST].log.info("admin_listening", urls=app[ADMIN_URLS])
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
