"""Plugins' public routes on the main listener (``gateway_public_routes``).

:func:`build_public_router` collects a generation's routes into a router of their own, each
handler wrapped by :func:`_wrap` (request id, Stripe-shaped errors, one ``public_request``
log line); :class:`PublicRoutes` is the resource the app registers before the proxy's
catch-all: it resolves a request against the current generation's router, and matches
nothing when no plugin serves a public route (one attribute read on the proxy's path).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.abc import AbstractMatchInfo
from aiohttp.web_urldispatcher import (
    AbstractResource,
    AbstractRoute,
    UrlMappingMatchInfo,
    _InfoDict,
)
from yarl import URL

from gateway.context import milliseconds, new_request_id
from gateway.errors import CLOSE, StripeErrorResponse, error_response
from gateway.headers import framing_problem
from gateway.keys import GENERATIONS, PUBLIC_AUDIT, REQUEST_ID

if TYPE_CHECKING:
    from gateway.serve.reload import Generation

__all__ = ["PublicRoutes", "build_public_router", "is_reserved"]

#: on a public route's request: the generation it was resolved with
_GENERATION: web.RequestKey[Generation] = web.RequestKey("public_generation")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: paths a public route may not take: the core's own, and Stripe's API
_RESERVED = ("/healthz", "/v1", "/v2")
_RESERVED_PREFIXES = ("/v1/", "/v2/")


def is_reserved(path: str) -> bool:
    """Whether ``path`` is the gateway's own or Stripe's API, never a public route's."""
    return path in _RESERVED or path.startswith(_RESERVED_PREFIXES) or not path.startswith("/")


def _wrap(handler: Handler, log: Any) -> Handler:
    async def public(request: web.Request) -> web.StreamResponse:
        # counted in its generation's requests, as proxied ones are: a reload shuts the
        # outgoing plugins down only once their public requests are over too
        generation = request.get(_GENERATION)
        if generation is not None:
            generation.in_flight += 1
        try:
            return await _serve(request)
        finally:
            if generation is not None:
                generation.finished()

    async def _serve(request: web.Request) -> web.StreamResponse:
        request_id = new_request_id()
        request[REQUEST_ID] = request_id
        fields: dict[str, Any] = {}
        request[PUBLIC_AUDIT] = fields
        started = time.monotonic()
        try:
            if "Transfer-Encoding" in request.headers:
                _check_framing(request)
            response = await handler(request)
        except StripeErrorResponse as exc:
            response = exc.to_response(request_id)
        except web.HTTPException as exc:  # aiohttp's own (a body over client_max_size)
            response = error_response(exc.status, exc.reason, request_id=request_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("public_route_failed", request_id=request_id, path=request.path)
            response = error_response(
                500,
                "An error occurred while handling this request.",
                request_id=request_id,
                type="api_error",
            )
        if not response.prepared:
            response.headers.setdefault("Request-Id", request_id)
        core = {
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": milliseconds(time.monotonic() - started),
            "client": request.remote,
        }
        # the handler's fields never replace the core ones (nor structlog's "event")
        extra = {k: v for k, v in fields.items() if k not in core and k != "event"}
        log.info("public_request", **extra, **core)
        return response

    return public


def _check_framing(request: web.Request) -> None:
    """Refuse a request whose body framing is faulty (an HTTP/1.0 one with a
    Transfer-Encoding: RFC 9112 §6.1), and close its connection, before the handler reads
    the body."""
    problem = framing_problem(request.version, request.headers)
    if problem is not None:
        raise StripeErrorResponse(400, problem, code="invalid_header", headers=dict(CLOSE))


async def _method_not_allowed(request: web.Request) -> web.StreamResponse:
    raise StripeErrorResponse(405, f"{request.method} is not allowed on {request.path}.")


def build_public_router(defs: Iterable[web.AbstractRouteDef], log: Any) -> web.UrlDispatcher:
    """A router of ``defs`` (route definitions), each handler wrapped; any other method on
    their paths answers a Stripe-shaped 405. Raises ``ValueError`` for a reserved path, or a
    method and path given twice."""
    router = web.UrlDispatcher()
    paths: list[str] = []
    taken: set[tuple[str, str]] = set()
    for definition in defs:
        if not isinstance(definition, web.RouteDef):
            raise ValueError(f"not a route definition: {definition!r}")
        path = definition.path
        if "{" in path:  # matched by exact path (PublicRoutes.resolve): no variable parts
            raise ValueError(f"public route {path!r}: a fixed path, without {{variables}}")
        if is_reserved(path):
            raise ValueError(f"public route {path!r}: the path is the gateway's or Stripe's")
        if (definition.method, path) in taken:
            raise ValueError(f"public route {definition.method} {path}: given twice")
        taken.add((definition.method, path))
        router.add_route(
            definition.method, path, _wrap(definition.handler, log), **definition.kwargs
        )
        if path not in paths:
            paths.append(path)
    for path in paths:  # after every plugin route: only the methods they do not take
        router.add_route("*", path, _wrap(_method_not_allowed, log))
    router.freeze()
    return router


class GenerationRoutes(AbstractResource):
    """A resource on an app's router that resolves against a router of the current plugin
    generation (a reload swaps it with the plugins); subclasses give :meth:`resolve`. The
    rest of aiohttp's resource interface, which such a resource has no use for, is here
    once."""

    #: said when something asks to mount the resource under a prefix
    no_prefix = "these routes take no prefix"

    def __init__(self, gateway: web.Application) -> None:
        super().__init__(name=None)
        self._gateway = gateway

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        return URL("/")

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError(self.no_prefix)

    def get_info(self) -> _InfoDict:
        return {}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[AbstractRoute]:
        return iter(())


class PublicRoutes(GenerationRoutes):
    """The current generation's public routes (:attr:`gateway.host.PluginHost.public_router`),
    on the gateway app's router before the proxy's catch-all."""

    no_prefix = "the public routes take no prefix"

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo | None, set[str]]:
        generation = self._gateway[GENERATIONS].current
        host = generation.host
        # one set lookup on the proxy's path: the router runs for a public path only
        if request.rel_url.path not in host.public_paths:
            return None, set()
        router = host.public_router
        assert router is not None, "public paths come with their router"
        match: AbstractMatchInfo = await router.resolve(request)
        if match.http_exception is not None or not isinstance(match, UrlMappingMatchInfo):
            return None, set()
        request[_GENERATION] = generation
        return match, set()
