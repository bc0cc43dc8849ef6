"""The audit log: one JSON line per request, tied to Stripe's ``Request-Id``.

Settings (``[plugins.audit]``, all optional): :class:`AuditSettings`, listed in
``docs/configuration.md``; ``reopen_check_seconds`` is explained under *Rotation* below.

The line carries: timestamp (always the first key), gateway request id, team, method,
path, Stripe object id, ``Stripe-Account``, livemode (from the upstream key's prefix),
status, upstream name and ``Request-Id``, total and upstream latency in ms, bytes in and
out, ``Idempotency-Key``, the client's pinned API version (``stripe_version``) and Stripe
SDK (``sdk``, ``sdk_version``; shaped by :mod:`gateway.clients`, never the headers as
sent), the fields other plugins contribute (``gateway_audit_fields``: the cache status as
``cache``, the rate-limit decision as ``rate_limit``), client address, the
error kind when the gateway answered itself, and, where configured, the request's
parameters and the response body; with ``serve --workers N``, the worker's index
and pid (``worker``, ``pid``). Never the ``Authorization`` header or the gateway key.

Other plugins add lines of their own for what is not a proxied request
(``gateway_audit_event``): the ``webhooks`` plugin writes a ``webhook_received`` line per
request to a webhook source and a ``webhook_delivery`` line per delivery attempt, in the
same file, through the same processors.

**Parameters** (``params``) are the query string's and the body's, decoded into nested
objects the way Stripe reads bracket notation (:mod:`gateway.redaction.params`): ``card[number]=…``
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

**The head.** The gateway's own fields of a fixed shape skip the processors and open the
line (after ``timestamp``): ``team``, ``method``, ``livemode``, ``status``, ``outcome``,
``upstream``, ``duration_ms``, ``upstream_ms``, ``attempts``, ``bytes_in``, ``bytes_out``,
``event``, ``level`` (:class:`SafeValues`). A text value is admitted only if it is one of a
closed set (configured team names, HTTP methods, outcomes, upstream names) that the
processors were run over at start-up and left unchanged; numbers only when too short to be a
card number. Any other value (a team named like a key, a method outside the set) sends the
whole line through the processors; so does any processor other than redaction's. Whatever
the client or Stripe sent (path, ids, headers, keys, errors, parameters) always goes through
them.

Lines are buffered and written once per event-loop iteration (and at shutdown), one
``write`` for all the requests that finished in that iteration. Plugins that implement
``gateway_audit_line`` see each line's processed (redacted) fields as it is queued (the
``console`` keeps the recent ones).

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
import os
import select
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from aiohttp import hdrs, web
from multidict import istr
from pydantic import Field, PrivateAttr, field_validator

from gateway.clients import api_version, sdk
from gateway.config import GatewayConfig
from gateway.context import OUTCOMES, RequestContext, milliseconds, object_id_of
from gateway.errors import StripeErrorResponse
from gateway.globs import RouteRule, parse_rule
from gateway.hookspecs import hookimpl
from gateway.host import PluginHost
from gateway.logs import JsonLineSink, process_fields
from gateway.metrics import GatewayMetrics
from gateway.redaction.masks import unparsed
from gateway.redaction.params import LoggedParams
from gateway.redaction.redact import RedactingProcessor
from gateway.routing import UPSTREAM_NAMES
from gateway.settings import RouteText, Settings

__all__ = ["AuditPlugin", "AuditRoute", "AuditRouteSettings", "AuditSettings"]

#: keys the sink's processors add to a record; the error log sets its own
_SINK_KEYS = frozenset({"event", "level", "timestamp"})
_MAX_CAP = 1 << 20
_FORM = "application/x-www-form-urlencoded"
#: the methods whose names may skip the log processors (``SafeValues``)
_METHODS = ("GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS")
_FLAGS = (True, False, None)
# header names as istr: multidict looks them up without case-folding them first
_CLIENT_USER_AGENT = istr("X-Stripe-Client-User-Agent")
_STRIPE_VERSION = istr("Stripe-Version")
#: durations below this many milliseconds (31 years) are numbers no redactor changes
_MAX_MS = 1e12
#: byte counts below this (1 TB) are numbers no redactor changes
_MAX_BYTES = 10**12
_JSON = "application/json"
#: the most ``Stripe-Version`` headers whose logged form is remembered
_MAX_VERSIONS = 64


@dataclass(frozen=True, slots=True)
class AuditRoute:
    """What the audit line carries for the requests of one route."""

    params: bool = True
    response_body: bool = False


class AuditRouteSettings(Settings):
    """A per-route override; a key left out keeps the global value."""

    route: RouteText = Field(description='"METHOD /path/glob", e.g. "POST /v1/forwarding/**"')
    params: bool | None = Field(None, description="log the request's parameters")
    response_body: bool | None = Field(None, description="log the response body")


class AuditSettings(Settings):
    """One JSON line per request, tied to Stripe's Request-Id. Parameters and bodies are
    redacted like every field; bodies still stream upstream, the gateway keeps a copy of at
    most the logged size as they go. SIGUSR1 also reopens the file, as nginx does."""

    path: str = Field(
        "-", description='"-" for standard output or a file path, opened for appending'
    )
    params: bool = Field(True, description="put the request's parameters in the line")
    params_max_bytes: int = Field(
        16384,
        ge=1,
        le=_MAX_CAP,
        description="largest request body whose parameters are logged; larger bodies are "
        "streamed upstream as always and the line says [body N bytes, not logged]",
    )
    response_body: bool = Field(False, description="put the response body in the line")
    response_body_max_bytes: int = Field(
        65536, ge=1, le=_MAX_CAP, description="largest response body logged"
    )
    routes: list[AuditRouteSettings] = Field(
        default_factory=list,
        description="per-route overrides of params and response_body, first match wins",
        examples=[[{"route": "POST /v1/forwarding/**", "params": False, "response_body": True}]],
    )
    reopen_check_seconds: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="how often the file's path is checked (0 = never): when the file open "
        "is no longer the one at the path (moved or removed), the path is reopened",
    )

    _default: AuditRoute = PrivateAttr(AuditRoute())
    _routes: tuple[tuple[RouteRule, AuditRoute], ...] = PrivateAttr(())

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value:
            raise ValueError('must be "-" (standard output) or a file path')
        if value == "-":
            return value
        p = Path(value)
        if not p.parent.is_dir():
            raise ValueError(f"directory {p.parent} does not exist")
        if p.exists() and not os.access(p, os.W_OK):
            raise ValueError(f"{p} is not writable")
        return value

    def model_post_init(self, context: Any, /) -> None:
        default = self._default = AuditRoute(params=self.params, response_body=self.response_body)
        self._routes = tuple(
            (
                parse_rule(r.route),
                AuditRoute(
                    params=default.params if r.params is None else r.params,
                    response_body=(
                        default.response_body if r.response_body is None else r.response_body
                    ),
                ),
            )
            for r in self.routes
        )

    @property
    def file(self) -> Path | None:
        """The file lines go to; ``None`` for standard output."""
        return None if self.path == "-" else Path(self.path)

    @property
    def default(self) -> AuditRoute:
        """What the line carries for a request no route matches."""
        return self._default

    def route(self, method: str, path: str) -> AuditRoute:
        """The settings of the first route matching ``METHOD path``, else the global ones."""
        for rule, route in self._routes:
            if rule.matches(method, path):
                return route
        return self.default

    @property
    def anything_logged(self) -> bool:
        """Whether any route logs parameters or response bodies."""
        routes = (self.default, *(route for _, route in self._routes))
        return any(r.params or r.response_body for r in routes)


@dataclass(frozen=True, slots=True)
class SafeValues:
    """The values of the audit line's gateway-owned text fields that skip the log
    processors (the line's ``head``): each one was run through the processors at
    start-up, alone in its field, and came back unchanged. A value not in its set (a
    method outside these, a team added later) sends the whole line through the processors.
    """

    teams: frozenset[str | None]
    methods: frozenset[str]
    outcomes: frozenset[str | None]
    upstreams: frozenset[str | None]

    @classmethod
    def verified(cls, processors: Sequence[Any], teams: Sequence[str]) -> SafeValues | None:
        """The values the ``processors`` leave as they are; ``None`` (no head, every field
        processed) unless every processor is the redaction plugin's: another processor
        may want to see every field of every line."""
        if not processors or not all(isinstance(p, RedactingProcessor) for p in processors):
            return None
        constants = {"event": "request", "level": "info"}  # the sink puts them in the head
        out: Any = dict(constants)
        for processor in processors:
            out = processor(None, "info", dict(out))
        if out != constants:
            return None

        def unchanged(key: str, candidates: Sequence[Any]) -> frozenset[Any]:
            kept = set()
            for value in candidates:
                out: Any = {key: value}
                for processor in processors:
                    out = processor(None, "info", dict(out))
                if out == {key: value} and type(out[key]) is type(value):
                    kept.add(value)
            return frozenset(kept)

        return cls(
            teams=unchanged("team", [*teams, None]),
            methods=unchanged("method", _METHODS),
            outcomes=unchanged("outcome", [*OUTCOMES, None]),
            upstreams=unchanged("upstream", [*UPSTREAM_NAMES, None]),
        )

    def admits(
        self,
        team: Any,
        method: Any,
        outcome: Any,
        upstream: Any,
        livemode: Any,
        status: Any,
        attempts: Any,
        duration_ms: Any,
        upstream_ms: Any,
        bytes_in: Any,
        bytes_out: Any,
    ) -> bool:
        """Whether these head values may skip the processors: text of the verified sets,
        flags, and numbers no redactor changes (too short for a card number: durations and
        byte counts the gateway measured)."""
        return (
            team in self.teams
            and method in self.methods
            and outcome in self.outcomes
            and upstream in self.upstreams
            and livemode in _FLAGS
            and type(status) is int
            and 0 <= status < 1000
            and type(attempts) is int
            and 0 <= attempts < 1000
            and type(duration_ms) is float
            and 0.0 <= duration_ms < _MAX_MS
            and (
                upstream_ms is None or (type(upstream_ms) is float and 0.0 <= upstream_ms < _MAX_MS)
            )
            and type(bytes_in) is int
            and 0 <= bytes_in < _MAX_BYTES
            and type(bytes_out) is int
            and 0 <= bytes_out < _MAX_BYTES
        )


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _is_decoded(content_type: str) -> bool:
    """Bodies whose parameters are decoded: forms and JSON."""
    return content_type in (_FORM, _JSON) or content_type.endswith("+json")


class AuditPlugin:
    """Built-in plugin ``audit``."""

    name = "audit"
    settings_model = AuditSettings

    def __init__(self) -> None:
        self.settings = AuditSettings()
        self._default_route = self.settings.default
        self._route_of: Any = None
        self._stream: BinaryIO | None = None
        self._own_stream = False
        self._sink: JsonLineSink | None = None
        self._broken = False
        self._fallback: Any = None
        #: counts the records that could not be written (metric ``audit_write_failures``)
        self._write_failures: Any = None
        self._process: dict[str, Any] = {}
        #: ``(st_dev, st_ino)`` of the file open at ``path``
        self._identity: tuple[int, int] | None = None
        #: the path could not be reopened: no file is open, lines go to the error log
        self._lost = False
        self._timer: asyncio.TimerHandle | None = None
        self._host: PluginHost | None = None
        #: some plugin contributes fields (``gateway_audit_fields``)
        self._contributed = False
        #: some plugin sees the written lines (``gateway_audit_line``)
        self._line_seen = False
        self._team_names: tuple[str, ...] = ()
        #: values that skip the log processors; None: every field is processed
        self._safe: SafeValues | None = None
        #: ``Stripe-Version`` as sent -> as logged (``api_version``; a client sends the
        #: same one every time); at most ``_MAX_VERSIONS`` entries
        self._versions: dict[str | None, str | None] = {}

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: AuditSettings) -> None:
        self.settings = settings
        # read once: a pydantic model's private attributes cost a microsecond a read
        self._default_route = settings.default
        self._route_of = settings.route if settings.routes else None
        self._team_names = tuple(team.name for team in config.teams)

    @hookimpl
    def gateway_startup(self, host: PluginHost, metrics: GatewayMetrics) -> None:
        self._write_failures = metrics.counter(
            "audit_write_failures",
            "Audit records that could not be written to the audit log (they went to the "
            "error log; requests are refused with 503 until a line is written again).",
        )
        path = self.settings.file
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
        self._line_seen = "gateway_audit_line" in host.implemented
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
        self._safe = SafeValues.verified(host.log_processors, self._team_names)
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
        path = self.settings.file
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
        path = self.settings.file
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
        if self._write_failures is not None:
            self._write_failures.inc(len(records))
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
        route_of = self._route_of
        route = self._default_route
        if route_of is not None:
            route = ctx.state["audit.route"] = route_of(ctx.method, ctx.path)
        request = ctx.request
        settings = self.settings
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
        method = request.method
        team = ctx.team
        team_name = team.name if team is not None else None
        status = ctx.status
        outcome = ctx.outcome
        upstream = ctx.upstream_name
        livemode = ctx.livemode
        attempts = ctx.attempts
        duration = milliseconds(time.perf_counter() - ctx.started)  # ctx.elapsed_ms()
        bytes_in = ctx.bytes_in
        bytes_out = ctx.bytes_out
        upstream_seconds = ctx.upstream_seconds
        upstream_ms = milliseconds(upstream_seconds) if upstream_seconds is not None else None
        headers = request.headers
        found = sdk(headers.get(_CLIENT_USER_AGENT), headers.get(hdrs.USER_AGENT))
        sent = headers.get(_STRIPE_VERSION)
        try:
            version = self._versions[sent]
        except KeyError:
            version = api_version(sent)
            if len(self._versions) >= _MAX_VERSIONS:
                self._versions.clear()
            if sent is None or len(sent) <= 64:  # longer ones are no version: not kept
                self._versions[sent] = version
        # gateway-owned values: config names, fixed vocabularies, the gateway's own numbers
        head: dict[str, Any] | None = {
            "timestamp": None,  # first in the line; the sink sets it
            "team": team_name,
            "method": method,
            "livemode": livemode,
            "status": status,
            "outcome": outcome,
            "upstream": upstream,
            "duration_ms": duration,
            "upstream_ms": upstream_ms,
            "attempts": attempts,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }
        fields: dict[str, Any] = {
            "request_id": ctx.request_id,
            "path": path,
            "object_id": object_id_of(path),
            "stripe_account": ctx.stripe_account,
            "upstream_request_id": ctx.upstream_request_id,
            "idempotency_key": ctx.idempotency_key,
            "client": request.remote,
            "stripe_version": version,
            "sdk": found.sdk,
            "sdk_version": found.sdk_version,
            "error": ctx.error,
        }
        safe = self._safe
        if safe is None or not safe.admits(
            team_name,
            method,
            outcome,
            upstream,
            livemode,
            status,
            attempts,
            duration,
            upstream_ms,
            bytes_in,
            bytes_out,
        ):
            # any other value, or no safe sets (no redaction, or a processor other than
            # redaction): every field through the processors, in the same order
            fields = {**head, **fields}  # type: ignore[dict-item]
            head = None
        route_of = self._route_of
        route = self._default_route
        if route_of is not None:  # found in gateway_request, unless the request stopped before
            route = ctx.state.get("audit.route") or route_of(request.method, path)
        if route.params or route.response_body:
            try:
                if route.params:
                    self._add_params(ctx, fields)
                if route.response_body:
                    fields["response_body"] = self._response_body(ctx)
            except Exception:  # never lose the line over its optional parts
                fields["params"] = fields["response_body"] = "[unparsed]"
        # plugins add fields; they never replace the core ones. The timestamp's place is
        # the head's first key, else kept first here (a key shared with the head would
        # cost the sink a merged copy)
        if self._contributed:
            assert self._host is not None
            contributed = self._host.fields_now("gateway_audit_fields", ctx)
            if head is None:
                fields = {"timestamp": None, **ctx.audit, **contributed, **fields}
            elif ctx.audit:
                fields = {**ctx.audit, **contributed, **fields}
            else:  # (most lines) what the merge would give, without a third dict: the
                # contributions are a dict of fields_now's own
                contributed.update(fields)
                fields = contributed
        elif ctx.audit:
            if head is None:
                fields = {"timestamp": None, **ctx.audit, **fields}
            else:
                fields = {**ctx.audit, **fields}
        if self._process:  # worker index and pid, with `serve --workers N`
            fields.update(self._process)
        assert self._sink is not None, "the sink opens at start-up"
        if self._lost:  # the refused requests' lines are probes: try the path again
            self._reopen("retry")
        try:
            line = self._sink.emit("request", fields, head)
        except (OSError, ValueError) as exc:  # a processor failed: no line for this record
            self._written([{**fields, **(head or {})}], exc)
            return
        if line is not None and self._line_seen:  # the redacted line, for the console
            assert self._host is not None
            self._host.notify("gateway_audit_line", line=line)

    @hookimpl
    def gateway_audit_event(self, event: str, fields: dict[str, Any]) -> None:
        """One line named ``event`` for something that is not a proxied request (a webhook
        received, a delivery attempt), in the same sink as the request lines."""
        record = {k: v for k, v in fields.items() if k not in _SINK_KEYS}
        if self._process:  # worker index and pid, with `serve --workers N`
            record.update(self._process)
        sink = self._sink
        if sink is None:  # before start-up or after shutdown: never dropped silently
            if self._fallback is not None:
                self._fallback.error("audit_write_failed", reason="the sink is closed", **record)
            return
        if self._lost:
            self._reopen("retry")
        try:
            sink.emit(event, record)
        except (OSError, ValueError) as exc:  # a processor failed: no line for this record
            self._written([record], exc)

    def _add_params(self, ctx: RequestContext, fields: dict[str, Any]) -> None:
        """``params`` (query and body, decoded when the line is written: see
        :class:`~gateway.redaction.params.LoggedParams`), and ``request_body`` for a body
        that is not decoded (what it is and its size, never its content)."""
        request = ctx.request
        query = request.rel_url.raw_query_string
        if not request.body_exists:
            # most requests: a GET without a query has no parameters (no decoding to defer)
            fields["params"] = LoggedParams([query]) if query else {}
            return
        params = LoggedParams([query] if query else [])
        fields["params"] = params
        body = ctx.request_body
        content_type = request.content_type
        if body is not None and len(body) > self.settings.params_max_bytes:
            body = None  # a copy another plugin asked for (a larger limit): not logged
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
