"""Forwarding through the gateway with the official stripe SDK, over real sockets."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import socket
import time
import zlib
from typing import Any

import pytest
import requests
import stripe
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.context import RequestContext
from gateway.hookspecs import hookimpl
from tests.helpers import (
    ANALYTICS_KEY,
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    PASSTHROUGH_KEY,
    RawResponse,
    Stack,
    raw_request,
)


def client_for(stack: Stack, key: str = BILLING_KEY, **kwargs: Any) -> stripe.StripeClient:
    url = stack.gateway_url
    return stripe.StripeClient(
        key,
        base_addresses={"api": url, "files": url, "connect": url, "meter_events": url},
        max_network_retries=0,
        **kwargs,
    )


def test_sdk_with_global_api_base_retrieves_lists_and_creates(
    gateway: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stripe, "api_base", gateway.gateway_url)
    monkeypatch.setattr(stripe, "api_key", BILLING_KEY)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    api = gateway.upstreams["api"]

    run = stripe.sigma.ScheduledQueryRun.retrieve("sqr_1Nabcdefghijk", expand=["file"])
    assert run.id == "sqr_1Nabcdefghijk"
    got = api.last()
    assert got.method == "GET"
    assert got.path == "/v1/sigma/scheduled_query_runs/sqr_1Nabcdefghijk"
    assert got.query_string == "expand[0]=file"
    assert got.headers["Authorization"] == f"Bearer {BILLING_UPSTREAM_KEY}"

    runs = stripe.reporting.ReportRun.list(limit=3)
    assert runs.object == "list"
    assert api.last().query_string == "limit=3"

    calc = stripe.tax.Calculation.create(
        currency="usd",
        line_items=[{"amount": 1000, "reference": "L1"}, {"amount": 250, "reference": "L2"}],
        customer_details={"address": {"country": "US", "postal_code": "94103"}},
        expand=["line_items"],
    )
    assert calc.id == "obj_created00001"
    got = api.last()
    assert got.method == "POST"
    assert got.path == "/v1/tax/calculations"
    assert got.headers["Content-Type"] == "application/x-www-form-urlencoded"
    body = got.body.decode()
    assert "line_items[0][amount]=1000" in body.replace("%5B", "[").replace("%5D", "]")
    assert "customer_details[address][country]=US" in body.replace("%5B", "[").replace("%5D", "]")
    assert got.headers["Content-Length"] == str(len(got.body))


def test_stripe_client_base_addresses_reach_the_right_hosts(gateway: Stack) -> None:
    client = client_for(gateway)
    client.v1.customers.retrieve("cus_1Nabcdefghijk")
    assert gateway.upstreams["api"].last().path == "/v1/customers/cus_1Nabcdefghijk"

    uploaded = client.v1.files.create(
        {"purpose": "dispute_evidence", "file": io.BytesIO(b"a,b\n1,2\n")}
    )
    assert uploaded.id == "file_fake0000001"
    files = gateway.upstreams["files"].last()
    assert files.method == "POST" and files.path == "/v1/files"
    assert files.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="purpose"' in files.body and b"a,b\n1,2\n" in files.body
    assert files.headers["Authorization"] == f"Bearer {BILLING_UPSTREAM_KEY}"

    pdf = client.v1.quotes.pdf("qt_1Nabcdefghijk")
    assert b"qt_1Nabcdefghijk" in pdf.io.read()
    assert gateway.upstreams["files"].last().path == "/v1/quotes/qt_1Nabcdefghijk/pdf"

    client.raw_request("post", "/v2/billing/meter_event_stream", base="meter_events")
    assert gateway.upstreams["meter_events"].last().path == "/v2/billing/meter_event_stream"

    client.v1.files.retrieve("file_1Nabcdefghijk")
    assert gateway.upstreams["api"].last().path == "/v1/files/file_1Nabcdefghijk"

    client.oauth.deauthorize({"client_id": "ca_1234567890", "stripe_user_id": "acct_1234567890"})
    assert gateway.upstreams["connect"].last().path == "/oauth/deauthorize"


def test_query_and_body_are_forwarded_byte_for_byte(gateway: Stack) -> None:
    # http.client sends the request target exactly as given (requests would re-encode it)
    raw_query = "expand%5B%5D=b&expand[]=a&q=%20x+y&empty=&utf=%C3%A9"
    body = b"metadata%5Bk%5D=v+w&items[0][price]=price_1&amount=%2B1&raw=%00%FF"
    conn = http.client.HTTPConnection(gateway.gateway_url.removeprefix("http://"), timeout=5)
    try:
        conn.request(
            "POST",
            f"/v1/customers/cus_1Nabcdefghijk?{raw_query}",
            body=body,
            headers={
                "Authorization": f"Bearer {BILLING_KEY}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 200
    got = gateway.upstreams["api"].last()
    assert got.raw_path == f"/v1/customers/cus_1Nabcdefghijk?{raw_query}"
    assert got.body == body
    assert got.headers["Content-Length"] == str(len(body))


def test_headers_hop_by_hop_dropped_stripe_headers_kept_both_ways(stack: Stack) -> None:
    # the core relays Stripe's headers unchanged; the idempotency plugin (on by default)
    # namespaces Idempotency-Key per team, see tests/plugins/test_idempotency.py
    stack.start_gateway(plugins={"disable": ["idempotency"]})
    gateway = stack
    stripe_headers = {
        "Stripe-Version": "2024-06-20",
        "Stripe-Account": "acct_1Nabcdefghijk",
        "Stripe-Context": "ctx_123",
        "Idempotency-Key": "key-123",
        "User-Agent": "Stripe/v1 PythonBindings/9.9.9",
        "X-Stripe-Client-User-Agent": '{"lang": "python"}',
    }
    response = requests.post(
        f"{gateway.gateway_url}/v1/customers",
        data=b"name=x",
        headers={
            "Authorization": f"Bearer {BILLING_KEY}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "TE": "trailers",
            "X-Forwarded-For": "10.1.2.3",
            **stripe_headers,
        },
        timeout=5,
    )
    assert response.status_code == 200
    got = gateway.upstreams["api"].last()
    for name, value in stripe_headers.items():
        assert got.headers[name] == value
    for name in ("X-Private-Hop", "Keep-Alive", "Proxy-Authorization", "TE"):
        assert name not in got.headers
    assert got.headers["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
    host = gateway.upstream_urls["api"].removeprefix("http://")
    assert got.headers["Host"] == host
    # and on the way back
    assert response.headers["Request-Id"].startswith("req_fake")
    assert response.headers["Stripe-Version"] == "2024-06-20"
    assert response.headers["Idempotent-Replayed"] == "false"
    assert response.headers["X-Gateway-Request-Id"].startswith("gwreq_")


def test_passthrough_team_forwards_its_own_stripe_key(gateway: Stack) -> None:
    client_for(gateway, PASSTHROUGH_KEY).v1.customers.retrieve("cus_1Nabcdefghijk")
    assert gateway.upstreams["api"].last().headers["Authorization"] == f"Bearer {PASSTHROUGH_KEY}"


def test_basic_auth_with_key_as_username_is_accepted(gateway: Stack) -> None:
    response = requests.get(
        f"{gateway.gateway_url}/v1/customers/cus_1Nabcdefghijk", auth=(BILLING_KEY, ""), timeout=5
    )
    assert response.status_code == 200
    assert (
        gateway.upstreams["api"].last().headers["Authorization"] == f"Bearer {BILLING_UPSTREAM_KEY}"
    )


def test_large_download_streams_before_upstream_finishes(gateway: Stack) -> None:
    files = gateway.upstreams["files"]
    release = gateway.loop.call(asyncio.Event)
    files.release_download = release
    size = 8 * 1024 * 1024
    url = f"{gateway.gateway_url}/v1/files/file_1Nabcdefghijk/contents?size={size}"
    with requests.get(url, auth=(BILLING_KEY, ""), stream=True, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(size)
        received = 0
        chunks = response.iter_content(64 * 1024)
        # the upstream holds the second half back until we let it go: the first half
        # must arrive through the gateway while the upstream is still mid-body
        while received < size // 2:
            received += len(next(chunks))
        assert files.download_progress, "the upstream should be paused mid-body"
        gateway.loop.call(release.set)
        for chunk in chunks:
            received += len(chunk)
    assert received == size
    line = gateway.audit_lines()[-1]
    assert line["bytes_out"] == size and line["status"] == 200 and line["upstream"] == "files"


def test_unknown_key_raises_authentication_error(gateway: Stack) -> None:
    with pytest.raises(stripe.AuthenticationError) as info:
        client_for(gateway, "gw_test_unknown_key_000000009876").v1.customers.retrieve(
            "cus_1Nabcdefghijk"
        )
    assert info.value.http_status == 401
    assert "9876" in str(info.value) and "gw_test_unknown" not in str(info.value)
    assert info.value.request_id is not None and info.value.request_id.startswith("gwreq_")
    assert gateway.upstreams["api"].received == []


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Token abc", "Basic !!!notbase64", "Bearer a b", "Basic " + "A" * 3],
)
def test_malformed_authorization_is_a_stripe_shaped_401(gateway: Stack, header: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = requests.get(f"{gateway.gateway_url}/v1/customers", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert gateway.upstreams["api"].received == []


def test_route_not_allowed_raises_permission_error(gateway: Stack) -> None:
    from tests.helpers import ANALYTICS_KEY

    client = client_for(gateway, ANALYTICS_KEY)
    client.v1.sigma.scheduled_query_runs.list()
    with pytest.raises(stripe.PermissionError) as info:
        client.v1.customers.create({"email": "a@example.com"})
    assert info.value.http_status == 403
    assert "analytics" in str(info.value)
    assert gateway.upstreams["api"].last().path == "/v1/sigma/scheduled_query_runs"


def test_stripe_account_outside_allow_list_is_refused(gateway: Stack) -> None:
    from tests.helpers import ANALYTICS_KEY

    client = client_for(gateway, ANALYTICS_KEY)
    client.v1.reporting.report_runs.list(options={"stripe_account": "acct_allowed000001"})
    assert gateway.upstreams["api"].last().headers["Stripe-Account"] == "acct_allowed000001"
    with pytest.raises(stripe.PermissionError):
        client.v1.reporting.report_runs.list(options={"stripe_account": "acct_other00000001"})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_upstream_refused_is_502_api_error_retryable_only_when_safe(stack: Stack) -> None:
    stack.start_gateway(upstream={"api": f"http://127.0.0.1:{_closed_port()}"})
    client = client_for(stack)
    with pytest.raises(stripe.APIError) as info:
        client.v1.customers.retrieve("cus_1Nabcdefghijk")
    assert info.value.http_status == 502
    assert info.value.headers["Stripe-Should-Retry"] == "true"
    with pytest.raises(stripe.APIError) as info:
        client.v1.customers.create({"email": "a@example.com"}, options={"idempotency_key": None})
    assert info.value.http_status == 502
    # the SDK adds an Idempotency-Key to every POST, so a retry is safe
    assert info.value.headers["Stripe-Should-Retry"] == "true"
    raw = requests.post(
        f"{stack.gateway_url}/v1/customers", auth=(BILLING_KEY, ""), data={"a": "b"}, timeout=5
    )
    assert raw.status_code == 502
    assert raw.headers["Stripe-Should-Retry"] == "false"
    assert raw.json()["error"]["type"] == "api_error"
    assert stack.audit_lines(3)[-1]["error"] == "upstream_unreachable"


def test_the_upstream_error_line_names_the_host_and_the_os_error(stack: Stack) -> None:
    port = _closed_port()
    stack.start_gateway(upstream={"api": f"http://127.0.0.1:{port}"})
    response = requests.get(f"{stack.gateway_url}/v1/customers", auth=(BILLING_KEY, ""), timeout=10)
    assert response.status_code == 502
    (line,) = stack.error_events("upstream_error")
    assert line["host"] == f"127.0.0.1:{port}" and line["upstream"] == "api"
    assert line["errno"] == "ECONNREFUSED" and line["reason"] == "Connection refused"
    assert line["kind"] == "upstream_unreachable"
    assert BILLING_KEY not in stack.errors_path.read_text()


def test_the_upstream_error_line_names_a_host_that_does_not_resolve(stack: Stack) -> None:
    # .invalid never resolves (RFC 2606): fails at once, also with no network at all
    stack.start_gateway(upstream={"api": "http://api.stripe.invalid:8443"})
    response = requests.get(f"{stack.gateway_url}/v1/customers", auth=(BILLING_KEY, ""), timeout=30)
    assert response.status_code == 502
    (line,) = stack.error_events("upstream_error", timeout=30)
    assert line["host"] == "api.stripe.invalid:8443"
    assert line["errno"].startswith("EAI_"), line  # EAI_NONAME, or EAI_AGAIN offline
    assert line["reason"] and line["reason"] != "ClientConnectorDNSError"
    assert BILLING_KEY not in stack.errors_path.read_text()


def test_upstream_reset_before_response_is_502(gateway: Stack) -> None:
    with pytest.raises(stripe.APIError) as info:
        client_for(gateway).raw_request("get", "/v1/test_faults/reset_before")
    assert info.value.http_status == 502


def test_upstream_timeout_is_504_within_read_timeout(gateway: Stack) -> None:
    started = time.monotonic()
    with pytest.raises(stripe.APIError) as info:
        client_for(gateway).raw_request("get", "/v1/test_faults/stall", seconds=10)
    assert info.value.http_status == 504
    assert info.value.headers["Stripe-Should-Retry"] == "true"
    assert time.monotonic() - started < 5  # read_timeout is 2 s in the test stack
    assert gateway.audit_lines()[-1]["error"] == "upstream_timeout"


@pytest.mark.parametrize(
    ("fault", "query"),
    [
        ("reset_mid_body", ""),  # chunked upstream body, reset
        ("reset_mid_body", "?length=1"),  # Content-Length body, reset
        ("truncated", ""),  # Content-Length body, clean close too early
        ("stall_mid_body", "?seconds=10"),  # stalls after the first bytes
    ],
)
def test_broken_upstream_body_gives_the_client_a_broken_body(
    gateway: Stack, fault: str, query: str
) -> None:
    started = time.monotonic()
    with pytest.raises(requests.exceptions.RequestException):
        response = requests.get(
            f"{gateway.gateway_url}/v1/test_faults/{fault}{query}",
            auth=(BILLING_KEY, ""),
            timeout=8,
        )
        response.raise_for_status()
        response.json()  # a short body is never a complete JSON document
        pytest.fail("a broken upstream body must not look complete")
    assert time.monotonic() - started < 6
    assert gateway.audit_lines()[-1]["error"] in (
        "upstream_broken_body",
        "upstream_timeout_mid_body",
    )


def test_body_over_limit_is_413(stack: Stack) -> None:
    stack.start_gateway(server={"max_body_bytes": 1024})
    url = f"{stack.gateway_url}/v1/customers"
    response = requests.post(url, auth=(BILLING_KEY, ""), data=b"x" * 2048, timeout=5)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"

    def chunks() -> Any:
        for _ in range(4):
            yield b"y" * 512

    response = requests.post(url, auth=(BILLING_KEY, ""), data=chunks(), timeout=5)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert stack.upstreams["api"].received == []
    with pytest.raises(stripe.APIError) as info:
        client_for(stack).v1.customers.create({"description": "z" * 2000})
    assert info.value.http_status == 413


@pytest.mark.parametrize("where", ["value", "name", "second header"])
def test_an_oversized_header_is_a_stripe_shaped_431(gateway: Stack, where: str) -> None:
    # aiohttp's parser answers 400 Bad Request: the request is not malformed, its head
    # is over max_header_bytes
    big = b"a" * 9000
    header = {
        "value": b"X-Big: " + big,
        "name": b"X-" + big + b": 1",
        "second header": b"X-Small: 1\r\nX-Big: " + big,
    }[where]
    response = raw_request(
        gateway.gateway_url,
        b"GET /v1/customers HTTP/1.1\r\nHost: gateway\r\n"
        + f"Authorization: Bearer {BILLING_KEY}\r\n".encode()
        + header
        + b"\r\n\r\n",
    )
    assert response.status == 431
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "8190 bytes" in error["message"]
    assert response.headers["Request-Id"].startswith("gwreq_")
    assert gateway.upstreams["api"].received == []


@pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 431)])
def test_max_header_bytes_is_the_boundary(gateway: Stack, extra: int, status: int) -> None:
    value = "a" * (8190 + extra)  # max_header_bytes (default), one byte more
    response = requests.get(
        f"{gateway.gateway_url}/v1/customers",
        headers={"Authorization": f"Bearer {BILLING_KEY}", "X-Big": value},
        timeout=5,
    )
    assert response.status_code == status
    if status == 200:
        assert gateway.upstreams["api"].last().headers["X-Big"] == value
    else:
        assert gateway.upstreams["api"].received == []


def test_an_oversized_request_line_is_a_431_the_sdk_raises(gateway: Stack) -> None:
    # max_header_bytes bounds the request line too; aiohttp's parser does not say which
    # line overflowed, so it is the same 431 (as Node answers), not a 414
    with pytest.raises(stripe.APIError) as info:
        client_for(gateway).v1.customers.list({"email": "a" * 9000})
    assert info.value.http_status == 431
    assert info.value.request_id is not None and info.value.request_id.startswith("gwreq_")
    assert gateway.upstreams["api"].received == []


def test_unknown_path_is_a_stripe_shaped_404(gateway: Stack) -> None:
    response = requests.get(f"{gateway.gateway_url}/admin.php", timeout=5)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "Unrecognized request URL" in response.json()["error"]["message"]


def test_healthz_needs_no_key(gateway: Stack) -> None:
    response = requests.get(f"{gateway.gateway_url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/sigma/../customers",
        "/v1/sigma/%2e%2e/customers",
        "/v1/sigma/scheduled_query_runs%2F..%2Fcustomers",
        "/v1/./customers",
        "/v1/sigma\\..\\customers",
    ],
)
def test_dot_segments_and_encoded_slashes_are_refused(gateway: Stack, path: str) -> None:
    # a team allowed only GET /v1/sigma/** must not reach /v1/customers by path tricks
    from tests.helpers import ANALYTICS_KEY

    conn = http.client.HTTPConnection(gateway.gateway_url.removeprefix("http://"), timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {ANALYTICS_KEY}"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 400
    assert b'"invalid_path"' in body
    assert gateway.upstreams["api"].received == []


def test_retry_hint_counts_an_idempotency_key_added_by_a_plugin(stack: Stack) -> None:
    # the SDK always sends Idempotency-Key on POST; a bare POST without one is unsafe
    stack.start_gateway(upstream={"api": f"http://127.0.0.1:{_closed_port()}"})
    raw = requests.post(
        f"{stack.gateway_url}/v1/customers",
        auth=(BILLING_KEY, ""),
        data={"a": "b"},
        headers={"Idempotency-Key": "k-1"},
        timeout=5,
    )
    assert raw.status_code == 502 and raw.headers["Stripe-Should-Retry"] == "true"


class BodyCopy:
    """A plugin asking for a copy of the request body (as the audit plugin does)."""

    name = "body_copy"

    def __init__(self) -> None:
        self.limit = 0
        self.seen: list[bytes | None] = []

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> None:
        ctx.request_capture_limit = self.limit

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext) -> None:
        self.seen.append(ctx.request_body)

    def finished(self, timeout: float = 3.0) -> list[bytes | None]:
        """What the requests' copies were, once one has finished (just after its response)."""
        deadline = time.monotonic() + timeout
        while not self.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.seen


