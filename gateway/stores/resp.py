"""A small pipelined Redis connection, for the one call the rate limiter makes per request.

redis-py spends about a hundred microseconds of CPU on each command (connection pool,
argument checks, a general parser); a rate-limit decision on every request cannot afford
that. This client keeps one connection, writes the commands asked for in one turn of the
event loop together (one system call) and matches replies to callers in order (Redis
answers in the order it was asked), so any number of requests share the connection without
waiting for each other. It speaks RESP2, the protocol every Redis has, and only what the
limiter needs: commands in, integers, strings, errors and (nested) arrays out.

URLs: ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS, verified against
the system's CAs) and ``unix:///path/to/socket[?db=N]``. On connecting it sends ``AUTH``
and ``SELECT`` when the URL asks for them.

Failures are plain exceptions: :class:`OSError` (including :class:`ConnectionError`) when
the connection cannot be made or is lost, :class:`TimeoutError`, and :class:`ReplyError`
for an error reply. A caller that gives up waiting (a timeout) leaves its reply to be
read and dropped, so the replies of the others stay in step.

Tracing: when the task's request is traced (:data:`gateway.spans.TRACER` set by the tracing
plugin), each :meth:`RespConnection.call` is a client span ``redis <COMMAND>`` with the
command's name and the server's address, never its arguments (keys hold object ids and team
names, values hold Stripe's answers); an error reply, a timeout or a lost connection fails
the span with the exception's type. Untraced, the cost is one context-variable lookup.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.spans import TRACER, AttributeValue, Tracer

__all__ = [
    "Reply",
    "ReplyError",
    "RespConnection",
    "bulk",
    "command_name",
    "encode_command",
    "parse_reply",
]

#: what a reply decodes to: an int, bytes, None (a nil), a ReplyError, or a list of those
Reply = int | bytes | None | Exception | list["Reply"]


class ReplyError(Exception):
    """Redis answered with an error (``-ERR ...``, ``-NOSCRIPT ...``)."""


def bulk(value: bytes | str | int | float) -> bytes:
    """One command argument in RESP framing."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(*args: bytes | str | int | float) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


#: the start of an encoded command: the array's header, then its first bulk string (the name)
_COMMAND = re.compile(rb"\*\d{1,9}\r\n\$\d{1,2}\r\n([A-Za-z]{1,32})\r\n")


def command_name(payload: bytes) -> str:
    """The name of the encoded command ``payload`` (``GET``, ``EVALSHA``), upper-case;
    ``_OTHER`` when it does not start with one (nothing else of it is ever read)."""
    match = _COMMAND.match(payload)
    return match.group(1).decode().upper() if match is not None else "_OTHER"


def parse_reply(buf: bytes | bytearray, pos: int) -> tuple[Reply, int] | None:
    """The reply starting at ``pos`` and the position after it; None when ``buf`` does not
    hold all of it yet. Raises ValueError on bytes that are not RESP2."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    line = buf[pos + 1 : end]
    pos = end + 2
    if kind == 0x3A:  # ":" integer
        return int(line), pos
    if kind == 0x24:  # "$" bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            return None
        value = buf[pos : pos + size]
        return (value if type(value) is bytes else bytes(value)), pos + size + 2
    if kind == 0x2A:  # "*" array
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Reply] = []
        for _ in range(count):
            parsed = parse_reply(buf, pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        return items, pos
    if kind == 0x2B:  # "+" simple string
        return bytes(line), pos
    if kind == 0x2D:  # "-" error
        return ReplyError(line.decode("utf-8", "replace")), pos
    raise ValueError(f"not a RESP2 reply (type byte {bytes([kind])!r})")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[asyncio.Future[Reply]] = deque()
        #: the start of a reply not whole yet (grows in place: a large value arrives in
        #: many chunks, and is not copied again for each)
        self.buffer = bytearray()
        self.lost: Exception | None = None
        #: commands asked for in this turn of the event loop, written together at its end
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def send(self, payload: bytes) -> asyncio.Future[Reply]:
        if self.lost is not None or self.transport is None:
            raise ConnectionError(f"connection to Redis lost: {self.lost}")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply] = loop.create_future()
        if not self.outgoing:
            loop.call_soon(self.flush)
        self.outgoing.append(payload)
        self.waiters.append(waiter)
        return waiter

    def flush(self) -> None:
        """One write (one system call) for every command of this turn."""
        outgoing, self.outgoing = self.outgoing, []
        if self.transport is not None and self.lost is None:
            self.transport.write(b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        buf: bytes | bytearray = data
        if self.buffer:
            self.buffer += data
            buf = self.buffer
        pos = 0
        waiters = self.waiters
        try:
            while pos < len(buf):
                parsed = parse_reply(buf, pos)
                if parsed is None:
                    break
                reply, pos = parsed
                waiter = waiters.popleft()
                if not waiter.done():  # a caller that timed out is no longer waiting
                    waiter.set_result(reply)
        except (ValueError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._fail(ConnectionError(f"bad reply from Redis: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        if buf is self.buffer:
            del self.buffer[:pos]
        elif pos < len(buf):
            self.buffer = bytearray(buf[pos:])

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("Redis closed the connection"))

    def _fail(self, exc: Exception) -> None:
        self.lost = exc
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError(str(exc) or type(exc).__name__))


def _expire(waiter: asyncio.Future[Reply]) -> None:
    """A call's time is up: it raises TimeoutError (unless its reply came meanwhile)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError("no reply from Redis in time"))


