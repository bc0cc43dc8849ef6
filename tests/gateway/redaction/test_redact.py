"""The redaction engine: what it finds, in which encodings, how it masks, that it fails
closed, and that it never raises or lets a generated secret through."""

from __future__ import annotations

import base64
import hmac
import io
import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

import orjson
import pytest
import structlog
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.redaction.bodies import decode_component, encode_as_sent, encode_component
from gateway.redaction.params import LoggedParams, decode_form
from gateway.redaction.redact import MARKER, RedactingProcessor, Redactor
from gateway.redaction.sensitive import CATEGORIES, may_hold_card

R = Redactor()
PROCESS = RedactingProcessor(R)

CARD = "4242424242424242"
LIVE_KEY = "sk_live_51HqLyjWDarjtT1zdp7dcXYZ1234"
TEST_KEY = "sk_test_4eC39HqLyjWDarjtT1zdp7dc9876"


def run(event: dict[str, Any], processor: RedactingProcessor = PROCESS) -> dict[str, Any]:
    return dict(processor(None, "info", dict(event)))


def rendered(event: dict[str, Any], processor: RedactingProcessor = PROCESS) -> str:
    """The JSON line a renderer writes for ``event`` after the processor."""
    return orjson.dumps(run(event, processor), default=str).decode()


def forms_of(secret: str) -> set[str]:
    """``secret`` as it could appear in a log line: raw, URL-encoded, JSON-escaped."""
    return {secret, quote_plus(secret), quote(secret, safe=""), json.dumps(secret)[1:-1]}


def assert_hidden(out: str, secret: str) -> None:
    for form in forms_of(secret):
        assert form not in out, f"{form!r} leaked into {out!r}"


def nest(path: str, value: Any) -> Any:
    """``a[b][0][c]`` -> ``{"a": {"b": [{"c": value}]}}``."""
    out = value
    for segment in reversed(path.replace("]", "").split("[")):
        out = [out] if segment.isdigit() else {segment: out}
    return out


def multipart(fields: list[tuple[str, str]], boundary: str = "XyZBoundary") -> str:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    return "".join(parts) + f"--{boundary}--\r\n"


def luhn_complete(prefix: str) -> str:
    """``prefix`` with the check digit that makes it Luhn-valid."""
    for check in "0123456789":
        digits = [int(c) for c in prefix + check]
        total = sum(
            d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
            for i, d in enumerate(reversed(digits))
        )
        if total % 10 == 0:
            return prefix + check
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- the catalogue

#: (form field path, a value that must not appear in any log line)
CATALOGUE: list[tuple[str, str]] = [
    ("payment_method_data[card][number]", CARD),
    ("card[number]", "5555 5555 5555 4444"),
    ("source[number]", "378282246310005"),
    ("external_account[number]", "6011111111111117"),
    ("payment_method_data[card][cvc]", "739"),
    ("card[cvc]", "7391"),
    ("card[exp_month]", "07"),
    ("card[exp_year]", "2031"),
    ("bank_account[account_number]", "000123456789"),
    ("bank_account[routing_number]", "110000000"),
    ("payment_method_data[sepa_debit][iban]", "DE89370400440532013000"),
    ("individual[id_number]", "987654321"),
    ("individual[ssn_last_4]", "6789"),
    ("individual[dob][day]", "14"),
    ("individual[dob][year]", "1987"),
    ("verification[document][number]", "D1234567"),
    ("individual[personal_id_number]", "A7654321"),
    ("document_number", "X9876543"),
    ("account_numbers[0]", "000111222333"),
    ("mandate_data[customer_acceptance][online][ip_address]", "198.51.100.23"),
    ("receipt_email", "receipts@example.org"),
    ("individual[verification][document][front]", "file_1Nkeep"),  # not sensitive: below
    ("client_secret", "seti_1Nabc_secret_QwErTy"),
    ("secret", "whsec_plain"),
    ("signing_secret", "opaque-signing-value"),
    ("authentication_token", "opaque-auth-token"),
    ("access_token", "opaque-access-token"),
    ("refresh_token", "opaque-refresh-token"),
    ("request[body]", '{"pan":"4000056655665556","cvv":"321"}'),
    ("request[headers][0][value]", "Bearer destination-api-key"),
    ("wallet_address", "0x71C7656EC7ab88b098defB751B7401B5f6d8976F"),
    ("wallet_addresses[ethereum]", "0x52908400098527886E0F7030069857D2E4169EE7"),
    ("customer_ip_address", "203.0.113.7"),
    ("email", "jenny.rosen@example.com"),
    ("provided_details[phone]", "+14155550100"),
    ("name", "Jenny Rosen"),
    ("address[line1]", "1234 Main Street"),
    ("payment_method_data[billing_details][name]", "Jenny Q. Rosen"),
    ("shipping[address][postal_code]", "94111"),
    ("customer_details[tax_ids][0][value]", "DE123456789"),
    ("headers[Authorization]", "Basic dXNlcjpwYXNzd29yZA=="),
]
HIDDEN = [(path, value) for path, value in CATALOGUE if not value.startswith("file_")]


def _form(path: str, value: str) -> str:
    return f"currency=usd&{path}={quote_plus(value)}&confirm=true"


def _encoded_brackets(path: str, value: str) -> str:
    return _form(path.replace("[", "%5B").replace("]", "%5D"), value)


ENCODINGS: dict[str, Callable[[str, str], Any]] = {
    "form": _form,
    "form, %5B..%5D": _encoded_brackets,
    "form bytes": lambda path, value: _form(path, value).encode(),
    "query string": lambda path, value: "https://api.stripe.com/v1/x?" + _form(path, value),
    "JSON body": lambda path, value: json.dumps({"currency": "usd", **nest(path, value)}),
    "structure": lambda path, value: {"currency": "usd", **nest(path, value)},
    "multipart": lambda path, value: multipart([("currency", "usd"), (path, value)]),
    "free text": lambda path, value: f"refused: {path}={quote_plus(value)} (bad request)",
}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("path", "value"), HIDDEN, ids=[p for p, _ in HIDDEN])
def test_every_catalogue_field_is_hidden_in_every_encoding(
    encoding: str, path: str, value: str
) -> None:
    out = rendered({"event": "request", "params": ENCODINGS[encoding](path, value)})
    assert_hidden(out, value)
    assert "usd" in out or encoding == "free text"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_card_numbers_keep_their_last_four(encoding: str) -> None:
    out = rendered({"params": ENCODINGS[encoding]("payment_method_data[card][number]", CARD)})
    assert "…4242" in out
    assert "424242424242" not in out


