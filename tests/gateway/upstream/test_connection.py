"""A streamed request body and an upstream that stops taking it: the drain's time limit
(``Connection.drain``) is on no progress, ``read_timeout`` seconds of it.

The upstream is a raw socket server in a thread with a small receive buffer: it reads a
request's head and then either never reads the body (the kernel buffers on both sides
fill and the gateway's writes stop), or reads it slowly but steadily. The client streams
several MB, so the body cannot simply vanish into the kernel's buffers.

Each test runs on uvloop (the gateway's default event loop) and on asyncio: uvloop's
transports are not ``asyncio.WriteTransport`` subclasses, and what is unsent is read off
them all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.keys import SESSION
from gateway.proxy import failure_kind
from gateway.upstream import Origin, UpstreamClient, WriteTimeoutError
from gateway.upstream.progress import unsent
from tests.helpers import BILLING_KEY, LoopThread, Stack

MB = 1024 * 1024
_ANSWER = b'{"id": "cus_1Nstalled0001", "object": "customer"}'
T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@pytest.fixture(params=["uvloop", "asyncio"])
def new_loop(request: pytest.FixtureRequest) -> LoopFactory:
    """How to make the event loop a test's client runs on."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: LoopFactory = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def _run(new_loop: LoopFactory, main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)


def _was_reset(sock: socket.socket) -> bool:
    """Read what is left on the upstream's side of a connection the client dropped: True
    for a reset, False for the end of the stream after the rest of the body (a close, or
    an abort that left the socket's send queue to the kernel, which keeps sending it to a
    peer that may never read it)."""
    sock.settimeout(15)
    try:
        while sock.recv(MB):
            pass
    except ConnectionResetError:
        return True
    return False


@dataclass
class PacedUpstream:
    """Answers a request without a body (GET) at once; a request with one is read as
    ``mode`` says: ``stall`` reads its head and nothing more, ``steady`` reads
    ``read_size`` bytes every ``pause`` seconds to the end and then answers."""

    rcvbuf: int = 4096
    mode: str = "stall"
    read_size: int = 65536
    pause: float = 0.01
    stalled: threading.Event = field(default_factory=threading.Event)
    #: the connections of the stalled requests, for a test to read once the client is done
    held: list[socket.socket] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _socks: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> str:
        listener = socket.socket()
        # before listen(), so accepted sockets get the small buffer (and a small window)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        self._socks.append(listener)
        self._spawn(self._accept, listener)
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    def stop(self) -> None:
        self._stop.set()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(10)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            self._socks.append(sock)
            self._spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                found = re.search(rb"\r\ncontent-length: *(\d+)", head.lower())
                length = int(found.group(1)) if found else 0
                if length:
                    if self.mode == "stall":
                        self.held.append(sock)
                        self.stalled.set()
                        self._stop.wait()  # never reads again
                        return
                    left = length - len(data)
                    data = b""
                    while left > 0:
                        got = 0
                        while got < min(self.read_size, left):
                            chunk = sock.recv(min(self.read_size, left) - got)
                            if not chunk:
                                return
                            got += len(chunk)
                        left -= got
                        time.sleep(self.pause)
                self.answered.append(head.split(b" ")[1].decode())
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Request-Id: req_paced\r\nContent-Length: %d\r\n\r\n%b"
                    % (len(_ANSWER), _ANSWER)
                )


@pytest.fixture
def paced() -> Iterator[PacedUpstream]:
    upstream = PacedUpstream()
    yield upstream
    upstream.stop()


