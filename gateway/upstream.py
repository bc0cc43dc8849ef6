"""The upstream client: pooled HTTP/1.1 keep-alive connections to Stripe.

What the forwarding path needs of aiohttp's ``ClientSession``, at a fraction of its cost
(no ``ClientRequest``/``ClientResponse`` machinery, trace signals, per-request timers or
connector bookkeeping): one ``asyncio.Protocol`` per connection, the request written as one
buffer, the answer parsed by aiohttp's own (C) response parser into aiohttp's
``StreamReader``, so the bytes that reach the wire, the parse and the body's framing are
aiohttp's. Failures are raised as the aiohttp exceptions the session raised, so the proxy
reads them as before (:func:`gateway.proxy.failure_kind`).

A connection goes back to the pool only when its answer was read to the end, keep-alive
holds, nothing was received after the answer and the request was sent whole; anything
else closes it. Data arriving on an idle connection closes it too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohappyeyeballs
from aiohttp import (
    ClientConnectionError,
    ClientConnectorCertificateError,
    ClientConnectorDNSError,
    ClientConnectorError,
    ClientConnectorSSLError,
    ClientOSError,
    ClientPayloadError,
    ClientResponseError,
    ConnectionTimeoutError,
    RequestInfo,
    ServerDisconnectedError,
    SocketTimeoutError,
)
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.http import HttpResponseParser, RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["AttemptTracer", "Origin", "UpstreamClient", "UpstreamResponse"]

#: aiohttp's read buffer (and the body reader's flow-control mark)
_READ_LIMIT = 2**16
#: idle connections older than this are closed rather than reused (aiohttp's default)
KEEPALIVE_TIMEOUT = 15.0
#: how long a host name's addresses are kept (aiohttp's ``ttl_dns_cache`` as configured)
DNS_TTL = 300.0
#: the wait before the next address is tried alongside (aiohttp's default)
HAPPY_EYEBALLS_DELAY = 0.25
#: methods aiohttp sends no ``Content-Length: 0`` for when there is no body
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_EMPTY_BODY_STATUS = frozenset((204, 304, *range(100, 200)))
_AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


class AttemptTracer(Protocol):
    """Told of each request the client sends (each attempt): ``start`` before the
    connection is taken, then ``end`` with the answer's status or ``failed``."""

    def start(self, method: str, url: URL) -> Any: ...

    def end(self, token: Any, status: int) -> None: ...

    def failed(self, token: Any, exc: BaseException) -> None: ...


class Origin:
    """Scheme, host and port of one upstream, prepared once: the pool's key, the ``Host``
    header, the TLS server name."""

    __slots__ = ("base", "host", "host_header", "key", "literal", "port", "tls")

    def __init__(self, base: str) -> None:
        url = URL(base)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"not an http(s) origin: {base!r}")
        self.base = base.rstrip("/")
        self.tls = url.scheme == "https"
        self.host = url.raw_host
        self.port = url.port or (443 if self.tls else 80)
        host_header = url.host_port_subcomponent
        assert host_header is not None
        self.host_header = host_header
        self.key = ConnectionKey(self.host, self.port, self.tls, True, None, None, None)
        #: the address of an IP literal host (nothing to resolve)
        self.literal: list[_AddrInfo] | None = None
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            self.literal = [
                (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (self.host, self.port))
            ]


class UpstreamResponse:
    """What the proxy reads of an answer (a subset of ``aiohttp.ClientResponse``)."""

    __slots__ = ("_conn", "_released", "content", "headers", "reason", "status", "version")

    def __init__(self, conn: _Connection, message: RawResponseMessage, content: Any) -> None:
        self._conn: _Connection | None = conn
        self._released = False
        self.status: int = message.code
        self.reason: str = message.reason
        self.version = message.version
        self.headers: CIMultiDictProxy[str] = message.headers
        #: the body, an aiohttp ``StreamReader`` (``iter_any()``, ``read()``)
        self.content: StreamReader = content

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return None if value is None else int(value)

    async def read(self) -> bytes:
        """The whole body (the connection goes back to the pool once it has ended)."""
        try:
            return await self.content.read()
        except BaseException:
            self.close()
            raise

    def release(self) -> None:
        """Done with the answer: its connection is pooled if the answer was read to the
        end and the connection is fit for another request, else closed."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finish()

    def close(self) -> None:
        """Done with the answer, whatever is left of it: its connection is closed."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.should_close = True
            conn.finish()