def test_fields_below_a_sensitive_one_are_hidden_but_keep_their_names() -> None:
    got = R.value(
        {"billing_details": {"name": "Jenny", "address": {"city": "Paris", "line1": "1 rue"}}}
    )
    assert got == {
        "billing_details": {
            "name": MARKER,
            "address": {"city": MARKER, "line1": MARKER},
        }
    }
    assert R.value({"dob": {"day": 1, "month": 2, "year": 1990}}) == {
        "dob": {"day": MARKER, "month": MARKER, "year": MARKER}
    }
    assert R.value({"tax_ids": [{"type": "eu_vat", "value": "DE1"}]}) == {
        "tax_ids": [{"type": MARKER, "value": MARKER}]
    }
    assert R.value({"email": None}) == {"email": None}  # nothing to hide


# --------------------------------------------------------------------------- context


@pytest.mark.parametrize(
    ("params", "kept", "hidden"),
    [
        ("number=INV-0042&card[number]=" + CARD, "number=INV-0042", CARD),
        ("invoice[number]=INV-0042", "INV-0042", None),
        ("card[last4]=4242&card[brand]=visa&card[number]=" + CARD, "card[last4]=4242", CARD),
        ("product_data[name]=Gold+Plan&name=Jenny+Rosen", "Gold+Plan", "Jenny"),
        ("request[headers][0][name]=X-Api-Key&request[headers][0][value]=k3y", "X-Api-Key", "k3y"),
        ("document[number]=P1234&quote[number]=Q-7", "Q-7", "P1234"),
        ("metadata[body]=kept&request[body]=hidden", "kept", "hidden"),
    ],
)
def test_a_field_name_is_sensitive_only_in_its_context(
    params: str, kept: str, hidden: str | None
) -> None:
    out = R.text(params)
    assert kept in out
    if hidden is not None:
        assert hidden not in out


def test_context_in_json_and_structures() -> None:
    body = {"number": "INV-0042", "card": {"number": CARD}, "lines": [{"number": "L1"}]}
    out = R.value(body)
    assert out == {"number": "INV-0042", "card": {"number": "…4242"}, "lines": [{"number": "L1"}]}
    assert json.loads(R.text(json.dumps(body))) == out


def test_field_names_match_in_any_spelling() -> None:
    out = R.value({"Exp-Month": 1, "expMonth": 2, "EXP_YEAR": 3, "Set-Cookie": "a=b"})
    assert out == {
        "Exp-Month": MARKER,
        "expMonth": MARKER,
        "EXP_YEAR": MARKER,
        "Set-Cookie": MARKER,
    }


# --------------------------------------------------------------------------- values anywhere


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (CARD, "…4242"),
        ("4242 4242 4242 4242", "…4242"),
        ("4242-4242-4242-4242", "…4242"),
        ("4242+4242+4242+4242", "…4242"),
        ("4242%204242%204242%204242", "…4242"),
        ("378282246310005", "…0005"),  # 15 digits
        (luhn_complete("400000000000"), None),  # 13 digits
        (luhn_complete("6" * 18), None),  # 19 digits
        ("order 7" + CARD + "9 shipped", "order …"),  # digits next to it do not hide it
        ("qty 2 card 4242 4242 4242 4242", "…4242"),
        ("x" + CARD + "y", "x…4242y"),
    ],
)
def test_luhn_valid_card_numbers_are_masked_anywhere(text: str, masked: str | None) -> None:
    out = R.text(text)
    digits = "".join(c for c in text if c.isdigit())
    assert digits[:12] not in "".join(c for c in out if c.isdigit())
    if masked is not None:
        assert masked in out


@pytest.mark.parametrize(
    "text",
    [
        "8377835337406812",  # neither it nor a window of it passes Luhn
        "424242424242",  # 12 digits
        "2025-05-01T12:00:00.123456Z",
        "6f1c1e8e-2f0b-4b7a-9d55-0c2f3a1b9e77",
        "amount=1999&currency=usd",
        "In 2024 we made 12 345 sales",
    ],
)
def test_other_digit_runs_are_kept(text: str) -> None:
    assert R.text(text) == text


def test_numbers_that_are_card_numbers_are_masked() -> None:
    assert R.value(4242424242424242) == "…4242"
    assert R.value(8377835337406812) == 8377835337406812
    assert R.value({"amount": 1999, "n": 4242424242424242.0}) == {"amount": 1999, "n": "…4242.0"}
    assert R.value(2**100) == str(2**100)  # written as text: JSON renderers refuse it


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (LIVE_KEY, "sk_live_…1234"),
        (TEST_KEY, "sk_test_…9876"),
        ("rk_live_51HqLyjWDarjtT1zdp7dcAAAA", "rk_live_…AAAA"),
        ("rk_test_51HqLyjWDarjtT1zdp7dcBBBB", "rk_test_…BBBB"),
        ("ek_live_YWNjdF8xMDMyRDgyZVp2S1lsbzJD", "ek_live_…bzJD"),
        ("ek_test_YWNjdF8xMDMyRDgyZVp2S1lsbzJD", "ek_test_…bzJD"),
        ("whsec_5f1b1e2c3d4a5b6c7d8e9f0a1b2c3d4e", "whsec_…3d4e"),
        ("gw_test_billing_0000000000000001", "gw_test_…0001"),
        ("sk_live_short", "sk_live_…"),  # too short to show its end
        (
            "pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH",
            "pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_…uoGH",
        ),
        ("Basic dXNlcjpwYXNzd29yZA==", "Basic [redacted]"),
        ("bearer opaque.token-value", "bearer [redacted]"),
        ("Bearer " + LIVE_KEY, "Bearer sk_live_…1234"),
    ],
)
def test_secret_values_are_masked_in_any_text(text: str, masked: str) -> None:
    assert R.text(text) == masked
    assert R.text(f"call failed (key {text}), retrying") == f"call failed (key {masked}), retrying"
    assert R.value({"note": text}) == {"note": masked}


def test_publishable_keys_and_ids_are_kept() -> None:
    for text in ("pk_live_51HqLyjWDarjtT1zdp7dc", "cus_NffrFeUfNV2Hib", "req_8f3a2b1c9d0e4f5a"):
        assert R.text(text) == text


# --------------------------------------------------------------------------- free text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("refused cvc=123 for customer", "123"),
        ("payload {'card': {'cvc': '314'}, 'name': 'Jenny Rosen'}", "Jenny Rosen"),
        ('sent {"email": "jenny@example.com", "partial": ', "jenny@example.com"),
        ("Authorization: Basic dXNlcjpw\nX-Other: kept", "dXNlcjpw"),
        ("Cookie: session=abc123; theme=dark\nnext line", "abc123"),
        ("headers [('Set-Cookie', 'sid=s3cr3t'), ('X', 'y')]", "s3cr3t"),
        ("bad param card%5Bcvc%5D=4567 in query", "4567"),
        ("params.card.cvc = 8910", "8910"),
        ("secret: {'nested': ['a', 'b'], 'more': 1} done", "nested"),
    ],
)
def test_sensitive_names_in_free_text_hide_their_values(text: str, secret: str) -> None:
    out = R.text(text)
    assert secret not in out
    assert MARKER in out


