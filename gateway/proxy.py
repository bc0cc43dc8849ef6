"""The forwarding path: one request in, hooks around it, one streamed request upstream.

Bodies are relayed chunk by chunk in both directions; nothing is buffered whole. What the
client sent in its query string and body reaches Stripe byte for byte, and what Stripe
answers reaches the client byte for byte (compressed bodies stay compressed). A plugin may
ask for a copy of either body, up to a limit (``ctx.request_capture_limit``,
``ctx.capture_limit``): the copy is kept as the chunks go by, never instead of them.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from urllib.parse import unquote

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import GatewayConfig
from gateway.context import RequestContext, new_request_id
from gateway.errors import CLOSE, StripeErrorResponse, error_response
from gateway.expect import close_if_uninvited, send_continue
from gateway.headers import header_problem, relay_headers, strip_hop_by_hop
from gateway.host import PluginFailure, PluginHost
from gateway.retry import RetryPolicy, answer_is_retryable, needs_body_to_decide
from gateway.routing import upstream_for
from gateway.slots import PoolExhausted, TeamBusy, UpstreamSlots
from gateway.upstream import Origin, UpstreamClient, UpstreamResponse, WriteTimeoutError

__all__ = ["Proxy", "failure_kind"]

CHUNK = 64 * 1024
_SAFE_METHODS = frozenset({"GET", "HEAD"})
#: failures before any answer after which a GET or HEAD is tried once more, at once
_RETRY_AT_ONCE = frozenset({"reset", "disconnected"})
#: an error answer read whole to see whether its code makes it retryable
_DECIDE_BODY_CAP = 64 * 1024


async def _one(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _body_hook_applies(ctx: RequestContext, status: int, headers: CIMultiDict[str]) -> bool:
    """Whether an answer with these headers may go through ``gateway_response_body``: JSON,
    not compressed, with a body, and not announced as larger than the plugins' limit."""
    if ctx.method == "HEAD" or status in (204, 304):
        return False
    if not headers.get("Content-Type", "").lower().startswith("application/json"):
        return False
    encoding = headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        return False
    length = headers.get("Content-Length")
    return length is None or not length.isdigit() or int(length) <= ctx.response_body_limit


def _unsafe_path(raw_path: str) -> bool:
    """Paths whose meaning could change between the allow rules and Stripe (``..``,
    ``%2F``): allow rules see the decoded path, Stripe the raw one, so both must agree."""
    raw = raw_path.partition("?")[0]
    if "%" not in raw and "/." not in raw and not raw.startswith("."):
        # nothing encoded and no segment starts with a dot: only a backslash can be wrong
        return "\\" in raw
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw:
        return True
    return any(segment in (".", "..") for segment in unquote(raw).split("/"))


