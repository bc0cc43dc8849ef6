"""Forwarding requests: create, retrieve, list (immutable once created).

The sandbox never calls the destination URL. It answers the way Stripe records a forwarded
request: ``request_details`` echoes the request with the card fields named in
``replacements`` filled in and then redacted as Stripe stores them (number
``************4242``, cvc ``***``; expiry and cardholder name in clear),
``response_details`` is a canned 200 JSON answer, ``request_context`` a deterministic
duration and destination IP.

The payment method is a card the account has (``payment_method`` table) or one of Stripe's
test-mode card ids (``pm_card_visa``, ``pm_card_mastercard``, ...).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from sandbox.core import (
    Call,
    array_value,
    bad_request,
    choice_list,
    make_object,
    mapping_value,
    missing,
    missing_param,
    page,
    string_value,
    wrong_type,
)
from sandbox.resources import REGISTRY as api

TYPE = "forwarding.request"
RESOURCE = "forwarding request"
REPLACEMENTS = ("card_cvc", "card_expiry", "card_number", "cardholder_name", "request_signature")


class Card:
    """The card data a forwarded request can carry."""

    def __init__(self, number: str, exp_month: int, exp_year: int, cvc: str, name: str) -> None:
        self.number = number
        self.exp_month = f"{exp_month:02d}"
        self.exp_year = str(exp_year)
        self.cvc = cvc
        self.name = name

    @property
    def masked_number(self) -> str:
        return "*" * (len(self.number) - 4) + self.number[-4:]


#: Stripe's test-mode payment method ids -> (number, cvc length)
TEST_CARDS: dict[str, tuple[str, int]] = {
    "pm_card_visa": ("4242424242424242", 3),
    "pm_card_visa_debit": ("4000056655665556", 3),
    "pm_card_mastercard": ("5555555555554444", 3),
    "pm_card_mastercard_debit": ("5200828282828210", 3),
    "pm_card_amex": ("378282246310005", 4),
    "pm_card_discover": ("6011111111111117", 3),
    "pm_card_diners": ("3056930009020004", 3),
    "pm_card_jcb": ("3566002020360505", 3),
    "pm_card_unionpay": ("6200000000000005", 3),
}
_TEST_EXPIRY = (12, 2034)

#: body field names (lowercased, without ``_``/``-``) -> what is written there
_FIELDS: dict[str, tuple[str, str]] = {
    **{k: ("card_number", "number") for k in ("number", "cardnumber", "pan", "accountnumber")},
    **{
        k: ("card_cvc", "cvc")
        for k in ("cvc", "cvv", "cvc2", "cvv2", "cardcvc", "securitycode", "cardsecuritycode")
    },
    **{k: ("card_expiry", "month") for k in ("expirymonth", "expmonth", "expirationmonth")},
    **{k: ("card_expiry", "year") for k in ("expiryyear", "expyear", "expirationyear")},
    **{k: ("card_expiry", "expiry") for k in ("expiry", "expirydate", "expirationdate")},
    **{
        k: ("cardholder_name", "name")
        for k in ("holdername", "cardholdername", "cardholder", "nameoncard")
    },
}


def _card(call: Call, pm_id: str) -> Card:
    stored = call.account.table("payment_method").get(pm_id)
    if stored is not None:
        if stored.get("type") != "card" or not isinstance(stored.get("card"), dict):
            raise bad_request(
                f"The PaymentMethod {pm_id} is not a card: only card payment methods can be "
                "forwarded.",
                "payment_method",
            )
        card = stored["card"]
        last4 = str(card.get("last4") or "4242")
        digits = 15 if card.get("brand") == "amex" else 16
        number = "4" + "0" * (digits - 5) + last4
        name = (stored.get("billing_details") or {}).get("name") or ""
        return Card(
            number,
            int(card.get("exp_month") or _TEST_EXPIRY[0]),
            int(card.get("exp_year") or _TEST_EXPIRY[1]),
            "1234" if digits == 15 else "123",
            name,
        )
    test = TEST_CARDS.get(pm_id)
    if test is None:
        raise missing("PaymentMethod", pm_id, "payment_method")
    number, cvc_length = test
    return Card(number, *_TEST_EXPIRY, "1234"[:cvc_length], "")


def _field(name: str) -> tuple[str, str] | None:
    return _FIELDS.get(name.lower().replace("_", "").replace("-", ""))


def _value(card: Card, what: str, *, redact: bool) -> str:
    if what == "number":
        return card.masked_number if redact else card.number
    if what == "cvc":
        return "*" * len(card.cvc) if redact else card.cvc
    if what == "month":
        return card.exp_month
    if what == "year":
        return card.exp_year
    if what == "expiry":
        return f"{card.exp_month}/{card.exp_year[-2:]}"
    return card.name


def _fill(node: Any, card: Card, wanted: set[str]) -> Any:
    """``node`` with the wanted card fields filled in (redacted), recursively."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            field = _field(key) if isinstance(value, str | None) else None
            if field is not None and field[0] in wanted:
                out[key] = _value(card, field[1], redact=True)
            else:
                out[key] = _fill(value, card, wanted)
        return out
    if isinstance(node, list):
        return [_fill(v, card, wanted) for v in node]
    return node


