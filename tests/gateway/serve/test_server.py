"""The listener's own behaviour (gateway/serve/server.py), over raw sockets: header and keep-alive
timeouts, the connection cap, and quiet client disconnects."""

from __future__ import annotations

import base64
import json
import logging
import select
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from gateway.keys import METRICS
from tests.helpers import BILLING_KEY, Stack

#: generous bound for "the server closes this connection" (the timeouts are 0.5 s)
DEADLINE = 10.0

AUTH = base64.b64encode(f"{BILLING_KEY}:".encode()).decode()


def request_bytes(path: str = "/v1/customers/cus_1Nabcdefghijk") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Basic {AUTH}\r\n\r\n".encode()


def connect(stack: Stack) -> socket.socket:
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails if it has not within DEADLINE."""
    data = b""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            break
        if not chunk:
            return data
        data += chunk
    pytest.fail(f"the server did not close the connection within {DEADLINE} s (got {data!r})")


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_count(stack: Stack, reason: str) -> float:
    assert stack.app is not None
    value = stack.app[METRICS].registry.get_sample_value(
        "stripe_gateway_connections_closed_total", {"reason": reason}
    )
    return value or 0.0


def assert_gateway_still_serves(stack: Stack) -> None:
    response = requests.get(
        f"{stack.gateway_url}/v1/customers/cus_1Nabcdefghijk", auth=(BILLING_KEY, ""), timeout=5
    )
    assert response.status_code == 200


@pytest.fixture
def slow_clients(stack: Stack) -> Stack:
    stack.start_gateway(server={"header_timeout": 0.5})
    return stack


def test_a_connection_that_sends_nothing_is_closed_silently(slow_clients: Stack) -> None:
    with connect(slow_clients) as sock:
        assert read_until_closed(sock) == b""
    assert closed_count(slow_clients, "header_timeout") == 1
    assert_gateway_still_serves(slow_clients)


def test_half_a_request_gets_a_stripe_shaped_408_then_a_close(slow_clients: Stack) -> None:
    with connect(slow_clients) as sock:
        sock.sendall(request_bytes()[:30])
        answer = read_until_closed(sock)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 408 ")  # like aiohttp's other parse errors
    assert b"\r\nRequest-Id: gwreq_" in head and b"application/json" in head
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert "did not arrive within 0.5 seconds" in error["message"]
    assert closed_count(slow_clients, "header_timeout") == 1
    assert slow_clients.upstreams["api"].received == []
    assert_gateway_still_serves(slow_clients)


def test_the_header_deadline_is_total_not_per_byte(slow_clients: Stack) -> None:
    # one byte every 0.1 s: each byte is well within 0.5 s of the last, the whole is not
    trickle = request_bytes()[:-2]  # never complete
    answer = b""
    with connect(slow_clients) as sock:
        deadline = time.monotonic() + DEADLINE
        for byte in trickle:
            assert time.monotonic() < deadline, "the trickling client was never closed"
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                answer = read_until_closed(sock)
                break
        else:
            pytest.fail("the whole request line and headers went out, one byte at a time")
    assert answer.startswith(b"HTTP/1.0 408 ")
    assert_gateway_still_serves(slow_clients)


def test_keep_alive_requests_are_not_cut_by_the_header_deadline(slow_clients: Stack) -> None:
    with connect(slow_clients) as sock:
        sock.sendall(request_bytes())
        assert read_response(sock)[0] == 200
        # idle longer than header_timeout: keepalive_timeout (75 s) governs an idle connection
        time.sleep(1.0)
        sock.sendall(request_bytes())
        assert read_response(sock)[0] == 200
        # a whole request in two parts, the second after a pause shorter than the deadline
        sock.sendall(request_bytes()[:20])
        time.sleep(0.1)
        sock.sendall(request_bytes()[20:])
        assert read_response(sock)[0] == 200
    assert closed_count(slow_clients, "header_timeout") == 0


def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout(stack: Stack) -> None:
    stack.start_gateway(server={"keepalive_timeout": 0.5})
    with connect(stack) as sock:
        sock.sendall(request_bytes())
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection", "").lower() != "close"
        assert read_until_closed(sock) == b""
    assert_gateway_still_serves(stack)


@pytest.fixture
def capped(stack: Stack) -> Iterator[Stack]:
    stack.start_gateway(server={"max_connections": 3})
    yield stack


def test_connections_over_the_cap_are_closed_and_the_others_keep_working(capped: Stack) -> None:
    held = [connect(capped) for _ in range(3)]
    try:
        for sock in held:  # an answer proves the gateway has accepted (and counts) it
            sock.sendall(request_bytes())
            assert read_response(sock)[0] == 200
        with connect(capped) as extra:
            assert read_until_closed(extra) == b""
        assert closed_count(capped, "max_connections") == 1
        for sock in held:
            sock.sendall(request_bytes())
            assert read_response(sock)[0] == 200
        # a connection closed frees its place
        held.pop().close()
        deadline = time.monotonic() + DEADLINE
        while True:
            with connect(capped) as again:
                again.sendall(request_bytes())
                try:
                    if again.recv(12).startswith(b"HTTP/1.1 200"):
                        break
                except ConnectionResetError:
                    pass
            assert time.monotonic() < deadline, "no connection accepted after one closed"
    finally:
        for sock in held:
            sock.close()


def test_a_client_that_hangs_up_mid_request_costs_no_error_and_no_traceback(
    gateway: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    # 1: gone before the answer's headers (Stripe answers after 0.3 s)
    with connect(gateway) as sock:
        sock.sendall(request_bytes("/v1/test_faults/slow?seconds=0.3"))
    # 2: gone mid-body, closed; 3: gone mid-body, reset
    for reset in (False, True):
        sock = connect(gateway)
        sock.sendall(request_bytes(f"/v1/files/file_1Nabcdefghijk/contents?size={64 << 20}"))
        assert sock.recv(65536)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        sock.close()
    lines = gateway.audit_lines(at_least=3, timeout=DEADLINE)
    # a client gone is the audit line's outcome (nginx's 499), not an error
    assert {line["outcome"] for line in lines} == {"client_closed"}
    slow = [line for line in lines if line["path"] == "/v1/test_faults/slow"]
    assert [line["status"] for line in slow] == [499]  # left before the answer started
    assert_gateway_still_serves(gateway)
    # at most an info line each (aiohttp's "client disconnected"), never an error or a
    # traceback
    records = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert [r for r in records if r.levelno >= logging.WARNING or r.exc_info] == []
    gateway_log = [json.loads(line) for line in gateway.errors_path.read_text().splitlines()]
    assert not [
        r for r in gateway_log if r.get("level") in ("error", "critical") or "exception" in r
    ]
    assert_gateway_still_serves(gateway)
