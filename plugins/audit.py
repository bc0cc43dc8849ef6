"""The audit log: one JSON line per request, tied to Stripe's ``Request-Id``.

Settings (``[plugins.audit]``):

``path``
    ``"-"`` for standard output (the default) or a file path, opened for appending.

The line carries: timestamp, gateway request id, team, method, path, Stripe object id,
``Stripe-Account``, livemode (from the upstream key's prefix), status, upstream name and
``Request-Id``, total and upstream latency in ms, bytes in and out, ``Idempotency-Key``,
cache status and rate-limit decision (when those plugins set them), client address, and
the error kind when the gateway answered itself; with ``serve --workers N``, the worker's
index and pid (``worker``, ``pid``). Never the ``Authorization`` header, a key or a query
string.

Lines are buffered and written once per event-loop iteration (and at shutdown), one
``write`` for all the requests that finished in that iteration.

Failing closed: if lines cannot be written (disk full, file gone), their records go to the
gateway's error log (stderr) with the reason, and the plugin refuses every further request
with 503 until a line can be written again; each refused request's own line is the probe,
so the gateway recovers by itself.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from gateway.app import HOST
from gateway.config import GatewayConfig
from gateway.context import RequestContext, milliseconds, object_id_of
from gateway.errors import ConfigError, StripeErrorResponse
from gateway.hookspecs import hookimpl
from gateway.logs import JsonLineSink, process_fields

__all__ = ["AuditPlugin"]

#: keys the sink's processors add to a record; the error log sets its own
_SINK_KEYS = frozenset({"event", "level", "timestamp"})


class AuditPlugin:
    """Built-in plugin ``audit``."""

    name = "audit"

    def __init__(self) -> None:
        self._path: Path | None = None
        self._stream: BinaryIO | None = None
        self._own_stream = False
        self._sink: JsonLineSink | None = None
        self._broken = False
        self._fallback: Any = None
        self._process: dict[str, Any] = {}

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
        # in a worker of `serve --workers N`: name the worker on each line, and keep each
        # write to a shared pipe (stdout) atomic so the workers' lines never interleave
        self._process = process_fields()
        shared_pipe = bool(self._process) and self._path is None
        self._sink = JsonLineSink(
            self._stream,
            app[HOST].log_processors,
            on_written=self._written,
            max_write=select.PIPE_BUF if shared_pipe else 0,
        )
        self._fallback = app[HOST].log

    def _written(self, records: Sequence[dict[str, Any]], error: BaseException | None) -> None:
        if error is None:
            self._broken = False
            return
        # Keep the records: they go to the error log instead, with the reason.
        self._broken = True
        for record in records:
            fields = {k: v for k, v in record.items() if k not in _SINK_KEYS}
            self._fallback.error("audit_write_failed", reason=str(error), **fields)

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
        path = request.path
        team = ctx.team
        upstream_seconds = ctx.upstream_seconds
        fields: dict[str, Any] = {
            "request_id": ctx.request_id,
            "team": team.name if team is not None else None,
            "method": request.method,
            "path": path,
            "object_id": object_id_of(path),
            "stripe_account": ctx.stripe_account,
            "livemode": ctx.livemode,
            "status": ctx.status,
            "upstream": ctx.upstream_name,
            "upstream_request_id": ctx.upstream_request_id,
            "duration_ms": ctx.elapsed_ms(),
            "upstream_ms": (
                milliseconds(upstream_seconds) if upstream_seconds is not None else None
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
        if self._process:  # worker index and pid, with `serve --workers N`
            fields.update(self._process)
        assert self._sink is not None, "the sink opens at start-up"
        try:
            self._sink.emit("request", fields)
        except (OSError, ValueError) as exc:  # a processor failed: no line for this record
            self._written([fields], exc)

    @hookimpl
    def gateway_shutdown(self, app: web.Application) -> None:
        if self._sink is not None:
            self._sink.close()  # writes what is still queued
            self._sink = None
        if self._stream is not None:
            if self._own_stream:
                self._stream.close()
            self._stream = None
