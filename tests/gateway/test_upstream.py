"""The upstream client (gateway/upstream.py) over real loopback sockets: what it sends is
byte for byte what aiohttp's ``ClientSession`` sent for the same request; scripted
upstreams that misbehave (malformed answers, huge headers, bodies longer or shorter than
announced, answers nobody asked for, connections closed between requests) get the
Stripe-shaped 502 they got before, and a connection in an unknown state is never used
again: whatever bytes an upstream sends, the next request gets its own answer."""

from __future__ import annotations

import asyncio
import itertools
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import trustme
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from gateway.upstream import Origin, UpstreamClient
from tests.fake_stripe import FakeStripe
from tests.helpers import BILLING_KEY, LoopThread, Stack
from tests.serving import GatewayConfigFile, gateway_env, serve_gateway, wait_for_events

#: the headers the aiohttp session the gateway used before was told not to add: the
#: reference the differential test compares the gateway's own client with
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

# --------------------------------------------------------------------------- a scripted upstream


def _request_end(data: bytes) -> int | None:
    """Where the first whole request in ``data`` ends (None: not whole yet). Enough for the
    requests these tests send: Content-Length or chunked bodies without CR in them."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end].lower()
    start = end + 4
    length = re.search(rb"\r\ncontent-length: *(\d+)", head)
    if length is not None:
        stop = start + int(length.group(1))
        return stop if len(data) >= stop else None
    if b"\r\ntransfer-encoding: chunked" in head:
        stop = data.find(b"\r\n0\r\n\r\n", start - 2)
        return None if stop < 0 else stop + 7
    return start


@dataclass
class Scripted:
    """A loopback upstream whose answer to each request comes from ``answer(request,
    connection number)``: bytes to send, and whether to close the connection after."""

    answer: Callable[[bytes, int], tuple[bytes, bool]]
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0
    continue_first: bool = False
    server: asyncio.AbstractServer | None = None
    _open: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = writer
        buffer = b""
        try:
            while True:
                end = _request_end(buffer)
                while end is None:
                    if (
                        self.continue_first
                        and b"\r\n\r\n" in buffer
                        and b"100-continue" in buffer.lower()
                        and not buffer.endswith(b"\x00")
                    ):
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                        buffer += b"\x00"  # once
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    buffer = buffer.replace(b"\x00", b"") + chunk
                    end = _request_end(buffer)
                request, buffer = buffer[:end], buffer[end:]
                self.requests.append((number, request))
                data, close = self.answer(request, number)
                writer.write(data)
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            return
        finally:
            self._open.pop(task, None)
            writer.close()

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their handlers to end."""
        if self.server is not None:
            self.server.close()
        for writer in self._open.values():
            writer.transport.abort()
        await asyncio.gather(*self._open, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


def _ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


# --------------------------------------------------------------------------- the bytes sent

_NAMES = ["X-A", "x-a", "X-B", "Stripe-Version", "Idempotency-Key", "Authorization", "Accept"]
#: header values as the server hands them on: text, and bytes that were not UTF-8
#: (decoded with surrogateescape)
_VALUES = st.text(
    alphabet=st.one_of(
        st.characters(
            min_codepoint=32,
            max_codepoint=0x2FF,
            blacklist_characters="\x7f",
            blacklist_categories=("Cc",),
        ),
        st.sampled_from(["\udc80", "\udcff", "\x00", "\t"]),
    ),
    max_size=12,
)
_CHUNK = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"r"))


async def _aiter(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"]),
    target=st.sampled_from(
        [
            "/v1/customers",
            "/v1/customers?limit=3&expand[]=data.x",
            "/v1/a%20b/c?q=%C3%A9",
            "/v1//x",
            "/v1/x?",
            "/v1/x?a?",
            "/v1/ä?q=%zz",
        ]
    ),
    headers=st.lists(st.tuples(st.sampled_from(_NAMES), _VALUES), max_size=6),
    body=st.one_of(st.none(), _CHUNK, st.lists(_CHUNK, max_size=4)),
    length=st.booleans(),
)
def test_the_request_bytes_are_those_aiohttp_sent(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes | list[bytes] | None,
    length: bool,
) -> None:
    sent = CIMultiDict(headers)
    if length and body is not None:
        size = len(body) if isinstance(body, bytes) else sum(map(len, body))
        sent["Content-Length"] = str(size)

    def data() -> bytes | AsyncIterator[bytes] | None:
        return _aiter(body) if isinstance(body, list) else body

    async def both() -> tuple[list[bytes], list[bytes]]:
        def answer(request: bytes, number: int) -> tuple[bytes, bool]:
            whole = _ok(b"{}")
            return (whole[:-2] if request.startswith(b"HEAD ") else whole), False

        upstream = Scripted(answer)
        base = await upstream.start()
        try:
            session = aiohttp.ClientSession(
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=SKIP_AUTO_HEADERS,
            )
            async with session:
                answer = await session.request(
                    method, URL(base + target, encoded=True), headers=sent, data=data()
                )
                await answer.read()
                answer.release()
            client = UpstreamClient(limit=10)
            answer2 = await client.request(method, Origin(base), target, sent, data())
            await answer2.read()
            answer2.release()
            await client.close()
        finally:
            await upstream.stop()
        return [r for _, r in upstream.requests[:1]], [r for _, r in upstream.requests[1:]]

    theirs, ours = _run(both())
    assert ours == theirs