# --------------------------------------------------------------------------- e-mail addresses


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("/v1/customers/jane@example.com", "/v1/customers/[redacted]"),
        ("/v1/customers/jane%40example.com", "/v1/customers/[redacted]"),
        ("jane@example.com/v1/customers", "[redacted]/v1/customers"),
        ("No such customer: 'JANE.DOE+vip@Example.COM'", "No such customer: '[redacted]'"),
        ("jané.rosé@exämple.co.jp said hi", "[redacted] said hi"),
        (
            "/v1/customers/search?query=email:'jane@example.com'",
            "/v1/customers/search?query=email:'[redacted]'",
        ),
        (
            "/v1/customers/search?query=email%3A%27jane%40example.com%27&limit=3",
            "/v1/customers/search?query=email%3A%27[redacted]%27&limit=3",
        ),
        ("/v1/customers?limit=3&q=jane+x@example.com", "/v1/customers?limit=3&q=[redacted]"),
        ("/v1/customers?q=jane@example.com&limit=3", "/v1/customers?q=[redacted]&limit=3"),
        ("to a@b.com, c@d.org.", "to [redacted], [redacted]."),
    ],
)
def test_email_addresses_are_masked_in_any_text(text: str, masked: str) -> None:
    assert R.text(text) == masked
    assert R.value({"path": text}) == {"path": masked}
    assert run({"event": "request", "path": text, "status": 404})["path"] == masked


@pytest.mark.parametrize(
    "text",
    [
        "/v1/accounts/acct_1Nabcdefghij/persons",
        "acct_1Nabcdefghij",
        "cus_NffrFeUfNV2Hib",
        "https://api.stripe.com/v1/customers?expand[]=data.customer",
        "user@",
        "user@localhost",
        "@example.com",
        "stripe-node@14.2.0 node@20.1.0",
        "a%2540b.com",
    ],
)
def test_what_is_not_an_address_is_kept(text: str) -> None:
    assert R.text(text) == text
    assert run({"event": "request", "note": text})["note"] == text


def test_an_address_in_text_hashes_as_the_email_field_does() -> None:
    # with a key, the same address in a path and in an email field can still be matched
    r = Redactor(hmac_key=b"k" * 32)
    field = r.value({"email": "jenny@example.com"})["email"]
    assert r.text("/v1/customers/jenny@example.com") == f"/v1/customers/{field}"
    assert r.text("/v1/customers/jenny%40example.com") == f"/v1/customers/{field}"


@pytest.mark.parametrize(
    ("query", "masked"),
    [
        # as typed: quotes and colons as they are, the address masked between them
        ("query=email:'jane@example.com'", "query=email:'[redacted]'"),
        ("query=metadata['ref']:'jane@example.com'", "query=metadata['ref']:'[redacted]'"),
        (
            "query=status:'active'+AND+metadata['ref']:'jane%40example.com'&limit=3",
            "query=status:'active'+AND+metadata['ref']:'[redacted]'&limit=3",
        ),
        # as the SDKs send it: every escape kept, as in a value with nothing to mask
        (
            "query=metadata%5B%27ref%27%5D%3A%27jane%2Bx%40example.com%27+OR+status%3A%27open%27",
            "query=metadata%5B%27ref%27%5D%3A%27[redacted]%27+OR+status%3A%27open%27",
        ),
        (  # encoded twice: its runs would decode once to another text than the masks do,
            # so it is written as every masked value was before (decoded, the same)
            "query=email%253A%2527jane%2540example.com%2527",
            "query=email:%27[redacted]%27",
        ),
        (
            f"query=metadata%5B%27k%27%5D%3A%27{TEST_KEY}%27+AND+email%3A%27a%40b.co%27",
            "query=metadata%5B%27k%27%5D%3A%27sk_test_…9876%27+AND+email%3A%27[redacted]%27",
        ),
        # a field name with an address in it, as a name with nothing masked is written
        ("metadata['jane@example.com']=1&x=%27a%27", "metadata['[redacted]']=1&x=%27a%27"),
        ("metadata%5Bjane%40example.com%5D=1", "metadata%5B[redacted]%5D=1"),
    ],
)
def test_a_masked_query_value_is_written_as_it_was_sent(query: str, masked: str) -> None:
    """The text around a mask in a query value keeps the escapes it was sent with, as a
    value with nothing masked does (``email:'[redacted]'``, not ``email:%27[redacted]%27``)."""
    url = f"/v1/customers/search?{query}"
    assert R.text(url) == f"/v1/customers/search?{masked}"
    assert run({"event": "request", "path": url, "status": 200})["path"] == (
        f"/v1/customers/search?{masked}"
    )
    # written as a value with nothing to mask is: as it came
    assert R.text(f"/v1/x?{masked}") == f"/v1/x?{masked}"


def test_a_masked_query_value_reads_as_the_audit_lines_params() -> None:
    # the audit line's params are decoded: the same value, the same mask
    query = "query=email%3A%27jane%40example.com%27+AND+status%3A%27active%27"
    assert R.value(LoggedParams([query])) == {"query": "email:'[redacted]' AND status:'active'"}
    assert decode_component(R.text(query).partition("=")[2]) == (
        "email:'[redacted]' AND status:'active'"
    )


@pytest.mark.parametrize(
    "query",
    [
        "query=email:'jenny@example.com'",
        "query=email%3A%27jenny%40example.com%27",
        "query=email%253A%2527jenny%2540example.com%2527",
        "query=metadata['ref']:'jenny@example.com'+AND+status:'active'",
        "query=metadata%5B%27ref%27%5D%3A%27jenny%40example.com%27",
    ],
)
def test_a_masked_query_value_hashes_as_the_email_field(query: str) -> None:
    r = Redactor(hmac_key=b"k" * 32)
    field = r.value({"email": "jenny@example.com"})["email"]
    assert field.startswith("[hmac:")
    out = r.text(f"/v1/customers/search?{query}")
    assert field in out and "jenny" not in out and "example.com" not in out
    if "%25" not in query:  # the params are decoded once: %2540 stays %40 there
        assert r.value(LoggedParams([query]))["query"].count(field) == 1


def test_addresses_in_text_are_kept_with_personal_data_off() -> None:
    no_personal = Redactor(categories=[c for c in CATEGORIES if c != "personal_data"])
    assert no_personal.text("/v1/customers/jane@example.com") == "/v1/customers/jane@example.com"


def test_a_100kb_value_with_addresses_is_redacted() -> None:
    text = ("x" * 1000 + " jane@example.com ") * 100
    out = R.text(text)
    assert "jane@example.com" not in out and out.count(MARKER) == 100


