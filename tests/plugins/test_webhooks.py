"""The webhooks plugin: Stripe-signed events in at the gateway, re-signed deliveries out to
real local subscriber servers, verified with the stock SDK (``stripe.Webhook``)."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.host import PluginHost
from gateway.keys import METRICS
from sandbox.delivery import signature_header
from tests.helpers import (
    BILLING_KEY,
    ENVIRON,
    LoopThread,
    Served,
    Stack,
    WebhookReceiver,
    digest,
    free_port,
    raw_request,
    start_app,
    until_closed,
)

#: a deadline for anything these tests wait on (slack for a busy CI machine)
DEADLINE = 30.0
SOURCE_SECRET = "whsec_source_secret_0000000000000001"
OLD_SOURCE_SECRET = "whsec_source_secret_old_00000000001"
TEAM_SECRET = "whsec_team_billing_secret_000000001"
OTHER_TEAM_SECRET = "whsec_team_other_secret_0000000001"
PATH = "/webhooks/stripe"
ADMIN_TOKEN = "admin-token-for-webhook-tests-0001"


# --------------------------------------------------------------------------- helpers


Subscriber = WebhookReceiver


@pytest.fixture
def subscribers(
    webhook_receivers: Callable[..., WebhookReceiver],
) -> Callable[..., WebhookReceiver]:
    return webhook_receivers


def _secret_file(tmp: Path, name: str, secret: str) -> str:
    path = tmp / f"{name}.secret"
    path.write_text(secret + "\n")
    return str(path)


def _subscription(tmp: Path, url: str, **extra: Any) -> dict[str, Any]:
    name = extra.pop("name", "billing")
    secret = extra.pop("secret", TEAM_SECRET)
    return {
        "name": name,
        "team": extra.pop("team", "billing"),
        "url": url,
        "secret_file": _secret_file(tmp, f"sub-{name}", secret),
        "retry_delays": [0.05, 0.05, 0.05],
        "jitter": 0.0,
        "timeout": 5.0,
        **extra,
    }


def _plugin(
    tmp: Path,
    subscriptions: list[dict[str, Any]],
    *,
    secrets: tuple[str, ...] = (SOURCE_SECRET,),
    **extra: Any,
) -> dict[str, Any]:
    files = [_secret_file(tmp, f"source-{i}", s) for i, s in enumerate(secrets)]
    source = {"name": "main", "path": PATH, "secret_file": files, **extra.pop("source", {})}
    return {
        "sqlite_path": str(tmp / "webhooks.sqlite3"),
        "sources": [source],
        "subscriptions": subscriptions,
        "poll_seconds": 0.2,
        **extra,
    }


def _start(stack: Stack, webhooks: dict[str, Any], **overrides: Any) -> str:
    plugins = {"audit": {"path": str(stack.audit_path)}, "webhooks": webhooks}
    plugins.update(overrides.pop("plugins", {}))
    admin = {"port": free_port(), "token_sha256": digest(ADMIN_TOKEN)}
    return stack.start_gateway(plugins=plugins, admin=admin, **overrides)


def _stop_gateway(stack: Stack) -> None:
    """Stop the last gateway started (a graceful stop: drain, plugins shut down)."""
    runner = stack._runners.pop()
    stack.loop.run(runner.cleanup())


_counter = iter(range(1, 1_000_000))


def _event(
    type_: str = "invoice.paid",
    *,
    object_id: str = "in_1Nabcdefghij",
    livemode: bool = False,
    account: str | None = None,
    event_id: str | None = None,
) -> bytes:
    """A snapshot event body, formatted as Stripe does (pretty, key order kept)."""
    event: dict[str, Any] = {
        "id": event_id or f"evt_test_{next(_counter):012d}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {"object": {"id": object_id, "object": type_.split(".")[0]}},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }
    if account is not None:
        event["account"] = account
    return json.dumps(event, indent=2).encode()


def _post(
    url: str,
    body: bytes,
    *,
    secret: str = SOURCE_SECRET,
    timestamp: int | None = None,
    header: str | None = None,
) -> requests.Response:
    if header is None:
        header = signature_header(body, secret, timestamp or int(time.time()))
    return requests.post(
        url + PATH,
        data=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        timeout=10,
    )


def _admin(stack: Stack, method: str, path: str, **data: str) -> Any:
    response = requests.request(
        method,
        stack.admin_url + path,
        params=data if method == "GET" else None,
        data=data if method != "GET" else None,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _wait(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _metric(stack: Stack, name: str, **labels: str) -> float:
    assert stack.app is not None
    value = stack.app[METRICS].registry.get_sample_value(f"stripe_gateway_{name}", labels)
    return value or 0.0


def _verified(received: tuple[bytes, str], secret: str = TEAM_SECRET) -> stripe.Event:
    body, header = received
    return stripe.Webhook.construct_event(body.decode(), header, secret)


# --------------------------------------------------------------------------- config


def _config(tmp: Path, webhooks: dict[str, Any]) -> PluginHost:
    config = parse_config(
        {
            "upstream": {"api": "http://127.0.0.1:9"},
            "teams": [{"name": "billing", "key_sha256": [digest(BILLING_KEY)]}],
            "plugins": {"webhooks": webhooks},
        },
        environ=ENVIRON,
    )
    return PluginHost(config, entry_points_enabled=False)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    sub = _subscription(tmp_path, "http://127.0.0.1:9/hook")
    with pytest.raises(ConfigError, match=r"plugins\.webhooks\.subscriptions\.0\.team"):
        _config(tmp_path, _plugin(tmp_path, [{**sub, "team": "nobody"}]))
    with pytest.raises(ConfigError, match="secret_env"):
        _config(tmp_path, _plugin(tmp_path, [{**sub, "secret_file": None}]))
    with pytest.raises(ConfigError, match="secret_env"):
        _config(tmp_path, {**_plugin(tmp_path, []), "sources": [{"name": "a", "path": "/a"}]})
    with pytest.raises(ConfigError, match="not set or empty"):
        _config(tmp_path, _plugin(tmp_path, [{**sub, "secret_file": None, "secret_env": "NOPE"}]))
    with pytest.raises(ConfigError, match="path"):
        _config(tmp_path, _plugin(tmp_path, [], source={"path": "/v1/customers"}))


def test_secrets_come_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_TEST_SOURCE", SOURCE_SECRET)
    monkeypatch.setenv("WEBHOOK_TEST_TEAM", TEAM_SECRET)
    sub = {**_subscription(tmp_path, "http://127.0.0.1:9/hook"), "secret_file": None}
    sub["secret_env"] = "WEBHOOK_TEST_TEAM"
    host = _config(
        tmp_path, _plugin(tmp_path, [sub], source={"secret_env": ["WEBHOOK_TEST_SOURCE"]})
    )
    plugin: Any = host.pm.get_plugin("webhooks")
    assert plugin.settings.sources[0].secrets == (SOURCE_SECRET, SOURCE_SECRET)
    assert plugin.settings.subscriptions[0].secret == TEAM_SECRET


# --------------------------------------------------------------------------- ingress and delivery


def test_valid_event_is_delivered_byte_for_byte_re_signed_with_the_team_secret(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event()
    response = _post(url, body)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "duplicate": False}
    assert response.headers["Request-Id"].startswith("gwreq_")
    (received,) = team.wait_for(1)
    assert received[0] == body
    assert _verified(received).id == json.loads(body)["id"]
    with pytest.raises(stripe.SignatureVerificationError):
        _verified(received, SOURCE_SECRET)  # the account's secret never reaches the team
    _wait(lambda: _metric(stack, "webhook_deliveries_total", subscription="billing",
                          outcome="delivered") == 1, "the delivery metric")  # fmt: skip
    assert _metric(stack, "webhook_events_received_total", source="main") == 1
    # one line for the received event, one per delivery attempt
    (line,) = stack.error_events("public_request")
    assert line["webhook_event"] == json.loads(body)["id"]
    assert line["status"] == 200 and line["webhook_deliveries"] == 1
    assert line["request_id"] == response.headers["Request-Id"]
    (attempt,) = stack.error_events("webhook_delivery")
    assert attempt["outcome"] == "delivered" and attempt["attempt"] == 1
    assert attempt["team"] == "billing" and attempt["status"] == 200


def test_thin_events_are_accepted_and_delivered(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = json.dumps(
        {
            "id": "evt_test_65R9Ijk8dQ6kgV3",
            "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered",
            "livemode": False,
            "created": "2024-09-17T06:20:52.246Z",
            "related_object": {"id": "mtr_test_61R9", "type": "billing.meter", "url": "/v1/x"},
        }
    ).encode()
    assert _post(url, body).status_code == 200
    (received,) = team.wait_for(1)
    assert received[0] == body
    assert json.loads(received[0])["object"] == "v2.core.event"
    assert stripe.WebhookSignature.verify_header(body.decode(), received[1], TEAM_SECRET, 300)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_secret", "bad_signature"),
        ("tampered", "bad_signature"),
        ("stale", "stale"),
        ("oversized", "too_large"),
        ("oversized_chunked", "too_large"),
        ("no_header", "no_signature"),
        ("not_an_event", "invalid_event"),
    ],
)
def test_bad_requests_get_400_and_nothing_is_stored_or_delivered(
    stack: Stack, subscribers: Callable[..., Subscriber], case: str, reason: str
) -> None:
    team = subscribers()
    webhooks = _plugin(
        stack.tmp, [_subscription(stack.tmp, team.url)], source={"max_body_bytes": 4096}
    )
    url = _start(stack, webhooks)
    body = _event()
    now = int(time.time())
    if case == "wrong_secret":
        response = _post(url, body, secret="whsec_not_the_source_secret")
    elif case == "tampered":
        header = signature_header(body, SOURCE_SECRET, now)
        response = _post(url, body.replace(b"invoice.paid", b"invoice.void"), header=header)
    elif case == "stale":
        response = _post(url, body, timestamp=now - 301)
    elif case == "oversized":
        big = json.loads(body)
        big["data"]["object"]["padding"] = "x" * 5000
        response = _post(url, json.dumps(big).encode())
    elif case == "oversized_chunked":  # no Content-Length: counted while it is read
        big_body = json.dumps({**json.loads(body), "padding": "x" * 5000}).encode()
        response = requests.post(
            url + PATH,
            data=iter([big_body[:2048], big_body[2048:]]),
            headers={
                "Stripe-Signature": signature_header(big_body, SOURCE_SECRET, now),
                "Content-Type": "application/json",
            },
            timeout=10,
        )
    elif case == "no_header":
        response = _post(url, body, header="")
    else:
        response = _post(url, b'{"object": "customer", "id": "cus_1"}')
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == f"webhook_{reason}"
    assert response.headers["Request-Id"].startswith("gwreq_")
    assert _metric(stack, "webhook_events_rejected_total", source="main", reason=reason) == 1
    assert _admin(stack, "GET", "/admin/webhooks/events")["data"] == []
    assert _admin(stack, "GET", "/admin/webhooks/deliveries")["data"] == []
    # a good event afterwards is the only one delivered
    good = _event()
    assert _post(url, good).status_code == 200
    assert [body for body, _ in team.wait_for(1)] == [good]
    assert len(_admin(stack, "GET", "/admin/webhooks/events")["data"]) == 1


@pytest.mark.parametrize(
    "signatures",
    [
        ("valid", "wrong_secret"),
        ("wrong_secret", "valid"),  # only the first was checked: this one was refused...
        ("valid", "valid"),
        ("valid", "stale"),
        ("stale", "valid"),
        ("valid", "empty"),
    ],
)
def test_more_than_one_stripe_signature_header_is_refused(
    stack: Stack, subscribers: Callable[..., Subscriber], signatures: tuple[str, str]
) -> None:
    # ...and a valid first one let a second, unchecked one through
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event()
    now = int(time.time())
    headers = {
        "valid": signature_header(body, SOURCE_SECRET, now),
        "wrong_secret": signature_header(body, "whsec_not_the_source_secret", now),
        "stale": signature_header(body, SOURCE_SECRET, now - 301),
        "empty": "",
    }
    response = raw_request(
        url,
        f"POST {PATH} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + b"".join(f"Stripe-Signature: {headers[s]}\r\n".encode() for s in signatures)
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body,
    )
    assert response.status == 400, response.body
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_header")
    assert error["message"] == "The header Stripe-Signature may be sent only once."
    assert response.headers["Request-Id"].startswith("gwreq_")
    assert response.headers["Connection"].lower() == "close"
    assert (
        _metric(stack, "webhook_events_rejected_total", source="main", reason="invalid_header") == 1
    )
    assert _admin(stack, "GET", "/admin/webhooks/events")["data"] == []
    # the same event with one valid signature is accepted, and delivered once
    assert _post(url, body).status_code == 200
    assert [received for received, _ in team.wait_for(1)] == [body]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (b"Stripe-Signature: t=1,v1=00\r\n", "Stripe-Signature"),
        (b"Stripe-Account: acct_1Nabcdefghij\r\n" * 2, "Stripe-Account"),
        (b"Connection: keep-alive, Stripe-Signature\r\n", "Stripe-Signature"),
        (b"Connection: Content-Type\r\n", "Content-Type"),
        (b"Connection: content-length\r\n", "Content-Length"),
    ],
)
def test_ambiguous_headers_are_refused_before_the_event_is_stored(
    stack: Stack, subscribers: Callable[..., Subscriber], extra: bytes, named: str
) -> None:
    # a Stripe-* header twice (a second signature, valid or not), or Connection naming a
    # header the ingress reads (a hop in front that honours it would drop what the ingress
    # verified): 400, closed, nothing stored
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event()
    signature = signature_header(body, SOURCE_SECRET, int(time.time()))
    request = (
        f"POST {PATH} HTTP/1.1\r\nHost: gateway\r\nStripe-Signature: {signature}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    status, headers, answer = until_closed(url, request)  # closed though kept alive
    assert status == 400, answer
    assert headers["connection"].lower() == "close"
    error = json.loads(answer)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_header")
    assert named in error["message"]
    assert (
        _metric(stack, "webhook_events_rejected_total", source="main", reason="invalid_header") == 1
    )
    assert _metric(stack, "webhook_events_received_total", source="main") == 0
    assert _admin(stack, "GET", "/admin/webhooks/events")["data"] == []
    assert _admin(stack, "GET", "/admin/webhooks/deliveries")["data"] == []
    # the same event, its headers once each, is accepted and is the only one delivered
    assert _post(url, body).status_code == 200
    assert [received for received, _ in team.wait_for(1)] == [body]


def test_ambiguous_headers_are_refused_before_the_body_is_read(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    # the body is announced but never sent in full: the refusal must not wait for it
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event()
    signature = signature_header(body, SOURCE_SECRET, int(time.time()))
    host, _, port = url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            f"POST {PATH} HTTP/1.1\r\nHost: gateway\r\nStripe-Signature: {signature}\r\n".encode()
            + b"Stripe-Signature: t=1,v1=00\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % (len(body) + 1000)
            + body[:10]
        )
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
            head += chunk  # a wait for the rest of the body would end in the 30 s timeout
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"invalid_header" in head or b"Content-Length" in head
    assert _admin(stack, "GET", "/admin/webhooks/events")["data"] == []


@pytest.mark.parametrize("name", ["Content-Length", "Content-Type"])
def test_a_second_content_header_is_refused_before_the_ingress(
    stack: Stack, subscribers: Callable[..., Subscriber], name: str
) -> None:
    # aiohttp's (strict) request parser refuses these itself: 400 without a code, the
    # connection closed; the ingress's own check is the second line. Nothing is stored
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event()
    signature = signature_header(body, SOURCE_SECRET, int(time.time()))
    value = str(len(body)) if name == "Content-Length" else "application/json"
    status, _, answer = until_closed(
        url,
        f"POST {PATH} HTTP/1.1\r\nHost: gateway\r\nStripe-Signature: {signature}\r\n".encode()
        + f"Content-Type: application/json\r\n{name}: {value}\r\n".encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body,
    )
    assert status == 400, answer
    assert _metric(stack, "webhook_events_received_total", source="main") == 0
    assert _admin(stack, "GET", "/admin/webhooks/events")["data"] == []


#: headers the ingress may get once at most; aiohttp's parser refuses a second of the
#: last two itself (400 without a code), before the ingress runs
_READ_BY_INGRESS = ("Stripe-Signature", "Stripe-Account", "Authorization", "Content-Type", "Host")
_REFUSED_BY_PARSER = ("Content-Type", "Host")


@given(
    others=st.lists(
        st.tuples(
            st.sampled_from(["Accept", "User-Agent", "X-Other", "Stripe-Version"]),
            st.from_regex(r"[a-z0-9=,]{0,8}", fullmatch=True),
        ),
        max_size=4,
        unique_by=lambda h: h[0],
    ),
    repeated=st.sampled_from(_READ_BY_INGRESS),
    spelt=st.sampled_from([str.lower, str.upper, str.title]),
    valid_second=st.booleans(),
    order=st.permutations(range(3)),
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_header_the_ingress_reads_sent_twice_never_stores_an_event(
    stack: Stack,
    others: list[tuple[str, str]],
    repeated: str,
    spelt: Callable[[str], str],
    valid_second: bool,
    order: list[int],
) -> None:
    # whatever else the request carries and in whatever order, with both copies valid or
    # not: refused before the body is read (by the ingress, with invalid_header, or by the
    # parser), never stored
    if stack.app is None:  # one gateway for every example
        _start(stack, _plugin(stack.tmp, []))
    url = stack.gateway_url
    refused = _metric(
        stack, "webhook_events_rejected_total", source="main", reason="invalid_header"
    )
    body = _event()
    signature = signature_header(body, SOURCE_SECRET, int(time.time()))
    values = {
        "Stripe-Signature": signature,
        "Content-Type": "application/json",
        "Stripe-Account": "acct_1Nabcdefghij",
        "Authorization": "Bearer sk_test_ingress",
        "Host": "gateway",
    }
    second = values[repeated] if valid_second else "x"
    lines = [
        ("Host", "gateway"),
        ("Stripe-Signature", signature),
        ("Content-Type", "application/json"),
    ]
    lines = [lines[i] for i in order] + others
    if repeated not in dict(lines):
        lines.append((repeated, values[repeated]))
    lines.insert(len(others) % (len(lines) + 1), (spelt(repeated), second))
    request = (
        f"POST {PATH} HTTP/1.1\r\n".encode()
        + "".join(f"{name}: {value}\r\n" for name, value in lines).encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    status, headers, answer = until_closed(url, request)
    assert status == 400, answer
    if repeated not in _REFUSED_BY_PARSER:
        assert headers["connection"].lower() == "close"
        assert json.loads(answer)["error"]["code"] == "invalid_header"
        assert (
            _metric(stack, "webhook_events_rejected_total", source="main", reason="invalid_header")
            == refused + 1
        )
    assert _metric(stack, "webhook_events_received_total", source="main") == 0
    assert _admin(stack, "GET", "/admin/webhooks/events")["data"] == []


def test_http10_with_transfer_encoding_is_refused_on_every_listener(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    # RFC 9112 §6.1: faulty framing, answered and the connection closed; the ingress,
    # /healthz and the admin listener do not go through the proxy's checks
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event()
    signature = signature_header(body, SOURCE_SECRET, int(time.time()))
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    webhook = (
        f"POST {PATH} HTTP/1.0\r\nHost: gateway\r\n".encode()
        + f"Stripe-Signature: {signature}\r\nContent-Type: application/json\r\n".encode()
    )
    admin_token = f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
    attempts = [
        (url, webhook + b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked),
        (url, b"GET /healthz HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        (
            stack.admin_url,
            b"GET /admin/webhooks/events HTTP/1.0\r\nConnection: keep-alive\r\n"
            + admin_token
            + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ]
    for where, data in attempts:
        status, headers, answer = until_closed(where, data)
        assert status == 400, answer
        assert headers["connection"].lower() == "close"
        assert headers["request-id"].startswith("gwreq_")
        error = json.loads(answer)["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_header")
        assert "HTTP/1.0" in error["message"]
    assert _admin(stack, "GET", "/admin/webhooks/events")["data"] == []
    # HTTP/1.0 with a Content-Length is still accepted, and delivered
    status, _, answer = until_closed(
        url, webhook + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    assert status == 200, answer
    assert [received for received, _ in team.wait_for(1)] == [body]


def test_either_secret_verifies_while_the_source_secret_rolls(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers()
    webhooks = _plugin(
        stack.tmp, [_subscription(stack.tmp, team.url)], secrets=(OLD_SOURCE_SECRET, SOURCE_SECRET)
    )
    url = _start(stack, webhooks)
    old, new, both = _event(), _event(), _event()
    assert _post(url, old, secret=OLD_SOURCE_SECRET).status_code == 200
    assert _post(url, new, secret=SOURCE_SECRET).status_code == 200
    now = int(time.time())
    # Stripe sends both signatures while the old secret is still valid
    header = (
        signature_header(both, "whsec_expired", now)
        + ","
        + (signature_header(both, SOURCE_SECRET, now).split(",")[1])
    )
    assert _post(url, both, header=header).status_code == 200
    received = team.wait_for(3)
    assert sorted(body for body, _ in received) == sorted([old, new, both])
    assert all(_verified(r) for r in received)


def test_the_same_event_twice_is_delivered_once(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event()
    first, second = _post(url, body), _post(url, body)
    assert first.json() == {"received": True, "duplicate": False}
    assert second.status_code == 200 and second.json() == {"received": True, "duplicate": True}
    later = _event()
    assert _post(url, later).status_code == 200
    received = team.wait_for(2)
    assert sorted(body for body, _ in received) == sorted([body, later])
    event_id = json.loads(body)["id"]
    (delivery,) = _admin(stack, "GET", "/admin/webhooks/deliveries", event_id=event_id)["data"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    assert len(_admin(stack, "GET", "/admin/webhooks/deliveries")["data"]) == 2


def test_a_failing_subscriber_gets_the_event_after_retries(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers(plan=[500, 503])
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event()
    assert _post(url, body).status_code == 200
    received = team.wait_for(3)
    assert all(r[0] == body for r in received)
    assert _verified(received[2]).id == json.loads(body)["id"]
    event_id = json.loads(body)["id"]

    def delivered() -> Any:
        rows = _admin(stack, "GET", "/admin/webhooks/deliveries", event_id=event_id)["data"]
        return rows if rows and rows[0]["status"] == "delivered" else None

    (row,) = _wait(delivered, "the delivery to be marked delivered")
    assert row["attempts"] == 3 and row["last_status"] == 200
    outcomes = [line["outcome"] for line in stack.error_events("webhook_delivery", 3)]
    assert outcomes == ["retry", "retry", "delivered"]


def test_after_the_last_attempt_the_delivery_is_dead_lettered_and_can_be_replayed(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers(status=500)
    sub = _subscription(stack.tmp, team.url, retry_delays=[0.05, 0.05])
    url = _start(stack, _plugin(stack.tmp, [sub], breaker_failures=100))
    body = _event()
    event_id = json.loads(body)["id"]
    assert _post(url, body).status_code == 200
    team.wait_for(3)

    def dead() -> Any:
        return _admin(stack, "GET", "/admin/webhooks/dead_letters")["data"]

    (letter,) = _wait(dead, "a dead letter")
    assert letter["event_id"] == event_id and letter["subscription"] == "billing"
    assert letter["attempts"] == 3 and letter["last_error"] == "HTTP 500"
    _wait(  # counted just after the store's write the dead letter shows
        lambda: (
            _metric(stack, "webhook_deliveries_total", subscription="billing", outcome="dead") == 1
        ),
        "the dead delivery to be counted",
    )
    team.status = 200
    answer = _admin(
        stack, "POST", "/admin/webhooks/replay", event_id=event_id, subscription="billing"
    )
    assert answer["queued"] is True
    received = team.wait_for(4)
    assert received[3][0] == body and _verified(received[3])
    _wait(lambda: not dead(), "the replayed delivery to leave the dead letters")


def test_a_dead_subscriber_opens_its_circuit_and_slows_nobody_else(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    down, healthy = subscribers(status=503), subscribers()
    subs = [
        _subscription(stack.tmp, down.url, name="down", max_concurrency=1,
                      retry_delays=[0.01] * 50),
        _subscription(stack.tmp, healthy.url, name="healthy"),
    ]  # fmt: skip
    url = _start(stack, _plugin(stack.tmp, subs, breaker_failures=2, breaker_seconds=1.0))
    first = _event()
    assert _post(url, first).status_code == 200
    down.wait_for(2)

    def circuit() -> dict[str, Any]:
        listed = _admin(stack, "GET", "/admin/webhooks/subscriptions")["data"]
        return {s["name"]: s for s in listed}

    _wait(lambda: circuit()["down"]["circuit_open"], "the circuit to open")
    (opened,) = stack.error_events("webhook_circuit_open")
    assert opened["subscription"] == "down" and opened["failures"] == 2
    # meanwhile the healthy subscription gets every event at once
    later = [_event() for _ in range(3)]
    for body in later:
        assert _post(url, body).status_code == 200
    assert sorted(b for b, _ in healthy.wait_for(4)) == sorted([first, *later])
    down.status = 200  # back up: after breaker_seconds one probe goes through, then the rest

    def settled() -> bool:
        rows = _admin(stack, "GET", "/admin/webhooks/deliveries", subscription="down")["data"]
        return len(rows) == 4 and all(r["status"] == "delivered" for r in rows)

    _wait(settled, "every delivery to the recovered subscriber")
    assert {b for b, _ in down.received} == {first, *later}
    _wait(lambda: not circuit()["down"]["circuit_open"], "the circuit to close")


def test_a_paused_subscription_gets_nothing_until_resumed(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    paused = _admin(stack, "POST", "/admin/webhooks/subscriptions/billing/pause")
    assert paused["paused"] is True
    body = _event()
    assert _post(url, body).status_code == 200
    listed = _admin(stack, "GET", "/admin/webhooks/subscriptions")["data"]
    assert listed[0]["name"] == "billing" and listed[0]["paused"] is True
    _wait(
        lambda: _metric(stack, "webhook_queue_depth", subscription="billing") == 1,
        "the queue depth gauge",
    )
    assert team.received == []
    _admin(stack, "POST", "/admin/webhooks/subscriptions/billing/resume")
    assert team.wait_for(1)[0][0] == body


def test_type_globs_and_livemode_and_account_filters_route_events(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    invoices, reports, live, connected = (subscribers() for _ in range(4))
    subs = [
        _subscription(stack.tmp, invoices.url, name="invoices", events=["invoice.*"]),
        _subscription(stack.tmp, reports.url, name="reports", events=["reporting.report_run.*"]),
        _subscription(stack.tmp, live.url, name="live", livemode=True, secret=OTHER_TEAM_SECRET),
        _subscription(stack.tmp, connected.url, name="connected", accounts=["acct_1Connected"]),
    ]
    url = _start(stack, _plugin(stack.tmp, subs))
    invoice = _event("invoice.paid")
    report = _event("reporting.report_run.succeeded", object_id="frr_1Nabc")
    live_charge = _event("charge.succeeded", object_id="ch_1Nabc", livemode=True)
    connected_invoice = _event("invoice.created", account="acct_1Connected")
    for body in (invoice, report, live_charge, connected_invoice):
        assert _post(url, body).status_code == 200
    assert sorted(b for b, _ in invoices.wait_for(2)) == sorted([invoice, connected_invoice])
    assert [b for b, _ in reports.wait_for(1)] == [report]
    (got_live,) = live.wait_for(1)
    assert got_live[0] == live_charge and _verified(got_live, OTHER_TEAM_SECRET)
    assert [b for b, _ in connected.wait_for(1)] == [connected_invoice]
    # every delivery of the four events is settled: nothing else arrives anywhere
    _wait(
        lambda: (
            all(
                r["status"] == "delivered"
                for r in _admin(stack, "GET", "/admin/webhooks/deliveries")["data"]
            )
            and len(_admin(stack, "GET", "/admin/webhooks/deliveries")["data"]) == 5
        ),
        "five deliveries",
    )
    assert (len(invoices.received), len(reports.received)) == (2, 1)
    assert (len(live.received), len(connected.received)) == (1, 1)


def test_an_event_for_a_cached_object_makes_the_next_retrieve_a_miss(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    client = stripe.StripeClient(BILLING_KEY, base_addresses={"api": url}, max_network_retries=0)
    first = client.v1.customers.retrieve("cus_1Nabcdefghij")
    second = client.v1.customers.retrieve("cus_1Nabcdefghij")
    assert first.last_response.headers["X-Cache"] == "MISS"
    assert second.last_response.headers["X-Cache"] == "HIT"
    assert _post(url, _event("customer.updated", object_id="cus_1Nabcdefghij")).status_code == 200
    third = client.v1.customers.retrieve("cus_1Nabcdefghij")
    assert third.last_response.headers["X-Cache"] == "MISS"
    assert stack.upstreams["api"].count("GET", "/v1/customers/cus_1Nabcdefghij") == 2


def test_a_wrong_method_on_the_source_path_is_a_stripe_shaped_405(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    response = requests.get(url + PATH, timeout=10)
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["Request-Id"].startswith("gwreq_")
    # other paths still go to the proxy, as before
    other = requests.get(url + "/webhooks/other", timeout=10)
    assert other.status_code == 404 and "error" in other.json()


def test_a_pending_delivery_survives_a_restart_on_the_same_file(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers(status=500)
    sub = _subscription(stack.tmp, team.url, retry_delays=[3600.0])
    webhooks = _plugin(stack.tmp, [sub])
    url = _start(stack, webhooks)
    body = _event()
    assert _post(url, body).status_code == 200
    team.wait_for(1)  # failed once; the retry is an hour away
    _wait(
        lambda: _metric(stack, "webhook_deliveries_total", subscription="billing", outcome="retry"),
        "the failed attempt to be recorded",
    )
    _stop_gateway(stack)
    team.status = 200
    webhooks["subscriptions"][0]["retry_delays"] = [0.05]
    # the stored retry time holds: replay it now instead of waiting an hour
    _start(stack, webhooks)
    event_id = json.loads(body)["id"]
    (row,) = _admin(stack, "GET", "/admin/webhooks/deliveries", event_id=event_id)["data"]
    assert row["status"] == "pending" and row["attempts"] == 1
    _admin(stack, "POST", "/admin/webhooks/replay", event_id=event_id, subscription="billing")
    received = team.wait_for(2)
    assert received[1][0] == body and _verified(received[1])


def test_a_delivery_pending_at_stop_is_sent_by_the_next_gateway(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    team = subscribers()
    webhooks = _plugin(stack.tmp, [_subscription(stack.tmp, team.url)])
    _start(stack, webhooks)
    _admin(stack, "POST", "/admin/webhooks/subscriptions/billing/pause")
    body = _event()
    assert _post(stack.gateway_url, body).status_code == 200
    _stop_gateway(stack)
    assert team.received == []
    _start(stack, webhooks)  # the pause is stored too: still paused
    _admin(stack, "POST", "/admin/webhooks/subscriptions/billing/resume")
    (received,) = team.wait_for(1)
    assert received[0] == body and _verified(received)


# --------------------------------------------------------------------------- kill -9


def test_an_event_acknowledged_just_before_kill_9_is_delivered_after_restart(
    tmp_path: Path,
    fake_api: tuple[Any, Served],
    subscribers: Callable[..., Subscriber],
) -> None:
    from tests.serving import GatewayConfigFile, serve_gateway

    team = subscribers()
    source = _secret_file(tmp_path, "source", SOURCE_SECRET)
    secret = _secret_file(tmp_path, "team", TEAM_SECRET)
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)

    def write(url: str) -> Path:
        return config.write(
            extra=f"""
            [plugins.webhooks]
            sqlite_path = "{tmp_path / "webhooks.sqlite3"}"
            poll_seconds = 0.2
            [[plugins.webhooks.sources]]
            name = "main"
            path = "{PATH}"
            secret_file = ["{source}"]
            [[plugins.webhooks.subscriptions]]
            name = "billing"
            team = "billing"
            url = "{url}"
            secret_file = "{secret}"
            timeout = 1.0
            jitter = 0.0
            retry_delays = {[0.2] * 50}
            """
        )

    body = _event()
    # the subscriber is down (nothing listens on that port) while the first gateway runs
    with serve_gateway(write(f"http://127.0.0.1:{free_port()}/hook")) as gw:
        response = _post(gw.url, body)
        assert response.status_code == 200, response.text
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
    assert team.received == []
    with serve_gateway(write(team.url)):
        (received,) = team.wait_for(1)
    assert received[0] == body and _verified(received).id == json.loads(body)["id"]


# --------------------------------------------------------------------------- the sandbox


def test_a_sandbox_report_run_reaches_the_team_and_keeps_the_cache_fresh(
    loop_thread: LoopThread, tmp_path: Path, subscribers: Callable[..., Subscriber]
) -> None:
    from gateway.app import create_app
    from gateway.serve.server import GatewayRunner
    from sandbox.app import Sandbox, create_sandbox_app
    from sandbox.core import SandboxSettings

    sandbox_key = "sk_test_sandbox_webhooks_000001"
    gateway_key = "gw_test_webhooks_sandbox_000001"
    sandbox = Sandbox(
        settings=SandboxSettings(
            report_delay=1.0, seed=99, webhook_backoff=0.05, webhook_backoff_max=0.2
        )
    )
    served = loop_thread.run(start_app(create_sandbox_app(sandbox)))
    sandbox.settings.files_base = served.url
    port = free_port()
    # Stripe's side: a webhook endpoint at the gateway's source path; its secret is the source's
    endpoint = requests.post(
        served.url + "/v1/webhook_endpoints",
        data={
            "url": f"http://127.0.0.1:{port}{PATH}",
            "enabled_events[]": "reporting.report_run.succeeded",
        },
        headers={"Authorization": f"Bearer {sandbox_key}"},
        timeout=10,
    ).json()
    team = subscribers()
    webhooks = _plugin(
        tmp_path,
        [_subscription(tmp_path, team.url, team="full", events=["reporting.report_run.*"])],
        secrets=(endpoint["secret"],),
    )
    config = parse_config(
        {
            "upstream": {u: served.url for u in ("api", "files", "connect", "meter_events")},
            "teams": [
                {
                    "name": "full",
                    "key_sha256": [digest(gateway_key)],
                    "upstream_key_env": "SANDBOX_KEY",
                }
            ],
            "plugins": {"audit": {"path": str(tmp_path / "audit.jsonl")}, "webhooks": webhooks},
        },
        environ={"SANDBOX_KEY": sandbox_key},
    )
    errors = (tmp_path / "errors.jsonl").open("ab", buffering=0)
    runner = GatewayRunner(create_app(config, error_stream=errors), access_log=None)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    loop_thread.run(start())
    try:
        url = f"http://127.0.0.1:{port}"
        client = stripe.StripeClient(
            gateway_key, base_addresses={"api": url, "files": url}, max_network_retries=0
        )
        run = client.v1.reporting.report_runs.create({"report_type": "payouts.itemized.3"})
        first = client.v1.reporting.report_runs.retrieve(run.id)
        second = client.v1.reporting.report_runs.retrieve(run.id)
        (received,) = team.wait_for(1)
        event = _verified(received)
        assert event.type == "reporting.report_run.succeeded"
        assert event.data.object.id == run.id
        fresh = client.v1.reporting.report_runs.retrieve(run.id)
        assert fresh.status == "succeeded"
        if second.status == "pending":  # cached before the event came: the event purged it
            assert second.last_response.headers["X-Cache"] == "HIT"
            assert first.last_response.headers["X-Cache"] == "MISS"
            assert fresh.last_response.headers["X-Cache"] == "MISS"
    finally:
        loop_thread.run(runner.cleanup())
        loop_thread.run(served.runner.cleanup())
        errors.close()


def test_a_team_limited_to_some_accounts_never_gets_another_accounts_events(
    stack: Stack, subscribers: Callable[..., Subscriber]
) -> None:
    # the analytics team may act on acct_allowed000001 only (and on the platform itself)
    analytics = subscribers()
    sub = _subscription(stack.tmp, analytics.url, name="analytics", team="analytics")
    url = _start(stack, _plugin(stack.tmp, [sub]))
    other = _event("invoice.paid", account="acct_victim0000001")
    allowed = _event("invoice.paid", account="acct_allowed000001")
    platform = _event("invoice.paid")
    for body in (other, allowed, platform):
        assert _post(url, body).status_code == 200
    assert sorted(b for b, _ in analytics.wait_for(2)) == sorted([allowed, platform])
    deliveries = _admin(stack, "GET", "/admin/webhooks/deliveries")["data"]
    assert len(deliveries) == 2
    # nor can a replay send it there
    other_id = json.loads(other)["id"]
    replay = requests.post(
        stack.admin_url + "/admin/webhooks/replay",
        data={"event_id": other_id, "subscription": "analytics"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert replay.status_code == 404
    assert len(analytics.received) == 2


def test_a_subscription_may_not_name_accounts_outside_its_teams(stack: Stack) -> None:
    sub = _subscription(
        stack.tmp, "http://127.0.0.1:9/hook", team="analytics", accounts=["acct_victim0000001"]
    )
    with pytest.raises(ConfigError, match=r"subscriptions\.0\.accounts"):
        _start(stack, _plugin(stack.tmp, [sub]))