def failure_kind(exc: BaseException) -> str:
    """A short, bounded name for why an upstream attempt failed (for metrics)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout"
    if isinstance(exc, WriteTimeoutError):  # Stripe took none of the request body
        return "write_timeout"
    if isinstance(exc, TimeoutError):  # aiohttp's other timeouts are TimeoutErrors too
        return "read_timeout"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return "reset"
    return "other"


#: getaddrinfo's error numbers by name (``EAI_NONAME``), which ``errno`` does not know
_EAI_NAMES = {
    value: name
    for name in dir(socket)
    if name.startswith("EAI_") and isinstance(value := getattr(socket, name), int)
}


def os_error_of(exc: BaseException) -> dict[str, str | None]:
    """For the operator's log line: the OS-level error behind an upstream failure, as
    ``errno`` (``ECONNREFUSED``, ``EAI_NONAME``) and ``reason`` (its ``strerror``: "Connection
    refused", "Name or service not known"), or the exception's type when there is none."""
    found: BaseException | None = exc
    while found is not None and not isinstance(found, OSError):
        found = getattr(found, "os_error", None) or found.__cause__
    if found is None or found.errno is None:
        return {"errno": None, "reason": type(exc).__name__}
    number = found.errno
    if number in errno.errorcode:  # asyncio's strerror is "Connect call failed (...)"
        return {"errno": errno.errorcode[number], "reason": os.strerror(number)}
    return {"errno": _EAI_NAMES.get(number, str(number)), "reason": found.strerror}


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    """The client left, or (``outcome`` ``send_timeout``) stopped reading its answer."""

    def __init__(self, outcome: str = "client_closed") -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _SendWatch:
    """Bounds how long one write to the client may wait (``send_timeout``) with one timer
    per response, not a timeout per write (that cost more than a microsecond a chunk): the
    timer looks at the write in progress, if any, and aborts the client's connection when
    it has waited ``send_timeout`` seconds; the write then fails and ``expired`` says why."""

    __slots__ = ("_handle", "_loop", "_timeout", "_transport", "expired", "started")

    def __init__(self, timeout: float, transport: asyncio.Transport | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._transport = transport
        #: loop time the write in progress started at; None between writes
        self.started: float | None = None
        self.expired = False
        self._handle = self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if self.started is None:
            self._handle = self._loop.call_at(now + self._timeout, self._check)
            return
        due = self.started + self._timeout
        if now < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self.expired = True
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._handle.cancel()


class _BodyCut(Exception):
    """The client's body did not arrive whole: ``outcome`` says why (``body_timeout``,
    ``client_closed``)."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class Proxy:
    """The request handler of one app; holds what it needs, prepared at start-up."""

    def __init__(self, config: GatewayConfig, host: PluginHost) -> None:
        self.config = config
        self.host = host
        #: the pooled upstream client, opened when the app starts
        self.session: UpstreamClient | None = None
        up = config.upstream
        self._upstreams = {
            "api": up.api,
            "files": up.files,
            "connect": up.connect,
            "meter_events": up.meter_events,
        }
        #: each upstream's ``host:port``, for the operator's log lines
        self._hosts = {
            name: f"{url.host}:{url.port}"
            for name, url in ((n, URL(str(b))) for n, b in self._upstreams.items())
        }
        #: each upstream's origin, prepared once (the client's pool key, its Host header)
        self._origins = {name: Origin(str(base)) for name, base in self._upstreams.items()}
        self._rng = random.Random()
        self._connect_timeout = up.connect_timeout
        self._read_timeout = up.read_timeout
        self._max_body = self.config.server.max_body_bytes
        server = config.server
        self._body_timeout = server.body_timeout
        self._body_total_timeout = server.body_total_timeout
        self._buffer_cap = server.buffer_body_bytes
        self._send_timeout = server.send_timeout
        #: the pool's gate and the teams' in-flight counts (a reload hands them on)
        self.slots = UpstreamSlots(up.max_connections)

    # ----------------------------------------------------------------- entry point

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = self.host
        hooks = host.implemented
        name = upstream_for(request.method, request.path)
        ctx = RequestContext(
            request=request,
            request_id=new_request_id(),
            upstream_name=name,
            upstream_url=self._upstreams[name] if name is not None else "",
        )
        try:
            self._check_target(request)
            if name is None:
                raise StripeErrorResponse(
                    404,
                    f"Unrecognized request URL ({request.method}: {request.path}). "
                    "The gateway forwards /v1/, /v2/ and /oauth/ paths to Stripe.",
                    code="unrecognized_url",
                )
            self._check(request)
            # (a hook nobody implements is skipped here, without a call into the host)
            if "gateway_authenticate" in hooks:
                answer = host.first_now("gateway_authenticate", ctx)
                if answer is not None and not isinstance(answer, web.StreamResponse):
                    answer = await answer
                if answer is not None:
                    return await self._answer(ctx, answer, "refused")
            if hdrs.EXPECT in request.headers:  # 100-continue (_check): the key is good, now
                await send_continue(request)
            if "gateway_request" in hooks:
                answer = host.first_now("gateway_request", ctx)
                if answer is not None and not isinstance(answer, web.StreamResponse):
                    answer = await answer
                if answer is not None:
                    return await self._answer(ctx, answer)
            return await self._forward(ctx)
        except _BodyCut as exc:
            return await self._body_cut(ctx, exc.outcome)
        except asyncio.CancelledError:
            if ctx.outcome is None:  # the server's drain ran out (a gone client cancels nothing)
                ctx.outcome = "drain_timeout"
                ctx.error = ctx.error or "drain_timeout"
            raise
        except StripeErrorResponse as exc:
            error = exc.code or ("refused" if exc.status in (401, 403) else f"http_{exc.status}")
            return await self._answer(ctx, exc.to_response(ctx.request_id), error)
        except PluginFailure as exc:
            self.host.log.error(
                "plugin_failed_closed",
                plugin=exc.plugin,
                hook=exc.hook,
                request_id=ctx.request_id,
                exc_info=exc.__cause__ or exc,
            )
            return await self._answer(
                ctx,
                error_response(
                    500,
                    "The gateway could not process this request (plugin failure). "
                    "Nothing was sent to Stripe.",
                    request_id=ctx.request_id,
                    type="api_error",
                    should_retry=False,
                ),
                "plugin_failure",
            )
        finally:
            if ctx.outcome is None:
                self._settle(ctx)
            if "gateway_request_finished" in hooks:
                rest = host.each_now("gateway_request_finished", ctx)
                if rest is not None:
                    await rest

    async def _answer(
        self, ctx: RequestContext, response: web.StreamResponse, error: str | None = None
    ) -> web.StreamResponse:
        """Send a response the gateway or a plugin made (not an upstream one)."""
        if error is not None and ctx.error is None:
            ctx.error = error
        ctx.status = response.status
        if (
            ctx.response_body_limit > 0
            and isinstance(response, web.Response)
            and not response.prepared
            and "gateway_response_body" in self.host.implemented
        ):
            await self._rewrite_answer(ctx, response)
        if not response.prepared:
            response.headers.setdefault("X-Gateway-Request-Id", ctx.request_id)
            if hdrs.EXPECT in ctx.request.headers:
                close_if_uninvited(ctx.request, response)
            if "gateway_response_headers" in self.host.implemented:
                rest = self.host.each_now("gateway_response_headers", ctx, response.headers)
                if rest is not None:
                    await rest
        if isinstance(response, web.Response) and response.body is not None:
            body = response.body
            if isinstance(body, bytes | bytearray):
                ctx.bytes_out = len(body)
                if 0 < len(body) <= ctx.capture_limit:
                    ctx.response_body = bytes(body)
                    ctx.response_headers = CIMultiDict(response.headers)
        return response

    async def _rewrite_answer(self, ctx: RequestContext, response: web.Response) -> None:
        """Let the plugins change the body of an answer the gateway or a plugin made (a
        cached copy, say) as they would Stripe's (``gateway_response_body``)."""
        body = response.body
        if (
            isinstance(body, bytes | bytearray)
            and len(body) <= ctx.response_body_limit
            and _body_hook_applies(ctx, response.status, response.headers)
        ):
            response.body = await self.host.rewrite(
                "gateway_response_body", bytes(body), ctx=ctx, headers=response.headers
            )

    @staticmethod
    def _settle(ctx: RequestContext) -> None:
        """Name how a request that did not say so itself ended (``ctx.outcome``)."""
        if ctx.request.transport is None:
            # the client left before the answer the handler returns could be sent (nginx
            # logs such a request as 499)
            ctx.outcome = "client_closed"
            ctx.status = 499
        elif ctx.error is not None and ctx.error.startswith("upstream_"):
            ctx.outcome = "upstream_error"
        else:
            ctx.outcome = "ok"

    async def _body_cut(self, ctx: RequestContext, outcome: str) -> web.StreamResponse:
        """The client's body stalled or ended early: nothing complete went upstream (a
        streamed one had its upstream connection closed before the body's end)."""
        ctx.outcome = outcome
        response: web.StreamResponse
        if outcome == "client_closed":
            ctx.error = "client_disconnected"
            ctx.status = 499
            response = web.Response(status=499)  # nobody is left to read it
        else:
            timeout = self._body_timeout
            response = await self._answer(
                ctx,
                error_response(
                    408,
                    f"The request body did not arrive in time (no data for {timeout:g} s, or "
                    f"more than {self._body_total_timeout:g} s in all). Nothing was sent to "
                    "Stripe, or what was sent was abandoned before the body's end.",
                    request_id=ctx.request_id,
                    code="request_body_timeout",
                    should_retry=False,
                ),
                "body_timeout",
            )
            # Send the 408, then close: aiohttp would otherwise linger up to 10 s reading
            # the rest of a body that is not coming.
            await response.prepare(ctx.request)
            await response.write_eof()
            ctx.request.protocol.force_close()
        response.force_close()  # the rest of the body is never read
        return response

    async def _upstream_answer(
        self, ctx: RequestContext, headers: CIMultiDict[str]
    ) -> web.StreamResponse | None:
        """Let plugins replace Stripe's answer (or the gateway's 502/504) before it is sent."""
        if "gateway_upstream_response" not in self.host.implemented:
            return None
        answer = self.host.first_now("gateway_upstream_response", ctx, headers)
        if answer is None or isinstance(answer, web.StreamResponse):
            return answer
        return await answer

    # ----------------------------------------------------------------- upstream

    @staticmethod
    def _check_target(request: web.Request) -> None:
        """Only an origin-form target (``/v1/...``) is forwarded: absolute-form (``GET
        https://host/v1/...``), authority-form (``CONNECT host:443``) and asterisk-form
        (``OPTIONS *``) are refused, so the upstream's host is the config's, never the
        client's. So is a fragment, which the allow rules would not see but Stripe would."""
        raw = request.raw_path
        if not raw.startswith("/") or "#" in raw:
            raise StripeErrorResponse(
                400,
                "Invalid request target: send an origin-form path ('/v1/...') without a "
                "fragment, not a full URL, an authority or '*'.",
                code="invalid_request_target",
                should_retry=False,
            )

    def _check(self, request: web.Request) -> None:
        """Refuse, before any hook runs, what must never go upstream."""
        problem = header_problem(request.headers, request.version)
        if problem is not None:
            raise StripeErrorResponse(
                400,
                problem,
                code="invalid_header",
                should_retry=False,
                # RFC 9112 §6.1 and §6.3: after a request with a Transfer-Encoding is
                # refused, where its body ends (and the next request starts) is in doubt
                headers=dict(CLOSE) if "Transfer-Encoding" in request.headers else None,
            )
        if _unsafe_path(request.raw_path):
            raise StripeErrorResponse(
                400,
                "Invalid request path: '.' and '..' segments, encoded slashes and backslashes "
                "are not accepted.",
                code="invalid_path",
                should_retry=False,
            )
        headers = request.headers
        if hdrs.EXPECT in headers and any(
            value.strip().lower() != "100-continue" for value in headers.getall("Expect")
        ):
            raise StripeErrorResponse(
                417,
                "The only expectation the gateway meets is 'Expect: 100-continue'.",
                code="expectation_failed",
                should_retry=False,
            )
        if (
            hdrs.CONTENT_ENCODING in headers
            and request.body_exists
            and any(
                token.strip().lower() not in ("", "identity")
                for value in headers.getall("Content-Encoding")
                for token in value.split(",")
            )
        ):
            # Relayed as is, it could not be redacted or audited; inflated here, it could
            # be far over max_body_bytes (the server never inflates it: gateway/app.py)
            raise StripeErrorResponse(
                415,
                "Request bodies with a Content-Encoding (gzip, deflate, ...) are not "
                "accepted: send the body uncompressed.",
                code="unsupported_content_encoding",
                should_retry=False,
            )
        length = request.content_length
        if length is not None and length > self._max_body:
            raise self._too_large(length)

    def _too_large(self, length: int | None = None) -> StripeErrorResponse:
        size = f"of {length} bytes " if length is not None else ""
        return StripeErrorResponse(
            413,
            f"Request body {size}is over the gateway's limit of {self._max_body} bytes.",
            code="request_too_large",
            should_retry=False,
        )

    def _upstream_headers(self, ctx: RequestContext) -> CIMultiDict[str]:
        request = ctx.request
        headers = relay_headers(request.headers)
        if ctx.upstream_key is not None:
            headers["Authorization"] = f"Bearer {ctx.upstream_key}"
        peer = request.remote or "unknown"
        prior = ", ".join(request.headers.getall("X-Forwarded-For", ()))
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        return headers

    def _body_deadline(self) -> float:
        """The loop time by which a body starting now must have arrived whole."""
        return asyncio.get_running_loop().time() + self._body_total_timeout

    async def _chunk(self, content: aiohttp.StreamReader, deadline: float) -> bytes:
        """The body's next chunk (b"" at its end), within ``body_timeout`` and ``deadline``;
        raises :class:`_BodyCut` when it stalls or the client leaves before the end."""
        try:
            if not content.at_eof():
                now = asyncio.get_running_loop().time()
                async with asyncio.timeout_at(min(now + self._body_timeout, deadline)):
                    return await content.readany()
            return b""
        except TimeoutError:
            raise _BodyCut("body_timeout") from None
        except OSError:  # aiohttp: the connection was lost before the body's end
            raise _BodyCut("client_closed") from None

    async def _body(self, ctx: RequestContext) -> AsyncIterator[bytes]:
        content = ctx.request.content
        limit = ctx.request_capture_limit
        deadline = self._body_deadline()
        if limit <= 0:
            while True:
                chunk = await self._chunk(content, deadline)
                if not chunk:
                    return
                ctx.bytes_in += len(chunk)
                if ctx.bytes_in > self._max_body:
                    raise _BodyTooLarge()
                yield chunk
        # a plugin asked for a copy: keep the chunks while the body stays within its limit
        captured: list[bytes] | None = []
        while True:
            chunk = await self._chunk(content, deadline)
            if not chunk:
                if captured is not None:
                    ctx.request_body = b"".join(captured)
                return
            ctx.bytes_in += len(chunk)
            if ctx.bytes_in > self._max_body:
                raise _BodyTooLarge()
            if captured is not None:
                if ctx.bytes_in <= limit:
                    captured.append(chunk)
                else:
                    captured = None
            yield chunk

    def _should_retry(self, ctx: RequestContext) -> bool:
        # ctx.idempotency_key is what went upstream, including a key a plugin added
        return ctx.method in _SAFE_METHODS or ctx.idempotency_key is not None

    def _upstream_error(
        self, ctx: RequestContext, status: int, kind: str, message: str, exc: BaseException
    ) -> web.Response:
        ctx.error = kind
        self.host.log.warning(
            "upstream_error",
            kind=kind,
            upstream=ctx.upstream_name,
            host=self._hosts.get(ctx.upstream_name or ""),
            **os_error_of(exc),
            method=ctx.method,
            path=ctx.path,
            request_id=ctx.request_id,
        )
        return error_response(
            status,
            message,
            request_id=ctx.request_id,
            type="api_error",
            should_retry=self._should_retry(ctx),
        )

    async def _forward(self, ctx: RequestContext) -> web.StreamResponse:
        assert self.session is not None, "the upstream client opens at start-up"
        request = ctx.request
        headers = self._upstream_headers(ctx)
        if "gateway_upstream_headers" in self.host.implemented:
            rest = self.host.each_now("gateway_upstream_headers", ctx, headers)
            if rest is not None:
                await rest
        ctx.idempotency_key = headers.get("Idempotency-Key")
        # retries only with a key: the same key on every attempt makes them safe
        policy = ctx.retry if ctx.idempotency_key is not None else None
        body: bytes | None = None
        if request.body_exists:
            body = await self._buffer_body(ctx, policy)
            if policy is not None and (body is None or len(body) > policy.body_cap):
                policy = None  # too large to replay: sent once
        team = ctx.team
        name, cap = (team.name, team.max_in_flight) if team is not None else (None, None)
        try:
            taken = self.slots.try_take(name, cap)  # a free slot: no wait, no coroutine
        except TeamBusy:
            raise self._team_busy(name, cap) from None
        if not taken:
            await self._take_slot(ctx)
        try:
            return await self._exchange(ctx, headers, body, policy)
        finally:
            self.slots.give(team.name if team is not None else None)

    async def _take_slot(self, ctx: RequestContext) -> None:
        """Wait (at most ``pool_timeout``) for a pooled upstream connection to be free, and
        count the request against its team's ``max_in_flight``; answer 503 or 429 instead."""
        team = ctx.team
        name, cap = (team.name, team.max_in_flight) if team is not None else (None, None)
        try:
            await self.slots.take(name, cap, self.config.upstream.pool_timeout)
        except TeamBusy:
            raise self._team_busy(name, cap) from None
        except PoolExhausted:
            ctx.error = "upstream_pool_exhausted"
            raise StripeErrorResponse(
                503,
                "Every connection to Stripe stayed busy for "
                f"{self.config.upstream.pool_timeout:g} s (gateway pool exhausted). "
                "Nothing was sent to Stripe.",
                type="api_error",
                code="upstream_pool_exhausted",
                should_retry=True,
            ) from None

    @staticmethod
    def _team_busy(name: str | None, cap: int | None) -> StripeErrorResponse:
        return StripeErrorResponse(
            429,
            f"Too many requests in flight for team {name!r} (max_in_flight = {cap}). "
            "Nothing was sent to Stripe; retry shortly.",
            code="team_in_flight_limit",
            should_retry=True,
        )

    async def _exchange(
        self,
        ctx: RequestContext,
        headers: CIMultiDict[str],
        body: bytes | None,
        policy: RetryPolicy | None,
    ) -> web.StreamResponse:
        """Send the request upstream (again, under ``policy``) and relay the answer."""
        session = self.session
        assert session is not None, "the upstream client opens at start-up"
        request = ctx.request
        assert ctx.upstream_name is not None, "only routed requests are forwarded"
        # the configured base, the only source of the upstream's scheme, host and port; the
        # target is origin-form (checked by _check_target), as the client sent it
        origin = self._origins[ctx.upstream_name]
        target = request.raw_path
        started = time.perf_counter()
        while True:
            ctx.attempts += 1
            ctx.error = None
            if body is not None:
                data: bytes | AsyncIterator[bytes] | None = body
            else:
                data = self._body(ctx) if request.body_exists else None
            sent = time.perf_counter()
            failed: web.Response | None = None
            try:
                upstream = await session.request(
                    request.method,
                    origin,
                    target,
                    headers,
                    data,
                    connect_timeout=self._connect_timeout,
                    read_timeout=self._read_timeout,
                )
            except _BodyTooLarge:
                raise self._too_large() from None
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                ctx.upstream_failures += (failure_kind(exc),)
                failed = self._upstream_error(
                    ctx,
                    504,
                    "upstream_timeout",
                    "Stripe did not answer in time (gateway timeout).",
                    exc,
                )
            except (aiohttp.ClientError, OSError) as exc:
                self._body_failed(ctx, exc)  # aiohttp wraps the body generator's errors
                kind = failure_kind(exc)
                ctx.upstream_failures += (kind,)
                if (
                    kind in _RETRY_AT_ONCE
                    and ctx.method in _SAFE_METHODS
                    and ctx.attempts == 1
                    and policy is None
                    and (body is not None or not request.body_exists)
                ):
                    # A kept-alive connection Stripe closed as the request went out: a GET
                    # or HEAD is tried once more, at once, on a new connection (the
                    # gateway's decision, counted in ctx.attempts; the client never retries
                    # on its own)
                    continue
                failed = self._upstream_error(
                    ctx,
                    502,
                    "upstream_unreachable",
                    f"The gateway could not reach Stripe ({type(exc).__name__}).",
                    exc,
                )
            if failed is not None:
                wait = self._retry_wait(ctx, policy, started) if policy is not None else None
                if wait is not None:
                    await asyncio.sleep(wait)
                    continue
                return await self._answer(
                    ctx, await self._upstream_answer(ctx, failed.headers) or failed
                )
            preread: bytes | None = None
            if policy is not None and ctx.attempts <= policy.max_retries:
                should_retry = upstream.headers.get("Stripe-Should-Retry")
                if needs_body_to_decide(upstream.status, should_retry):
                    length = upstream.content_length
                    if length is not None and length <= _DECIDE_BODY_CAP:
                        preread = await upstream.read()
                wait = (
                    self._retry_wait(ctx, policy, started)
                    if answer_is_retryable(upstream.status, should_retry, preread)
                    else None
                )
                if wait is not None:
                    upstream.release()
                    await asyncio.sleep(wait)
                    continue
            try:
                return await self._relay(ctx, upstream, sent, preread)
            finally:
                upstream.release()

    def _body_failed(self, ctx: RequestContext, exc: BaseException) -> None:
        """Raise what the streamed body's own failure, wrapped by aiohttp, means."""
        if ctx.bytes_in > self._max_body:
            raise self._too_large() from None
        cause = exc.__cause__
        if isinstance(cause, _BodyCut):
            raise cause from None

    async def _buffer_body(self, ctx: RequestContext, policy: RetryPolicy | None) -> bytes | None:
        """Read the request body whole before an upstream connection is taken (so a slow
        client never holds one), when its Content-Length is within ``buffer_body_bytes``
        or the retry policy's ``body_cap`` (to replay it); None (and nothing read) for
        other bodies, which stream. A body of unknown length is not buffered."""
        length = ctx.request.content_length
        cap = max(self._buffer_cap, policy.body_cap if policy is not None else 0)
        if length is None or length > cap:
            return None
        content = ctx.request.content
        deadline = self._body_deadline()
        chunks: list[bytes] = []
        while chunk := await self._chunk(content, deadline):
            chunks.append(chunk)
        body = b"".join(chunks)
        ctx.bytes_in = len(body)
        if len(body) <= ctx.request_capture_limit:
            ctx.request_body = body
        return body

    def _retry_wait(self, ctx: RequestContext, policy: RetryPolicy, started: float) -> float | None:
        """The wait before the next attempt, or None when no attempt or no time is left.
        The wait drawn here is the one slept: drawing again could sleep past the deadline
        (or, refused, retry at once)."""
        if ctx.attempts > policy.max_retries:
            return None
        wait = policy.delay(ctx.attempts, self._rng)
        if time.perf_counter() - started + wait >= policy.deadline:
            return None
        return wait

    async def _read_for_rewrite(
        self,
        ctx: RequestContext,
        upstream: UpstreamResponse,
        response: web.StreamResponse,
        sent: float,
        preread: bytes | None,
    ) -> AsyncIterator[bytes] | web.StreamResponse:
        """Read Stripe's answer whole, up to ``ctx.response_body_limit``, and pass it
        through ``gateway_response_body`` (``Content-Length`` set to the new body's); an
        answer over the limit streams on untouched, from what was read. Stripe breaking off
        before the end is answered with a Stripe-shaped 502 (504 for a timeout): nothing of
        the answer has been sent yet."""
        limit = ctx.response_body_limit
        if preread is None:
            parts: list[bytes] = []
            size = 0
            try:
                async for chunk in upstream.content.iter_any():
                    parts.append(chunk)
                    size += len(chunk)
                    if size > limit:  # larger than announced (or not announced): stream on
                        return _then(b"".join(parts), upstream.content.iter_any())
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                timeout = isinstance(exc, TimeoutError)
                ctx.upstream_failures += ("timeout_mid_body" if timeout else "broken_body",)
                upstream.close()
                ctx.upstream_seconds = time.perf_counter() - sent
                failed = self._upstream_error(
                    ctx,
                    504 if timeout else 502,
                    "upstream_timeout_mid_body" if timeout else "upstream_broken_body",
                    "Stripe's answer broke off before its end; nothing of it was sent.",
                    exc,
                )
                return await self._answer(ctx, failed)
            preread = b"".join(parts)
        elif len(preread) > limit:
            return _one(preread)
        body = await self.host.rewrite(
            "gateway_response_body", preread, ctx=ctx, headers=response.headers
        )
        response.content_length = len(body)
        return _one(body)

    async def _relay(
        self,
        ctx: RequestContext,
        upstream: UpstreamResponse,
        sent: float,
        preread: bytes | None = None,
    ) -> web.StreamResponse:
        request = ctx.request
        ctx.status = upstream.status
        ctx.upstream_request_id = upstream.headers.get("Request-Id")
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=upstream.headers
        )
        strip_hop_by_hop(response.headers)
        hooks = self.host.implemented
        if "gateway_upstream_response" in hooks:
            # (the host's walk, not _upstream_answer: no coroutine unless a plugin awaits)
            replacement = self.host.first_now("gateway_upstream_response", ctx, response.headers)
            if replacement is not None and not isinstance(replacement, web.StreamResponse):
                replacement = await replacement
            if replacement is not None:
                upstream.close()
                ctx.upstream_seconds = time.perf_counter() - sent
                return await self._answer(ctx, replacement)
        chunks: AsyncIterator[bytes] | None = None
        if (
            ctx.response_body_limit > 0
            and "gateway_response_body" in hooks
            and _body_hook_applies(ctx, upstream.status, response.headers)
        ):
            read = await self._read_for_rewrite(ctx, upstream, response, sent, preread)
            if isinstance(read, web.StreamResponse):
                return read
            chunks = read
        response.headers["X-Gateway-Request-Id"] = ctx.request_id
        if "gateway_response_headers" in hooks:
            rest = self.host.each_now("gateway_response_headers", ctx, response.headers)
            if rest is not None:
                await rest
        limit = ctx.capture_limit
        captured: list[bytes] | None = [] if limit > 0 else None
        # a client that stops reading must not hold the upstream connection
        watch = _SendWatch(self._send_timeout, request.transport)
        loop_time = asyncio.get_running_loop().time
        try:
            try:
                watch.started = loop_time()
                await response.prepare(request)
                watch.started = None
            except (ConnectionError, aiohttp.ClientConnectionResetError) as exc:
                raise _ClientGone("send_timeout" if watch.expired else "client_closed") from exc
            if chunks is None:
                chunks = _one(preread) if preread is not None else upstream.content.iter_any()
            async for chunk in chunks:
                try:
                    watch.started = loop_time()
                    await response.write(chunk)
                    watch.started = None
                except (ConnectionError, aiohttp.ClientConnectionResetError) as exc:
                    outcome = "send_timeout" if watch.expired else "client_closed"
                    raise _ClientGone(outcome) from exc
                ctx.bytes_out += len(chunk)
                if captured is not None:
                    if ctx.bytes_out <= limit:
                        captured.append(chunk)
                    else:
                        captured = None
        except _ClientGone as gone:
            watch.close()
            ctx.outcome = gone.outcome
            if gone.outcome == "send_timeout":
                ctx.error = "send_timeout"  # the watch aborted the client's connection
            else:
                ctx.error = "client_disconnected"
                if ctx.bytes_out == 0:  # gone before any of the response reached it
                    ctx.status = 499
            upstream.close()
            ctx.upstream_seconds = time.perf_counter() - sent
            return response
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # The upstream broke off mid-body: break the client's response too, so it sees
            # a short or broken body rather than a silently complete one.
            ctx.error = (
                "upstream_timeout_mid_body"
                if isinstance(exc, TimeoutError)
                else "upstream_broken_body"
            )
            ctx.upstream_failures += (ctx.error.removeprefix("upstream_"),)
            ctx.outcome = "upstream_error"
            self.host.log.warning(
                "upstream_broken_body",
                kind=ctx.error,
                upstream=ctx.upstream_name,
                path=ctx.path,
                request_id=ctx.request_id,
                bytes_out=ctx.bytes_out,
            )
            watch.close()
            upstream.close()
            ctx.upstream_seconds = time.perf_counter() - sent
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError() from None
        except BaseException:  # cancelled (the drain, the client gone): no timer left behind
            watch.close()
            raise
        ctx.upstream_seconds = time.perf_counter() - sent
        try:
            watch.started = loop_time()
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            if not watch.expired:
                raise
            ctx.outcome = ctx.error = "send_timeout"
            return response
        finally:
            watch.close()
        ctx.outcome = "ok"  # sent whole, even if the client closes right after
        if captured is not None:
            ctx.response_body = b"".join(captured)
            ctx.response_headers = CIMultiDict(response.headers)
        return response