def test_tracebacks_and_exception_messages_are_redacted() -> None:
    def fail() -> None:
        raise ValueError(f"card[number]={CARD}&card[cvc]=123 sent with {LIVE_KEY}")

    try:
        fail()
    except ValueError:
        out = run({"event": "upstream failed", "exc_info": True})
    assert "exc_info" not in out
    text = out["exception"]
    assert text.startswith("Traceback") and "ValueError" in text and "fail()" in text
    assert "card[cvc]=[redacted]" in text and "sk_live_…1234" in text
    assert_hidden(text, CARD)
    assert_hidden(text, LIVE_KEY)


@pytest.mark.parametrize("form", ["instance", "tuple", "formatted"])
def test_every_way_of_passing_an_exception_is_redacted(form: str) -> None:
    try:
        raise RuntimeError(f"token {TEST_KEY}")
    except RuntimeError as exc:
        info: Any = {
            "instance": exc,
            "tuple": (type(exc), exc, exc.__traceback__),
            "formatted": None,
        }[form]
        event = (
            {
                "exception": structlog.processors.format_exc_info(None, "", {"exc_info": exc})[
                    "exception"
                ]
            }
            if form == "formatted"
            else {"exc_info": info}
        )
    out = run({"event": "x", **event})
    assert "sk_test_…9876" in out["exception"]
    assert TEST_KEY not in out["exception"]


def test_exceptions_as_values_are_written_as_redacted_text() -> None:
    out = run({"error": ValueError(f"bad key {LIVE_KEY}")})
    assert out == {"error": "bad key sk_live_…1234"}


def test_an_exc_info_without_an_exception_is_dropped() -> None:
    assert run({"event": "x", "exc_info": True}) == {"event": "x"}


# --------------------------------------------------------------------------- headers


def test_sensitive_headers_in_mappings_and_pair_lists() -> None:
    headers = {
        "Authorization": "Bearer " + LIVE_KEY,
        "Proxy-Authorization": "Basic dXNlcjpw",
        "Cookie": "sid=abc",
        "Set-Cookie": "sid=def; HttpOnly",
        "Stripe-Signature": "t=1,v1=5257a869",
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Note": "key " + TEST_KEY,
    }
    expected = {
        **{name: MARKER for name in list(headers)[:5]},
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Note": "key sk_test_…9876",
    }
    assert R.value(headers) == expected
    assert R.value(CIMultiDict(headers)) == expected
    assert R.value(list(headers.items())) == [list(item) for item in expected.items()]
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    assert R.value(raw) == [list(item) for item in expected.items()]


def test_repeated_headers_are_all_hidden() -> None:
    headers = CIMultiDict([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X", "y")])
    out = R.value(headers)
    assert sorted(out.values()) == sorted([MARKER, MARKER, "y"])


def test_name_value_records_hide_values_of_sensitive_names() -> None:
    r = Redactor(categories=[c for c in CATEGORIES if c != "personal_data"])
    out = r.value(
        {"list": [{"name": "Authorization", "value": "opaque"}, {"name": "n", "value": "v"}]}
    )
    assert out == {
        "list": [{"name": "Authorization", "value": MARKER}, {"name": "n", "value": "v"}]
    }


def test_configured_headers_fields_and_patterns() -> None:
    r = Redactor(
        headers=["X-Api-Key"],
        fields=["nickname", "metadata[tax_number]"],
        patterns=[__import__("re").compile(r"acme_[0-9a-f]{8}")],
    )
    out = r.value(
        {
            "headers": {"X-Api-Key": "k", "X-Other": "acme_0123abcd"},
            "nickname": "Jen",
            "metadata": {"tax_number": "078-05-1120", "order": "7"},
            "tax_number": "kept",
        }
    )
    assert out == {
        "headers": {"X-Api-Key": MARKER, "X-Other": MARKER},
        "nickname": MARKER,
        "metadata": {"tax_number": MARKER, "order": "7"},
        "tax_number": "kept",
    }
    assert r.text("x-api-key: abc\nok") == "x-api-key: [redacted]\nok"
    out = r.text("metadata[tax_number]=078-05-1120&tax_number=1")
    assert out == "metadata[tax_number]=[redacted]&tax_number=1"


# --------------------------------------------------------------------------- structures


def test_nested_structures_of_every_kind() -> None:
    event = {
        "items": [({"cvc": "1"}, "x"), {"a": [{"email": "e@x"}]}],
        "set": {LIVE_KEY},
        "bytes": b"email=e%40x&amount=1",
        "key " + TEST_KEY: 1,
        3: "non-string key",
    }
    out = R.value(event)
    assert out == {
        "items": [[{"cvc": MARKER}, "x"], {"a": [{"email": MARKER}]}],
        "set": ["sk_live_…1234"],
        "bytes": "email=[redacted]&amount=1",
        "key sk_test_…9876": 1,
        "3": "non-string key",
    }


def test_too_deep_or_cyclic_structures_become_placeholders() -> None:
    deep: Any = "x"
    for _ in range(100):
        deep = [deep]
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    out = run({"deep": deep, "cyclic": cyclic})
    assert "redaction_error" not in out
    assert "[unparsed list]" in json.dumps(out)


def test_the_same_input_always_gives_the_same_output() -> None:
    event = {"params": _form("card[number]", CARD) + "&email=a%40b.c", "key": LIVE_KEY}
    first = run(event)
    assert run(event) == first
    assert run(event, RedactingProcessor(Redactor())) == first


def test_redacting_a_redacted_event_changes_nothing() -> None:
    """The audit sink hands redacted records to the error log when it cannot write them:
    redacting them again must keep them as they are."""
    event = {
        "params": _form("card[number]", CARD) + "&card[cvc]=123&email=a%40b.c&n=" + LIVE_KEY,
        "body": json.dumps({"card": {"number": CARD}, "note": "Basic dXNlcjpw"}),
        "headers": {"Authorization": "Bearer x", "X": TEST_KEY},
        "secret": "pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH",
        "error": "failed for 4242 4242 4242 4242 with cvc=123",
    }
    once = run(event)
    assert run(once) == once
    hashed = RedactingProcessor(Redactor(hmac_key=b"k" * 32))
    assert run(run(event, hashed), hashed) == run(event, hashed)


# --------------------------------------------------------------------------- keyed hash


def test_keyed_hash_instead_of_the_marker() -> None:
    key = b"k" * 32
    r = Redactor(hmac_key=key)
    out = r.value({"email": "jenny@example.com", "phone": "+1415", "cvc": "123"})
    digest = hmac.new(key, b"jenny@example.com", "sha256").hexdigest()[:16]
    assert out["email"] == f"[hmac:{digest}]"
    assert out["phone"] != out["email"] and out["phone"].startswith("[hmac:")
    assert r.value({"email": "jenny@example.com"}) == {"email": out["email"]}
    other = Redactor(hmac_key=b"o" * 32).value({"email": "jenny@example.com"})
    assert other["email"] != out["email"]
    # keys and card numbers are masked as always
    assert r.value({"card": {"number": CARD}, "k": LIVE_KEY}) == {
        "card": {"number": "…4242"},
        "k": "sk_live_…1234",
    }
    form = r.text("email=jenny%40example.com&x=1")
    assert form == f"email=[hmac:{digest}]&x=1"


# --------------------------------------------------------------------------- categories


def test_categories_can_be_turned_off_but_not_credentials_or_cards() -> None:
    no_personal = Redactor(categories=[c for c in CATEGORIES if c != "personal_data"])
    assert no_personal.value({"email": "e@x", "cvc": "1"}) == {"email": "e@x", "cvc": MARKER}
    nothing = Redactor(categories=[])
    out = nothing.value({"Authorization": "x", "cvc": "1", "iban": "DE89", "email": "e@x"})
    assert out == {"Authorization": MARKER, "cvc": MARKER, "iban": "DE89", "email": "e@x"}
    assert nothing.text("k " + LIVE_KEY) == "k sk_live_…1234"  # values: always


# --------------------------------------------------------------------------- failing closed


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("value", "placeholder"),
    [
        ('{"card": {"number": "4242 4242', "[unparsed 30 bytes]"),
        (b"\xff\xfe" + CARD.encode(), "[unparsed 18 bytes]"),
        ("description=%FF%FE&amount=1", "description=[unparsed 6 bytes]&amount=1"),
        (
            '--B\r\nContent-Disposition: form-data; name="x"\r\n\r\n' + CARD,
            "[unparsed 65 bytes]",
        ),
        (Unprintable(), "[unparsed Unprintable]"),
        ("x" * 2048 + CARD, "[unparsed 2064 bytes]"),
    ],
)
def test_what_cannot_be_parsed_becomes_a_placeholder(value: Any, placeholder: str) -> None:
    r = Redactor(max_chars=2048)
    assert r.value(value) == placeholder


def test_files_in_multipart_bodies_are_never_shown() -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nidentity_document\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="jenny-rosen.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\x89PNG secret scan\r\n--B--\r\n"
    )
    out = R.value(body)
    assert "identity_document" in out and "[unparsed 16 bytes]" in out
    assert "secret scan" not in out
    assert 'name="file"; filename="[redacted]"' in out  # a file name may name someone


