"""No file descriptor outlives its request: a served gateway (``stripe-gateway serve``, a
real process) put through every way a request can end, good or bad, on either side, holds
no more descriptors afterwards than before, but for the connections it pools.

Hostile clients (a vanished client, half a request, a bad key with ``Expect:
100-continue``, an oversized header) and a failing upstream (a reset before the answer, a
reset or a short body in the middle of it) each leave a socket behind if any path forgets
to close one; a couple of hundred requests make such a leak plain. The count is read from
``/proc/<pid>/fd`` and waited for (closing is asynchronous), never slept for.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from tests.fake_stripe import FakeStripe
from tests.helpers import BILLING_KEY, Served
from tests.serving import GatewayConfigFile, get, serve_gateway

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc/<pid>/fd"
)

ROUNDS = int(os.environ.get("FD_ROUNDS", "25"))
#: what may stay open after the churn over the count before it: pooled upstream
#: connections (requests here go one at a time, so one or two) and their like
SLACK = 6


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _raw(host_port: tuple[str, int], data: bytes, *, read: bool) -> bytes:
    """Send ``data`` on a fresh connection; read the answer (until it is whole by its
    ``Content-Length``, or the gateway closes) or hang up at once without reading. (After
    refusing an uninvited body the gateway lingers, reading what may still come, before it
    closes: the client closing first is what a client does.)"""
    with socket.create_connection(host_port, timeout=15) as sock:
        sock.sendall(data)
        answer = b""
        while read and (chunk := sock.recv(65536)):
            answer += chunk
            head, found, body = answer.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if found and length and len(body) >= length[0]:
                break
        return answer


def _churn(host_port: tuple[str, int]) -> None:
    auth = f"Authorization: Bearer {BILLING_KEY}\r\n".encode()
    head = b"Host: gateway\r\nConnection: close\r\n"
    for _ in range(ROUNDS):
        # good requests, and the upstream failing each way it can
        for path in (
            "/v1/customers/cus_1Nfdleak0001",
            "/v1/test_faults/reset_before",
            "/v1/test_faults/reset_mid_body",
            "/v1/test_faults/truncated",
        ):
            answer = _raw(
                host_port,
                b"GET " + path.encode() + b" HTTP/1.1\r\n" + head + auth + b"\r\n",
                read=True,
            )
            assert answer.startswith(b"HTTP/1.1 "), answer[:80]
        # a client that sends a whole request and leaves without reading the answer
        _raw(
            host_port,
            b"GET /v1/customers/cus_1Nfdleak0002 HTTP/1.1\r\n" + head + auth + b"\r\n",
            read=False,
        )
        # half a request, then gone
        _raw(
            host_port,
            b"POST /v1/customers HTTP/1.1\r\n" + auth + b"Content-Length: 100\r\n\r\nname=",
            read=False,
        )
        # a bad key announcing a body it is never invited to send
        _raw(
            host_port,
            b"POST /v1/customers HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer gw_wrong\r\n"
            b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            read=True,
        )
        # a header over the limit
        _raw(
            host_port,
            b"GET /v1/customers HTTP/1.1\r\n" + head + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n",
            read=True,
        )


def test_every_way_a_request_ends_leaves_no_descriptor_open(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write()
    with serve_gateway(config.path) as gw:
        pid = gw.proc.pid
        for _ in range(3):  # warm: the audit file, the upstream pool, lazy imports
            assert get(gw, "/v1/customers/cus_1Nfdleak0000", BILLING_KEY)[0] == 200
        before = _fds(pid)
        _churn(gw.host_port)
        assert get(gw, "/v1/customers/cus_1Nfdleak0000", BILLING_KEY)[0] == 200
        deadline = time.monotonic() + 60  # a refused body may linger ~10 s before its close
        while (now := _fds(pid)) > before + SLACK and time.monotonic() < deadline:
            time.sleep(0.1)
        assert now <= before + SLACK, (
            f"{now} descriptors open after {ROUNDS * 8} requests, {before} before: "
            f"{sorted(os.listdir(f'/proc/{pid}/fd'), key=int)}"
        )