BODY_COPY = BodyCopy()


@pytest.mark.parametrize(
    ("limit", "chunked", "copied"),
    [(1000, False, True), (1000, True, True), (999, True, False), (0, False, False)],
)
def test_a_plugin_gets_a_copy_of_the_request_body_as_it_streams(
    stack: Stack, limit: int, chunked: bool, copied: bool
) -> None:
    BODY_COPY.limit, BODY_COPY.seen = limit, []
    stack.start_gateway(plugins={"load": ["tests.gateway.test_proxy:BODY_COPY"]})
    body = b"a=" + b"x" * 998
    data: Any = iter([body[:300], body[300:]]) if chunked else body
    response = requests.post(
        f"{stack.gateway_url}/v1/customers", auth=(BILLING_KEY, ""), data=data, timeout=5
    )
    assert response.status_code == 200
    assert stack.upstreams["api"].last().body == body
    assert BODY_COPY.finished() == [body if copied else None]


def test_a_body_buffered_for_retries_is_the_copy(stack: Stack) -> None:
    BODY_COPY.limit, BODY_COPY.seen = 100, []
    stack.start_gateway(plugins={"load": ["tests.gateway.test_proxy:BODY_COPY"]})
    stack.upstreams["api"].plan = ["retry500", "ok"]
    response = requests.post(
        f"{stack.gateway_url}/v1/forwarding/requests",
        auth=(BILLING_KEY, ""),
        data={"url": "https://example.com"},
        timeout=10,
    )
    assert response.status_code == 200 and response.headers["X-Gateway-Attempts"] == "2"
    assert BODY_COPY.finished() == [b"url=https%3A%2F%2Fexample.com"]