def test_a_value_whose_redaction_fails_becomes_a_placeholder() -> None:
    r = Redactor()

    def boom(s: str, parent: str | None, depth: int) -> str:
        raise RuntimeError("bug")

    r._text = boom  # type: ignore[method-assign]
    out = RedactingProcessor(r)(None, "info", {"event": "hello", "n": 1, "x": LIVE_KEY})
    assert out == {
        "event": "[unparsed 5 bytes]",
        "n": 1,
        "x": f"[unparsed {len(LIVE_KEY)} bytes]",
        "redaction_error": True,
    }


def test_when_the_engine_fails_every_value_becomes_a_placeholder() -> None:
    r = Redactor()

    def boom(event_dict: Any) -> Any:
        raise RuntimeError("bug")

    r.event = boom  # type: ignore[method-assign]
    out = RedactingProcessor(r)(
        None, "info", {"event": "hello " + LIVE_KEY, "status": 200, "ok": True, "n": None}
    )
    assert out == {
        "event": f"[unparsed {len('hello ' + LIVE_KEY)} bytes]",
        "status": 200,
        "ok": True,
        "n": None,
        "redaction_error": True,
    }


# --------------------------------------------------------------------------- in a pipeline


def test_in_a_structlog_pipeline_in_front_of_the_renderer() -> None:
    stream = io.BytesIO()
    log = structlog.wrap_logger(
        structlog.BytesLogger(stream),
        processors=[
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            PROCESS,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
    )
    log.info("request", params=_form("card[cvc]", "123"), headers={"Cookie": "sid=1"})
    try:
        raise KeyError(LIVE_KEY)
    except KeyError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["params"] == "currency=usd&card[cvc]=[redacted]&confirm=true"
    assert first["headers"] == {"Cookie": MARKER} and first["level"] == "info"
    assert "sk_live_…1234" in second["exception"]
    assert LIVE_KEY not in stream.getvalue().decode()


def test_stdlib_logs_routed_through_structlog() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                PROCESS,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    logger = logging.getLogger("tests.redact.aiohttp.access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.info('%s "%s" %s', "127.0.0.1", f"GET /v1/tokens?card[number]={CARD} HTTP/1.1", 200)
        try:
            raise ValueError(TEST_KEY)
        except ValueError:
            logger.exception("Error handling request")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "card[number]=…4242" in lines[0]["event"]
    assert "sk_test_…9876" in lines[1]["exception"]
    assert CARD not in stream.getvalue() and TEST_KEY not in stream.getvalue()


def test_the_processor_keeps_processor_formatter_metadata_and_copies_the_event() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    nested = {"email": "e@x"}
    event = {"event": "m", "_record": record, "_from_structlog": False, "nested": nested}
    out = run(event)
    assert out["_record"] is record and out["_from_structlog"] is False
    assert out["nested"] == {"email": MARKER} and nested == {"email": "e@x"}


# --------------------------------------------------------------------------- properties

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_PREFIXES = ["sk_live_", "sk_test_", "rk_live_", "rk_test_", "ek_live_", "ek_test_", "whsec_"]


_LOCAL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éß_.+-"
_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-üé"


@st.composite
def addresses(draw: st.DrawFn) -> str:
    """An e-mail address as gateway.redaction.sensitive.address_spans reads them (plus-
    addressing, upper case, non-ASCII letters; not the rarer local-part characters)."""
    local = draw(st.text(_LOCAL_CHARS, min_size=1, max_size=20))
    labels = draw(st.lists(st.text(_LABEL_CHARS, min_size=1, max_size=12), min_size=1, max_size=3))
    tld = draw(st.text("abcdefghijklmnopqrstuvwxyzABCDEF", min_size=2, max_size=6))
    return f"{local}@{'.'.join([*labels, tld])}"


@st.composite
def secrets(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A secret as written, and the substrings of it no log line may contain."""
    kind = draw(st.sampled_from(["key", "client_secret", "basic", "card", "email"]))
    if kind == "email":
        address = draw(addresses())
        return address, [address]
    if kind == "key":
        secret = draw(st.sampled_from(_PREFIXES)) + draw(st.text(_ALNUM, min_size=24, max_size=40))
        return secret, [secret[:-4]]
    if kind == "client_secret":
        ident = draw(st.text(_ALNUM, min_size=8, max_size=24))
        tail = draw(st.text(_ALNUM, min_size=16, max_size=32))
        return f"pi_{ident}_secret_{tail}", ["_secret_" + tail[:-4]]
    if kind == "basic":
        token = base64.b64encode(draw(st.binary(min_size=6, max_size=40))).decode()
        scheme = draw(st.sampled_from(["Basic", "basic", "BASIC"]))
        return f"{scheme} {token}", [token]
    length = draw(st.integers(13, 19))
    body = draw(st.sampled_from("3456")) + draw(
        st.text("0123456789", min_size=length - 2, max_size=length - 2)
    )
    number = luhn_complete(body)
    separator = draw(st.sampled_from(["", " ", "-"]))
    groups = [number[i : i + 4] for i in range(0, len(number), 4)]
    written = separator.join(groups)
    shown_from = len(written) - 4  # the last four digits may be shown
    return written, [written[:shown_from], number[:-4]]


_TEXT = st.text(
    st.characters(blacklist_categories=["Cs"]),
    max_size=12,
)
_SEGMENTS = st.lists(
    st.sampled_from(["a", "data", "metadata", "items", "0", "1", "x_y"]), max_size=3
)


def _placed(text: str, where: str, segments: list[str]) -> dict[str, Any]:
    name = "field" + "".join(f"[{segment}]" for segment in segments)
    if where == "message":
        return {"event": text}
    if where == "field":
        return {"note": text}
    if where == "header":
        return {"headers": {"X-Trace": text, "Authorization": text}}
    if where == "pairs":
        return {"headers": [("X-Trace", text)]}
    if where == "query":
        return {"url": f"https://api.stripe.com/v1/x?a=1&{quote_plus(name)}={quote_plus(text)}"}
    if where == "form":
        return {"params": f"amount=1&{name}={quote_plus(text)}"}
    if where == "json":
        return {"body": json.dumps(nest(name, text))}
    if where == "json in form":
        return {"params": f"metadata[raw]={quote_plus(json.dumps({'v': text}))}"}
    if where == "structure":
        return {"params": nest(name, text)}
    if where == "bytes":
        return {"body": text.encode()}
    if where == "key":
        return {"params": {text: 1}}
    raise AssertionError(where)


_PLACES = [
    "message",
    "field",
    "header",
    "pairs",
    "query",
    "form",
    "json",
    "json in form",
    "structure",
    "bytes",
    "key",
    "exception",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret=secrets(),
    before=_TEXT,
    after=_TEXT,
    where=st.sampled_from(_PLACES),
    segments=_SEGMENTS,
)
def test_no_generated_secret_survives(
    secret: tuple[str, list[str]], before: str, after: str, where: str, segments: list[str]
) -> None:
    written, forbidden = secret
    # digits written right next to a card number make another number (up to three are
    # tolerated, see gateway.redaction.sensitive.card_digits; escapes such as %21 take two of them)
    assume(not before[-1:].isdigit() and not after[:1].isdigit())
    text = before + written + after
    if where == "exception":
        try:
            raise ValueError(text)
        except ValueError:
            out = rendered({"event": "failed", "exc_info": True})
    else:
        out = rendered(_placed(text, where, segments))
    for part in forbidden:
        for form in forms_of(part):
            assert form not in out, f"{form!r} of {written!r} leaked in {where}: {out}"


_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary(max_size=40)
    | st.sampled_from([CARD, LIVE_KEY, "card[cvc]=1&x=%FF", '{"email": "e"}', "--B\r\n"])
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _VALUES, max_size=8))
def test_the_processor_never_raises_and_its_output_can_be_rendered(event: dict[str, Any]) -> None:
    event.pop("redaction_error", None)
    out = run(event)
    assert "redaction_error" not in out
    line = orjson.dumps(out)  # no default= needed: the renderer cannot fail on it
    assert orjson.dumps(run(event)) == line


@settings(max_examples=200, deadline=None)
@given(_VALUES)
def test_two_redactors_agree(value: Any) -> None:
    assert orjson.dumps(Redactor().value(value)) == orjson.dumps(R.value(value))


# ------------------------------------------------------------ leaks found in review


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        # JSON in a value, a key given twice: the parser keeps the last value only
        ('{"a":"sk_live_abcdefghijklmnop1234","a":1}', "abcdefghijklmnop1234"),
        ('{"card":{"cvc":"123","cvc":null}}', '"123"'),
    ],
)
def test_json_with_a_repeated_key_never_passes_through_as_written(text: str, secret: str) -> None:
    out = Redactor().event({"metadata": {"note": text}})
    assert secret not in orjson.dumps(out).decode()


@pytest.mark.parametrize("key", [None, b"k" * 32])
@pytest.mark.parametrize(
    ("form", "secret"),
    [
        ("card[number]=%5Bunparsed+4242424242424242%5D", "4242424242424242"),
        ("card[number]=%5Bhmac%3A4242424242424242%5D", "4242424242424242"),
        ("password=%5Bunparsed+hunter2%5D", "hunter2"),
    ],
)
def test_values_dressed_as_masks_are_masked(form: str, secret: str, key: bytes | None) -> None:
    redactor = Redactor(hmac_key=key)
    for params in (decode_form(form), LoggedParams([form])):
        assert secret not in orjson.dumps(redactor.event({"params": params})).decode()


@pytest.mark.parametrize(
    "name", ["individual[id_number", "individual[id_number]]", "individual[[id_number]"]
)
def test_malformed_bracket_names_are_judged_by_the_names_inside(name: str) -> None:
    form = f"{quote(name)}=123456789"
    for params in (decode_form(form), LoggedParams([form])):
        out = orjson.dumps(Redactor().event({"params": params})).decode()
        assert "123456789" not in out


# ------------------------------------------------------------ fast paths == full scan

#: a configured pattern that never matches: every fast path is off (they need no
#: patterns), so this redactor scans every string in full
_FULL_SCAN = Redactor(patterns=[re.compile(r"(?!x)x")])

_PIECES = st.sampled_from(
    [
        "usd", "2000", "req_123", "gwreq_abc", "/v1/customers/cus_1", "2026-11-26T03:19:38Z",
        CARD, "4242 4242 4242 4242", LIVE_KEY, TEST_KEY, "whsec_abcdefghijklmnop",
        "pi_123_secret_abcdefghijkl", "Bearer ", "basic ", "Basic dXNlcjpwYXNz", "=", ":",
        ",", "{", "[", " ", "--", "a=b", "cvc=123", "card[number]=", "\x00", "é", "+",
        "%20", "x" * 300, "jane@example.com", "@", "%40", "jane", "example.com", "'",
    ]
)  # fmt: skip


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    names = ["request_id", "path", "team", "email", "note", "params", "error", "client"]
    event: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=6)):
        kind = draw(st.sampled_from(["text", "number", "none", "form"]))
        if kind == "number":
            event[name] = draw(st.one_of(st.integers(), st.floats(allow_nan=False)))
        elif kind == "none":
            event[name] = None
        else:
            text = "".join(draw(st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=5)))
            event[name] = LoggedParams([text]) if kind == "form" else text
    return event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_events())
@example({"request_id": "\x1f[{"})  # white space str.isspace knows but " \t\n\r\f\v" not
@example({"note": '\u3000{"card": "4242424242424242"}'})
def test_fast_paths_write_what_a_full_scan_writes(event: dict[str, Any]) -> None:
    assert Redactor().event(dict(event)) == _FULL_SCAN.event(dict(event))


#: one redactor for every example: the fast path for short fields
#: (``Redactor._short_fields``) takes only keys seen before
_WARM = Redactor()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_events(), st.sampled_from([{}, {"card": {"number": CARD}}, {"a": "b"}]))
@example({"path": "/v1/x", "client": "::1"}, {})
@example({"request_id": "gwreq_1", "note": "Bearer"}, {})
@example({"request_id": "", "team": "a"}, {})
@example({"request_id": "\x1f[{", "path": "/v1/x"}, {})  # white space that starts JSON
@example({"note": " [[4242424242424242]]"}, {})
def test_a_redactor_that_has_seen_the_keys_writes_what_a_full_scan_writes(
    event: dict[str, Any], params: dict[str, Any]
) -> None:
    """Run twice on one long-lived redactor (the second time every key is known, the way
    audit lines repeat theirs): both outputs are the full scan's."""
    event.setdefault("params", params)
    expected = _FULL_SCAN.event(dict(event))
    assert _WARM.event(dict(event)) == expected
    assert _WARM.event(dict(event)) == expected


@settings(max_examples=100, deadline=None)
@given(
    harmless=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**11), 10**11),
        st.text(alphabet=st.characters(categories=["L"]), min_size=1, max_size=20),
    ),
)
def test_a_key_seen_with_harmless_values_still_redacts_a_secret_later(harmless: Any) -> None:
    """A key first seen with harmless values (None, bools, short numbers, letters, all
    written as they are) is still redacted when it later holds a secret, a card number or a
    long number: nothing learnt about a key lets a later value through unread."""
    redactor = Redactor()
    for _ in range(2):  # the key's handling is cached after the first line
        assert redactor.event({"note": harmless, "event": "x"})["note"] == harmless
    card = 4242424242424242
    key = "sk_test_" + "a1B2c3D4e5F6g7H8i9J0k1L2"
    for secret in (card, str(card), key, f"Bearer {key}", {"number": str(card)}, [str(card)]):
        out = json.dumps(redactor.event({"note": secret, "event": "x"}))
        assert "4242424242424242" not in out and key not in out, out