def test_expect_100_continue_waits_for_the_interim_answer_as_aiohttp_did() -> None:
    async def main() -> list[bytes]:
        upstream = Scripted(lambda request, n: (_ok(b"{}"), False), continue_first=True)
        base = await upstream.start()
        client = UpstreamClient(limit=10)
        headers = CIMultiDict({"Expect": "100-continue", "Content-Length": "3"})
        answer = await client.request("POST", Origin(base), "/v1/x", headers, b"a=b")
        assert answer.status == 200 and await answer.read() == b"{}"
        answer.release()
        await client.close()
        await upstream.stop()
        return [r for _, r in upstream.requests]

    (request,) = _run(main())
    assert request.endswith(b"\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\na=b")


# --------------------------------------------------------------------------- the pool


def test_a_connection_is_reused_only_after_a_whole_answer() -> None:
    big = b"x" * 2**20  # more than the client reads ahead

    def answer(request: bytes, number: int) -> tuple[bytes, bool]:
        if request.startswith(b"GET /big "):
            return _ok(big), False
        return _ok(b'{"n": %d}' % number), False

    async def main() -> list[tuple[int, bytes]]:
        upstream = Scripted(answer)
        base = await upstream.start()
        client = UpstreamClient(limit=10)
        origin = Origin(base)
        for _ in range(3):
            got = await client.request("GET", origin, "/v1/x", CIMultiDict(), None)
            assert await got.read() == b'{"n": 1}'
            got.release()
        got = await client.request("GET", origin, "/big", CIMultiDict(), None)
        got.release()  # not read to the end: the connection cannot be reused
        got = await client.request("GET", origin, "/v1/x", CIMultiDict(), None)
        assert await got.read() == b'{"n": 2}'
        got.release()
        await client.close()
        await upstream.stop()
        return upstream.requests

    assert [n for n, _ in _run(main())] == [1, 1, 1, 1, 2]


def test_a_pooled_connection_the_upstream_closed_is_not_used() -> None:
    async def main() -> list[int]:
        upstream = Scripted(lambda request, n: (_ok(b"{}"), True))  # closes after each
        base = await upstream.start()
        client = UpstreamClient(limit=10)
        origin = Origin(base)
        for _ in range(3):
            got = await client.request("GET", origin, "/v1/x", CIMultiDict(), None)
            assert await got.read() == b"{}"
            got.release()
            async with asyncio.timeout(10):
                while client._open:  # the close has reached the client
                    await asyncio.sleep(0.001)
        await client.close()
        await upstream.stop()
        return [n for n, _ in upstream.requests]

    assert _run(main()) == [1, 2, 3]


def test_max_connections_bounds_the_pool() -> None:
    async def main() -> int:
        release = asyncio.Event()
        upstream = Scripted(lambda request, n: (_ok(b"{}"), False))
        base = await upstream.start()
        client = UpstreamClient(limit=2)
        origin = Origin(base)

        async def one() -> None:
            got = await client.request("GET", origin, "/v1/x", CIMultiDict(), None)
            await got.read()
            await release.wait()
            got.release()

        tasks = [asyncio.ensure_future(one()) for _ in range(4)]
        async with asyncio.timeout(10):
            while len(upstream.requests) < 2:
                await asyncio.sleep(0.01)
        assert len(client._open) == 2 and len(upstream.requests) == 2
        release.set()
        await asyncio.gather(*tasks)
        await client.close()
        await upstream.stop()
        return upstream.connections

    assert _run(main()) == 2


def test_a_host_name_is_resolved_and_its_addresses_tried_in_turn() -> None:
    # localhost may resolve to ::1 first, where nothing listens: 127.0.0.1 is tried too
    async def main() -> bytes:
        upstream = Scripted(lambda request, n: (_ok(b'{"local": true}'), False))
        base = await upstream.start()
        client = UpstreamClient(limit=10)
        origin = Origin(base.replace("127.0.0.1", "localhost"))
        got = await client.request("GET", origin, "/v1/x", CIMultiDict(), None)
        body = await got.read()
        got.release()
        assert b"\r\nHost: localhost:" in upstream.requests[0][1]
        await client.close()
        await upstream.stop()
        return body

    assert _run(main()) == b'{"local": true}'