# ------------------------------------------------------------------ hostile request targets


def _raw(
    stack: Stack, target: str | bytes, *headers: str | bytes, method: bytes = b"GET"
) -> RawResponse:
    lines = [method + b" " + (target.encode() if isinstance(target, str) else target)]
    lines += [b"Host: gateway"]
    lines += [h.encode() if isinstance(h, str) else h for h in headers]
    return raw_request(stack.gateway_url, b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n")


def _assert_stripe_shaped(response: RawResponse, status: int, code: str | None = None) -> None:
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Request-Id"].startswith("gwreq_")
    error = response.json()["error"]
    assert error["type"] in ("invalid_request_error", "api_error")
    assert error["message"]
    if code is not None:
        assert error["code"] == code


def _nothing_upstream(stack: Stack) -> None:
    assert all(fake.received == [] for fake in stack.upstreams.values())


@given(
    scheme=st.from_regex(r"[A-Za-z][A-Za-z0-9+.-]{0,11}", fullmatch=True),
    host=st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(scheme="munity", host="x")
@example(scheme="http", host="127.0.0.1:1")
@example(scheme="https", host="api.stripe.com")
def test_absolute_form_targets_never_choose_the_upstream(
    gateway: Stack, scheme: str, host: str
) -> None:
    # `GET munity://x/v1/...` once went to https://api.stripe.community with the team's key
    response = _raw(
        gateway,
        f"{scheme}://{host}/v1/sigma/scheduled_query_runs",
        f"Authorization: Bearer {BILLING_KEY}",
    )
    # refused by the proxy, or (for targets aiohttp's parser rejects) by the protocol layer
    _assert_stripe_shaped(response, 400)
    assert response.json()["error"].get("code") in ("invalid_request_target", None)
    _nothing_upstream(gateway)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        (b"CONNECT", "api.stripe.com:443"),
        (b"OPTIONS", "*"),
        (b"GET", "/v1/customers#fragment"),
    ],
)
def test_other_request_target_forms_are_a_stripe_shaped_400_with_an_audit_line(
    gateway: Stack, method: bytes, target: str
) -> None:
    response = _raw(gateway, target, f"Authorization: Bearer {BILLING_KEY}", method=method)
    _assert_stripe_shaped(response, 400, "invalid_request_target")
    _nothing_upstream(gateway)
    line = gateway.audit_lines()[-1]
    assert line["request_id"] == response.headers["Request-Id"]
    assert line["status"] == 400
    assert line["error"] == "invalid_request_target"


