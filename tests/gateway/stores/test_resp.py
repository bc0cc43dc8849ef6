"""The small pipelined Redis connection, against real redis-servers."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from gateway.spans import TRACER
from gateway.stores.resp import (
    ReplyError,
    RespConnection,
    bulk,
    command_name,
    encode_command,
    parse_reply,
)
from tests.conftest import RedisServer
from tests.helpers import RecordingTracer


def test_parse_reply_waits_for_whole_replies() -> None:
    data = b"*4\r\n:1\r\n$3\r\nabc\r\n$-1\r\n*2\r\n+OK\r\n-ERR no\r\n"
    for cut in range(len(data)):
        assert parse_reply(data[:cut], 0) is None
    parsed = parse_reply(data + b":7\r\n", 0)
    assert parsed is not None
    reply, end = parsed
    assert reply[:4] == [1, b"abc", None, [b"OK", reply[3][1]]]  # type: ignore[index]
    assert isinstance(reply[3][1], ReplyError) and str(reply[3][1]) == "ERR no"  # type: ignore[index]
    assert parse_reply(data + b":7\r\n", end) == (7, end + 4)
    with pytest.raises(ValueError):
        parse_reply(b"?what\r\n", 0)


def test_encode_command() -> None:
    assert encode_command("GET", b"k", 3) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n3\r\n"


async def test_concurrent_callers_each_get_their_own_reply(redis_server: RedisServer) -> None:
    conn = RespConnection(redis_server.url, connect_timeout=1.0)
    try:
        replies = await asyncio.gather(
            *(conn.call(encode_command("ECHO", f"value {i}"), 2.0) for i in range(500))
        )
        assert replies == [f"value {i}".encode() for i in range(500)]
        error = await conn.call(encode_command("NOSUCHCOMMAND"), 1.0)
        assert isinstance(error, ReplyError)
        assert await conn.call(encode_command("PING"), 1.0) == b"PONG"
    finally:
        await conn.close()


def test_on_uvloop(redis_server: RedisServer) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def run() -> list[object]:
        conn = RespConnection(redis_server.url, connect_timeout=1.0)
        try:
            return list(
                await asyncio.gather(*(conn.call(encode_command("PING"), 1.0) for _ in "ab"))
            )
        finally:
            await conn.close()

    assert uvloop.run(run()) == [b"PONG", b"PONG"]


async def test_a_caller_that_times_out_leaves_the_others_in_step(
    redis_server: RedisServer,
) -> None:
    conn = RespConnection(redis_server.url, connect_timeout=1.0)
    try:
        assert await conn.call(encode_command("PING"), 1.0) == b"PONG"
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                await conn.call(encode_command("ECHO", "late"), 0.2)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        # the late reply arrives now and is dropped: the next caller gets its own
        assert await conn.call(encode_command("ECHO", "next"), 1.0) == b"next"
        redis_server.kill()
        with pytest.raises(OSError):
            await conn.call(encode_command("PING"), 1.0)
        with pytest.raises(OSError):  # connection refused
            await conn.call(encode_command("PING"), 1.0)
    finally:
        await conn.close()


async def test_password_and_database_from_the_url(redis_server: RedisServer) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.set("where", "db0")
    admin.config_set("requirepass", "s3cret:/@")
    admin.close()
    base = f"127.0.0.1:{redis_server.port}"
    conn = RespConnection(f"redis://:s3cret%3A%2F%40@{base}/3", connect_timeout=1.0)
    try:
        await conn.call(encode_command("SET", "where", "db3"), 1.0)
        assert await conn.call(encode_command("GET", "where"), 1.0) == b"db3"
    finally:
        await conn.close()
    wrong = RespConnection(f"redis://default:nope@{base}/0", connect_timeout=1.0)
    with pytest.raises(ReplyError, match="connection setup"):
        await wrong.call(encode_command("PING"), 1.0)
    await wrong.close()


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[Path]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed")
    sock = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30  # slow to start on a loaded machine
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield sock
    finally:
        process.kill()
        process.wait(5)


async def test_unix_socket(unix_redis: Path) -> None:
    conn = RespConnection(f"unix://{unix_redis}?db=2", connect_timeout=1.0)
    try:
        assert await conn.call(encode_command("SET", "k", "v"), 1.0) == b"OK"
        assert await conn.call(encode_command("CLIENT", "INFO"), 1.0) is not None
    finally:
        await conn.close()
    check = redis.Redis(unix_socket_path=str(unix_redis), db=2)
    assert check.get("k") == b"v"
    check.close()


async def test_large_values_and_many_replies_in_one_read(redis_server: RedisServer) -> None:
    """A value of several MB arrives in many chunks; a burst of small replies in one."""
    conn = RespConnection(redis_server.url, connect_timeout=1.0)
    big = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MB, every byte value, \r\n inside
    try:
        assert await conn.call(encode_command("SET", "resp:big", big), 2.0) == b"OK"
        got, small = await asyncio.gather(
            conn.call(encode_command("GET", "resp:big"), 2.0),
            asyncio.gather(*(conn.call(encode_command("ECHO", str(i)), 2.0) for i in range(200))),
        )
        assert isinstance(got, bytes) and got == big
        assert small == [str(i).encode() for i in range(200)]
        assert await conn.call(encode_command("GET", "resp:big"), 2.0) == big  # in step after
    finally:
        await conn.call(encode_command("DEL", "resp:big"), 2.0)
        await conn.close()


def test_parse_reply_from_a_bytearray_gives_bytes() -> None:
    assert parse_reply(bytearray(b"$3\r\nabc\r\n"), 0) == (b"abc", 9)
    reply = parse_reply(bytearray(b"$3\r\nabc\r\n"), 0)
    assert reply is not None and type(reply[0]) is bytes


# --------------------------------------------------------------------------- spans


def _span_attributes(port: int, command: str) -> dict[str, object]:
    return {
        "db.system": "redis",
        "db.system.name": "redis",
        "db.namespace": "0",
        "server.address": "127.0.0.1",
        "server.port": port,
        "db.operation": command,
        "db.operation.name": command,
    }


async def test_a_traced_call_is_a_client_span_named_after_its_command_without_arguments(
    redis_server: RedisServer,
) -> None:
    tracer = RecordingTracer()
    conn = RespConnection(redis_server.url, connect_timeout=1.0)
    token = TRACER.set(tracer)
    try:
        assert await conn.call(encode_command("SET", "cus_key_1", "secret-value"), 1.0) == b"OK"
        assert await conn.call(encode_command("GET", "cus_key_1"), 1.0) == b"secret-value"
        missing = await conn.call(encode_command("EVALSHA", "0" * 40, 1, "cus_key_1"), 1.0)
        assert isinstance(missing, ReplyError)  # NOSCRIPT: returned, and the span failed
        assert await conn.call(encode_command("ping"), 1.0) == b"PONG"
    finally:
        TRACER.reset(token)
        await conn.close()
    assert [(s.name, s.client, s.error, s.ended) for s in tracer.spans] == [
        ("redis SET", True, None, 1),
        ("redis GET", True, None, 1),
        ("redis EVALSHA", True, "ReplyError", 1),
        ("redis PING", True, None, 1),
    ]
    for span, command in zip(tracer.spans, ["SET", "GET", "EVALSHA", "PING"], strict=True):
        assert span.attributes == _span_attributes(redis_server.port, command)


async def test_only_the_traced_tasks_calls_are_spans(redis_server: RedisServer) -> None:
    tracer = RecordingTracer()
    conn = RespConnection(redis_server.url, connect_timeout=1.0)

    async def traced() -> None:
        TRACER.set(tracer)
        for i in range(20):
            await conn.call(encode_command("ECHO", str(i)), 2.0)

    async def untraced() -> None:
        for _ in range(20):
            await conn.call(encode_command("PING"), 2.0)

    try:
        await asyncio.gather(traced(), untraced(), untraced())
    finally:
        await conn.close()
    assert [s.name for s in tracer.spans] == ["redis ECHO"] * 20
    assert TRACER.get() is None


async def test_a_timeout_or_a_lost_redis_fails_the_span_with_the_exception_type(
    redis_server: RedisServer,
) -> None:
    tracer = RecordingTracer()
    conn = RespConnection(redis_server.url, connect_timeout=0.5)
    token = TRACER.set(tracer)
    try:
        assert await conn.call(encode_command("PING"), 1.0) == b"PONG"
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                await conn.call(encode_command("GET", "late"), 0.2)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        redis_server.kill()
        with pytest.raises(OSError) as lost:
            await conn.call(encode_command("GET", "gone"), 1.0)
    finally:
        TRACER.reset(token)
        await conn.close()
    assert [(s.name, s.error, s.ended) for s in tracer.spans] == [
        ("redis PING", None, 1),
        ("redis GET", "TimeoutError", 1),
        ("redis GET", type(lost.value).__name__, 1),
    ]


async def test_a_unix_socket_span_names_the_socket(unix_redis: Path) -> None:
    tracer = RecordingTracer()
    conn = RespConnection(f"unix://{unix_redis}?db=2", connect_timeout=1.0)
    token = TRACER.set(tracer)
    try:
        assert await conn.call(encode_command("PING"), 1.0) == b"PONG"
    finally:
        TRACER.reset(token)
        await conn.close()
    (span,) = tracer.spans
    assert span.attributes == {
        "db.system": "redis",
        "db.system.name": "redis",
        "db.namespace": "2",
        "server.address": str(unix_redis),
        "network.transport": "unix",
        "db.operation": "PING",
        "db.operation.name": "PING",
    }


_NAMES = st.text(alphabet=string.ascii_letters, min_size=1, max_size=32)
_ARGS = st.lists(st.binary(max_size=64) | st.text(max_size=32) | st.integers(), max_size=6)


@given(name=_NAMES, args=_ARGS)
def test_command_name_reads_the_name_and_nothing_else(name: str, args: list[object]) -> None:
    payload = encode_command(name, *args)  # type: ignore[arg-type]
    assert command_name(payload) == name.upper()


@given(name=_NAMES, args=_ARGS)
def test_a_script_call_framed_by_the_stores_is_named_by_its_command(
    name: str, args: list[object]
) -> None:
    """The stores frame a script call as a header, the command and its SHA, then the rest."""
    head = b"*%d\r\n" % (2 + len(args))
    body = b"".join(bulk(a) for a in args)  # type: ignore[arg-type]
    assert command_name(head + bulk(name) + bulk("0" * 40) + body) == name.upper()


@given(payload=st.binary(max_size=200))
def test_anything_else_is_named_other_or_a_bounded_word(payload: bytes) -> None:
    assert re.fullmatch(r"_OTHER|[A-Z]{1,32}", command_name(payload))
