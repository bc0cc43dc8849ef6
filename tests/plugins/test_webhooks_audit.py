"""The webhooks plugin's audit lines (``gateway_audit_event``): one ``webhook_received`` line
per request to a source and one ``webhook_delivery`` line per delivery attempt, in the
audit plugin's file, redacted like every line; never a secret or a signature."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import requests

from sandbox.delivery import signature_header
from tests.helpers import Stack, WebhookReceiver
from tests.plugins.test_webhooks import (
    DEADLINE,
    PATH,
    SOURCE_SECRET,
    TEAM_SECRET,
    _event,
    _plugin,
    _post,
    _start,
    _subscription,
)


def _lines(stack: Stack, event: str, count: int) -> list[dict[str, Any]]:
    """The audit file's lines named ``event``, once there are ``count`` of them."""
    deadline = time.monotonic() + DEADLINE
    while True:
        found = [line for line in stack.audit_lines(0, 0) if line.get("event") == event]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} {event} lines, expected {count}"
        time.sleep(0.02)


def test_each_event_received_and_each_delivery_attempt_is_one_audit_line(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver]
) -> None:
    team = webhook_receivers(plan=[500])
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event("invoice.paid", account="acct_1Connected0001")
    event_id = json.loads(body)["id"]
    response = _post(url, body)
    assert response.status_code == 200
    team.wait_for(2)
    (received,) = _lines(stack, "webhook_received", 1)
    assert received["request_id"] == response.headers["Request-Id"]
    assert received["event_id"] == event_id and received["type"] == "invoice.paid"
    assert received["source"] == "main" and received["account"] == "acct_1Connected0001"
    assert received["livemode"] is False and received["outcome"] == "accepted"
    assert received["deliveries"] == 1 and received["status"] == 200
    assert received["duration_ms"] >= 0 and "timestamp" in received
    first, second = _lines(stack, "webhook_delivery", 2)
    assert (first["attempt"], first["status"], first["error"], first["outcome"]) == (
        1,
        500,
        "HTTP 500",
        "retry",
    )
    assert (second["attempt"], second["status"], second["error"], second["outcome"]) == (
        2,
        200,
        None,
        "delivered",
    )
    for line in (first, second):
        assert line["subscription"] == "billing" and line["team"] == "billing"
        assert line["event_id"] == event_id and line["duration_ms"] >= 0
    # Stripe sends it again: acknowledged, one more line, nothing delivered again
    assert _post(url, body).json()["duplicate"] is True
    again = _lines(stack, "webhook_received", 2)[1]
    assert again["outcome"] == "duplicate" and again["deliveries"] == 0
    assert again["event_id"] == event_id


def test_a_rejected_request_is_an_audit_line_with_its_reason(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver]
) -> None:
    team = webhook_receivers()
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    body = _event()
    assert _post(url, body, secret="whsec_not_the_source_secret").status_code == 400
    assert _post(url, body, timestamp=int(time.time()) - 3600).status_code == 400
    assert _post(url, b'{"object": "customer", "id": "cus_1"}').status_code == 400
    lines = _lines(stack, "webhook_received", 3)
    assert [(x["outcome"], x["reason"], x["status"]) for x in lines] == [
        ("rejected", "bad_signature", 400),
        ("rejected", "stale", 400),
        ("rejected", "invalid_event", 400),
    ]
    # nothing about an unverified body is taken for true
    assert all(x["event_id"] is None and x["type"] is None for x in lines)
    assert _lines(stack, "webhook_delivery", 0) == []


def test_no_secret_card_number_or_signature_reaches_the_audit_lines(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver]
) -> None:
    """A signed event whose fields carry a key and a card number, its body full of card
    data and secrets, and an unsigned one with more: the lines name the event, masked."""
    team = webhook_receivers(plan=[500])
    url = _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, team.url)]))
    live_key = "sk_live_51HadversarialKey0000000000000000001"
    card = "4242424242424242"
    event = json.loads(_event("charge.succeeded", object_id="ch_1Nadversarial"))
    event["account"] = live_key  # a hostile value in a field the line carries
    event["type"] = f"charge.succeeded {card}"
    event["data"]["object"].update(
        {
            "payment_method_details": {"card": {"number": card, "cvc": "123"}},
            "client_secret": "pi_1Nadversarial_secret_abcdefghijklmnop",
            "metadata": {"api_key": live_key, "webhook_secret": TEAM_SECRET},
        }
    )
    body = json.dumps(event).encode()
    now = int(time.time())
    header = signature_header(body, SOURCE_SECRET, now)
    response = requests.post(
        url + PATH,
        data=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    # an unsigned body with the source's secret and a card number in it, and in the header
    forged = body.replace(b"charge.succeeded", f"charge.succeeded {SOURCE_SECRET}".encode())
    forged_header = f"t={now},v1={card},v1={SOURCE_SECRET}"
    rejected = requests.post(
        url + PATH,
        data=forged,
        headers={"Stripe-Signature": forged_header, "Content-Type": "application/json"},
        timeout=10,
    )
    assert rejected.status_code == 400
    received = team.wait_for(2)
    accepted, refused = _lines(stack, "webhook_received", 2)
    _lines(stack, "webhook_delivery", 2)
    text = stack.audit_path.read_text()
    signatures = [header.split("v1=")[1]] + [h.split("v1=")[1] for _, h in received]
    for secret in (live_key, card, SOURCE_SECRET, TEAM_SECRET, "secret_abcdefghijklmnop",
                   *signatures):  # fmt: skip
        assert secret not in text, secret
    assert "Stripe-Signature" not in text and '"cvc"' not in text
    # the event is still named: masked, keeping what Stripe's own dashboard shows
    assert accepted["outcome"] == "accepted"
    assert accepted["account"].startswith("sk_live_") and accepted["account"].endswith("0001")
    assert accepted["type"].startswith("charge.succeeded") and "4242" in accepted["type"]
    assert refused["outcome"] == "rejected" and refused["reason"] == "bad_signature"
