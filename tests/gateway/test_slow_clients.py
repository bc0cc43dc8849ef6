"""Slow and vanishing clients: body deadlines, the upstream pool's bounds, per-team
in-flight caps, cut-off bodies, and how each request's end is recorded (``outcome``).

Clients are raw sockets, so a test controls exactly which bytes arrive and when; the fake
Stripe records a request only once it has read the whole body, so "nothing recorded" means
Stripe never got a complete request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import stripe

from gateway.app import create_app
from gateway.config import parse_config
from gateway.keys import GENERATIONS
from tests.helpers import ANALYTICS_KEY, BILLING_KEY, ENVIRON, Stack, free_port, start_app

HOLD = "/v1/test_faults/hold"


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def _open(stack: Stack, head: bytes) -> socket.socket:
    host, port = stack.gateway_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    sock.sendall(head)
    return sock


def _post_head(path: str = "/v1/customers", length: int | None = 100) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {BILLING_KEY}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\n\r\n"
    ).encode()


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON body of the one response on ``sock`` (read to its close)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def _hold(stack: Stack) -> asyncio.Event:
    event = stack.loop.call(asyncio.Event)
    stack.upstreams["api"].hold = event
    return event


def _release(stack: Stack, event: asyncio.Event) -> None:
    stack.loop.call(event.set)


@pytest.fixture
def background() -> Iterator[Callable[[Callable[[], Any]], list[Any]]]:
    """Run calls in threads; their results (or exceptions) land in the returned list."""
    threads: list[threading.Thread] = []

    def run(fn: Callable[[], Any]) -> list[Any]:
        out: list[Any] = []

        def target() -> None:
            try:
                out.append(fn())
            except Exception as exc:
                out.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        threads.append(thread)
        return out

    yield run
    for thread in threads:
        thread.join(30)


def _get(stack: Stack, path: str, key: str = BILLING_KEY) -> requests.Response:
    return requests.get(
        stack.gateway_url + path, headers={"Authorization": f"Bearer {key}"}, timeout=20
    )


def _in_flight(stack: Stack) -> int:
    assert stack.app is not None
    return stack.loop.call(lambda: stack.app[GENERATIONS].in_flight)  # type: ignore[index]


def _audit_for(stack: Stack, path: str, method: str = "POST") -> dict[str, Any]:
    lines: list[dict[str, Any]] = []

    def found() -> bool:
        lines[:] = [
            line
            for line in stack.audit_lines(at_least=0, timeout=0)
            if line["path"] == path and line["method"] == method
        ]
        return bool(lines)

    _eventually(found)
    return lines[-1]


# ------------------------------------------------------------------ slow bodies


def test_slow_bodies_of_one_team_do_not_starve_another(stack: Stack) -> None:
    stack.start_gateway(upstream={"max_connections": 4})
    slow = [_open(stack, _post_head() + b"name=slow") for _ in range(6)]
    try:
        _eventually(lambda: _in_flight(stack) == 6)
        # read whole before a pooled connection is taken: the trickling bodies hold none
        answer = _get(stack, "/v1/reporting/report_runs", key=ANALYTICS_KEY)
        assert answer.status_code == 200
        assert stack.upstreams["api"].count("POST", "/v1/customers") == 0
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
def test_a_stalled_body_gets_408_and_never_completes_upstream(stack: Stack, buffered: bool) -> None:
    stack.start_gateway(server={"body_timeout": 0.5, "buffer_body_bytes": 1024 if buffered else 0})
    with _open(stack, _post_head("/v1/customers/cus_1Nstalled0001") + b"name=x") as sock:
        status, headers, body = _answer(sock)  # the gateway closes the connection
    assert status == 408
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "request_body_timeout"
    assert headers["Stripe-Should-Retry"] == "false"
    assert headers["Request-Id"].startswith("gwreq_")
    line = _audit_for(stack, "/v1/customers/cus_1Nstalled0001")
    assert (line["status"], line["outcome"], line["error"]) == (408, "body_timeout", "body_timeout")
    assert stack.upstreams["api"].count("POST", "/v1/customers/cus_1Nstalled0001") == 0
    # the gateway still serves
    assert _get(stack, "/v1/customers/cus_1Nafter000001").status_code == 200


def test_a_trickled_body_is_cut_by_the_total_body_deadline(stack: Stack) -> None:
    stack.start_gateway(server={"body_timeout": 30, "body_total_timeout": 0.5})
    sock = _open(stack, _post_head(length=10_000))
    sock.settimeout(0.05)
    try:
        data = b""
        deadline = time.monotonic() + 20
        while not data:  # one byte at a time, each well within body_timeout
            assert time.monotonic() < deadline
            sock.sendall(b"x")
            with contextlib.suppress(TimeoutError):
                data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 408 ")
    finally:
        sock.close()
    assert stack.upstreams["api"].count("POST", "/v1/customers") == 0


@pytest.mark.parametrize(
    ("length", "buffer", "sent"),
    [
        (1000, 1 << 20, b"name=" + b"x" * 500),
        (1000, 0, b"name=" + b"x" * 500),
        (None, 1 << 20, b"9\r\nname=xxxx\r\n"),  # chunked, no terminating chunk
    ],
    ids=["buffered", "streamed", "chunked"],
)
def test_a_body_cut_off_by_the_client_never_completes_upstream(
    stack: Stack, length: int | None, buffer: int, sent: bytes
) -> None:
    stack.start_gateway(server={"buffer_body_bytes": buffer})
    path = "/v1/customers/cus_1Ncutoff00001"
    sock = _open(stack, _post_head(path, length) + sent)
    _eventually(lambda: _in_flight(stack) == 1)
    sock.close()
    line = _audit_for(stack, path)
    assert (line["status"], line["outcome"], line["error"]) == (
        499,
        "client_closed",
        "client_disconnected",
    )
    assert stack.upstreams["api"].count("POST", path) == 0
    _eventually(lambda: _in_flight(stack) == 0)
    assert not any(r.path == path for r in stack.upstreams["api"].received)


# ------------------------------------------------------------------ the pool and team caps


def test_pool_timeout_answers_503_when_slow_answers_hold_every_connection(
    stack: Stack, background: Callable[[Callable[[], Any]], list[Any]]
) -> None:
    stack.start_gateway(upstream={"max_connections": 2, "pool_timeout": 0.3, "read_timeout": 30})
    held = _hold(stack)
    api = stack.upstreams["api"]
    first = background(lambda: _get(stack, HOLD))
    second = background(lambda: _get(stack, HOLD + "?n=2"))
    _eventually(lambda: api.count("GET", HOLD) == 2)
    try:
        answer = _get(stack, "/v1/customers/cus_1Npoolwait001")
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("api_error", "upstream_pool_exhausted")
        assert answer.headers["Stripe-Should-Retry"] == "true"
        assert api.count("GET", "/v1/customers/cus_1Npoolwait001") == 0
    finally:
        _release(stack, held)
    _eventually(lambda: bool(first) and bool(second))
    assert first[0].status_code == second[0].status_code == 200
    assert _get(stack, "/v1/customers/cus_1Npoolwait001").status_code == 200


def test_a_team_over_max_in_flight_gets_429_at_once_and_others_pass(
    stack: Stack, background: Callable[[Callable[[], Any]], list[Any]]
) -> None:
    data = stack.gateway_data()
    data["teams"][0]["max_in_flight"] = 1  # billing
    stack.start_gateway(teams=data["teams"], upstream={"read_timeout": 30})
    held = _hold(stack)
    api = stack.upstreams["api"]
    first = background(lambda: _get(stack, HOLD))
    _eventually(lambda: api.count("GET", HOLD) == 1)
    client = stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": stack.gateway_url}, max_network_retries=0
    )
    try:
        with pytest.raises(stripe.RateLimitError) as refused:
            client.v1.customers.retrieve("cus_1Nteamcap0001")
        assert refused.value.json_body is not None
        assert refused.value.json_body["error"]["code"] == "team_in_flight_limit"
        assert refused.value.headers is not None
        assert refused.value.headers["Stripe-Should-Retry"] == "true"
        assert _get(stack, "/v1/reporting/report_runs", key=ANALYTICS_KEY).status_code == 200
    finally:
        _release(stack, held)
    _eventually(lambda: bool(first))
    assert first[0].status_code == 200
    assert client.v1.customers.retrieve("cus_1Nteamcap0001").id == "cus_1Nteamcap0001"


def test_the_team_count_is_given_back_on_every_path(stack: Stack) -> None:
    data = stack.gateway_data()
    data["teams"][0]["max_in_flight"] = 1
    stack.start_gateway(teams=data["teams"], server={"body_timeout": 1.5, "buffer_body_bytes": 0})
    # a streamed body that stalls (408), one the client cuts off, an upstream that breaks
    with _open(stack, _post_head() + b"name=x") as sock:
        assert _answer(sock)[0] == 408
    sock = _open(stack, _post_head(length=None) + b"4\r\nname\r\n")
    _eventually(lambda: _in_flight(stack) == 1)
    sock.close()
    _eventually(lambda: _in_flight(stack) == 0)
    assert _get(stack, "/v1/test_faults/reset_before").status_code == 502
    assert _get(stack, "/v1/customers/cus_1Nteamcap0002").status_code == 200


# ------------------------------------------------------------------ outcomes


def test_a_client_gone_during_the_upstream_wait_is_audited_499(
    stack: Stack,
) -> None:
    stack.start_gateway(admin={"port": free_port()}, upstream={"read_timeout": 30})
    held = _hold(stack)
    sock = _open(
        stack,
        f"GET {HOLD} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {BILLING_KEY}\r\n\r\n".encode(),
    )
    _eventually(lambda: stack.upstreams["api"].count("GET", HOLD) == 1)
    sock.close()
    _eventually(lambda: stack.loop.call(lambda: not _transports_open(stack)))
    _release(stack, held)
    line = _audit_for(stack, HOLD, "GET")
    assert (line["status"], line["outcome"]) == (499, "client_closed")
    assert line["error"] == "client_disconnected"

    from tests.helpers import Scrape

    labels = {"team": "billing", "outcome": "client_closed"}
    _eventually(lambda: Scrape(stack.admin_url)["request_outcomes_total", labels] == 1)
    assert _get(stack, "/v1/customers/cus_1Noutcome0001").status_code == 200
    ok = {"team": "billing", "outcome": "ok"}
    _eventually(lambda: Scrape(stack.admin_url)["request_outcomes_total", ok] == 1)


def _transports_open(stack: Stack) -> bool:
    """Whether the gateway still has a client connection open."""
    assert stack.app is not None
    for runner in stack._runners:
        if runner.app is stack.app and runner.server is not None:
            return any(c.transport is not None for c in runner.server.connections)
    return False


def test_a_request_cut_off_by_the_drain_is_audited_drain_timeout(
    stack: Stack, background: Callable[[Callable[[], Any]], list[Any]]
) -> None:
    config = parse_config(stack.gateway_data(upstream={"read_timeout": 30}), environ=ENVIRON)
    with stack.errors_path.open("ab", buffering=0) as errors:
        app = create_app(config, error_stream=errors)
        served = stack.loop.run(start_app(app, gateway=True, shutdown_timeout=0.3))
        stack.gateway_url = served.url
        held = _hold(stack)
        cut = background(lambda: _get(stack, HOLD))
        _eventually(lambda: stack.upstreams["api"].count("GET", HOLD) == 1)
        try:
            stack.loop.run(served.runner.cleanup())
        finally:
            _release(stack, held)
    _eventually(lambda: bool(cut))
    assert isinstance(cut[0], requests.ConnectionError)
    line = _audit_for(stack, HOLD, "GET")
    assert (line["status"], line["outcome"], line["error"]) == (0, "drain_timeout", "drain_timeout")


# ------------------------------------------------------------------ slow readers


def test_a_client_that_stops_reading_its_answer_frees_its_connection_after_send_timeout(
    stack: Stack,
) -> None:
    # A client that asked for a large answer and stopped reading held its pooled upstream
    # connection for as long as it kept the socket open: a few such clients of one team
    # starved every team (503 upstream_pool_exhausted for everyone else, indefinitely).
    stack.start_gateway(
        upstream={"max_connections": 1, "pool_timeout": 0.3, "read_timeout": 30},
        server={"send_timeout": 0.5},
    )
    path = "/v1/files/file_1Nslowreader01/contents"
    host, port = stack.gateway_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    with sock:
        sock.sendall(
            f"GET {path}?size=500000000 HTTP/1.1\r\nHost: gw\r\n"
            f"Authorization: Bearer {BILLING_KEY}\r\n\r\n".encode()
        )
        _eventually(lambda: stack.upstreams["files"].count("GET", path) == 1)
        # never read: once the socket buffers are full, the gateway waits send_timeout
        other = "/v1/reporting/report_runs"
        _eventually(lambda: _get(stack, other, key=ANALYTICS_KEY).status_code == 200, timeout=30)
        line = _audit_for(stack, path, "GET")
        assert (line["status"], line["outcome"], line["error"]) == (
            200,
            "send_timeout",
            "send_timeout",
        )
