"""The listener's own behaviour (gateway/server.py), over raw sockets: header and keep-alive
timeouts, the connection cap, and quiet client disconnects."""

from __future__ import annotations

import base64
import json
import logging
import socket
import time

import pytest
import requests

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


def assert_gateway_still_serves(stack: Stack) -> None:
    response = requests.get(
        f"{stack.gateway_url}/v1/customers/cus_1Nabcdefghijk", auth=(BILLING_KEY, ""), timeout=5
    )
    assert response.status_code == 200


def _client_gone_records(
    caplog: pytest.LogCaptureFixture, at_least: int
) -> list[logging.LogRecord]:
    deadline = time.monotonic() + DEADLINE
    while True:
        records = [
            r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= logging.INFO
        ]
        if len(records) >= at_least or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


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
    gateway.audit_lines(at_least=3, timeout=DEADLINE)
    records = _client_gone_records(caplog, at_least=1)
    assert [(r.name, r.levelname, r.exc_info) for r in records] == [
        ("aiohttp.server", "INFO", None)
    ]
    assert "disconnected" in records[0].getMessage()
    gateway_log = [json.loads(line) for line in gateway.errors_path.read_text().splitlines()]
    assert not [
        r for r in gateway_log if r.get("level") in ("error", "critical") or "exception" in r
    ]
    assert_gateway_still_serves(gateway)