_LINE_KEYS = st.sampled_from(
    [
        "request_id",
        "path",
        "stripe_account",
        "idempotency_key",
        "error",
        "client",
        "password",
        "card",
        "authorization",
        "client_secret",
        "cache",
    ]
)
_LINE_VALUES = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.sampled_from(["gwreq_a1B2c3", "/v1/customers/cus_1Nabcdefghij", "HIT", "127.0.0.1"]),
    st.from_regex(r"(sk|rk|gw)_(test|live)_[A-Za-z0-9]{12,30}", fullmatch=True),
    st.from_regex(r"4[0-9]{11}", fullmatch=True).map(luhn_complete),
    st.from_regex(r"(pi|seti)_[A-Za-z0-9]{8,24}_secret_[A-Za-z0-9]{12,24}", fullmatch=True),
    st.integers(min_value=-(10**17), max_value=10**17),
)


@settings(max_examples=300, deadline=None)
@given(line=st.dictionaries(_LINE_KEYS, _LINE_VALUES, max_size=11))
def test_a_line_is_redacted_field_by_field_and_nothing_leaks(line: dict[str, Any]) -> None:
    """A log line's fields are redacted as each would be alone, whatever the other fields
    (``None`` ones taken at once, plain strings checked together): the same output, and no
    generated key or card number in what is written."""
    out = run(line)
    assert run(line) == out  # again, every key known (the fast path for short fields)
    for key, value in line.items():
        alone = run({key: value})
        assert alone.items() <= out.items(), (key, value, out)
    written = rendered(line)
    secrets = [
        value
        for value in line.values()
        if isinstance(value, str)
        and len(value) >= 13
        and (value[:3] in ("sk_", "rk_", "gw_") or (value[:1] == "4" and value.isdigit()))
    ]
    for value in line.values():  # a client secret keeps its id and last four only
        if isinstance(value, str) and "_secret_" in value:
            assert value not in written, (value, written)
    for secret in secrets:
        assert_hidden(written, secret)


