"""Idempotency keys: inject them where a retry must be safe, namespace them per team, and
let the gateway retry with the same key.

Settings (``[plugins.idempotency]``, all optional): :class:`IdempotencySettings`, listed
in ``docs/configuration.md``. With ``namespace`` (on by default) a client's key ``K`` from
team ``T`` reaches Stripe as ``T:K`` (hashed when that would pass 255 characters), so two
teams on one Stripe account can neither collide nor replay each other's answers.

The response's ``Idempotency-Key`` header is always the form the caller sends to retry (the
injected key, or the caller's own key), never the namespaced form; sending it back reaches
Stripe with exactly the key of the first attempt. Stripe's error answers that quote the key
(``Try using a key other than 'T:K'``, ``idempotency_key_in_use``) show ``K`` too: the
namespaced form is replaced by the caller's in every response header and in JSON error
bodies (up to 64 KiB; namespaced requests ask Stripe for uncompressed answers so that
they can be read). The audit line has the key sent to Stripe
(``idempotency_key``), the caller's form (``idempotency_key_client``) and ``attempts``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from multidict import CIMultiDict
from pydantic import AfterValidator, Field, PrivateAttr

from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.globs import RouteRule, parse_rule
from gateway.hookspecs import hookimpl
from gateway.metrics import GatewayMetrics
from gateway.retry import RetryPolicy
from gateway.settings import RouteText, Settings

__all__ = ["IdempotencyPlugin", "IdempotencySettings", "namespaced"]

_MAX_KEY = 255
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: error answers up to this size are read whole to show the caller's key
_ERROR_BODY_LIMIT = 64 * 1024


def namespaced(team: str, key: str) -> str:
    """The key Stripe sees for team ``team``'s key ``key``: deterministic, <= 255 chars."""
    plain = f"{team}:{key}"
    if len(plain) <= _MAX_KEY:
        return plain
    digest = hashlib.sha256(f"{team}\x00{key}".encode()).hexdigest()
    return f"{team}:sha256:{digest}"


def _writes_only(text: str) -> str:
    rule = parse_rule(text)
    if rule.method in _READS:
        raise ValueError(f"{rule.method} requests never get a key")
    return text


class IdempotencySettings(Settings):
    """Idempotency-Key injection and safe retries with the same key: on a connection
    failure, 409 idempotency_key_in_use, 429 lock_timeout or Stripe-Should-Retry: true.
    Responses always show the caller's form of the key."""

    routes: list[Annotated[RouteText, AfterValidator(_writes_only)]] = Field(
        default_factory=lambda: ["POST /v1/forwarding/requests"],
        description='"METHOD /path/glob" rules that get a key injected when the client sent '
        "none, and gateway retries",
    )
    all_writes: bool = Field(
        False,
        description="also every POST under /v1/ and every POST/DELETE under /v2/",
    )
    namespace: bool = Field(
        True, description="make keys per team: team T's key K reaches Stripe as T:K"
    )
    max_retries: int = Field(2, ge=0, le=10, description="retries after the first attempt")
    backoff: float = Field(
        0.5, gt=0, description="first wait in seconds, doubling each retry, up to max_backoff"
    )
    max_backoff: float = Field(5.0, gt=0, description="longest wait between two attempts")
    deadline: float = Field(
        30.0, gt=0, description="seconds after the first attempt when no retry starts any more"
    )
    body_cap: int = Field(
        1024 * 1024,
        ge=1,
        le=64 * 1024 * 1024,
        description="largest request body buffered for replay; larger ones are sent once",
    )

    _rules: tuple[RouteRule, ...] = PrivateAttr(())
    _retry: RetryPolicy = PrivateAttr(default_factory=RetryPolicy)

    def model_post_init(self, context: Any, /) -> None:
        self._rules = tuple(parse_rule(text) for text in self.routes)
        self._retry = RetryPolicy(
            max_retries=self.max_retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            deadline=self.deadline,
            body_cap=self.body_cap,
        )

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    def covers(self, method: str, path: str) -> bool:
        if method in _READS:
            return False
        if self.all_writes and (
            (method == "POST" and path.startswith("/v1/"))
            or (method in ("POST", "DELETE") and path.startswith("/v2/"))
        ):
            return True
        return any(rule.matches(method, path) for rule in self._rules)