def test_an_encoded_newline_in_the_path_is_answered_by_the_gateway(gateway: Stack) -> None:
    # aiohttp's own router does not match it: it used to get a plain-text 404
    response = _raw(gateway, "/v1/cust%0aomers", f"Authorization: Bearer {ANALYTICS_KEY}")
    _assert_stripe_shaped(response, 403, "route_not_allowed")
    assert gateway.audit_lines()[-1]["request_id"] == response.headers["Request-Id"]
    # no allow rule matches a control character, not even `* /**`
    response = _raw(gateway, "/v1/cust%0Aomers/x", f"Authorization: Bearer {BILLING_KEY}")
    _assert_stripe_shaped(response, 403, "route_not_allowed")
    _nothing_upstream(gateway)


# ------------------------------------------------------------------ duplicate headers


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "Stripe-Account",
        "Stripe-Context",
        "Stripe-Version",
        "Idempotency-Key",
        "Content-Type",
    ],
)
def test_a_header_that_must_be_single_sent_twice_is_refused(gateway: Stack, name: str) -> None:
    first = f"Bearer {BILLING_KEY}" if name == "Authorization" else "acct_allowed000001"
    second = f"Bearer {PASSTHROUGH_KEY}" if name == "Authorization" else "acct_other0000001"
    headers = [f"{name}: {first}", f"{name.lower()}: {second}"]
    if name != "Authorization":
        headers.append(f"Authorization: Bearer {ANALYTICS_KEY}")
    response = _raw(gateway, "/v1/sigma/scheduled_query_runs", *headers)
    _assert_stripe_shaped(response, 400)
    # refused by the proxy, or by aiohttp's parser (it refuses a second Content-Type)
    assert response.json()["error"].get("code") in ("invalid_header", None)
    assert name.lower() in response.json()["error"]["message"].lower()
    _nothing_upstream(gateway)


