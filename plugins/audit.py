"""The audit log: one JSON line per request, tied to Stripe's ``Request-Id``.

Settings (``[plugins.audit]``, all optional):

``path``
    ``"-"`` for standard output (the default) or a file path, opened for appending.
``params``
    put the request's parameters in the line, as ``params`` (true)
``params_max_bytes``
    largest request body whose parameters are logged (16384); larger bodies are streamed
    upstream as always and the line says ``[body N bytes, not logged]``
``response_body``
    put the response body in the line, as ``response_body`` (false)
``response_body_max_bytes``
    largest response body logged (65536)
``routes``
    per-route overrides, first match wins:
    ``[{ route = "POST /v1/forwarding/**", params = false, response_body = true }]``;
    a key left out keeps the global value
``reopen_check_seconds``
    how often the file's path is checked (1.0; 0 = never): when the file open is no
    longer the one at the path (moved or removed), the path is reopened; see below

The line carries: timestamp, gateway request id, team, method, path, Stripe object id,
``Stripe-Account``, livemode (from the upstream key's prefix), status, upstream name and
``Request-Id``, total and upstream latency in ms, bytes in and out, ``Idempotency-Key``,
the fields other plugins contribute (``gateway_audit_fields``: the cache status as
``cache``, the rate-limit decision as ``rate_limit``), client address, the
error kind when the gateway answered itself, and, where configured, the request's
parameters and the response body; with ``serve --workers N``, the worker's index
and pid (``worker``, ``pid``). Never the ``Authorization`` header or the gateway key.

**Parameters** (``params``) are the query string's and the body's, decoded into nested
objects the way Stripe reads bracket notation (:mod:`gateway.params`): ``card[number]=…``
is ``{"card": {"number": …}}``, ``expand[0]`` a list. Only form (``x-www-form-urlencoded``)
and JSON bodies of at most ``params_max_bytes`` are decoded; for any other body the line
has ``request_body``: ``[multipart N bytes]`` or ``[body N bytes, not logged]``. The body
is not buffered for this: the proxy keeps a copy of the chunks as they stream upstream
(``ctx.request_capture_limit``), and only for routes and content types that are logged.
Decoding happens when the line is written, after the response. **Response bodies** are
captured the same way (``ctx.capture_limit``) and logged decoded when they are JSON and not
compressed, otherwise as ``[body N bytes, not logged]``.

Parameters and bodies carry card data, keys and personal data: like every field, they pass
through the log processors (the ``redaction`` plugin) before the line is rendered. With
``redaction`` disabled they are logged as sent, and start-up logs
``audit_params_unredacted``.

Lines are buffered and written once per event-loop iteration (and at shutdown), one
``write`` for all the requests that finished in that iteration.

Failing closed: if lines cannot be written (disk full, file gone), their records go to the
gateway's error log (stderr) with the reason, and the plugin refuses every further request
with 503 until a line can be written again; each refused request's own line is the probe,
so the gateway recovers by itself.

**Rotation** (a file ``path``; nothing to do for standard output), as nginx does it: the
file is reopened by path on ``SIGUSR1`` (the ``gateway_reopen_logs`` hook; with
``serve --workers N`` the supervisor passes the signal on to every worker), and by a
timer every ``reopen_check_seconds``, which compares the open file's ``(st_dev, st_ino)``
with ``os.stat(path)`` (one ``stat`` per interval, never one per request) and reopens when
they differ or the path is gone. Lines still queued at a reopen go to the new file.

* Rename (logrotate's default, ``mv audit.log audit.log.1``), then ``SIGUSR1`` or the
  timer: nothing is lost. Lines written between the rename and the reopen go to the renamed
  file, later ones to the new file.
* Plain ``rm``: lines written in the up to ``reopen_check_seconds`` before the timer
  notices (or until a ``SIGUSR1``) go to the deleted file and are lost; from the check on,
  none does.
* When the path cannot be opened (its directory removed or not writable), the old file is
  closed (never written again), ``audit_reopen_failed`` is logged once, the records go to
  the error log as above and requests are refused with 503 ``audit_unavailable``. Each
  tick, and each refused request, tries the path again; once it opens, the next refused
  request's line is the probe and traffic flows again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import select
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.context import RequestContext, milliseconds, object_id_of
from gateway.errors import ConfigError, StripeErrorResponse
from gateway.globs import RouteRule, parse_rule
from gateway.hookspecs import hookimpl
from gateway.host import PluginHost
from gateway.logs import JsonLineSink, process_fields
from gateway.masks import unparsed
from gateway.params import LoggedParams

__all__ = ["AuditPlugin", "AuditRoute", "AuditSettings"]

#: keys the sink's processors add to a record; the error log sets its own
_SINK_KEYS = frozenset({"event", "level", "timestamp"})
_KEYS = frozenset(
    {
        "path",
        "params",
        "params_max_bytes",
        "response_body",
        "response_body_max_bytes",
        "routes",
        "reopen_check_seconds",
    }
)
_ROUTE_KEYS = frozenset({"route", "params", "response_body"})
_MAX_CAP = 1 << 20
_MAX_REOPEN_CHECK = 3600.0
_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class AuditRoute:
    """What the audit line carries for the requests of one route."""

    params: bool = True
    response_body: bool = False


@dataclass(frozen=True)
class AuditSettings:
    """``[plugins.audit]``, validated."""

    path: Path | None = None
    default: AuditRoute = AuditRoute()
    params_max_bytes: int = 16384
    response_body_max_bytes: int = 65536
    routes: tuple[tuple[RouteRule, AuditRoute], ...] = ()
    #: seconds between checks that the open file is still the one at ``path``; 0 = never
    reopen_check_seconds: float = 1.0

    @classmethod
    def parse(cls, table: Mapping[str, Any]) -> AuditSettings:
        for key in table:
            if key not in _KEYS:
                raise ConfigError(key, "unknown key")
        default = AuditRoute(
            params=_bool(table.get("params", True), "params"),
            response_body=_bool(table.get("response_body", False), "response_body"),
        )
        return cls(
            path=_path(table.get("path", "-")),
            default=default,
            params_max_bytes=_cap(table.get("params_max_bytes", 16384), "params_max_bytes"),
            response_body_max_bytes=_cap(
                table.get("response_body_max_bytes", 65536), "response_body_max_bytes"
            ),
            routes=_routes(table.get("routes", []), default),
            reopen_check_seconds=_interval(
                table.get("reopen_check_seconds", 1.0), "reopen_check_seconds"
            ),
        )

    def route(self, method: str, path: str) -> AuditRoute:
        """The settings of the first route matching ``METHOD path``, else the global ones."""
        for rule, route in self.routes:
            if rule.matches(method, path):
                return route
        return self.default

    @property
    def anything_logged(self) -> bool:
        """Whether any route logs parameters or response bodies."""
        routes = (self.default, *(route for _, route in self.routes))
        return any(r.params or r.response_body for r in routes)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, "must be true or false")
    return value


def _cap(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_CAP:
        raise ConfigError(where, f"must be a whole number of bytes from 1 to {_MAX_CAP}")
    return value


def _interval(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_REOPEN_CHECK
    ):
        raise ConfigError(
            where, f"must be a number of seconds from 0 (off) to {_MAX_REOPEN_CHECK:g}"
        )
    return float(value)


def _path(value: Any) -> Path | None:
    if not isinstance(value, str) or not value:
        raise ConfigError("path", 'must be "-" (standard output) or a file path')
    if value == "-":
        return None
    p = Path(value)
    if not p.parent.is_dir():
        raise ConfigError("path", f"directory {p.parent} does not exist")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError("path", f"{p} is not writable")
    return p


def _routes(value: Any, default: AuditRoute) -> tuple[tuple[RouteRule, AuditRoute], ...]:
    shape = '{ route = "METHOD /path/glob", params = true, response_body = false }'
    if not isinstance(value, list):
        raise ConfigError("routes", f"must be a list of tables like {shape}")
    out = []
    for i, item in enumerate(value):
        where = f"routes[{i}]"
        if not isinstance(item, dict) or "route" not in item:
            raise ConfigError(where, f"must be a table like {shape}")
        for key in item:
            if key not in _ROUTE_KEYS:
                raise ConfigError(f"{where}.{key}", "unknown key")
        if not isinstance(item["route"], str):
            raise ConfigError(f"{where}.route", 'must be a string like "POST /v1/forwarding/**"')
        try:
            rule = parse_rule(item["route"])
        except ValueError as exc:
            raise ConfigError(f"{where}.route", str(exc)) from None
        route = AuditRoute(
            params=_bool(item.get("params", default.params), f"{where}.params"),
            response_body=_bool(
                item.get("response_body", default.response_body), f"{where}.response_body"
            ),
        )
        out.append((rule, route))
    return tuple(out)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _is_decoded(content_type: str) -> bool:
    """Bodies whose parameters are decoded: forms and JSON."""
    return content_type in (_FORM, _JSON) or content_type.endswith("+json")


class AuditPlugin:
    """Built-in plugin ``audit``."""

    name = "audit"

    def __init__(self) -> None:
        self.settings = AuditSettings()
        self._stream: BinaryIO | None = None
        self._own_stream = False
        self._sink: JsonLineSink | None = None
        self._broken = False
        self._fallback: Any = None
        self._process: dict[str, Any] = {}
        #: ``(st_dev, st_ino)`` of the file open at ``path``
        self._identity: tuple[int, int] | None = None
        #: the path could not be reopened: no file is open, lines go to the error log
        self._lost = False
        self._timer: asyncio.TimerHandle | None = None
        self._host: PluginHost | None = None
        #: some plugin contributes fields (``gateway_audit_fields``)
        self._contributed = False

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: dict[str, Any]) -> None:
        self.settings = AuditSettings.parse(settings)

    @hookimpl
    def gateway_startup(self, host: PluginHost) -> None:
        path = self.settings.path
        if path is None:
            self._stream = sys.stdout.buffer
        else:
            self._stream = open(path, "ab", buffering=0)  # noqa: SIM115 - closed at shutdown
            self._own_stream = True
            self._identity = _identity(os.fstat(self._stream.fileno()))
            if self.settings.reopen_check_seconds:
                self._schedule_check()
        self._host = host
        self._contributed = "gateway_audit_fields" in host.implemented
        # in a worker of `serve --workers N`: name the worker on each line, and keep each
        # write to a shared pipe (stdout) atomic so the workers' lines never interleave
        self._process = process_fields()
        shared_pipe = bool(self._process) and path is None
        self._sink = JsonLineSink(
            self._stream,
            host.log_processors,
            on_written=self._written,
            max_write=select.PIPE_BUF if shared_pipe else 0,
        )
        self._fallback = host.log
        if self.settings.anything_logged and "redaction" not in host.plugin_names():
            host.log.warning(
                "audit_params_unredacted",
                reason="the redaction plugin is disabled: request parameters and response "
                "bodies go into the audit log as sent",
            )

    # ----------------------------------------------------------------- rotation

    def _schedule_check(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.settings.reopen_check_seconds, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._sink is None:  # shut down
            return
        self._check()
        self._schedule_check()

    def _check(self) -> None:
        """Reopen the path if the open file is no longer the one there (moved or removed),
        or if no file is open because the last reopen failed."""
        path = self.settings.path
        assert path is not None, "only a file is checked"
        if self._lost:
            self._reopen("retry")
            return
        try:
            found = _identity(os.stat(path))
        except FileNotFoundError:
            self._reopen("missing")
            return
        except OSError:  # its directory cannot be searched: reopening says why
            self._reopen("unreadable")
            return
        if found != self._identity:
            self._reopen("moved")

    def _reopen(self, cause: str) -> bool:
        """Open ``path`` anew and write there from now on (the lines still queued too),
        closing the old file; if it cannot be opened, close the old file all the same
        (no line goes to a moved or deleted file any more) and fail closed."""
        path = self.settings.path
        sink = self._sink
        if path is None or sink is None:
            return True
        old = self._stream
        try:
            stream = open(path, "ab", buffering=0)  # noqa: SIM115 - closed at the next reopen
            identity = _identity(os.fstat(stream.fileno()))
        except OSError as exc:
            if not self._lost:
                self._fallback.error(
                    "audit_reopen_failed", path=str(path), cause=cause, reason=str(exc)
                )
            self._lost = self._broken = True
            self._stream = self._identity = None
            sink.set_stream(None, f"the audit file cannot be reopened: {exc}")
        else:
            self._fallback.info("audit_reopened", path=str(path), cause=cause)
            self._lost = False
            self._stream, self._identity = stream, identity
            sink.set_stream(stream)
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()
        return not self._lost

    @hookimpl
    def gateway_reopen_logs(self, app: web.Application) -> None:
        """Reopen the audit file by path (SIGUSR1): see the module's docstring."""
        self._reopen("signal")

    # ----------------------------------------------------------------- writing

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
        settings = self.settings
        route = settings.route(ctx.method, ctx.path) if settings.routes else settings.default
        request = ctx.request
        if route.params and request.body_exists:
            # a copy of the body as it streams upstream, for the forms and JSON logged
            length = request.content_length
            cap = settings.params_max_bytes
            if (length is None or length <= cap) and _is_decoded(request.content_type):
                ctx.request_capture_limit = cap
        if route.response_body:
            # shared with other plugins (the cache): the largest limit asked for wins
            ctx.capture_limit = max(ctx.capture_limit, settings.response_body_max_bytes)

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
            "outcome": ctx.outcome,
            "upstream": ctx.upstream_name,
            "upstream_request_id": ctx.upstream_request_id,
            "duration_ms": ctx.elapsed_ms(),
            "upstream_ms": (
                milliseconds(upstream_seconds) if upstream_seconds is not None else None
            ),
            "bytes_in": ctx.bytes_in,
            "bytes_out": ctx.bytes_out,
            "idempotency_key": ctx.idempotency_key,
            "attempts": ctx.attempts,
            "client": request.remote,
            "error": ctx.error,
        }
        settings = self.settings
        route = settings.route(request.method, path) if settings.routes else settings.default
        if route.params or route.response_body:
            try:
                if route.params:
                    self._add_params(ctx, fields)
                if route.response_body:
                    fields["response_body"] = self._response_body(ctx)
            except Exception:  # never lose the line over its optional parts
                fields["params"] = fields["response_body"] = "[unparsed]"
        if self._contributed:  # plugins add fields; they never replace the core ones
            assert self._host is not None
            contributed = self._host.fields("gateway_audit_fields", ctx=ctx)
            fields = {**ctx.audit, **contributed, **fields}
        elif ctx.audit:
            fields = {**ctx.audit, **fields}
        if self._process:  # worker index and pid, with `serve --workers N`
            fields.update(self._process)
        assert self._sink is not None, "the sink opens at start-up"
        if self._lost:  # the refused requests' lines are probes: try the path again
            self._reopen("retry")
        try:
            self._sink.emit("request", fields)
        except (OSError, ValueError) as exc:  # a processor failed: no line for this record
            self._written([fields], exc)

    def _add_params(self, ctx: RequestContext, fields: dict[str, Any]) -> None:
        """``params`` (query and body, decoded when the line is written: see
        :class:`~gateway.params.LoggedParams`), and ``request_body`` for a body that is not
        decoded (what it is and its size, never its content)."""
        request = ctx.request
        query = request.rel_url.raw_query_string
        params = LoggedParams([query] if query else [])
        fields["params"] = params
        if not request.body_exists:
            return
        body = ctx.request_body
        content_type = request.content_type
        if body is None or not _is_decoded(content_type):
            size = ctx.bytes_in or request.content_length or 0
            if content_type.startswith("multipart/"):
                fields["request_body"] = f"[multipart {size} bytes]"
            else:
                fields["request_body"] = f"[body {size} bytes, not logged]"
            return
        if content_type == _FORM:
            params.forms.append(body.decode("utf-8", "replace"))
            return
        try:
            decoded = orjson.loads(body)
        except Exception:  # a body that is not what it says: counted, never shown
            fields["request_body"] = unparsed(body)
            return
        if isinstance(decoded, dict):
            params.extra = decoded
        else:  # Stripe's JSON bodies are objects
            fields["request_body"] = f"[body {len(body)} bytes, not logged]"

    def _response_body(self, ctx: RequestContext) -> Any:
        """The response body, decoded when it is JSON; otherwise what it is and its size."""
        body = ctx.response_body
        headers = ctx.response_headers
        if body is None or headers is None or len(body) > self.settings.response_body_max_bytes:
            return f"[body {ctx.bytes_out} bytes, not logged]" if ctx.bytes_out else None
        if not body:
            return None
        encoding = headers.get("Content-Encoding")
        if encoding:
            return f"[{encoding} body {len(body)} bytes, not logged]"
        content_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if not _is_decoded(content_type) or content_type == _FORM:
            return f"[body {len(body)} bytes, not logged]"
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return unparsed(body)

    @hookimpl
    def gateway_shutdown(self, app: web.Application) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sink is not None:
            self._sink.close()  # writes what is still queued
            self._sink = None
        if self._stream is not None:
            if self._own_stream:
                self._stream.close()
            self._stream = None
