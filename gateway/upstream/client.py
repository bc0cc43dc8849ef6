"""The pool of upstream connections and the request entry point: a keep-alive pool per
origin within one connection limit, addresses resolved and connections opened as aiohttp
does, each request told to the tracers."""

from __future__ import annotations

import asyncio
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
    ConnectionTimeoutError,
)
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict
from yarl import URL

from gateway.upstream.connection import Connection, UpstreamResponse
from gateway.upstream.origin import AddrInfo, Origin
from gateway.upstream.request import exchange, request_head

__all__ = [
    "DNS_TTL",
    "HAPPY_EYEBALLS_DELAY",
    "KEEPALIVE_TIMEOUT",
    "AttemptTracer",
    "UpstreamClient",
]

#: idle connections older than this are closed rather than reused (aiohttp's default)
KEEPALIVE_TIMEOUT = 15.0
#: how long a host name's addresses are kept (aiohttp's ``ttl_dns_cache`` as configured)
DNS_TTL = 300.0
#: the wait before the next address is tried alongside (aiohttp's default)
HAPPY_EYEBALLS_DELAY = 0.25


class AttemptTracer(Protocol):
    """Told of each request the client sends (each attempt): ``start`` before the
    connection is taken, then ``end`` with the answer's status or ``failed``."""

    def start(self, method: str, url: URL) -> Any: ...

    def end(self, token: Any, status: int) -> None: ...

    def failed(self, token: Any, exc: BaseException) -> None: ...


class UpstreamClient:
    """The gateway's upstream connections: a keep-alive pool per origin, at most
    ``limit`` connections in all (0: no limit)."""

    def __init__(self, *, limit: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self._ssl = ssl_context
        #: told of every request (the tracing plugin's spans per attempt)
        self.tracers: list[AttemptTracer] = []
        self.closed = False
        self._idle: dict[ConnectionKey, list[Connection]] = {}
        self._open: set[Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: (host, port) -> (expiry in loop time, addresses)
        self._dns: dict[tuple[str, int], tuple[float, list[AddrInfo]]] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(("http/1.1",))
            self._ssl = context
        return self._ssl

    # ------------------------------------------------------------- the pool

    async def _acquire(self, origin: Origin, connect_timeout: float | None) -> Connection:
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

    async def _addresses(self, origin: Origin) -> list[AddrInfo]:
        """``origin``'s addresses, as aiohttp resolved them: an IP literal as it is, a name
        by ``getaddrinfo`` (``AI_ADDRCONFIG``), kept for ``DNS_TTL`` seconds."""
        if origin.literal is not None:
            return origin.literal
        loop = asyncio.get_running_loop()
        cached = self._dns.get((origin.host, origin.port))
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        infos: list[AddrInfo] = await loop.getaddrinfo(  # type: ignore[assignment]
            origin.host, origin.port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
        )
        self._dns[(origin.host, origin.port)] = (loop.time() + DNS_TTL, infos)
        return infos

    async def _connect(self, origin: Origin, timeout: float | None) -> Connection:
        """A new connection (TLS for https), within ``timeout``; addresses are tried as
        aiohttp does (happy eyeballs, 0.25 s apart)."""
        loop = asyncio.get_running_loop()
        conn = Connection(loop, self, origin)
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

    def _pool(self, conn: Connection) -> None:
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

    def _gone(self, conn: Connection) -> None:
        self._forget(conn)

    def _lost(self, conn: Connection) -> None:
        """``conn`` was closed (by either side)."""
        idle = self._idle.get(conn.origin.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
        self._forget(conn)

    def _forget(self, conn: Connection) -> None:
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
        head, body, stream, length = request_head(method, origin, target, headers, data)
        # as aiohttp: the body waits for an interim answer when the (first) Expect says so
        expect = "Expect" in headers and headers["Expect"].lower() == "100-continue"
        conn = await self._acquire(origin, timeouts[0])
        conn.begin(method == "HEAD", timeouts[1])
        try:
            return await exchange(conn, method, origin, target, head, body, stream, length, expect)
        except BaseException:
            writer = conn._writer
            if writer is not None and not writer.done():
                writer.cancel()
            conn._writer = None
            conn.should_close = True
            conn.finish()
            raise