def test_duplicate_stripe_account_with_the_allowed_one_first_never_reaches_stripe(
    gateway: Stack,
) -> None:
    # the allow-list used to read the first value while both went upstream
    response = _raw(
        gateway,
        "/v1/sigma/scheduled_query_runs",
        f"Authorization: Bearer {ANALYTICS_KEY}",
        "Stripe-Account: acct_allowed000001",
        "Stripe-Account: acct_victim0000001",
    )
    _assert_stripe_shaped(response, 400, "invalid_header")
    _nothing_upstream(gateway)


def test_a_repeated_list_header_is_still_forwarded(gateway: Stack) -> None:
    response = _raw(
        gateway,
        "/v1/customers",
        f"Authorization: Bearer {BILLING_KEY}",
        "Accept: application/json",
        "Accept: text/plain",
    )
    assert response.status == 200
    assert gateway.upstreams["api"].last().headers.getall("Accept") == [
        "application/json",
        "text/plain",
    ]


@pytest.mark.parametrize(
    "named",
    [
        "Stripe-Version",
        "Stripe-Account",
        "Authorization",
        "Idempotency-Key",
        "Cache-Control",
        "X-Forwarded-For",
        "stripe-context",
    ],
)
def test_connection_naming_a_header_the_gateway_reads_is_refused(
    gateway: Stack, named: str
) -> None:
    headers = [f"Authorization: Bearer {BILLING_KEY}", f"Connection: keep-alive, {named}"]
    if named != "Authorization":
        headers.append(f"{named}: acct_allowed000001")
    response = _raw(gateway, "/v1/customers/cus_A1234567890", *headers)
    _assert_stripe_shaped(response, 400, "invalid_header")
    _nothing_upstream(gateway)


