"""The audit plugin: one JSON line per request with everything an operator needs."""

from __future__ import annotations

import requests
import stripe

from tests.helpers import ANALYTICS_KEY, BILLING_KEY, Stack


def test_one_line_per_request_with_the_documented_fields(gateway: Stack) -> None:
    client = stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": gateway.gateway_url}, max_network_retries=0
    )
    client.v1.tax.calculations.retrieve(
        "taxcalc_1Nabcdefghijk", options={"stripe_account": "acct_1Nabcdefghijk"}
    )
    client.v1.customers.create({"email": "x@example.com"}, options={"idempotency_key": "idem-1"})
    lines = gateway.audit_lines(2)
    assert len(lines) == 2
    first, second = lines
    assert first["event"] == "request"
    assert first["timestamp"].endswith("Z")
    assert first["request_id"].startswith("gwreq_")
    assert first["team"] == "billing"
    assert first["method"] == "GET"
    assert first["path"] == "/v1/tax/calculations/taxcalc_1Nabcdefghijk"
    assert first["object_id"] == "taxcalc_1Nabcdefghijk"
    assert first["stripe_account"] == "acct_1Nabcdefghijk"
    assert first["livemode"] is False
    assert first["status"] == 200
    assert first["upstream"] == "api"
    assert first["upstream_request_id"].startswith("req_fake")
    assert first["duration_ms"] >= first["upstream_ms"] > 0
    assert first["bytes_in"] == 0 and first["bytes_out"] > 0
    assert first["client"] == "127.0.0.1"
    assert first["cache"] == "MISS" and first["rate_limit"] is None and first["error"] is None
    assert second["method"] == "POST" and second["object_id"] is None
    # the key sent to Stripe (namespaced per team by the idempotency plugin) and the client's
    assert second["idempotency_key"] == "billing:idem-1"
    assert second["idempotency_key_client"] == "idem-1"
    assert second["bytes_in"] == len("email=x%40example.com")


def test_refused_requests_are_audited_too(gateway: Stack) -> None:
    requests.get(f"{gateway.gateway_url}/v1/customers", timeout=5)
    requests.post(f"{gateway.gateway_url}/v1/customers", auth=(ANALYTICS_KEY, ""), timeout=5)
    no_key, refused = gateway.audit_lines(2)
    assert no_key["status"] == 401 and no_key["team"] is None and no_key["error"] == "refused"
    assert refused["status"] == 403 and refused["team"] == "analytics"
    assert refused["upstream_ms"] is None


def test_no_query_string_or_authorization_in_the_line(gateway: Stack) -> None:
    requests.get(
        f"{gateway.gateway_url}/v1/customers?email=secret%40example.com",
        auth=(BILLING_KEY, ""),
        timeout=5,
    )
    text = gateway.audit_path.read_text() if gateway.audit_lines(1) else ""
    assert "secret" not in text and "Authorization" not in text and "Bearer" not in text


def test_audit_sink_failure_fails_closed(stack: Stack) -> None:
    stack.start_gateway(plugins={"audit": {"path": "/dev/full"}})
    first = requests.get(f"{stack.gateway_url}/v1/customers", auth=(BILLING_KEY, ""), timeout=5)
    assert first.status_code == 200  # already answered when its line failed
    second = requests.get(f"{stack.gateway_url}/v1/customers", auth=(BILLING_KEY, ""), timeout=5)
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "audit_unavailable"
    assert second.headers["Stripe-Should-Retry"] == "true"
    assert len(stack.upstreams["api"].received) == 1
    # the records that could not be written went to the error log instead: the first
    # request's (200), then the refused one's (503), written just after its answer
    failed = stack.error_events("audit_write_failed", at_least=2)
    assert [record["status"] for record in failed] == [200, 503]
    assert all(record["level"] == "error" and record["reason"] for record in failed)