_AUDIT_FIELDS = [
    "event",
    "request_id",
    "method",
    "path",
    "team",
    "status",
    "error",
    "client",
    "stripe_account",
    "idempotency_key",
    "user_agent",
    "exception",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    address=addresses(),
    at=st.sampled_from(["@", "%40"]),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
    field=st.sampled_from(_AUDIT_FIELDS),
    warm=st.booleans(),
)
@example("jane@example.com", "@", "/v1/customers/", "", "path", True)
@example("jane@example.com", "@", "/v1/customers/search?query=email:'", "'", "path", True)
@example("jane@example.com", "%40", "/v1/customers/", "?expand[]=x", "path", False)
@example("Jane+x@Example.COM", "@", "No such customer: ", "", "error", True)
def test_no_generated_address_survives_in_an_audit_line(
    address: str, at: str, before: str, after: str, field: str, warm: bool
) -> None:
    """Any address, embedded in any text, in any field of an audit-shaped line: the line
    written (after the processor, by the JSON renderer) holds no ``local@domain`` of it,
    with the fast path for known line shapes (``warm``) or without."""
    written = address.replace("@", at)
    line: dict[str, Any] = {
        "event": "request",
        "request_id": "gwreq_a1B2c3",
        "method": "GET",
        "path": "/v1/customers/cus_1",
        "team": "billing",
        "status": 200,
        "error": None,
        "client": "127.0.0.1",
        "stripe_account": None,
        "idempotency_key": None,
        "user_agent": "Stripe/v1 PythonBindings/12.0.0",
        "exception": None,
    }
    processor = _WARM_PROCESS if warm else RedactingProcessor(Redactor())
    if warm:
        rendered(line, processor)  # the line's shape is known from now on
    line[field] = before + written + after
    out = rendered(line, processor)
    for form in forms_of(address) | {written}:
        assert form not in out, f"{form!r} leaked in {field}: {out}"


_WARM_PROCESS = RedactingProcessor(Redactor())


def test_an_escaped_address_in_free_text_hashes_as_the_email_field() -> None:
    r = Redactor(hmac_key=b"k" * 32)
    field = r.value({"email": "jane+x@example.com"})["email"]
    assert field.startswith("[hmac:")
    for text in ("/v1/customers/jane%2Bx%40example.com", "see jane+x@example.com now"):
        line = r.value({"path": text})["path"]
        assert field in line and "example.com" not in line