def test_a_non_ascii_stripe_header_is_refused(gateway: Stack) -> None:
    response = _raw(
        gateway,
        "/v1/customers",
        f"Authorization: Bearer {BILLING_KEY}",
        b"Stripe-Account: acct_\xff\xfe",
    )
    _assert_stripe_shaped(response, 400, "invalid_header")
    _nothing_upstream(gateway)


# ------------------------------------------------------------------ the gateway's own retry


def test_a_get_is_retried_once_after_a_reset_and_the_audit_line_counts_it(
    gateway: Stack,
) -> None:
    api = gateway.upstreams["api"]
    api.plan = ["reset"]
    customer = client_for(gateway).v1.customers.retrieve("cus_A1234567890")
    assert customer.id == "cus_A1234567890"
    assert api.count("GET", "/v1/customers/cus_A1234567890") == 2
    line = gateway.audit_lines()[-1]
    assert line["status"] == 200
    assert line["attempts"] == 2


def test_a_get_reset_twice_is_a_502_after_two_attempts(gateway: Stack) -> None:
    api = gateway.upstreams["api"]
    api.plan = ["reset", "reset"]
    with pytest.raises(stripe.APIError) as info:
        client_for(gateway).v1.customers.retrieve("cus_A1234567890")
    assert info.value.http_status == 502
    assert api.count("GET", "/v1/customers/cus_A1234567890") == 2
    assert gateway.audit_lines()[-1]["attempts"] == 2


def test_a_post_without_idempotency_key_is_never_retried_after_a_reset(gateway: Stack) -> None:
    api = gateway.upstreams["api"]
    api.plan = ["reset"]
    response = requests.post(
        f"{gateway.gateway_url}/v1/customers",
        data={"name": "x"},
        headers={"Authorization": f"Bearer {BILLING_KEY}"},
        timeout=10,
    )
    assert response.status_code == 502
    assert response.headers["Stripe-Should-Retry"] == "false"
    assert api.count("POST", "/v1/customers") == 1
    assert gateway.audit_lines()[-1]["attempts"] == 1


# ------------------------------------------------------------------ encoded request bodies