def _recorded_body(body: str, card: Card, wanted: set[str]) -> tuple[str, str | None]:
    """The body as Stripe records it, and the content type it was sent with."""
    if not body:
        return body, None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    else:
        return json.dumps(_fill(parsed, card, wanted), separators=(",", ":")), "application/json"
    pairs = parse_qsl(body, keep_blank_values=True)
    if not pairs or "=" not in body:
        return body, "text/plain"
    filled = []
    for key, value in pairs:
        field = _field(key.rsplit("[", 1)[-1].rstrip("]"))
        if field is not None and field[0] in wanted:
            value = _value(card, field[1], redact=True)
        filled.append((key, value))
    return urlencode(filled, safe="*/[]"), "application/x-www-form-urlencoded"


def _headers(raw: Any) -> list[dict[str, str]]:
    if raw is None:
        return []
    headers = []
    for i, header in enumerate(array_value(raw, "request[headers]")):
        p = f"request[headers][{i}]"
        if not isinstance(header, dict):
            raise wrong_type("object", p)
        mapping_value(header, p, ("name", "value"))
        for key in ("name", "value"):
            if not isinstance(header.get(key), str):
                raise missing_param(f"{p}[{key}]")
        headers.append({"name": header["name"], "value": header["value"]})
    return headers


@api.route(
    "POST",
    "/v1/forwarding/requests",
    params=("metadata", "payment_method", "replacements", "request", "url"),
)
async def create(call: Call) -> dict[str, Any]:
    pm_id = call.text("payment_method", required=True)
    url = call.text("url", required=True)
    replacements = call.array("replacements", required=True)
    request = call.mapping("request", required=True)
    assert pm_id is not None and url is not None
    assert replacements is not None and request is not None
    metadata = call.metadata()
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise bad_request(
            f"Invalid URL: {url}. The destination must be an https URL.", "url", "url_invalid"
        )
    if not replacements:
        raise bad_request(
            "replacements must contain at least one field kind.",
            "replacements",
            "parameter_invalid_empty",
        )
    kinds = choice_list(replacements, "replacements", REPLACEMENTS)
    mapping_value(request, "request", ("body", "headers"))
    body = string_value(request.get("body", ""), "request[body]")
    headers = _headers(request.get("headers"))
    card = _card(call, pm_id)
    recorded, content_type = _recorded_body(body, card, set(kinds))
    if content_type and not any(h["name"].lower() == "content-type" for h in headers):
        headers.append({"name": "Content-Type", "value": content_type})
    ids = call.account.ids
    host = hashlib.sha256(parts.hostname.encode()).digest()
    obj = make_object(
        TYPE,
        ids.new("fwdreq"),
        metadata=metadata,
        payment_method=pm_id,
        replacements=kinds,
        request_context={
            "destination_duration": ids.randint(80, 400),
            "destination_ip_address": f"34.{host[0]}.{host[1]}.{max(1, host[2])}",
        },
        request_details={"body": recorded, "headers": headers, "http_method": "POST"},
        response_details={
            "body": json.dumps(
                {"id": ids.new("sandbox", 16), "status": "succeeded"}, separators=(",", ":")
            ),
            "headers": [{"name": "Content-Type", "value": "application/json;charset=UTF-8"}],
            "status": 200,
        },
        url=url,
    )
    call.account.add(obj, TYPE)
    return obj


@api.route("GET", "/v1/forwarding/requests/{id}", params=())
async def retrieve(call: Call) -> dict[str, Any]:
    return call.account.get(TYPE, call.id(), RESOURCE)


@api.route("GET", "/v1/forwarding/requests", params=("created",))
async def list_all(call: Call) -> dict[str, Any]:
    keep = call.range_filter("created")
    found = [r for r in call.account.table(TYPE).values() if keep(r["created"])]
    return page(call, found, "/v1/forwarding/requests")