@dataclass(slots=True)
class _Keys:
    client: str
    upstream: str
    injected: bool

    @property
    def namespaced(self) -> bool:
        return self.upstream != self.client


def _in_json(text: str) -> bytes:
    """``text`` as it appears inside a JSON string."""
    return orjson.dumps(text)[1:-1]


class IdempotencyPlugin:
    """Built-in plugin ``idempotency``."""

    name = "idempotency"
    settings_model = IdempotencySettings

    def __init__(self) -> None:
        self.settings = IdempotencySettings()
        self.injected = 0
        self._injected: Any = None

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: IdempotencySettings) -> None:
        self.settings = settings

    @hookimpl
    def gateway_startup(self, metrics: GatewayMetrics) -> None:
        self._injected = metrics.counter(
            "idempotency_keys_injected",
            "Idempotency-Key headers the gateway added to requests that had none.",
        )

    def _keys(self, ctx: RequestContext) -> _Keys | None:
        keys: _Keys | None = ctx.state.get("idempotency")
        if keys is not None:
            return keys
        request = ctx.request
        client = request.headers.get("Idempotency-Key")
        covered = self.settings.covers(request.method, request.path)
        if client is None and not covered:
            return None
        injected = client is None
        if client is None:
            client = "gwik_" + secrets.token_urlsafe(24)
        upstream = client
        if self.settings.namespace and ctx.team is not None:
            upstream = namespaced(ctx.team.name, client)
        keys = _Keys(client=client, upstream=upstream, injected=injected)
        ctx.state["idempotency"] = keys
        if injected:
            self.injected += 1
            if self._injected is not None:
                self._injected.inc()
        ctx.audit["idempotency_key_client"] = client
        if covered:
            ctx.retry = self.settings.retry
        return keys

    # A read (GET, HEAD, OPTIONS) never gets a key: each request hook tests the method
    # first and returns, so a read costs this plugin a set lookup per hook.

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> None:
        if ctx.request.method not in _READS:
            self._keys(ctx)

    @hookimpl
    def gateway_upstream_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if ctx.request.method in _READS:
            return
        keys = self._keys(ctx)
        if keys is not None:
            headers["Idempotency-Key"] = keys.upstream  # the same key on every attempt
            if keys.namespaced:  # an error answer quoting the key must be readable
                headers["Accept-Encoding"] = "identity"

    @hookimpl
    def gateway_upstream_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if ctx.status < 400 or ctx.request.method in _READS:
            return
        keys: _Keys | None = ctx.state.get("idempotency")
        if keys is not None and keys.namespaced and ctx.status >= 400:
            ctx.response_body_limit = max(ctx.response_body_limit, _ERROR_BODY_LIMIT)

    @hookimpl
    def gateway_response_body(
        self, ctx: RequestContext, headers: CIMultiDict[str], body: bytes
    ) -> bytes | None:
        """Stripe's error message quotes the key it got: show the caller's form of it."""
        keys: _Keys | None = ctx.state.get("idempotency")
        if keys is None or not keys.namespaced or ctx.status < 400:
            return None
        upstream, client = _in_json(keys.upstream), _in_json(keys.client)
        if upstream not in body:
            if b"/" not in upstream or upstream.replace(b"/", b"\\/") not in body:
                return None
            # an encoder that escapes "/" as "\/" (JSON allows it)
            upstream, client = upstream.replace(b"/", b"\\/"), client.replace(b"/", b"\\/")
        return body.replace(upstream, client)

    @hookimpl
    def gateway_response_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if ctx.request.method in _READS:
            return
        keys: _Keys | None = ctx.state.get("idempotency")
        if keys is not None:
            upstream = keys.upstream
            if keys.namespaced and any(upstream in value for value in headers.values()):
                items = [(k, v.replace(upstream, keys.client)) for k, v in headers.items()]
                headers.clear()
                headers.extend(items)
            headers["Idempotency-Key"] = keys.client
            if ctx.retry is not None:
                headers["X-Gateway-Attempts"] = str(ctx.attempts)
                ctx.audit["attempts"] = ctx.attempts
