"""Events, GET /v1/events and signed webhook delivery, with the official SDK and a real receiver."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import stripe

from sandbox.core import SandboxSettings
from sandbox.delivery import signature_header
from tests.helpers import WebhookReceiver
from tests.sandbox.conftest import SandboxStack

#: the attempts each delivery gets in these tests
ATTEMPTS = 3
#: a deadline for anything these tests wait on (slack for a busy CI machine)
DEADLINE = 30.0


@pytest.fixture
def sandbox_settings() -> SandboxSettings:
    return SandboxSettings(
        report_delay=0.2,
        seed=1234,
        webhook_attempts=ATTEMPTS,
        webhook_backoff=0.02,
        webhook_backoff_max=0.1,
        webhook_timeout=5.0,
    )


Receiver = WebhookReceiver


@pytest.fixture
def receivers(
    webhook_receivers: Callable[..., WebhookReceiver],
) -> Callable[..., WebhookReceiver]:
    return webhook_receivers


def _until(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` until it returns something truthy (generous deadline, no fixed sleep)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _endpoint(client: stripe.StripeClient, url: str, events: list[str]) -> tuple[str, str]:
    endpoint = client.v1.webhook_endpoints.create({"url": url, "enabled_events": events})
    assert endpoint.secret is not None
    return endpoint.id, endpoint.secret


def _settled(client: stripe.StripeClient) -> bool:
    """Every event's deliveries are over (delivered or given up)."""
    return all(e.pending_webhooks == 0 for e in client.v1.events.list({"limit": 100}).data)


def test_report_run_succeeded_is_delivered_signed_and_listed(
    sandbox_stack: SandboxStack, receivers: Callable[..., Receiver]
) -> None:
    client = sandbox_stack.sdk(direct=True)
    receiver = receivers()
    _, secret = _endpoint(client, receiver.url, ["reporting.report_run.succeeded"])
    run = client.v1.reporting.report_runs.create({"report_type": "payouts.itemized.3"})
    assert run.status == "pending"

    # nobody reads the run: the transition happens on time and is delivered
    body, header = receiver.wait_for(1)[0]
    event = stripe.Webhook.construct_event(body.decode(), header, secret)
    assert event.type == "reporting.report_run.succeeded"
    assert event.id.startswith("evt_") and event.object == "event"
    assert event.livemode is False and event.api_version
    assert event.data.object.id == run.id
    assert event.data.object.status == "succeeded"
    assert event.data.object.result.object == "file"
    assert event.request is not None and event.request.id is None  # automatic
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), header, "whsec_not_the_secret")

    listed = client.v1.events.list({"type": "reporting.report_run.succeeded"})
    assert [e.id for e in listed.data] == [event.id]
    assert listed.data[0].data.object.to_dict() == event.data.object.to_dict()
    fetched = _until(
        lambda: (e := client.v1.events.retrieve(event.id)).pending_webhooks == 0 and e,
        "pending_webhooks to reach 0",
    )
    assert fetched.data.object.id == run.id


def test_failing_endpoint_is_retried_until_attempts_run_out(
    sandbox_stack: SandboxStack, receivers: Callable[..., Receiver]
) -> None:
    client = sandbox_stack.sdk(direct=True)
    failing = receivers(status=500)
    _, secret = _endpoint(client, failing.url, ["tax.settings.updated"])
    client.v1.tax.settings.update({"defaults": {"tax_behavior": "exclusive"}})

    deliveries = failing.wait_for(ATTEMPTS)
    bodies = {body for body, _ in deliveries}
    assert len(bodies) == 1  # the same event each time, each attempt signed
    for body, header in deliveries:
        assert stripe.Webhook.construct_event(body.decode(), header, secret).type == (
            "tax.settings.updated"
        )
    event = client.v1.events.list({"type": "tax.settings.updated"}).data[0]
    _until(lambda: client.v1.events.retrieve(event.id).pending_webhooks == 0, "give-up")
    assert len(failing.received) == ATTEMPTS  # no attempt after the last
    previous = event.data.previous_attributes
    assert previous is not None and previous["defaults"]["tax_behavior"] != "exclusive"