# --------------------------------------------------------------------------- any bytes at all

_PIECES = [
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.0 200 OK\r\n",
    b"HTTP/1.1 204 No Content\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 502 Bad Gateway\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"X-Y: z\r\n",
    b"\r\n",
    b"abc",
    b"3\r\nabc\r\n",
    b"0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsecond-ok",
]
_JUNK = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.binary(max_size=16)), min_size=1, max_size=8
).map(b"".join)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(junk=_JUNK, close=st.booleans())
def test_whatever_an_upstream_sends_the_next_request_gets_its_own_answer(
    junk: bytes, close: bool
) -> None:
    nonce = itertools.count(1)

    def answer(request: bytes, number: int) -> tuple[bytes, bool]:
        if request.startswith(b"GET /first "):
            return junk, close
        return _ok(b'{"nonce": %d}' % next(nonce)), False

    async def main() -> None:
        upstream = Scripted(answer)
        base = await upstream.start()
        client = UpstreamClient(limit=10)
        origin = Origin(base)
        try:
            first = await client.request(
                "GET", origin, "/first", CIMultiDict(), None, read_timeout=0.2
            )
            try:
                await first.read()
            finally:
                first.release()
        except (aiohttp.ClientError, TimeoutError):
            pass
        for expected in (1, 2):
            second = await client.request(
                "GET", origin, "/second", CIMultiDict(), None, read_timeout=10
            )
            assert second.status == 200
            assert await second.read() == b'{"nonce": %d}' % expected
            second.release()
        await client.close()
        await upstream.stop()

    _run(main())


# --------------------------------------------------------------------------- through the gateway


@pytest.fixture
def scripted(stack: Stack) -> Callable[[Callable[[bytes, int], tuple[bytes, bool]]], Scripted]:
    started: list[Scripted] = []

    def start(answer: Callable[[bytes, int], tuple[bytes, bool]]) -> Scripted:
        upstream = Scripted(answer)
        base = stack.loop.run(upstream.start())
        started.append(upstream)
        stack.start_gateway(upstream={"api": base})
        return upstream

    yield start  # type: ignore[misc]
    for upstream in started:
        stack.loop.run(upstream.stop())


def _get(stack: Stack, path: str = "/v1/customers/cus_1") -> requests.Response:
    return requests.get(f"{stack.gateway_url}{path}", auth=(BILLING_KEY, ""), timeout=10)


def _is_stripe_502(response: requests.Response) -> bool:
    error = response.json()["error"]
    return response.status_code == 502 and error["type"] == "api_error" and bool(error["message"])


