"""Forwarding requests in the sandbox, through the gateway with the official SDK."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import stripe

from sandbox.core import Account
from tests.sandbox.conftest import SANDBOX_KEY, SandboxStack
from tests.sandbox.fidelity import assert_stripe_fields

URL = "https://endpoint-url/v1/payments"
BODY = {
    "amount": {"value": 1000, "currency": "usd"},
    "paymentMethod": {
        "number": "",
        "expiryMonth": "",
        "expiryYear": "",
        "cvc": "",
        "holderName": "",
    },
    "reference": "{{REFERENCE_ID}}",
}
ALL = ["card_number", "card_expiry", "card_cvc", "cardholder_name"]


def _params(**extra: Any) -> Any:
    return {
        "payment_method": "pm_card_visa",
        "url": URL,
        "replacements": ALL,
        "request": {
            "body": json.dumps(BODY),
            "headers": [
                {"name": "Destination-API-Key", "value": "{{DESTINATION_API_KEY}}"},
                {"name": "Destination-Idempotency-Key", "value": "{{IDEMPOTENCY_KEY}}"},
            ],
        },
        **extra,
    }


def _error(call: Any) -> stripe.InvalidRequestError:
    with pytest.raises(stripe.InvalidRequestError) as info:
        call()
    return info.value


def test_create_records_a_redacted_request_without_calling_the_url(
    sandbox_stack: SandboxStack,
) -> None:
    client = sandbox_stack.sdk()
    fwd = client.v1.forwarding.requests.create(_params(metadata={"order": "1"}))
    assert fwd.id.startswith("fwdreq_") and fwd.object == "forwarding.request"
    assert fwd.payment_method == "pm_card_visa" and fwd.url == URL
    assert list(fwd.replacements) == ALL
    assert_stripe_fields(fwd)
    assert fwd.metadata.to_dict() == {"order": "1"}
    assert client.v1.forwarding.requests.retrieve(fwd.id).metadata.to_dict() == {"order": "1"}
    details = fwd.request_details
    assert details.http_method == "POST"
    sent = json.loads(details.body)
    assert sent["paymentMethod"] == {
        "number": "************4242",
        "expiryMonth": "12",
        "expiryYear": "2034",
        "cvc": "***",
        "holderName": "",
    }
    assert sent["amount"] == BODY["amount"] and sent["reference"] == "{{REFERENCE_ID}}"
    assert [h.to_dict() for h in details.headers] == [
        {"name": "Destination-API-Key", "value": "{{DESTINATION_API_KEY}}"},
        {"name": "Destination-Idempotency-Key", "value": "{{IDEMPOTENCY_KEY}}"},
        {"name": "Content-Type", "value": "application/json"},
    ]
    response = fwd.response_details
    assert response.status == 200
    assert json.loads(response.body)["status"] == "succeeded"
    assert response.headers[0].to_dict() == {
        "name": "Content-Type",
        "value": "application/json;charset=UTF-8",
    }
    context = fwd.request_context
    assert 80 <= context.destination_duration <= 400
    assert context.destination_ip_address.count(".") == 3
    got = client.v1.forwarding.requests.retrieve(fwd.id)
    assert got.to_dict() == fwd.to_dict()
    assert_stripe_fields(got)


def test_only_the_requested_fields_are_replaced(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    body = {"card": {"card_number": "", "cvv": "", "exp_month": "", "name": "kept"}}
    fwd = client.v1.forwarding.requests.create(
        {
            "payment_method": "pm_card_amex",
            "url": URL,
            "replacements": ["card_number", "card_cvc"],
            "request": {"body": json.dumps(body)},
        }
    )
    assert json.loads(fwd.request_details.body) == {
        "card": {"card_number": "***********0005", "cvv": "****", "exp_month": "", "name": "kept"}
    }
    # a form body is filled in the same way; an account's own card is used when it has one
    account: Account = sandbox_stack.sandbox.accounts[f"{SANDBOX_KEY}|"]
    account.add(
        {
            "id": "pm_saved",
            "object": "payment_method",
            "type": "card",
            "card": {"brand": "mastercard", "last4": "4444", "exp_month": 3, "exp_year": 2031},
            "billing_details": {"name": "First Last"},
        },
        "payment_method",
    )
    form = client.v1.forwarding.requests.create(
        {
            "payment_method": "pm_saved",
            "url": URL,
            "replacements": ["card_number", "card_expiry", "cardholder_name"],
            "request": {"body": "amount=100&card[number]=&card[exp_month]=&card[holder_name]="},
        }
    )
    assert form.request_details.body == (
        "amount=100&card[number]=************4444&card[exp_month]=03&card[holder_name]=First+Last"
    )
    assert form.request_details.headers[-1].value == "application/x-www-form-urlencoded"


def test_list_filters_by_created_and_paginates(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    made = [client.v1.forwarding.requests.create(_params()).id for _ in range(12)]
    newest_first = list(reversed(made))
    first = client.v1.forwarding.requests.list()
    assert [r.id for r in first.data] == newest_first[:10] and first.has_more is True
    rest = client.v1.forwarding.requests.list({"starting_after": first.data[-1].id})
    assert [r.id for r in rest.data] == newest_first[10:] and rest.has_more is False
    back = client.v1.forwarding.requests.list({"ending_before": rest.data[0].id, "limit": 4})
    assert [r.id for r in back.data] == newest_first[6:10]
    walked = client.v1.forwarding.requests.list({"limit": 5}).auto_paging_iter()
    assert [r.id for r in walked] == newest_first
    # created filters; move two requests into the past to tell them apart
    table = sandbox_stack.sandbox.accounts[f"{SANDBOX_KEY}|"].table("forwarding.request")
    past = int(time.time()) - 3600
    table[made[0]]["created"] = past
    table[made[1]]["created"] = past + 10
    old = client.v1.forwarding.requests.list({"created": {"lt": past + 60}})
    assert [r.id for r in old.data] == [made[1], made[0]]
    exact = client.v1.forwarding.requests.list({"created": {"gte": past + 10, "lte": past + 10}})
    assert [r.id for r in exact.data] == [made[1]]
    recent = client.v1.forwarding.requests.list({"created": {"gt": past + 60}, "limit": 100})
    assert len(recent.data) == 10
    err = _error(lambda: client.v1.forwarding.requests.list({"created": {"gt": "soon"}}))  # type: ignore[typeddict-item]
    assert err.code == "parameter_invalid_integer" and err.param == "created[gt]"
    err = _error(lambda: client.v1.forwarding.requests.list({"limit": 101}))
    assert err.code == "parameter_invalid_integer"


def test_create_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        (_params(payment_method=None), "payment_method", "parameter_missing"),
        (_params(url=None), "url", "parameter_missing"),
        (_params(replacements=None), "replacements", "parameter_missing"),
        (_params(request=None), "request", "parameter_missing"),
        (_params(payment_method="pm_nope"), "payment_method", "resource_missing"),
        (_params(payment_method="card_123"), "payment_method", "resource_missing"),
        (_params(url="http://endpoint-url/v1"), "url", "url_invalid"),
        (_params(replacements=["card_pin"]), "replacements[0]", None),
        (_params(request={"body": "{}", "method": "GET"}), "request[method]", "parameter_unknown"),
        (_params(request={"headers": [{"name": "X"}]}), "request[headers][0][value]",
         "parameter_missing"),
        (_params(bogus="1"), "bogus", "parameter_unknown"),
    ]  # fmt: skip
    for params, param, code in cases:
        given = {k: v for k, v in params.items() if v is not None}
        err = _error(lambda p=given: client.v1.forwarding.requests.create(p))  # type: ignore[misc]
        assert err.http_status == 400, params
        assert (err.param, err.code) == (param, code), params
    err = _error(lambda: client.v1.forwarding.requests.retrieve("fwdreq_nope"))
    assert err.http_status == 404 and err.code == "resource_missing" and err.param == "id"
    err = _error(lambda: client.v1.forwarding.requests.create(_params(expand=["payment_method"])))
    assert err.param == "expand"


def test_requests_are_immutable(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    fwd = client.v1.forwarding.requests.create(_params())
    update = sandbox_stack.raw(
        "POST", f"/v1/forwarding/requests/{fwd.id}", data={"url": "https://elsewhere.example"}
    )
    assert update.status_code == 404
    assert "Unrecognized request URL" in update.json()["error"]["message"]
    delete = sandbox_stack.raw("DELETE", f"/v1/forwarding/requests/{fwd.id}")
    assert delete.status_code == 404
    assert client.v1.forwarding.requests.retrieve(fwd.id).url == URL