def _retrieve(future: asyncio.Future[_Protocol]) -> None:
    if not future.cancelled():
        future.exception()


class RespConnection:
    """One lazily opened, pipelined connection to the Redis at ``url``."""

    def __init__(self, url: str, *, connect_timeout: float) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self._unix = parts.scheme == "unix"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = unquote(parts.path)
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        db = query.get("db", [""])[0] or (parts.path.strip("/") if not self._unix else "")
        self._setup: list[bytes] = []
        if parts.password is not None:
            credentials = [unquote(parts.password)]
            if parts.username:
                credentials.insert(0, unquote(parts.username))
            self._setup.append(encode_command("AUTH", *credentials))
        if db and db != "0":
            self._setup.append(encode_command("SELECT", int(db)))
        self._connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        #: the attributes of this connection's spans (OpenTelemetry's names for databases)
        self._span_attributes: dict[str, AttributeValue] = {
            "db.system": "redis",
            "db.system.name": "redis",
            "db.namespace": db or "0",
        }
        if self._unix:
            self._span_attributes.update(
                {"server.address": self._path, "network.transport": "unix"}
            )
        else:
            self._span_attributes.update({"server.address": self._host, "server.port": self._port})
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:  # the first caller connects, the others wait for it
            self._connecting = asyncio.ensure_future(self._connect())
            # retrieved here, so a failure nobody waited for (they timed out) is not logged
            self._connecting.add_done_callback(_retrieve)
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            if self._unix:
                _, protocol = await loop.create_unix_connection(_Protocol, self._path)
            else:
                _, protocol = await loop.create_connection(
                    _Protocol,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
            try:
                for command in self._setup:
                    reply = await protocol.send(command)
                    if isinstance(reply, Exception):
                        raise ReplyError(f"connection setup: {reply}")
            except BaseException:
                if protocol.transport is not None:
                    protocol.transport.abort()
                raise
        self._protocol = protocol
        return protocol

    async def call(self, payload: bytes, timeout: float) -> Reply:
        """Send one encoded command (:func:`encode_command`) and wait for its reply.

        An error reply is returned, not raised (see :class:`ReplyError`)."""
        tracer = TRACER.get()
        if tracer is not None:
            return await self._traced_call(tracer, payload, timeout)
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            async with asyncio.timeout(timeout):  # the connect, then the reply
                protocol = await self._connected()
                return await protocol.send(payload)
        # connected (nearly every call): one timer on the reply's future instead of an
        # asyncio.timeout scope; when it fires, the call raises TimeoutError as that would,
        # and the reply, when it comes, is dropped (data_received skips a done future)
        waiter = protocol.send(payload)
        handle = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            handle.cancel()

    async def _traced_call(self, tracer: Tracer, payload: bytes, timeout: float) -> Reply:
        """:meth:`call` in a span ``redis <COMMAND>`` (see the module's docstring)."""
        name = command_name(payload)
        span = tracer.start_span(
            f"redis {name}",
            client=True,
            attributes={**self._span_attributes, "db.operation": name, "db.operation.name": name},
        )
        error: str | None = None
        try:
            async with asyncio.timeout(timeout):
                protocol = self._protocol
                if protocol is None or protocol.lost is not None:
                    protocol = await self._connected()
                reply = await protocol.send(payload)
            if isinstance(reply, Exception):
                error = type(reply).__name__
            return reply
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            span.end(error)

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            protocol._fail(ConnectionError("closed"))