def test_an_endpoints_api_version_is_applied_to_the_events_delivered_to_it(
    sandbox_stack: SandboxStack, receivers: Callable[..., Receiver]
) -> None:
    """An endpoint created with an ``api_version`` gets events of that version; one without
    gets the account's default, which is also what ``GET /v1/events`` shows."""
    client = sandbox_stack.sdk(direct=True)
    pinned, plain = receivers(), receivers()
    pinned_endpoint = client.v1.webhook_endpoints.create(
        {
            "url": pinned.url,
            "enabled_events": ["tax.settings.updated"],
            "api_version": "2024-09-30.acacia",
        }
    )
    assert pinned_endpoint.api_version == "2024-09-30.acacia"
    assert pinned_endpoint.secret is not None
    _, plain_secret = _endpoint(client, plain.url, ["*"])
    client.v1.tax.settings.update({"defaults": {"tax_behavior": "inclusive"}})

    body, header = pinned.wait_for(1)[0]
    pinned_event = stripe.Webhook.construct_event(body.decode(), header, pinned_endpoint.secret)
    body, header = plain.wait_for(1)[0]
    plain_event = stripe.Webhook.construct_event(body.decode(), header, plain_secret)
    default = sandbox_stack.sandbox.settings.api_version
    assert default != "2024-09-30.acacia"
    assert pinned_event.id == plain_event.id and pinned_event.type == "tax.settings.updated"
    assert pinned_event.api_version == "2024-09-30.acacia"
    assert plain_event.api_version == default
    assert client.v1.events.retrieve(plain_event.id).api_version == default
    # the version is the only difference between the two deliveries
    assert {**pinned_event.to_dict(), "api_version": default} == plain_event.to_dict()


def test_enabled_events_filter_and_disabled_endpoint_gets_nothing(
    sandbox_stack: SandboxStack, receivers: Callable[..., Receiver]
) -> None:
    client = sandbox_stack.sdk(direct=True)
    everything, identity_only, disabled = receivers(), receivers(), receivers()
    _endpoint(client, everything.url, ["*"])
    _endpoint(client, identity_only.url, ["identity.verification_session.created"])
    off, _ = _endpoint(client, disabled.url, ["*"])
    client.v1.webhook_endpoints.update(off, {"disabled": True})

    session = client.v1.identity.verification_sessions.create({"type": "document"})
    client.v1.tax.settings.update({"defaults": {"tax_behavior": "inclusive"}})

    got = {e["type"]: e for e in (json.loads(b) for b, _ in everything.wait_for(2))}
    assert set(got) == {"identity.verification_session.created", "tax.settings.updated"}
    only = json.loads(identity_only.wait_for(1)[0][0])
    assert only["data"]["object"]["id"] == session.id
    # pending_webhooks counts the enabled endpoints that want the event, not the disabled one
    assert got["identity.verification_session.created"]["pending_webhooks"] == 2
    assert got["tax.settings.updated"]["pending_webhooks"] == 1
    _until(lambda: _settled(client), "every delivery to finish")
    assert disabled.received == []
    assert len(identity_only.received) == 1


