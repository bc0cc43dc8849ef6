"""Writing one request on a connection: the head as aiohttp writes it, the body whole
or streamed (chunked when its length is unknown), then the wait for the answer's head."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import (
    ClientConnectionError,
    ClientOSError,
    ClientResponseError,
    RequestInfo,
    ServerDisconnectedError,
)
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.upstream.connection import Connection, UpstreamResponse
from gateway.upstream.origin import Origin

__all__ = ["exchange", "headers_as_sent", "request_head", "send_stream"]

#: methods aiohttp sends no ``Content-Length: 0`` for when there is no body
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


async def exchange(
    conn: Connection,
    method: str,
    origin: Origin,
    target: str,
    head: bytes,
    body: bytes | None,
    stream: AsyncIterator[bytes] | None,
    length: int | None,
    expect: bool,
) -> UpstreamResponse:
    """Write the request on ``conn`` (a streamed body by a task of its own, so the answer
    can come while it is sent) and wait for the answer's status and headers."""
    transport = conn.transport
    if transport is None:
        raise ServerDisconnectedError()
    if stream is not None:
        transport.write(head)
        conn._writer = asyncio.ensure_future(send_stream(conn, stream, length, expect))
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


async def send_stream(
    conn: Connection,
    stream: AsyncIterator[bytes],
    length: int | None,
    expect: bool,
) -> None:
    """Write a streamed body (chunked when its length is unknown), with flow control;
    a failure of the body's source fails the request, as in aiohttp. An upstream that
    takes none of the body for ``read_timeout`` seconds fails it with
    :class:`~gateway.upstream.progress.WriteTimeoutError` (see
    :meth:`~gateway.upstream.connection.Connection.drain`) and the connection is aborted."""
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
                await conn.drain()
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
        conn.close_now()
    except Exception as underlying:
        conn._fail(
            ClientConnectionError(
                f"Failed to send bytes into the underlying connection: {underlying!r}"
            ),
            underlying,
        )
        conn.close_now()


def headers_as_sent(headers: CIMultiDict[str]) -> CIMultiDict[str]:
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


def request_head(
    method: str,
    origin: Origin,
    target: str,
    headers: CIMultiDict[str],
    data: bytes | AsyncIterator[bytes] | None,
) -> tuple[bytes, bytes | None, AsyncIterator[bytes] | None, int | None]:
    """The request line and headers as aiohttp writes them, the body (bytes), the
    streamed body and the number of its bytes to send (None: chunked)."""
    fields = [f"{name}: {value}" for name, value in headers_as_sent(headers).items()]
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