async def _body(size: int, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    block = b"a" * chunk
    sent = 0
    while sent < size:
        piece = block[: min(chunk, size - sent)]
        sent += len(piece)
        yield piece


def _headers(length: int) -> CIMultiDict[str]:
    return CIMultiDict({"Content-Length": str(length), "Content-Type": "application/json"})


# ----------------------------------------------------------------- what is unsent


def test_unsent_counts_the_transports_buffer_and_the_sockets_send_queue(
    new_loop: LoopFactory,
) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(15)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
        peer, _ = await asyncio.to_thread(listener.accept)
        try:
            assert unsent(transport) == 0
            transport.write(b"a" * 4 * MB)  # more than the buffers of both sides hold
            buffered = transport.get_write_buffer_size()
            assert 0 < buffered < unsent(transport) <= 4 * MB  # the send queue counts too
            before = unsent(transport)
            got = 0
            while got < MB:  # the peer reads: less is unsent
                got += len(await asyncio.to_thread(peer.recv, MB))
            async with asyncio.timeout(15):
                while unsent(transport) >= before:
                    await asyncio.sleep(0.01)
            transport.abort()
            await asyncio.sleep(0)
            assert unsent(transport) == 0  # closed: nothing more of it will be sent
        finally:
            transport.abort()
            peer.close()

    try:
        _run(new_loop, main())
    finally:
        listener.close()
    assert unsent(None) == 0


# ----------------------------------------------------------------- the client alone


def test_a_stalled_upload_fails_after_the_limit_and_its_connection_is_reset(
    paced: PacedUpstream, new_loop: LoopFactory
) -> None:
    limit = 0.5
    origin = Origin(paced.start())

    async def main() -> None:
        client = UpstreamClient(limit=10)
        size = 8 * MB
        started = time.monotonic()
        with pytest.raises(WriteTimeoutError) as caught:
            await client.request(
                "POST", origin, "/v1/stall", _headers(size), _body(size), read_timeout=limit
            )
        took = time.monotonic() - started
        assert isinstance(caught.value, TimeoutError)  # what the proxy answers with a 504
        assert paced.stalled.is_set()
        assert limit <= took < limit * 1.25 + 15  # generous slack: a busy machine
        async with asyncio.timeout(15):  # aborted, not pooled, not left open
            while client._open:
                await asyncio.sleep(0.01)
        assert not client._idle.get(origin.key)
        got = await client.request("GET", origin, "/v1/next", CIMultiDict(), None)
        assert got.status == 200 and await got.read() == _ANSWER
        got.release()
        assert len(client._open) == 1
        await client.close()

    _run(new_loop, main())
    # reset: the kernel does not go on sending the body's tail to the stalled upstream
    assert len(paced.held) == 1 and _was_reset(paced.held[0])


@pytest.mark.parametrize("size", [48 * 1024, 512 * 1024, 3 * MB])
def test_a_body_whose_tail_is_never_read_times_out_whatever_its_size(
    paced: PacedUpstream, size: int, new_loop: LoopFactory
) -> None:
    # small bodies fit the buffers whole (then the read timer, which sees nothing taken,
    # fires); larger ones stall in the drain: a timeout either way, never pooled, and
    # reset even when all that is left is in the socket's send queue
    limit = 0.5
    origin = Origin(paced.start())

    async def main() -> None:
        client = UpstreamClient(limit=10)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.request(
                "POST", origin, "/v1/stall", _headers(size), _body(size), read_timeout=limit
            )
        assert limit <= time.monotonic() - started < 2 * limit + 15
        async with asyncio.timeout(15):
            while client._open:
                await asyncio.sleep(0.01)
        await client.close()

    _run(new_loop, main())
    assert len(paced.held) == 1 and _was_reset(paced.held[0])


def test_without_a_read_timeout_the_drain_waits_as_before(
    paced: PacedUpstream, new_loop: LoopFactory
) -> None:
    # no limit configured in the client's call: the request waits (the proxy always
    # passes read_timeout, which must be > 0)
    origin = Origin(paced.start())

    async def main() -> None:
        client = UpstreamClient(limit=10)
        size = 8 * MB
        task = asyncio.ensure_future(
            client.request("POST", origin, "/v1/stall", _headers(size), _body(size))
        )
        async with asyncio.timeout(15):
            while not paced.stalled.is_set():
                await asyncio.sleep(0.01)
        done, _ = await asyncio.wait((task,), timeout=1.0)
        assert not done
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(15):  # cancelled with bytes unsent: aborted
            while client._open:
                await asyncio.sleep(0.01)
        await client.close()

    _run(new_loop, main())


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(read_size=st.sampled_from([16 * 1024, 32 * 1024, 64 * 1024]))
def test_an_upstream_reading_slowly_but_steadily_is_not_cut_off(
    new_loop: LoopFactory, read_size: int
) -> None:
    # about 1 MB/s in reads far apart from each other compared with the limit, for a body
    # that takes longer than the limit in all: the limit is on no progress, not on the total
    limit = 1.0
    size = 5 * MB // 2
    upstream = PacedUpstream(
        rcvbuf=256 * 1024, mode="steady", read_size=read_size, pause=read_size / MB
    )
    origin = Origin(upstream.start())

    async def main() -> float:
        client = UpstreamClient(limit=10)
        started = time.monotonic()
        got = await client.request(
            "POST", origin, "/v1/steady", _headers(size), _body(size), read_timeout=limit
        )
        took = time.monotonic() - started
        assert got.status == 200 and await got.read() == _ANSWER
        got.release()
        await client.close()
        return took

    try:
        took = _run(new_loop, main())
    finally:
        upstream.stop()
    assert took > limit  # the upload as a whole outlasted the limit
    assert upstream.answered == ["/v1/steady"]


# ----------------------------------------------------------------- through the gateway


def _pooled(stack: Stack) -> int:
    assert stack.app is not None
    app = stack.app
    return stack.loop.call(lambda: len(app[SESSION]._open))


@pytest.fixture(params=["uvloop", "asyncio"])
def any_stack(
    request: pytest.FixtureRequest, loop_thread: LoopThread, tmp_path: Path
) -> Iterator[Stack]:
    """The ``stack`` fixture's fake Stripe hosts, with the gateway to run on uvloop or on
    asyncio (the session's loop)."""
    thread = loop_thread
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        thread = LoopThread(uvloop.new_event_loop())
    stack = Stack(loop=thread, tmp=tmp_path)
    try:
        stack.start_upstreams()
        yield stack
    finally:
        stack.close()
        if thread is not loop_thread:
            thread.stop()


def test_the_gateway_answers_a_stalled_upload_with_its_upstream_timeout(
    any_stack: Stack, paced: PacedUpstream
) -> None:
    stack = any_stack
    limit = 1.0
    stack.start_gateway(upstream={"api": paced.start(), "read_timeout": limit})
    url = stack.gateway_url
    auth = {"Authorization": f"Bearer {BILLING_KEY}"}
    size = 8 * MB  # above buffer_body_bytes: streamed upstream as it arrives

    async def post_and_get() -> tuple[int, dict[str, Any], float, int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/customers/cus_1Nwarm00000001", headers=auth) as r:
                assert r.status == 200
                await r.read()
            before = await asyncio.to_thread(_pooled, stack)
            started = time.monotonic()
            # aiohttp sends the body in a task of its own, so the answer is read while the
            # body is still (not) being sent
            async with session.post(
                f"{url}/v1/customers",
                data=_body(size),
                headers={**auth, "Content-Length": str(size)},
            ) as r:
                status, body = r.status, json.loads(await r.read())
            took = time.monotonic() - started
            async with session.get(f"{url}/v1/customers/cus_1Nafter0000001", headers=auth) as r:
                after = (r.status, json.loads(await r.read()))
            return status, body, took, before, after

    status, body, took, before, after = asyncio.run(post_and_get())
    assert status == 504
    assert body["error"]["type"] == "api_error"
    assert "did not answer in time" in body["error"]["message"]
    assert limit <= took < limit * 1.25 + 20
    assert after == (200, json.loads(_ANSWER))
    # the stalled connection was aborted, not pooled: the count does not grow
    deadline = time.monotonic() + 15
    while _pooled(stack) > before:
        assert time.monotonic() < deadline, "the stalled upstream connection stayed open"
        time.sleep(0.01)
    assert len(paced.held) == 1 and _was_reset(paced.held[0])
    lines = [
        line
        for line in stack.audit_lines(at_least=3, timeout=10)
        if line["method"] == "POST" and line["path"] == "/v1/customers"
    ]
    assert len(lines) == 1
    assert lines[0]["status"] == 504 and lines[0]["error"] == "upstream_timeout"
    assert lines[0]["upstream"] == "api"


def test_a_write_timeout_is_its_own_failure_kind_and_a_timeout() -> None:
    # the metrics' kind label and the audit's 504 read the same exception
    exc = WriteTimeoutError("Timeout on writing the request body")
    assert failure_kind(exc) == "write_timeout"
    assert isinstance(exc, TimeoutError)
