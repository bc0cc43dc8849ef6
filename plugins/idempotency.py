"""Idempotency keys: inject them where a retry must be safe, namespace them per team, and
let the gateway retry with the same key.

Settings (``[plugins.idempotency]``, all optional):

``routes``        ``"METHOD /path/glob"`` rules that get a key injected when the client sent
                  none, and gateway retries (default ``["POST /v1/forwarding/requests"]``)
``all_writes``    also every ``POST`` under ``/v1/`` and every ``POST``/``DELETE`` under
                  ``/v2/`` (false)
``namespace``     make keys per team: a client's key ``K`` from team ``T`` reaches Stripe as
                  ``T:K`` (hashed when that would pass 255 characters), so two teams on one
                  Stripe account can neither collide nor replay each other's answers (true)
``max_retries``   retries after the first attempt (2)
``backoff``       first wait in seconds, doubling each retry (0.5), up to ``max_backoff`` (5)
``deadline``      seconds after the first attempt when no retry starts any more (30)
``body_cap``      largest request body buffered for replay (1048576); larger ones are sent
                  once

The response's ``Idempotency-Key`` header is always the form the caller sends to retry (the
injected key, or the caller's own key), never the namespaced form; sending it back reaches
Stripe with exactly the key of the first attempt. The audit line has the key sent to Stripe
(``idempotency_key``), the caller's form (``idempotency_key_client``) and ``attempts``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.errors import ConfigError
from gateway.globs import RouteRule, parse_rule
from gateway.hookspecs import hookimpl
from gateway.metrics import GatewayMetrics
from gateway.retry import RetryPolicy

__all__ = ["IdempotencyPlugin", "IdempotencySettings", "namespaced"]

_MAX_KEY = 255
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def namespaced(team: str, key: str) -> str:
    """The key Stripe sees for team ``team``'s key ``key``: deterministic, <= 255 chars."""
    plain = f"{team}:{key}"
    if len(plain) <= _MAX_KEY:
        return plain
    digest = hashlib.sha256(f"{team}\x00{key}".encode()).hexdigest()
    return f"{team}:sha256:{digest}"


@dataclass(frozen=True)
class IdempotencySettings:
    routes: tuple[RouteRule, ...]
    all_writes: bool
    namespace: bool
    retry: RetryPolicy

    @classmethod
    def parse(cls, table: dict[str, Any]) -> IdempotencySettings:
        known = {
            "routes",
            "all_writes",
            "namespace",
            "max_retries",
            "backoff",
            "max_backoff",
            "deadline",
            "body_cap",
        }
        for key in table:
            if key not in known:
                raise ConfigError(key, "unknown key")
        raw_routes = table.get("routes", ["POST /v1/forwarding/requests"])
        if not isinstance(raw_routes, list):
            raise ConfigError("routes", 'must be a list of "METHOD /path/glob" rules')
        routes = []
        for i, text in enumerate(raw_routes):
            try:
                rule = parse_rule(str(text))
            except ValueError as exc:
                raise ConfigError(f"routes[{i}]", str(exc)) from None
            if rule.method in _READS:
                raise ConfigError(f"routes[{i}]", f"{rule.method} requests never get a key")
            routes.append(rule)
        flags = {}
        for name, default in (("all_writes", False), ("namespace", True)):
            value = table.get(name, default)
            if not isinstance(value, bool):
                raise ConfigError(name, "must be true or false")
            flags[name] = value
        retry = RetryPolicy(
            max_retries=_int(table, "max_retries", 2, low=0, high=10),
            backoff=_float(table, "backoff", 0.5),
            max_backoff=_float(table, "max_backoff", 5.0),
            deadline=_float(table, "deadline", 30.0),
            body_cap=_int(table, "body_cap", 1024 * 1024, low=1, high=64 * 1024 * 1024),
        )
        return cls(tuple(routes), flags["all_writes"], flags["namespace"], retry)

    def covers(self, method: str, path: str) -> bool:
        if method in _READS:
            return False
        if self.all_writes and (
            (method == "POST" and path.startswith("/v1/"))
            or (method in ("POST", "DELETE") and path.startswith("/v2/"))
        ):
            return True
        return any(rule.matches(method, path) for rule in self.routes)


def _int(table: dict[str, Any], name: str, default: int, *, low: int, high: int) -> int:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(name, f"must be a whole number from {low} to {high}")
    return value


def _float(table: dict[str, Any], name: str, default: float) -> float:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(name, "must be a number > 0")
    return float(value)


@dataclass(slots=True)
class _Keys:
    client: str
    upstream: str
    injected: bool


class IdempotencyPlugin:
    """Built-in plugin ``idempotency``."""

    name = "idempotency"

    def __init__(self) -> None:
        self.settings = IdempotencySettings.parse({})
        self.injected = 0
        self._injected: Any = None

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: dict[str, Any]) -> None:
        self.settings = IdempotencySettings.parse(settings)

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
        if request.method in _READS:
            return None
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

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> None:
        self._keys(ctx)

    @hookimpl
    def gateway_upstream_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        keys = self._keys(ctx)
        if keys is not None:
            headers["Idempotency-Key"] = keys.upstream  # the same key on every attempt

    @hookimpl
    def gateway_response_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        keys: _Keys | None = ctx.state.get("idempotency")
        if keys is not None:
            headers["Idempotency-Key"] = keys.client
            if ctx.retry is not None:
                headers["X-Gateway-Attempts"] = str(ctx.attempts)
                ctx.audit["attempts"] = ctx.attempts