class _Connection(BaseProtocol):
    """One connection to one origin, one request at a time."""

    __slots__ = (
        "_body_done",
        "_continue",
        "_exception",
        "_head",
        "_last_data",
        "_message",
        "_payload",
        "_read_timeout",
        "_timer",
        "_writer",
        "client",
        "idle_since",
        "origin",
        "should_close",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, client: UpstreamClient, origin: Origin):
        super().__init__(loop)
        self.client = client
        self.origin = origin
        self.should_close = False
        self.idle_since = 0.0
        self._read_timeout: float | None = None
        self._head: asyncio.Future[None] | None = None
        self._continue: asyncio.Future[None] | None = None
        self._message: RawResponseMessage | None = None
        self._payload: Any = None
        self._body_done = False
        self._exception: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._writer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- the request

    def begin(self, head_only: bool, read_timeout: float | None) -> None:
        """Prepare for one request's answer (a new parser per request, as aiohttp)."""
        self._read_timeout = read_timeout
        self._message = None
        self._payload = None
        self._body_done = False
        self._exception = None
        self._head = self._loop.create_future()
        self._parser = HttpResponseParser(
            self,
            self._loop,
            _READ_LIMIT,
            payload_exception=ClientPayloadError,
            response_with_body=not head_only,
            read_until_eof=True,
            auto_decompress=False,
        )

    def start_timeout(self) -> None:
        """The request has been sent: from now on, ``read_timeout`` between reads."""
        if self._timer is None and self._read_timeout:
            self._last_data = now = self._loop.time()
            self._timer = self._loop.call_at(now + self._read_timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        timeout = self._read_timeout
        assert timeout is not None, "armed only with a read timeout"
        due = self._last_data + timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        self._timer = None
        exc = SocketTimeoutError("Timeout on reading data from socket")
        self._fail(exc)
        payload = self._payload
        if payload is not None and payload is not EMPTY_PAYLOAD:
            payload.set_exception(exc)

    def _drop_timeout(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc: BaseException, cause: BaseException | None = None) -> None:
        self.should_close = True
        self._drop_timeout()
        if self._exception is None:
            if cause is not None and cause is not exc:
                exc.__cause__ = cause
            self._exception = exc
        head = self._head
        if head is not None and not head.done():
            head.set_exception(self._exception)
            head.exception()  # retrieved here: no "never retrieved" warning if unawaited
        waiter = self._continue
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._exception)
            waiter.exception()

    async def answer(self) -> tuple[RawResponseMessage, Any]:
        """Wait for the answer's status and headers (1xx interim answers skipped)."""
        head = self._head
        assert head is not None
        await head
        assert self._message is not None
        return self._message, self._payload

    async def wait_continue(self) -> bool:
        """After ``Expect: 100-continue``: True once an interim answer came, False when
        the final answer came first (the body is then not sent)."""
        if self._message is not None:
            return False
        self._continue = self._loop.create_future()
        self.start_timeout()
        head = self._head
        assert head is not None
        await asyncio.wait((self._continue, head), return_when=asyncio.FIRST_COMPLETED)
        if self._exception is not None:
            raise self._exception
        self._drop_timeout()
        return self._message is None

    # ------------------------------------------------------------- asyncio

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._body_done:
            if data:  # bytes nobody asked for (on an idle connection, after the answer)
                self.should_close = True
                if self.transport is not None:
                    self.transport.close()
            return
        if data and self._timer is not None:
            self._last_data = self._loop.time()
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except BaseException as underlying:
            if self.transport is not None:
                self.transport.close()
            if not isinstance(underlying, Exception):
                raise
            if isinstance(underlying, HttpProcessingError):
                exc = HttpProcessingError(
                    code=underlying.code, message=underlying.message, headers=underlying.headers
                )
            else:
                exc = HttpProcessingError()
            self._fail(exc, underlying)
            payload = self._payload
            if payload is not None and payload is not EMPTY_PAYLOAD:
                payload.set_exception(ClientPayloadError("Response payload is not completed"))
            return
        if upgraded or tail:
            self.should_close = True
        for message, payload in messages:
            code = message.code
            if 100 <= code < 200 and code != 101:  # interim: what aiohttp skips too
                waiter = self._continue
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                continue
            if self._message is not None:  # a second answer to one request
                self.should_close = True
                continue
            if message.should_close or code == 101:
                self.should_close = True
            if code in _EMPTY_BODY_STATUS:
                payload = EMPTY_PAYLOAD
            self._message = message
            self._payload = payload
            if payload is EMPTY_PAYLOAD:
                self._body_end()
            else:
                payload.on_eof(self._body_end)
            head = self._head
            if head is not None and not head.done():
                head.set_result(None)

    def _body_end(self) -> None:
        self._body_done = True
        self._drop_timeout()

    def pause_reading(self) -> None:
        super().pause_reading()
        self._drop_timeout()

    def resume_reading(self, resume_parser: bool = True) -> None:
        was_paused = self._reading_paused
        super().resume_reading(resume_parser)
        if was_paused and self.transport is not None and not self._body_done:
            self.start_timeout()

    def eof_received(self) -> bool | None:
        self._drop_timeout()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._drop_timeout()
        self.should_close = True
        self.client._lost(self)
        uncompleted = None
        parser = self._parser
        if parser is not None:
            try:
                uncompleted = parser.feed_eof()
            except Exception as underlying:
                payload = self._payload
                if payload is not None and payload is not EMPTY_PAYLOAD:
                    text = f"Response payload is not completed: {underlying!r}"
                    if exc is not None:
                        text = f"{text}. {exc!r}"
                    payload.set_exception(ClientPayloadError(text), underlying)
        head = self._head
        if head is not None and not head.done():
            if exc is None:
                self._fail(ServerDisconnectedError(uncompleted))
            elif isinstance(exc, OSError):
                self._fail(ClientOSError(*exc.args), exc)
            else:
                self._fail(exc)
        elif self._exception is None and exc is not None:
            self._exception = exc
        self._parser = None
        super().connection_lost(exc)

    # ------------------------------------------------------------- the end

    def finish(self) -> None:
        """The response is done with: pool the connection or close it."""
        writer = self._writer
        if writer is not None:
            self._writer = None
            if not writer.done():
                writer.cancel()  # the answer ended before the body was sent: never reused
                self.should_close = True
        self._drop_timeout()
        parser = self._parser
        self._parser = None
        self._head = self._continue = None
        self._payload = None
        reusable = (
            not self.should_close
            and self._body_done
            and self._exception is None
            and self.transport is not None
            and not self.transport.is_closing()
            and not self._reading_paused
        )
        if reusable and parser is not None:
            try:  # a next answer begun after this one's end: the connection is not clean
                reusable = parser.feed_eof() is None
            except Exception:
                reusable = False
        self._message = None
        if reusable:
            self.client._pool(self)
        else:
            self.should_close = True
            if self.transport is not None:
                self.transport.close()
            self.client._gone(self)


