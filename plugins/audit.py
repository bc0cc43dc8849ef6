"""The audit log: one JSON line per request, tied to Stripe's ``Request-Id``.

Settings (``[plugins.audit]``):

``path``
    ``"-"`` for standard output (the default) or a file path, opened for appending.

The line carries: timestamp, gateway request id, team, method, path, Stripe object id,
``Stripe-Account``, livemode (from the upstream key's prefix), status, upstream name and
``Request-Id``, total and upstream latency in ms, bytes in and out, ``Idempotency-Key``,
cache status and rate-limit decision (when those plugins set them), client address, and
the error kind when the gateway answered itself. Never the ``Authorization`` header, a
key or a query string.

Failing closed: if a line cannot be written (disk full, file gone), that record goes to
the gateway's error log (stderr) with the reason, and the plugin refuses every further
request with 503 until a line can be written again; each refused request's own line is
the probe, so the gateway recovers by itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from gateway.app import HOST
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.errors import ConfigError, StripeErrorResponse
from gateway.hookspecs import hookimpl
from gateway.logs import json_line_logger

__all__ = ["AuditPlugin"]


class AuditPlugin:
    """Built-in plugin ``audit``."""

    name = "audit"

    def __init__(self) -> None:
        self._path: Path | None = None
        self._stream: BinaryIO | None = None
        self._own_stream = False
        self._log: Any = None
        self._broken = False
        self._fallback: Any = None

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: dict[str, Any]) -> None:
        for key in settings:
            if key != "path":
                raise ConfigError(key, "unknown key")
        path = settings.get("path", "-")
        if not isinstance(path, str) or not path:
            raise ConfigError("path", 'must be "-" (standard output) or a file path')
        if path != "-":
            p = Path(path)
            if not p.parent.is_dir():
                raise ConfigError("path", f"directory {p.parent} does not exist")
            if p.exists() and not os.access(p, os.W_OK):
                raise ConfigError("path", f"{p} is not writable")
            self._path = p

    @hookimpl
    def gateway_startup(self, app: web.Application) -> None:
        if self._path is None:
            self._stream = sys.stdout.buffer
        else:
            self._stream = open(self._path, "ab", buffering=0)  # noqa: SIM115 - closed at shutdown
            self._own_stream = True
        self._log = json_line_logger(self._stream)
        self._fallback = app[HOST].log

    @hookimpl(tryfirst=True)
    def gateway_request(self, ctx: RequestContext) -> None:
        if self._broken:
            raise StripeErrorResponse(
                503,
                "The gateway cannot write its audit log, so it is not forwarding requests. "
                "Nothing was sent to Stripe.",
                type="api_error",
                code="audit_unavailable",
                should_retry=True,
            )

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext) -> None:
        request = ctx.request
        team = ctx.team.name if ctx.team is not None else None
        fields: dict[str, Any] = {
            "request_id": ctx.request_id,
            "team": team,
            "method": ctx.method,
            "path": ctx.path,
            "object_id": ctx.object_id,
            "stripe_account": ctx.stripe_account,
            "livemode": ctx.livemode,
            "status": ctx.status,
            "upstream": ctx.upstream_name,
            "upstream_request_id": ctx.upstream_request_id,
            "duration_ms": ctx.elapsed_ms(),
            "upstream_ms": (
                round(ctx.upstream_seconds * 1000.0, 3)
                if ctx.upstream_seconds is not None
                else None
            ),
            "bytes_in": ctx.bytes_in,
            "bytes_out": ctx.bytes_out,
            "idempotency_key": ctx.idempotency_key,
            "cache": ctx.cache_status,
            "rate_limit": ctx.rate_limit,
            "client": request.remote,
            "error": ctx.error,
        }
        if ctx.audit:  # plugins add fields; they never replace the core ones
            fields = {**ctx.audit, **fields}
        try:
            self._log.info("request", **fields)
        except (OSError, ValueError) as exc:
            # Keep the record: it goes to the error log instead, with the reason.
            self._broken = True
            self._fallback.error("audit_write_failed", reason=str(exc), **fields)
            return
        self._broken = False

    @hookimpl
    def gateway_shutdown(self, app: web.Application) -> None:
        if self._stream is not None:
            self._stream.flush()
            if self._own_stream:
                self._stream.close()
            self._stream = None