def test_event_names_the_request_and_idempotency_key(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk(direct=True)
    session = client.v1.identity.verification_sessions.create(
        {"type": "id_number"}, {"idempotency_key": "idem-events-1"}
    )
    event = client.v1.events.list({"type": "identity.verification_session.created"}).data[0]
    assert event.data.object.id == session.id
    assert event.request is not None
    assert event.request.idempotency_key == "idem-events-1"
    assert event.request.id == session.last_response.request_id
    assert event.pending_webhooks == 0  # no endpoint


def test_events_list_pagination_and_filters(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk(direct=True)
    for _ in range(3):
        client.v1.identity.verification_sessions.create({"type": "document"})
    client.v1.tax.settings.update({"defaults": {"tax_behavior": "inclusive"}})
    everything = client.v1.events.list({"limit": 100}).data
    assert len(everything) == 4
    assert everything[0].type == "tax.settings.updated"  # newest first

    first = client.v1.events.list({"limit": 2})
    assert first.has_more and [e.id for e in first.data] == [e.id for e in everything[:2]]
    rest = client.v1.events.list({"limit": 2, "starting_after": first.data[-1].id})
    assert [e.id for e in rest.data] == [e.id for e in everything[2:]] and not rest.has_more
    back = client.v1.events.list({"limit": 2, "ending_before": rest.data[0].id})
    assert [e.id for e in back.data] == [e.id for e in everything[:2]]

    by_types = client.v1.events.list({"types": ["tax.settings.updated", "file.created"]})
    assert [e.type for e in by_types.data] == ["tax.settings.updated"]
    wildcard = client.v1.events.list({"type": "identity.verification_session.*"})
    assert len(wildcard.data) == 3
    created = everything[0].created
    assert len(client.v1.events.list({"created": {"gt": created}}).data) == 0
    assert len(client.v1.events.list({"created": {"lte": created}, "limit": 100}).data) == 4

    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.events.retrieve("evt_missing")
    assert info.value.http_status == 404
    other = sandbox_stack.sdk("sk_test_sandbox_other_000000001", direct=True)
    assert other.v1.events.list().data == []  # events are per account


def test_identity_control_routes_emit_the_life_cycle(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk(direct=True)
    verified = client.v1.identity.verification_sessions.create({"type": "document"})
    answer = sandbox_stack.raw(
        "POST", f"/v1/sandbox/identity/verification_sessions/{verified.id}/submit"
    )
    assert answer.status_code == 200 and answer.json()["status"] == "processing"

    def types() -> list[str]:
        listed = client.v1.events.list({"type": "identity.verification_session.*", "limit": 100})
        return [e.type.rsplit(".", 1)[1] for e in reversed(listed.data)]

    # the checks finish on time without anyone reading the session
    _until(lambda: "verified" in types(), "the verified event")
    assert types() == ["created", "processing", "verified"]

    failed = client.v1.identity.verification_sessions.create({"type": "document"})
    answer = sandbox_stack.raw(
        "POST", f"/v1/sandbox/identity/verification_sessions/{failed.id}/fail"
    )
    assert answer.json()["status"] == "requires_input" and answer.json()["last_error"]
    assert types()[-3:] == ["created", "processing", "requires_input"]
    last = client.v1.events.list({"limit": 1}).data[0]
    assert last.data.previous_attributes is not None
    assert last.data.previous_attributes["status"] == "processing"


def test_trigger_and_onramp_progress(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk(direct=True)
    run = client.v1.reporting.report_runs.create({"report_type": "payouts.itemized.3"})
    answer = sandbox_stack.raw(
        "POST",
        "/v1/sandbox/trigger",
        data={"type": "reporting.report_run.failed", "object": run.id},
    )
    assert answer.status_code == 200
    event = answer.json()
    assert event["type"] == "reporting.report_run.failed"
    assert event["data"]["object"]["id"] == run.id
    assert client.v1.events.retrieve(event["id"]).type == "reporting.report_run.failed"
    bad = sandbox_stack.raw("POST", "/v1/sandbox/trigger", data={"type": "charge.succeeded"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "type"

    session = sandbox_stack.raw(
        "POST",
        "/v1/crypto/onramp_sessions",
        data={"customer_ip_address": "8.8.8.8"},
    ).json()
    assert session["status"] == "initialized", session
    steps = []
    for _ in range(3):
        answer = sandbox_stack.raw(
            "POST", f"/v1/sandbox/crypto/onramp_sessions/{session['id']}/progress"
        )
        assert answer.status_code == 200, answer.text
        steps.append(answer.json()["status"])
    assert steps == ["requires_payment", "fulfillment_processing", "fulfillment_complete"]
    updates = client.v1.events.list({"type": "crypto.onramp_session_updated"}).data
    assert [e.data.object.status for e in reversed(updates)] == steps
    assert updates[0].data.object.transaction_details.transaction_id


def test_signature_header_is_what_the_sdk_computes() -> None:
    payload = b'{"id": "evt_1", "object": "event"}'
    header = signature_header(payload, "whsec_abc", 1_700_000_000)
    expected = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), "whsec_abc", timestamp=1_700_000_000
    )
    assert header == expected


def test_financial_connections_completion_and_refresh_events(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk(direct=True)
    session = client.v1.financial_connections.sessions.create(
        {
            "account_holder": {"type": "customer", "customer": "cus_events"},
            "permissions": ["balances"],
            "filters": {"account_subcategories": ["checking"]},
        }
    )
    answer = sandbox_stack.raw(
        "POST",
        f"/v1/sandbox/financial_connections/sessions/{session.id}/complete",
        data={"account_subcategories[]": "savings"},
    )
    assert answer.status_code == 200, answer.text
    linked = [a["id"] for a in answer.json()["accounts"]["data"]]
    assert len(linked) == 2
    created = client.v1.events.list({"type": "financial_connections.account.created"}).data
    assert sorted(e.data.object.id for e in created) == sorted(linked)

    client.v1.financial_connections.accounts.refresh(linked[1], {"features": ["balance"]})
    refreshed = _until(
        lambda: (
            client.v1.events.list({"type": "financial_connections.account.refreshed_balance"}).data
        ),
        "the refreshed_balance event",
    )
    assert refreshed[0].data.object.id == linked[1]
    assert refreshed[0].data.object.balance_refresh.status == "succeeded"


def test_every_state_change_emits_stripes_event(sandbox_stack: SandboxStack) -> None:
    """The state changes not driven by the control routes (those have their own tests above):
    each makes its event, with the object as the API shows it and, for an update, the
    changed fields' former values."""
    client = sandbox_stack.sdk(direct=True)

    def event(event_type: str, object_id: str) -> Any:
        def find() -> Any:
            listed = client.v1.events.list({"type": event_type, "limit": 100}).data
            return next((e for e in listed if e.data.object.id == object_id), None)

        return _until(find, event_type)

    product = client.v1.climate.products.list().data[0].id
    delivered = client.v1.climate.orders.create({"product": product, "amount": 10_000})
    assert event("climate.order.created", delivered.id).data.object.status == "confirmed"
    delivery = event("climate.order.delivered", delivered.id)  # on time, by itself
    assert delivery.data.object.status == "delivered"
    assert delivery.data.previous_attributes["status"] == "confirmed"
    sandbox_stack.sandbox.settings.report_delay = 3600.0  # not delivered before the cancel
    canceled = client.v1.climate.orders.create({"product": product, "amount": 10_000})
    client.v1.climate.orders.cancel(canceled.id)
    sandbox_stack.sandbox.settings.report_delay = 0.2
    cancel = event("climate.order.canceled", canceled.id)
    assert cancel.data.object.status == "canceled"
    assert cancel.data.previous_attributes["status"] == "confirmed"

    upload = io.BytesIO(b"%PDF-1.4 evidence")
    upload.name = "evidence.pdf"
    file = client.v1.files.create({"purpose": "dispute_evidence", "file": upload})
    assert event("file.created", file.id).data.object.size == file.size

    fca = (
        client.v1.financial_connections.sessions.create(
            {
                "account_holder": {"type": "customer", "customer": "cus_events_all"},
                "permissions": ["balances", "ownership", "transactions"],
            }
        )
        .accounts.data[0]
        .id
    )
    client.v1.financial_connections.accounts.refresh(
        fca, {"features": ["ownership", "transactions"]}
    )
    event("financial_connections.account.refreshed_ownership", fca)
    event("financial_connections.account.refreshed_transactions", fca)
    client.v1.financial_connections.accounts.disconnect(fca)
    disconnect = event("financial_connections.account.disconnected", fca)
    assert disconnect.data.object.status == "disconnected"
    assert disconnect.data.previous_attributes["status"] == "active"

    session = client.v1.identity.verification_sessions.create({"type": "document"})
    client.v1.identity.verification_sessions.cancel(session.id)
    cancel = event("identity.verification_session.canceled", session.id)
    assert cancel.data.previous_attributes["status"] == "requires_input"
    erased = client.v1.identity.verification_sessions.create({"type": "document"})
    client.v1.identity.verification_sessions.redact(erased.id)
    redacted = event("identity.verification_session.redacted", erased.id)
    assert redacted.data.object.redaction.status == "redacted"


def test_stripe_has_no_test_helpers_for_the_sandboxs_families() -> None:
    """Life cycles are driven by /v1/sandbox/ control routes because the SDK (Stripe's API)
    has no test_helpers routes for these resources."""
    from stripe._test_helpers_service import _subservices

    families = {
        "climate",
        "crypto",
        "files",
        "file_links",
        "financial_connections",
        "forwarding",
        "identity",
        "reporting",
        "sigma",
        "tax",
        "webhook_endpoints",
        "events",
    }
    assert "test_clocks" in _subservices  # the SDK's list is the one read
    assert not families & set(_subservices)


def test_every_emitted_event_type_is_one_stripe_publishes() -> None:
    from sandbox.event_types import EVENT_TYPES
    from sandbox.events import EMITTED_EVENT_TYPES

    # crypto.onramp_session_updated is Stripe's, but not in the SDK's enabled_events enum
    assert set(EMITTED_EVENT_TYPES) - EVENT_TYPES <= {"crypto.onramp_session_updated"}
