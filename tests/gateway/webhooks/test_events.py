"""The Stripe-Signature scheme and event parsing of the webhooks plugin, against the SDK."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.webhooks.events import Rejected, describe, sign, verify

SECRET = "whsec_source_secret_0000000000000001"
OLD_SECRET = "whsec_source_secret_old_00000000001"


# --------------------------------------------------------------------------- signatures


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=512), flip=st.integers(min_value=0))
def test_verify_accepts_what_sign_signs_and_nothing_tampered(payload: bytes, flip: int) -> None:
    now = int(time.time())
    header = sign(payload, SECRET, now)
    assert verify(payload, header, (SECRET,), 300, now) is None
    assert verify(payload, header, ("whsec_other",), 300, now) == "bad_signature"
    if payload:
        i = flip % len(payload)
        tampered = payload[:i] + bytes([payload[i] ^ 1]) + payload[i + 1 :]
        assert verify(tampered, header, (SECRET,), 300, now) == "bad_signature"
    assert verify(payload, header, (SECRET,), 300, now + 301) == "stale"


def test_verify_takes_any_v1_under_any_secret_and_ignores_other_schemes() -> None:
    now = int(time.time())
    body = b'{"id": "evt_1"}'
    good = hmac.new(SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    header = f"t={now},v1={'0' * 64},v0=ignored,v1={good}"
    assert verify(body, header, (OLD_SECRET, SECRET), 300, now) is None
    assert verify(body, f"t={now},v0={good}", (SECRET,), 300, now) == "no_signature"
    assert verify(body, f"v1={good}", (SECRET,), 300, now) == "no_signature"
    assert verify(body, "", (SECRET,), 300, now) == "no_signature"
    assert verify(body, f"t=x{now},v1={good}", (SECRET,), 300, now) == "bad_signature"


def test_stock_sdk_verifies_what_sign_signs() -> None:
    body = json.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid"}).encode()
    header = sign(body, SECRET, int(time.time()))
    assert stripe.Webhook.construct_event(body.decode(), header, SECRET).type == "invoice.paid"


def test_describe_reads_snapshot_and_thin_events_and_refuses_the_rest() -> None:
    snapshot = describe(
        "main",
        json.dumps(
            {
                "id": "evt_1",
                "object": "event",
                "type": "customer.updated",
                "livemode": True,
                "account": "acct_1",
                "data": {"object": {"id": "cus_1", "object": "customer"}},
            }
        ).encode(),
    )
    assert (snapshot.object_id, snapshot.account, snapshot.livemode) == ("cus_1", "acct_1", True)
    thin = describe(
        "main",
        json.dumps(
            {
                "id": "evt_2",
                "object": "v2.core.event",
                "type": "v1.billing.meter.error_report_triggered",
                "livemode": False,
                "context": "acct_2",
                "related_object": {"id": "mtr_1", "type": "billing.meter"},
            }
        ).encode(),
    )
    assert (thin.object_id, thin.account, thin.livemode) == ("mtr_1", "acct_2", False)
    for bad in (b"[]", b"not json", b'{"id": "evt_3", "object": "customer", "type": "x"}'):
        with pytest.raises(Rejected):
            describe("main", bad)