class UpstreamClient:
    """The gateway's upstream connections: a keep-alive pool per origin, at most
    ``limit`` connections in all (0: no limit)."""

    def __init__(self, *, limit: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self._ssl = ssl_context
        #: told of every request (the tracing plugin's spans per attempt)
        self.tracers: list[AttemptTracer] = []
        self.closed = False
        self._idle: dict[ConnectionKey, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: (host, port) -> (expiry in loop time, addresses)
        self._dns: dict[tuple[str, int], tuple[float, list[_AddrInfo]]] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(("http/1.1",))
            self._ssl = context
        return self._ssl

    # ------------------------------------------------------------- the pool

    async def _acquire(self, origin: Origin, connect_timeout: float | None) -> _Connection:
        """A pooled connection to ``origin`` (the peer may close it even so), or a new one
        (waiting for one to be given back while ``limit`` connections are busy)."""
        while True:
            idle = self._idle.get(origin.key)
            if idle:
                oldest = asyncio.get_running_loop().time() - KEEPALIVE_TIMEOUT
                while idle:
                    conn = idle.pop()
                    transport = conn.transport
                    if transport is not None and not transport.is_closing():
                        if conn.idle_since >= oldest:
                            return conn
                        transport.close()
                    self._forget(conn)
            if not self.limit or len(self._open) < self.limit or self._close_one_idle():
                return await self._connect(origin, connect_timeout)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # pass on the wake-up this task will not use
                raise

    def _close_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                conn = idle.pop(0)
                if conn.transport is not None:
                    conn.transport.close()
                self._forget(conn)
                return True
        return False

    async def _addresses(self, origin: Origin) -> list[_AddrInfo]:
        """``origin``'s addresses, as aiohttp resolved them: an IP literal as it is, a name
        by ``getaddrinfo`` (``AI_ADDRCONFIG``), kept for ``DNS_TTL`` seconds."""
        if origin.literal is not None:
            return origin.literal
        loop = asyncio.get_running_loop()
        cached = self._dns.get((origin.host, origin.port))
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        infos: list[_AddrInfo] = await loop.getaddrinfo(  # type: ignore[assignment]
            origin.host, origin.port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
        )
        self._dns[(origin.host, origin.port)] = (loop.time() + DNS_TTL, infos)
        return infos

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        """A new connection (TLS for https), within ``timeout``; addresses are tried as
        aiohttp does (happy eyeballs, 0.25 s apart)."""
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, self, origin)
        self._open.add(conn)
        try:
            try:
                addresses = await self._addresses(origin)
            except OSError as exc:
                raise ClientConnectorDNSError(origin.key, exc) from exc
            async with asyncio.timeout(timeout):
                sock = await aiohappyeyeballs.start_connection(
                    addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, loop=loop
                )
                try:
                    if origin.tls:
                        await loop.create_connection(
                            lambda: conn,
                            sock=sock,
                            ssl=self._ssl_context(),
                            server_hostname=origin.host,
                        )
                    else:
                        await loop.create_connection(lambda: conn, sock=sock)
                except BaseException:
                    # cancelled or timed out before a transport took the socket over (the
                    # transport closes it when there is one; closing twice does nothing)
                    sock.close()
                    raise
        except BaseException as exc:
            self._forget(conn)
            if conn.transport is not None:
                conn.transport.close()
            if isinstance(exc, TimeoutError) and exc.errno is None:
                raise ConnectionTimeoutError(f"Connection timeout to host {origin.base}") from exc
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise ClientConnectorCertificateError(origin.key, exc) from exc
            if isinstance(exc, ssl.SSLError):
                raise ClientConnectorSSLError(origin.key, exc) from exc
            if isinstance(exc, OSError):
                raise ClientConnectorError(origin.key, exc) from exc
            raise
        return conn

    def _pool(self, conn: _Connection) -> None:
        if self.closed:
            self._gone(conn)
            if conn.transport is not None:
                conn.transport.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        idle = self._idle.get(conn.origin.key)
        if idle is None:
            idle = self._idle[conn.origin.key] = []
        idle.append(conn)
        self._wake()

    def _gone(self, conn: _Connection) -> None:
        self._forget(conn)

    def _lost(self, conn: _Connection) -> None:
        """``conn`` was closed (by either side)."""
        idle = self._idle.get(conn.origin.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.abort()
        self._open.clear()

    # ------------------------------------------------------------- requests

    async def request(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: CIMultiDict[str],
        data: bytes | AsyncIterator[bytes] | None,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send ``method target`` to ``origin`` with ``headers`` (as given: no header is
        added but ``Host``, and ``Content-Length`` or ``Transfer-Encoding: chunked`` as
        the body needs, as aiohttp does) and return the answer once its status and headers
        have come. The body is read from the response; ``release()`` or ``close()`` it.
        ``connect_timeout`` bounds opening a connection (TLS included), ``read_timeout``
        each wait for the answer's bytes once the request is sent."""
        timeouts = (connect_timeout, read_timeout)
        tracers = self.tracers
        if not tracers:
            return await self._request(method, origin, target, headers, data, timeouts)
        url = URL(f"{origin.base}{target}", encoded=True)
        tokens = [(tracer, tracer.start(method, url)) for tracer in tracers]
        try:
            response = await self._request(method, origin, target, headers, data, timeouts)
        except BaseException as exc:
            for tracer, token in tokens:
                tracer.failed(token, exc)
            raise
        try:
            for tracer, token in tokens:
                tracer.end(token, response.status)
        except BaseException:
            response.close()  # a tracer that fails must not keep the connection
            raise
        return response

    async def _request(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: CIMultiDict[str],
        data: bytes | AsyncIterator[bytes] | None,
        timeouts: tuple[float | None, float | None],
    ) -> UpstreamResponse:
        if self.closed:
            raise ClientConnectionError("the upstream client is closed")
        head, body, stream, length = _request_head(method, origin, target, headers, data)
        # as aiohttp: the body waits for an interim answer when the (first) Expect says so
        expect = "Expect" in headers and headers["Expect"].lower() == "100-continue"
        conn = await self._acquire(origin, timeouts[0])
        conn.begin(method == "HEAD", timeouts[1])
        try:
            return await self._exchange(
                conn, method, origin, target, head, body, stream, length, expect
            )
        except BaseException:
            writer = conn._writer
            if writer is not None and not writer.done():
                writer.cancel()
            conn._writer = None
            conn.should_close = True
            conn.finish()
            raise

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        origin: Origin,
        target: str,
        head: bytes,
        body: bytes | None,
        stream: AsyncIterator[bytes] | None,
        length: int | None,
        expect: bool,
    ) -> UpstreamResponse:
        transport = conn.transport
        if transport is None:
            raise ServerDisconnectedError()
        if stream is not None:
            transport.write(head)
            conn._writer = asyncio.ensure_future(self._send_stream(conn, stream, length, expect))
        elif expect and body:
            transport.write(head)
            if await conn.wait_continue():
                transport.write(body)
                conn.start_timeout()
            else:
                conn.should_close = True  # the body was never sent
        else:
            transport.write(head + body if body else head)
            conn.start_timeout()
        try:
            message, payload = await conn.answer()
        except HttpProcessingError as exc:  # what aiohttp's ClientResponse.start raises
            url = URL(f"{origin.base}{target}", encoded=True)
            raise ClientResponseError(
                RequestInfo(url, method, CIMultiDictProxy(CIMultiDict()), url),
                (),
                status=exc.code,
                message=exc.message,
                headers=exc.headers,
            ) from exc
        return UpstreamResponse(conn, message, payload)

    async def _send_stream(
        self,
        conn: _Connection,
        stream: AsyncIterator[bytes],
        length: int | None,
        expect: bool,
    ) -> None:
        """Write a streamed body (chunked when its length is unknown), with flow control;
        a failure of the body's source fails the request, as in aiohttp."""
        try:
            if expect and not await conn.wait_continue():
                conn.should_close = True
                return
            left = length
            async for chunk in stream:
                transport = conn.transport
                if transport is None:
                    raise ClientConnectionError("Connection lost")
                if not chunk:
                    continue
                if left is not None:
                    if left <= 0:
                        break
                    if len(chunk) > left:
                        chunk = chunk[:left]
                    left -= len(chunk)
                    transport.write(chunk)
                else:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if conn._paused:
                    await conn._drain_helper()
            if left is None and conn.transport is not None:
                conn.transport.write(b"0\r\n\r\n")
            conn.start_timeout()
        except asyncio.CancelledError:
            raise
        except OSError as underlying:
            exc: BaseException = underlying
            if underlying.errno is not None or not isinstance(underlying, TimeoutError):
                exc = ClientOSError(underlying.errno, "Can not write request body")
            conn._fail(exc, underlying)
            if conn.transport is not None:
                conn.transport.close()
        except Exception as underlying:
            conn._fail(
                ClientConnectionError(
                    f"Failed to send bytes into the underlying connection: {underlying!r}"
                ),
                underlying,
            )
            if conn.transport is not None:
                conn.transport.close()


def _headers_as_sent(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """The headers aiohttp's session sends for ``headers``: a name repeated in the same
    spelling is sent each time; spelled differently, the later value replaces the earlier
    (``ClientSession._prepare_headers``)."""
    if len(headers) == len(headers.keys()):
        return headers
    out: CIMultiDict[str] = CIMultiDict()
    added: set[str] = set()
    for key, value in headers.items():
        if key in added:
            out.add(key, value)
        else:
            out[key] = value
            added.add(key)
    return out


def _request_head(
    method: str,
    origin: Origin,
    target: str,
    headers: CIMultiDict[str],
    data: bytes | AsyncIterator[bytes] | None,
) -> tuple[bytes, bytes | None, AsyncIterator[bytes] | None, int | None]:
    """The request line and headers as aiohttp writes them, the body (bytes), the
    streamed body and the number of its bytes to send (None: chunked)."""
    fields = [f"{name}: {value}" for name, value in _headers_as_sent(headers).items()]
    has_length = "Content-Length" in headers
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    length: int | None = None
    if data is None:
        if method not in _NO_BODY_METHODS and not has_length:
            fields.append("Content-Length: 0")
    elif isinstance(data, bytes | bytearray):
        body = bytes(data)
        if not has_length:
            fields.append(f"Content-Length: {len(body)}")
    else:
        stream = data
        if has_length:
            length = int(headers["Content-Length"])
        else:
            fields.append("Transfer-Encoding: chunked")
    blob = "".join(fields)
    if "\r" in blob or "\n" in blob or "\r" in target or "\n" in target:
        raise ValueError(
            "Newline or carriage return character detected in HTTP status line or "
            "headers. Potential header injection attack."
        )
    if target.endswith("?") and target.find("?") == len(target) - 1:
        target = target[:-1]  # an empty query: aiohttp's URL (yarl) dropped its "?"
    first = f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
    text = first + "\r\n".join(fields) + "\r\n\r\n" if fields else first + "\r\n"
    # UTF-8 as aiohttp's writer, which leaves out a lone surrogate (a byte the client sent
    # that was not UTF-8, decoded with surrogateescape)
    return text.encode("utf-8", "ignore"), body, stream, length
