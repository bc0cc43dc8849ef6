"""A corpus of sensitive requests, one per resource family, sent with the stripe SDK through a
running gateway: no secret value reaches any log, raw or URL-encoded, while the audit line
still shows which object was changed and with what.

Every request goes over real sockets to the fake upstream (``tests/fake_stripe.py``), which
echoes the request body in its answer, so with response bodies logged the secrets come
back a second time, inside JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests
import stripe

from tests.fake_stripe import WEBHOOK_SECRET
from tests.helpers import (
    ANALYTICS_KEY,
    ANALYTICS_UPSTREAM_KEY,
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    PASSTHROUGH_KEY,
    Stack,
)

CARD = "4242424242424242"
FORWARDED_CARD = "5555555555554444"
DEBIT_CARD = "4000056655665556"
DESTINATION_TOKEN = "dest_secret_Zq8vN3xTp7LmW2"
DESTINATION_API_KEY = "destkey_9fK2mQ7vX4rT1nB8"
CARDHOLDER = "Jenny Quintessa Rosen"
IDENTITY_EMAIL = "jenny.identity@example.com"
IDENTITY_PHONE = "+15555550123"
ID_NUMBER = "987-65-4329"
FC_EMAIL = "fc.holder@example.com"
FC_NAME = "Fiona Carbonell-Holder"
TAX_STREET = "510 Townsend Street Apt 7"
TAX_ID = "DE813495425"
TAX_IP = "203.0.113.77"
ETH_WALLET = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
BTC_WALLET = "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"
ONRAMP_IP = "198.51.100.23"
ONRAMP_EMAIL = "onramp.buyer@example.com"
LEAKED_KEY = "sk_test_51LeakedKeyInMetadata0000001"
#: addresses with no e-mail field name near them: in a path, in a search query
PATH_EMAIL = "Path.Person+vip@example.com"
SEARCH_EMAIL = "search.person@example.co.uk"

#: every value that must never be written to a log, in any encoding
SECRETS = (
    CARD,
    "4242 4242 4242 4242",
    FORWARDED_CARD,
    DEBIT_CARD,
    DESTINATION_TOKEN,
    DESTINATION_API_KEY,
    CARDHOLDER,
    IDENTITY_EMAIL,
    IDENTITY_PHONE,
    ID_NUMBER,
    FC_EMAIL,
    FC_NAME,
    TAX_STREET,
    TAX_ID,
    TAX_IP,
    ETH_WALLET,
    BTC_WALLET,
    ONRAMP_IP,
    ONRAMP_EMAIL,
    PATH_EMAIL,
    SEARCH_EMAIL,
    WEBHOOK_SECRET,
    LEAKED_KEY,
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    ANALYTICS_KEY,
    ANALYTICS_UPSTREAM_KEY,
    PASSTHROUGH_KEY,
)


def encodings(value: str) -> set[str]:
    """``value`` as it may be written: raw, percent-encoded, form-encoded, JSON-escaped."""
    return {
        value,
        quote(value),
        quote(value, safe=""),
        quote_plus(value),
        quote_plus(value, safe=""),
        json.dumps(value)[1:-1],
    }


def client_for(stack: Stack, key: str = BILLING_KEY) -> stripe.StripeClient:
    url = stack.gateway_url
    return stripe.StripeClient(
        key,
        base_addresses={"api": url, "files": url, "connect": url, "meter_events": url},
        max_network_retries=0,
    )


# --------------------------------------------------------------------------- the corpus


def forwarding(client: stripe.StripeClient) -> Any:
    return client.v1.forwarding.requests.create(
        {
            "payment_method": "pm_1NabcdefghijklmnOPQRst",
            "url": "https://endpoint.example.com/charge",
            "replacements": ["card_number", "card_cvc", "card_expiry", "cardholder_name"],
            "request": {
                "headers": [
                    {"name": "Authorization", "value": f"Bearer {DESTINATION_TOKEN}"},
                    {"name": "X-Destination-Key", "value": DESTINATION_API_KEY},
                ],
                "body": json.dumps(
                    {
                        "amount": 1250,
                        "card": {"number": FORWARDED_CARD, "cvc": "737", "name": CARDHOLDER},
                        "backup_card": "4242 4242 4242 4242",
                    }
                ),
            },
            "metadata": {"order": "ord_1042"},
        }
    )


def identity(client: stripe.StripeClient) -> Any:
    # provided_details takes email and phone in the SDK's types; dob and id_number are
    # sent the way a caller on an older or newer API version might send them
    return client.raw_request(
        "post",
        "/v1/identity/verification_sessions",
        type="id_number",
        provided_details={
            "email": IDENTITY_EMAIL,
            "phone": IDENTITY_PHONE,
            "dob": {"day": 17, "month": 3, "year": 1987},
            "id_number": ID_NUMBER,
        },
        metadata={"case": "kyc_77"},
    )


def financial_connections(client: stripe.StripeClient) -> Any:
    return client.raw_request(
        "post",
        "/v1/financial_connections/sessions",
        account_holder={
            "type": "customer",
            "customer": "cus_1NabcdefghijkLMN",
            "email": FC_EMAIL,
            "name": FC_NAME,
        },
        permissions=["balances", "ownership"],
        filters={"countries": ["US"]},
    )


def tax(client: stripe.StripeClient) -> Any:
    return client.v1.tax.calculations.create(
        {
            "currency": "usd",
            "line_items": [{"amount": 1000, "reference": "L1"}],
            "customer_details": {
                "address": {
                    "line1": TAX_STREET,
                    "city": "San Francisco",
                    "postal_code": "94107",
                    "country": "US",
                },
                "address_source": "shipping",
                "tax_ids": [{"type": "eu_vat", "value": TAX_ID}],
                "ip_address": TAX_IP,
            },
        }
    )


def crypto(client: stripe.StripeClient) -> Any:
    return client.raw_request(
        "post",
        "/v1/crypto/onramp_sessions",
        wallet_addresses={"ethereum": ETH_WALLET, "bitcoin": BTC_WALLET},
        customer_ip_address=ONRAMP_IP,
        customer_information={"email": ONRAMP_EMAIL, "first_name": "Ona", "last_name": "Ramp"},
        source_currency="usd",
        destination_currency="eth",
    )


def webhook_endpoint(client: stripe.StripeClient) -> Any:
    created = client.v1.webhook_endpoints.create(
        {"url": "https://example.com/hooks/stripe", "enabled_events": ["charge.succeeded"]}
    )
    assert created.secret == WEBHOOK_SECRET  # the caller gets it; no log does
    return created


def keys_and_cards(client: stripe.StripeClient) -> Any:
    return client.v1.payment_intents.create(
        {
            "amount": 2000,
            "currency": "usd",
            "payment_method_data": {
                "type": "card",
                "card": {"number": DEBIT_CARD, "cvc": "123", "exp_month": 12, "exp_year": 2034},  # type: ignore[typeddict-item]
            },
            "description": f"card {CARD} and key {LEAKED_KEY} pasted by mistake",
            "metadata": {"note": LEAKED_KEY},
        }
    )


CORPUS: tuple[tuple[str, str, Callable[[stripe.StripeClient], Any]], ...] = (
    ("forwarding", "/v1/forwarding/requests", forwarding),
    ("identity", "/v1/identity/verification_sessions", identity),
    ("financial_connections", "/v1/financial_connections/sessions", financial_connections),
    ("tax", "/v1/tax/calculations", tax),
    ("crypto", "/v1/crypto/onramp_sessions", crypto),
    ("webhook_endpoint", "/v1/webhook_endpoints", webhook_endpoint),
    ("keys_and_cards", "/v1/payment_intents", keys_and_cards),
)

VARIANTS = {
    "defaults": {},
    "response_bodies": {"routes": [{"route": "POST /v1/**", "response_body": True}]},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_secret_reaches_any_log(
    stack: Stack, variant: str, capfd: pytest.CaptureFixture[str]
) -> None:
    stack.start_gateway(plugins={"audit": {"path": str(stack.audit_path), **VARIANTS[variant]}})
    client = client_for(stack)
    for _, _, send in CORPUS:
        send(client)
    # a team presenting its own Stripe key, with a key and a card in the query string
    requests.get(
        f"{stack.gateway_url}/v1/customers",
        params={"email": IDENTITY_EMAIL, "note": LEAKED_KEY, "card": CARD},
        auth=(PASSTHROUGH_KEY, ""),
        timeout=5,
    )
    # addresses in free text: a customer's id in the path, a search query
    direct = client_for(stack, PASSTHROUGH_KEY)
    direct.v1.customers.retrieve(PATH_EMAIL)
    direct.v1.customers.search({"query": f"email:'{SEARCH_EMAIL}'"})
    # a refused request (the analytics team may not create payment intents)
    with pytest.raises(stripe.PermissionError):
        keys_and_cards(client_for(stack, ANALYTICS_KEY))

    lines = stack.audit_lines(len(CORPUS) + 4)
    assert len(lines) == len(CORPUS) + 4
    paths = {line["path"] for line in lines if line["team"] == "direct"}
    assert "/v1/customers/[redacted]" in paths and "/v1/customers/search" in paths
    by_path = {line["path"]: line for line in lines if line["team"] == "billing"}
    assert set(by_path) == {path for _, path, _ in CORPUS}

    stack.close()  # flushes every sink
    out, err = capfd.readouterr()
    logs = {
        "audit": stack.audit_path.read_text(),
        "errors": stack.errors_path.read_text() if stack.errors_path.exists() else "",
        "stdout": out,
        "stderr": err,
    }
    leaks = [
        (sink, secret, form)
        for sink, text in logs.items()
        for secret in SECRETS
        for form in encodings(secret)
        if form in text
    ]
    assert leaks == []

    # ... while the line still says what was changed, and with what
    forwarded = by_path["/v1/forwarding/requests"]["params"]
    assert forwarded["url"] == "https://endpoint.example.com/charge"
    assert forwarded["payment_method"] == "pm_1NabcdefghijklmnOPQRst"
    assert forwarded["request"]["headers"][0]["name"] == "Authorization"
    assert forwarded["request"]["headers"][0]["value"] == "[redacted]"
    assert forwarded["request"]["headers"][1] == {
        "name": "X-Destination-Key",
        "value": "[redacted]",
    }
    assert forwarded["request"]["body"] == "[redacted]"
    assert forwarded["metadata"] == {"order": "ord_1042"}
    identity_params = by_path["/v1/identity/verification_sessions"]["params"]
    assert identity_params["type"] == "id_number"
    dob = identity_params["provided_details"]["dob"]
    assert dob == {"day": "[redacted]", "month": "[redacted]", "year": "[redacted]"}
    assert identity_params["provided_details"]["id_number"] == "[redacted]"
    fc = by_path["/v1/financial_connections/sessions"]["params"]
    assert fc["account_holder"]["customer"] == "cus_1NabcdefghijkLMN"
    assert fc["permissions"] == ["balances", "ownership"]
    tax_params = by_path["/v1/tax/calculations"]["params"]
    assert tax_params["currency"] == "usd"
    assert tax_params["line_items"] == [{"amount": "1000", "reference": "L1"}]
    address = tax_params["customer_details"]["address"]
    assert set(address.values()) == {"[redacted]"}  # a masked object keeps its keys
    assert tax_params["customer_details"]["tax_ids"] == [
        {"type": "[redacted]", "value": "[redacted]"}
    ]
    assert tax_params["customer_details"]["address_source"] == "shipping"
    onramp = by_path["/v1/crypto/onramp_sessions"]["params"]
    assert onramp["destination_currency"] == "eth"
    assert onramp["wallet_addresses"] == {"ethereum": "[redacted]", "bitcoin": "[redacted]"}
    intent = by_path["/v1/payment_intents"]
    assert intent["params"]["amount"] == "2000"
    assert intent["params"]["payment_method_data"]["card"]["number"] == "…5556"
    assert intent["params"]["metadata"]["note"] == "sk_test_…0001"
    webhook = by_path["/v1/webhook_endpoints"]
    if variant == "response_bodies":
        assert webhook["response_body"]["id"] == "we_fake0000000001"
        assert webhook["response_body"]["secret"] == "[redacted]"
        assert intent["response_body"]["object"] == "payment_intent"
    else:
        assert all("response_body" not in line for line in lines)


def test_records_that_fall_back_to_the_error_log_are_redacted(stack: Stack) -> None:
    stack.start_gateway(plugins={"audit": {"path": "/dev/full", "response_body": True}})
    forwarding(client_for(stack))
    (record,) = stack.error_events("audit_write_failed")
    assert record["params"]["request"]["body"] == "[redacted]"
    text = stack.errors_path.read_text()
    assert [s for s in SECRETS for form in encodings(s) if form in text] == []