@pytest.mark.parametrize(
    "bad",
    [
        b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",  # malformed status line
        b"NOTHTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["status", "not-http", "huge-header", "many-headers", "two-lengths", "nul"],
)
def test_a_malformed_answer_is_a_stripe_shaped_502_and_the_next_request_is_served(
    stack: Stack, scripted: Callable[..., Scripted], bad: bytes
) -> None:
    def answer(request: bytes, number: int) -> tuple[bytes, bool]:
        if b"/bad " in request.split(b"\r\n", 1)[0]:
            return bad, False  # and keep the connection open: the gateway must drop it
        return _ok(b'{"id": "cus_1"}'), False

    upstream = scripted(answer)
    response = _get(stack, "/v1/customers/bad")
    assert _is_stripe_502(response), response.text
    assert stack.audit_lines()[-1]["error"] == "upstream_unreachable"
    good = _get(stack)
    assert good.status_code == 200 and good.json() == {"id": "cus_1"}
    assert upstream.requests[-1][0] == upstream.requests[0][0] + 1  # a new connection


def test_a_body_longer_than_announced_is_cut_and_the_connection_dropped(
    stack: Stack, scripted: Callable[..., Scripted]
) -> None:
    def answer(request: bytes, number: int) -> tuple[bytes, bool]:
        if b"/long " in request.split(b"\r\n", 1)[0]:
            return _ok(b'{"id": "x"}') + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", False
        return _ok(b'{"n": %d}' % number), False

    upstream = scripted(answer)
    response = _get(stack, "/v1/customers/long")
    assert response.status_code == 200 and response.json() == {"id": "x"}
    good = _get(stack)
    assert good.json() == {"n": 2}  # not the smuggled answer, and on a new connection
    assert [n for n, _ in upstream.requests] == [1, 2]


def test_a_body_shorter_than_announced_breaks_the_clients_answer(
    stack: Stack, scripted: Callable[..., Scripted]
) -> None:
    def answer(request: bytes, number: int) -> tuple[bytes, bool]:
        if b"/short " in request.split(b"\r\n", 1)[0]:
            return b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id"', True
        return _ok(b'{"n": %d}' % number), False

    upstream = scripted(answer)
    with pytest.raises(requests.exceptions.RequestException):
        _get(stack, "/v1/customers/short").json()
    assert stack.audit_lines()[-1]["error"] == "upstream_broken_body"
    assert _get(stack).json() == {"n": 2}
    assert len(upstream.requests) == 2


def test_an_answer_split_in_two_is_one_answer(
    stack: Stack, scripted: Callable[..., Scripted]
) -> None:
    smuggled = b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{"evil": true}'

    def answer(request: bytes, number: int) -> tuple[bytes, bool]:
        if b"/split " in request.split(b"\r\n", 1)[0]:
            # a header value that tries to end the answer early and start another
            return (
                b"HTTP/1.1 200 OK\r\nX-A: a\r\nContent-Length: 2\r\n\r\n{}" + smuggled,
                False,
            )
        return _ok(b'{"n": %d}' % number), False

    upstream = scripted(answer)
    assert _get(stack, "/v1/customers/split").json() == {}
    assert _get(stack).json() == {"n": 2}
    assert _get(stack).json() == {"n": 2}  # that connection is clean: reused
    assert [n for n, _ in upstream.requests] == [1, 2, 2]


def test_a_get_on_a_connection_closed_between_requests_is_tried_once_more(
    stack: Stack, scripted: Callable[..., Scripted]
) -> None:
    # the upstream answers keep-alive and closes without a word once the next request
    # arrives: the gateway retries the GET once on a new connection
    def answer(request: bytes, number: int) -> tuple[bytes, bool]:
        if number == 1 and len(upstream.requests) == 2:
            return b"", True
        return _ok(b'{"n": %d}' % number), False

    upstream = scripted(answer)
    assert _get(stack).json() == {"n": 1}
    assert _get(stack).json() == {"n": 2}
    line = stack.audit_lines(2)[-1]
    assert line["attempts"] == 2 and line["status"] == 200


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_tls_upstream_is_verified(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = b""
            while _request_end(data) is None:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                data += chunk
            writer.write(_ok(b'{"tls": true}'))
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
        port = listener.sockets[0].getsockname()[1]
        origin = Origin(f"https://localhost:{port}")
        client = UpstreamClient(limit=10, ssl_context=trusting)
        answer = await client.request("GET", origin, "/v1/x", CIMultiDict(), None)
        assert await answer.read() == b'{"tls": true}'
        answer.release()
        await client.close()
        # the system's trust store does not know this CA: a TLS failure, as aiohttp's
        untrusting = UpstreamClient(limit=10)
        with pytest.raises(aiohttp.ClientSSLError):
            await untrusting.request("GET", origin, "/v1/x", CIMultiDict(), None)
        await untrusting.close()
        listener.close()
        await listener.wait_closed()

    _run(main())


def test_the_gateway_reaches_an_https_upstream_its_trust_store_knows(
    tmp_path: Path, ca: trustme.CA, loop_thread: LoopThread
) -> None:
    cert = ca.issue_cert("127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    fake = FakeStripe(name="api")

    async def start() -> web.AppRunner:
        runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server).start()
        return runner

    runner = loop_thread.run(start())
    port = runner.addresses[0][1]
    try:
        config = GatewayConfigFile(tmp_path, api=f"https://127.0.0.1:{port}").write()
        with serve_gateway(config, env=gateway_env(SSL_CERT_FILE=str(ca_file))) as gw:
            response = requests.get(
                f"{gw.url}/v1/customers/cus_1Ntls0000001", auth=(BILLING_KEY, ""), timeout=10
            )
            assert response.status_code == 200
            assert response.json()["id"] == "cus_1Ntls0000001"
            assert fake.last().headers["Host"] == f"127.0.0.1:{port}"
        # a gateway that does not trust that CA refuses the upstream: a Stripe-shaped 502
        with serve_gateway(config) as gw:
            response = requests.get(
                f"{gw.url}/v1/customers/cus_1Ntls0000001", auth=(BILLING_KEY, ""), timeout=10
            )
            assert _is_stripe_502(response)
            (line,) = wait_for_events(gw, "upstream_error", 1)
            assert line["kind"] == "upstream_unreachable"
        assert len(fake.received) == 1
    finally:
        loop_thread.run(runner.cleanup())