_SEARCH_FIELDS = ["status", "currency", "metadata['ref']", "description", "email"]
#: a query value written as typed (quotes, colons and brackets as they are), as the SDKs
#: send it, with %20 for spaces, or encoded twice
_ENCODINGS: dict[str, Callable[[str], str]] = {
    "typed": lambda v: quote(v, safe=":'[]@/ ").replace(" ", "+"),
    "sdk": quote_plus,
    "percent": lambda v: quote(v, safe=""),
    "twice": lambda v: quote_plus(quote_plus(v)),
}


@st.composite
def search_queries(draw: st.DrawFn) -> tuple[str, list[str], list[str]]:
    """A Stripe search query (``field:'value'`` clauses joined by ``AND`` / ``OR``) with
    secrets in some values: the query, its clauses without a secret, and the substrings
    of the secrets no line may hold."""
    clauses: list[str] = []
    plain: list[str] = []
    forbidden: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        field = draw(st.sampled_from(_SEARCH_FIELDS))
        if draw(st.booleans()):
            written, parts = draw(secrets())
            clauses.append(f"{field}:'{written}'")
            forbidden += parts
        elif field != "email":
            clauses.append(f"{field}:'{draw(st.text('abcdefghijklmnopqrstuvwxyz', min_size=1))}'")
            plain.append(clauses[-1])
    assume(forbidden)
    joins = [draw(st.sampled_from([" AND ", " OR "])) for _ in clauses[1:]]
    query = clauses[0] + "".join(j + c for j, c in zip(joins, clauses[1:], strict=True))
    return query, plain, forbidden


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(search=search_queries(), encoding=st.sampled_from(sorted(_ENCODINGS)))
@example(("email:'jane@example.com'", [], ["jane@example.com"]), "typed")
@example(("status:'active' AND email:'a+b@x.io'", ["status:'active'"], ["a+b@x.io"]), "sdk")
def test_a_query_value_is_written_as_sent_and_no_secret_survives(
    search: tuple[str, list[str], list[str]], encoding: str
) -> None:
    """A search query carrying addresses, keys, client secrets, credentials and card
    numbers, in any encoding, in an audit-shaped line: no form of a secret is in the line
    written, nor in its query value decoded once or twice; the clauses without a secret
    are written as they were sent; and the value decodes to the query redacted."""
    query, plain, forbidden = search
    encode = _ENCODINGS[encoding]
    sent = encode(query)
    line = {"event": "request", "path": f"/v1/customers/search?query={sent}&limit=3"}
    out = rendered(line)
    path = run(line)["path"]
    value = path.partition("?query=")[2].rpartition("&limit=3")[0]
    for part in forbidden:
        for form in forms_of(part) | {encode(part), quote_plus(quote_plus(part))}:
            assert form not in out, f"{form!r} leaked ({encoding}): {out}"
        for text in (unquote_plus(value), unquote_plus(unquote_plus(value))):
            assert part not in text, f"{part!r} leaked ({encoding}) once decoded: {value}"
    for clause in plain:  # sent encoded twice: written encoded once (encode_as_sent)
        want = encode(clause) if encoding != "twice" else encode_component(clause)
        assert want in value, f"{clause!r} not as sent ({encoding}): {value}"
    assert decode_component(value) == R.text(query, "query")


_RAW_PIECES = st.sampled_from(
    [
        "%40", "%2540", "%27", "%2527", "%3A", "%253A", "+", "%", "%2", "%25", "%2B", "%20",
        "@", "jane", "example.com", "'", ":", "=", "é", "%C3%A9", "…", "%E2%80%A6",
        "[redacted]", "sk_test_", TEST_KEY, "4242+4242+4242+4242", "_secret_abcdefghijklmnop",
    ]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(_RAW_PIECES | st.text(max_size=3), max_size=14))
def test_a_value_written_as_sent_decodes_as_the_value_redacted(pieces: list[str]) -> None:
    """Whatever was sent, a form value written back with its masks as it was sent
    (:func:`encode_as_sent`) decodes as the value redacted does, every character escaped
    (only its escapes differ); and the query it is in holds no secret."""
    raw = "".join(pieces).replace("&", "")
    value = decode_component(raw)
    assume(value is not None)
    redacted = R.text(value, "query")
    written = encode_as_sent(raw, value, redacted)
    once = decode_component(written)
    assert once is not None and once == decode_component(encode_component(redacted))
    out = R.text(f"/v1/x?query={raw}").partition("?query=")[2]
    assert "&" not in out
    for secret in (TEST_KEY[:-4], "jane@example.com", "abcdefghijkl"):
        for text in (out, decode_component(out) or "", unquote_plus(unquote_plus(out))):
            assert secret not in text


_HASHED = Redactor(hmac_key=b"k" * 32)


@settings(max_examples=200, deadline=None)
@given(
    address=addresses(),
    field=st.sampled_from(_SEARCH_FIELDS),
    encoding=st.sampled_from(sorted(_ENCODINGS)),
)
def test_an_address_in_a_query_in_any_encoding_hashes_as_the_email_field(
    address: str, field: str, encoding: str
) -> None:
    digest = _HASHED.value({"email": address})["email"]
    # digits that may be a card number are masked as one (fail closed): in the address
    # (``0000000000000@0.AA``), or in a digest, to the scan of the whole query, which
    # cannot tell a digest from a card number dressed as one (``[hmac:…5301a]``)
    assume(not may_hold_card(address) and not may_hold_card(digest))
    sent = _ENCODINGS[encoding](f"{field}:'{address}' AND status:'active'")
    out = _HASHED.text(f"/v1/customers/search?query={sent}")
    assert digest in out, f"{address!r} ({encoding}): {out}"
    encode = _ENCODINGS[encoding] if encoding != "twice" else encode_component
    assert encode(" AND status:'active'") in out


def test_a_long_masked_value_is_written_escaped_whole_and_holds_no_secret() -> None:
    """Past ``AS_SENT_MAX`` the position map is not built (a hostile megabyte would cost a
    Python step per character): the value is written as every masked value was before."""
    from gateway.redaction.bodies import AS_SENT_MAX

    padding = "ab%27" * (AS_SENT_MAX // 5 + 1)
    out = R.text(f"/v1/x?q=email:'jane%40example.com'+{padding}")
    value = out.partition("?q=")[2]
    assert value.startswith("email:%27[redacted]%27")  # escaped whole, as before
    assert "jane" not in value and decode_component(value) is not None
    short = R.text("/v1/x?q=email:'jane%40example.com'+ab%27")
    assert short.partition("?q=")[2].startswith("email:'[redacted]'")  # as sent
