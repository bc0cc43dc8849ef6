"""One connection to one origin (an ``asyncio.Protocol``) and the answer read from it.

The answer is parsed by aiohttp's own (C) response parser into aiohttp's ``StreamReader``;
failures are raised as the aiohttp exceptions its session raised. A connection goes back to
the pool only when its answer was read to the end, keep-alive holds, nothing was received
after the answer and the request was sent whole; anything else closes it. Data arriving on
an idle connection closes it too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import (
    ClientOSError,
    ClientPayloadError,
    ServerDisconnectedError,
    SocketTimeoutError,
)
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpResponseParser, RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDictProxy

from gateway.upstream.origin import Origin
from gateway.upstream.progress import WriteTimeoutError, reset, unsent

if TYPE_CHECKING:
    from gateway.upstream.client import UpstreamClient

__all__ = ["Connection", "UpstreamResponse"]

#: aiohttp's read buffer (and the body reader's flow-control mark)
_READ_LIMIT = 2**16
_EMPTY_BODY_STATUS = frozenset((204, 304, *range(100, 200)))
#: how often, as a share of the limit, a stalled body's write buffer is looked at
_STALL_CHECKS = 4


class UpstreamResponse:
    """What the proxy reads of an answer (a subset of ``aiohttp.ClientResponse``)."""

    __slots__ = ("_conn", "_released", "content", "headers", "reason", "status", "version")

    def __init__(self, conn: Connection, message: RawResponseMessage, content: Any) -> None:
        self._conn: Connection | None = conn
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


class Connection(BaseProtocol):
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
        "_unsent",
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
        #: bytes of the request not yet taken by the upstream, when last looked at (-1: not)
        self._unsent = -1
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
        """The request has been sent: from now on, ``read_timeout`` between reads.

        "Sent" is handed to the kernel: the tail of a large body may still be in the
        socket's buffers, and an upstream still reading it slowly is making progress, so
        the timer, when due, also looks at how much is unsent (:func:`unsent`): some unsent
        the first time, or less than the time before, counts as progress. Nothing is
        looked at before the timer is due (no system call per request), so an upstream
        that stopped reading the tail is cut off up to twice the limit after it stopped."""
        if self._timer is None and self._read_timeout:
            self._last_data = now = self._loop.time()
            self._unsent = -1  # not looked at yet
            self._timer = self._loop.call_at(now + self._read_timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        timeout = self._read_timeout
        assert timeout is not None, "armed only with a read timeout"
        due = self._last_data + timeout
        now = self._loop.time()
        if now >= due:
            left = unsent(self.transport)
            if left and (self._unsent < 0 or left < self._unsent):  # still taking the request
                self._unsent = left
                self._last_data = now
                due = now + timeout
        if now < due:
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

    async def drain(self) -> None:
        """Wait until the transport wants more of the request body, failing with
        :class:`WriteTimeoutError` after ``read_timeout`` seconds in which the upstream took
        nothing of it.

        The limit is on no progress, not on the whole body: an upstream (or a proxy in
        between) that stopped reading would otherwise pin the request and the connection
        for ever, while one that reads slowly but steadily must be let finish, like the read
        timer that bounds each wait for the answer's bytes rather than the download.
        Progress is fewer bytes unsent (:func:`unsent`: the transport's buffer and, on
        Linux, the socket's send queue, which shrinks as the peer acknowledges what it
        read) or the transport resuming writing. That is looked at every
        ``read_timeout / 4`` seconds (a wait per drain, not per chunk), so the limit fires
        between ``read_timeout`` and 1.25 x ``read_timeout`` after the last progress.
        Without the send queue (other systems) progress is seen when the kernel takes
        more from the transport's buffer: coarser, but progress all the same.
        """
        timeout = self._read_timeout
        transport = self.transport
        if not timeout or transport is None:
            await self._drain_helper()
            return
        if not self._paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self._loop.create_future()
        size = unsent(transport)
        progress = self._loop.time()
        while not waiter.done():
            # asyncio.wait leaves the waiter alone when it times out (or this task is
            # cancelled): it is the protocol's, resolved by resume_writing/connection_lost
            await asyncio.wait((waiter,), timeout=timeout / _STALL_CHECKS)
            if waiter.done():
                break
            now = self._loop.time()
            current = unsent(self.transport)
            if current < size:
                progress = now
            elif now - progress >= timeout:
                raise WriteTimeoutError(
                    f"Timeout on writing the request body: nothing sent for {timeout:g} s"
                )
            size = current
        await waiter

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
            self.close_now()
            self.client._gone(self)

    def close_now(self) -> None:
        """Close the connection; reset when some of the request is still unsent, in the
        transport's buffer or the socket's send queue (:func:`unsent`): a graceful close
        would leave an orphaned socket sending it to a peer that may never read it."""
        transport = self.transport
        if transport is not None:
            if unsent(transport):
                reset(transport)
            else:
                transport.close()