def _compressed(encoding: str, size: int) -> bytes:
    """``size`` bytes of a form body, compressed as ``encoding`` names (a 64 MiB body
    compresses to ~64 KB: a decompression bomb)."""
    wbits = {"gzip": 31, "deflate": 15}[encoding]
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    piece = b"a=" + b"0" * (1024 * 1024 - 2)
    parts = [packer.compress(piece) for _ in range(size // len(piece))]
    return b"".join([*parts, packer.flush()])


def _post_encoded(stack: Stack, encoding: str, body: bytes) -> RawResponse:
    head = (
        "POST /v1/charges HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        f"Authorization: Bearer {BILLING_KEY}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return raw_request(stack.gateway_url, head.encode() + body)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("buffer_body_bytes", [1024 * 1024, 0])
def test_an_encoded_request_body_is_refused_and_never_inflated(
    stack: Stack, encoding: str, buffer_body_bytes: int
) -> None:
    # The gateway once inflated it: a 64 KB gzip was read as 64 MiB (past max_body_bytes,
    # into memory when buffered), and Stripe got the inflated bytes cut to the compressed
    # Content-Length, still labelled gzip.
    stack.start_gateway(server={"buffer_body_bytes": buffer_body_bytes})
    body = _compressed(encoding, 64 * 1024 * 1024)
    response = _post_encoded(stack, encoding, body)
    _assert_stripe_shaped(response, 415, "unsupported_content_encoding")
    _nothing_upstream(stack)
    line = stack.audit_lines()[-1]
    assert line["request_id"] == response.headers["Request-Id"]
    assert line["status"] == 415
    assert line["bytes_in"] <= len(body)


def test_an_identity_encoded_request_body_is_forwarded(gateway: Stack) -> None:
    response = _post_encoded(gateway, "identity", b"a=1")
    assert response.status == 200
    assert gateway.upstreams["api"].last().body == b"a=1"


_CODINGS = ["chunked", "Chunked", "CHUNKED", "gzip", "deflate", "identity", "x-custom", ""]


@st.composite
def _transfer_encodings(draw: st.DrawFn) -> list[bytes]:
    """One or two Transfer-Encoding header values, each a list of transfer codings."""
    values = []
    for _ in range(draw(st.integers(1, 2))):
        codings = draw(st.lists(st.sampled_from(_CODINGS), min_size=1, max_size=3))
        space = draw(st.sampled_from(["", " ", "  "]))
        values.append(f"{space}{(',' + space).join(codings)}{space}".encode())
    return values


@given(values=_transfer_encodings(), with_length=st.booleans())
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(values=[b"gzip, chunked"], with_length=False)
@example(values=[b"chunked"], with_length=True)
@example(values=[b"chunked"], with_length=False)
def test_a_transfer_encoding_other_than_a_lone_chunked_is_refused_and_never_forwarded(
    gateway: Stack, values: list[bytes], with_length: bool
) -> None:
    # `Transfer-Encoding: gzip, chunked` was de-chunked and forwarded: Stripe got the
    # body still gzip-coded, as a form
    marks = {name: len(fake.received) for name, fake in gateway.upstreams.items()}
    body = b"a=1"
    request = (
        b"POST /v1/charges HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        + f"Authorization: Bearer {BILLING_KEY}\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + b"".join(b"Transfer-Encoding: " + value + b"\r\n" for value in values)
        + (b"Content-Length: %d\r\n" % len(body) if with_length else b"")
        + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    response = raw_request(gateway.gateway_url, request)
    got = [r for name, fake in gateway.upstreams.items() for r in fake.received[marks[name] :]]
    lone_chunked = len(values) == 1 and values[0].strip().lower() == b"chunked"
    if lone_chunked and not with_length:
        assert response.status == 200
        assert [r.body for r in got] == [body]
    else:
        # refused by the proxy (invalid_header) or by aiohttp's parser (no code)
        _assert_stripe_shaped(response, 400)
        assert response.json()["error"].get("code") in ("invalid_header", None)
        assert got == []


def _until_closed(stack: Stack, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the gateway closes it (a kept-alive
    connection fails the read by timeout: the test then fails)."""
    host, _, port = stack.gateway_url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


def _http10_post(*headers: bytes, body: bytes = b"a=1", chunked: bool = True) -> bytes:
    return (
        b"POST /v1/charges HTTP/1.0\r\nHost: gateway\r\n"
        + f"Authorization: Bearer {BILLING_KEY}\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
        + (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body)
    )


def test_an_http10_request_with_a_content_length_is_forwarded(gateway: Stack) -> None:
    response = raw_request(
        gateway.gateway_url, _http10_post(b"Content-Length: 3", body=b"a=1", chunked=False)
    )
    assert response.status == 200
    assert gateway.upstreams["api"].last().body == b"a=1"
    assert gateway.audit_lines()[-1]["status"] == 200


def test_an_http10_request_with_transfer_encoding_is_refused_and_its_connection_closed(
    gateway: Stack,
) -> None:
    # RFC 9112 §6.1: HTTP/1.0 has no transfer codings; an HTTP/1.0 hop in front would frame
    # this by the connection's end while aiohttp reads chunks. Kept alive, what follows the
    # chunks (here a second request, smuggled) would be served as a request of its own.
    smuggled = b"GET /v1/customers HTTP/1.1\r\nHost: gateway\r\n" + (
        f"Authorization: Bearer {BILLING_KEY}\r\n\r\n".encode()
    )
    raw = _until_closed(
        gateway,
        _http10_post(b"Transfer-Encoding: chunked", b"Connection: keep-alive") + smuggled,
    )
    assert raw.count(b"\r\nRequest-Id: ") == 1, raw  # one answer, then the connection closed
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.split()[1] == "400"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert headers["connection"].lower() == "close"
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_header"
    assert "HTTP/1.0" in error["message"] and "Transfer-Encoding" in error["message"]
    _nothing_upstream(gateway)
    lines_ = gateway.audit_lines()
    assert [line["request_id"] for line in lines_] == [headers["request-id"]]
    assert lines_[0]["status"] == 400
    assert lines_[0]["error"] == "invalid_header"


@given(
    values=_transfer_encodings(),
    with_length=st.booleans(),
    keep_alive=st.booleans(),
    method=st.sampled_from([b"POST", b"GET", b"DELETE"]),
)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(values=[b"chunked"], with_length=False, keep_alive=True, method=b"POST")
@example(values=[b"chunked"], with_length=True, keep_alive=False, method=b"POST")
@example(values=[b"Chunked"], with_length=False, keep_alive=False, method=b"GET")
def test_an_http10_request_with_any_transfer_encoding_never_reaches_stripe(
    gateway: Stack, values: list[bytes], with_length: bool, keep_alive: bool, method: bytes
) -> None:
    marks = {name: len(fake.received) for name, fake in gateway.upstreams.items()}
    body = b"a=1"
    request = (
        method
        + b" /v1/charges HTTP/1.0\r\nHost: gateway\r\n"
        + f"Authorization: Bearer {BILLING_KEY}\r\n".encode()
        + (b"Connection: keep-alive\r\n" if keep_alive else b"")
        + b"".join(b"Transfer-Encoding: " + value + b"\r\n" for value in values)
        + (b"Content-Length: %d\r\n" % len(body) if with_length else b"")
        + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    raw = _until_closed(gateway, request)  # whatever the refusal, the connection closes
    got = [r for name, fake in gateway.upstreams.items() for r in fake.received[marks[name] :]]
    assert got == []
    head, _, answer = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"400"
    # refused by the proxy (invalid_header) or by aiohttp's parser (no code)
    error = json.loads(answer)["error"]
    assert error["type"] == "invalid_request_error"
    assert error.get("code") in ("invalid_header", None)


def test_an_unknown_expectation_is_a_stripe_shaped_417_with_an_audit_line(gateway: Stack) -> None:
    # aiohttp's default answer was a plain-text 417 with no request id and no audit line
    response = _raw(
        gateway,
        "/v1/charges",
        f"Authorization: Bearer {BILLING_KEY}",
        "Expect: 200-ok",
        "Content-Length: 0",
        method=b"POST",
    )
    _assert_stripe_shaped(response, 417, "expectation_failed")
    _nothing_upstream(gateway)
    line = gateway.audit_lines()[-1]
    assert line["request_id"] == response.headers["Request-Id"]
    assert line["status"] == 417


def test_expect_100_continue_still_gets_its_interim_answer(gateway: Stack) -> None:
    host, _, port = gateway.gateway_url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/charges HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
            + f"Authorization: Bearer {BILLING_KEY}\r\n".encode()
            + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        )
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += conn.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(b"a=1")
        response = http.client.HTTPResponse(conn)
        response.begin()
        assert response.status == 200
    assert gateway.upstreams["api"].last().body == b"a=1"


def _read_head(conn: socket.socket) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = conn.recv(1)
        assert byte, f"the connection closed after {head!r}"
        head += byte
    return head


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer gw_test_nobody_000000000000001", 401),
        ("Basic !!!", 401),
        # a good key, but the team may not make this call: refused by authentication too
        (f"Bearer {ANALYTICS_KEY}", 403),
    ],
)
def test_expect_100_continue_is_not_answered_before_the_key_is_accepted(
    gateway: Stack, authorization: str | None, status: int
) -> None:
    # The 100 Continue went out as soon as the headers were parsed: a client with no key
    # or a bad one was invited to send its body, then refused.
    host, _, port = gateway.gateway_url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/charges HTTP/1.1\r\nHost: gateway\r\n"
            + (f"Authorization: {authorization}\r\n".encode() if authorization else b"")
            + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        )
        head = _read_head(conn)  # the first answer: the final one, no 100 before it
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith(f"HTTP/1.1 {status} "), head
        headers = {
            name.lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        # the body may or may not follow now: the connection is not reused
        assert headers["connection"] == "close"
        body = b""
        while len(body) < int(headers["content-length"]):
            chunk = conn.recv(65536)
            assert chunk, "the answer was cut short"
            body += chunk
    response = RawResponse(status, dict(h.split(": ", 1) for h in lines if h), body)
    _assert_stripe_shaped(response, status)
    _nothing_upstream(gateway)
    line = gateway.audit_lines()[-1]
    assert line["request_id"] == headers["request-id"]
    assert line["status"] == status


def test_expect_100_continue_with_a_good_key_keeps_the_connection(gateway: Stack) -> None:
    host, _, port = gateway.gateway_url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        for body in (b"a=1", b"a=22"):
            conn.sendall(
                b"POST /v1/charges HTTP/1.1\r\nHost: gateway\r\n"
                + f"Authorization: Bearer {BILLING_KEY}\r\n".encode()
                + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            assert _read_head(conn) == b"HTTP/1.1 100 Continue\r\n\r\n"
            conn.sendall(body)
            response = http.client.HTTPResponse(conn)
            response.begin()
            assert response.status == 200
            assert response.getheader("Connection") is None  # kept alive
            response.read()
            assert gateway.upstreams["api"].last().body == body
