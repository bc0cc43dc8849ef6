"""The catalogue of sensitive field names, the card number rule and the e-mail address rule."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.redaction.sensitive import (
    CATEGORIES,
    FieldTable,
    address_spans,
    card_digits,
    may_hold_address,
    may_hold_card,
    normalize,
)


def luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        total = 0
        for i, c in enumerate(reversed(prefix + check)):
            d = int(c) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return prefix + check
    raise AssertionError("unreachable")


def test_names_are_compared_without_case_underscores_or_dashes() -> None:
    assert normalize("Exp-Month") == normalize("exp_month") == normalize("expMonth") == "expmonth"
    assert normalize("Set-Cookie") == normalize("set_cookie")


@pytest.mark.parametrize(
    ("parent", "name", "category"),
    [
        (None, "cvc", "card"),
        ("card", "number", "card"),
        ("source", "number", "card"),
        (None, "number", None),
        ("invoice", "number", None),
        ("document", "number", "identity"),
        ("request", "body", "forwarding"),
        ("metadata", "body", None),
        ("headers", "value", "forwarding"),
        (None, "value", None),
        (None, "name", "personal_data"),
        ("productdata", "name", None),
        ("headers", "name", None),
        (None, "authorization", "credentials"),
        (None, "stripesignature", "credentials"),
        (None, "walletaddresses", "crypto"),
        (None, "iban", "bank"),
        (None, "ssnlast4", "identity"),
    ],
)
def test_classify(parent: str | None, name: str, category: str | None) -> None:
    assert FieldTable().classify(parent, name) == category


def test_turned_off_categories_and_configured_names() -> None:
    table = FieldTable(
        [c for c in CATEGORIES if c not in ("personal_data", "forwarding")],
        fields=["nickname", "metadata[tax_number]"],
        headers=["X-Api-Key"],
    )
    assert table.classify(None, "email") is None
    assert table.classify("request", "body") is None
    assert table.classify(None, "cvc") == "card"
    assert table.classify(None, "nickname") == "configured"
    assert table.classify("metadata", "taxnumber") == "configured"
    assert table.classify(None, "taxnumber") is None
    assert table.classify(None, "xapikey") == "configured"
    assert "xapikey" in table.headers and "authorization" in table.headers
    # credentials and card numbers are always on
    empty = FieldTable([])
    assert empty.classify(None, "authorization") == "credentials"
    assert empty.classify("card", "number") == "card"


@pytest.mark.parametrize(
    ("run", "card"),
    [
        ("4242424242424242", "4242424242424242"),
        ("4242 4242 4242 4242", "4242424242424242"),
        ("4242-4242-4242-4242", "4242424242424242"),
        ("2 4242 4242 4242 4242", "4242424242424242"),  # a whole-group span
        ("74242424242424242", "4242424242424242"),  # one digit next to it
        ("4242%204242%204242%204242", "4242424242424242"),
        ("214242424242424242", "4242424242424242"),  # what %21 leaves
        ("4242424242424241", "424242424242424"),  # fail closed: a window is a card number
        ("8377835337406812", None),
        ("424242424242", None),
        ("1" * 40, None),  # too long to be a card number with a few digits next to it
    ],
)
def test_card_digits(run: str, card: str | None) -> None:
    assert card_digits(run) == card


@given(
    body=st.text("0123456789", min_size=11, max_size=17),
    first=st.sampled_from("23456"),
    separator=st.sampled_from(["", " ", "-", "+", "%20"]),
    group=st.integers(3, 6),
)
def test_every_luhn_valid_number_is_found_however_it_is_grouped(
    body: str, first: str, separator: str, group: int
) -> None:
    number = luhn_complete(first + body)
    written = separator.join(number[i : i + group] for i in range(0, len(number), group))
    assert card_digits(written) == number
    assert may_hold_card(f"x {written} y")


def test_may_hold_card_is_a_quick_necessary_check() -> None:
    assert may_hold_card("pay 4242 4242 4242 4242")
    assert not may_hold_card("req_8f3a2b1c9d0e4f5a")
    assert not may_hold_card("2025-05-01T12:00:00.123456Z")


def _addresses(text: str) -> list[str]:
    return [text[start:end] for start, end in address_spans(text)]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("jane@example.com", ["jane@example.com"]),
        ("/v1/customers/jane@example.com", ["jane@example.com"]),
        ("query=email:'jane@example.com'", ["jane@example.com"]),
        ("No such customer: 'o'brien@example.org'", ["o'brien@example.org"]),
        ("JANE.DOE+stripe@Example.CO.UK", ["JANE.DOE+stripe@Example.CO.UK"]),
        ("jane%40example.com", ["jane%40example.com"]),
        ("jane%2Btag%40example.com", ["jane%2Btag%40example.com"]),
        ("jané@exämple.com", ["jané@exämple.com"]),
        ("用户@例子.广告", ["用户@例子.广告"]),
        ("x@xn--bcher-kva.example", ["x@xn--bcher-kva.example"]),
        ("a=jane@example.com&b=2", ["jane@example.com"]),
        ("a@b.com,c@d.org", ["a@b.com", "c@d.org"]),
        ("a@b@example.com", ["b@example.com"]),
        ("jane@example.com.", ["jane@example.com"]),
        ("jane@example.com1", ["jane@example.com1"]),
        ("https://user:pass@host.example.com/x", ["pass@host.example.com"]),
        ("a!b#c$d*e^f{g|h}i~j@example.com", ["a!b#c$d*e^f{g|h}i~j@example.com"]),
        ("first/last@example.com", ["last@example.com"]),
        # not addresses
        ("user@", []),
        ("user@localhost", []),
        ("@example.com", []),
        ("lodash@4.17.21", []),
        ("acct_1Nabcdefghij", []),
        ("cus_1N@x", []),
        ("https://api.stripe.com/v1/customers?email=x", []),
        ("jane%2540example.com", []),  # escaped twice: not looked for
        ("", []),
    ],
)
def test_addresses_are_found_where_they_are(text: str, found: list[str]) -> None:
    assert _addresses(text) == found
    assert may_hold_address(text) == bool(found)


@pytest.mark.parametrize(
    "text",
    [
        "a" * 100_000 + "@",
        "a@" * 50_000,
        "%40" * 33_000,
        "a'" * 50_000 + "@example.com",
        "a." * 50_000 + "@" + "b." * 50_000,
        "@" + "1." * 50_000 + "1",
        ("a" * 1000 + "@" + "b" * 1000 + ".") * 50,
        "a@" + "b-" * 50_000,
    ],
    ids=["run", "ats", "escapes", "quotes", "dots", "version", "blocks", "hyphens"],
)
def test_a_100kb_value_is_scanned_in_linear_time(text: str) -> None:
    # linear by construction (see address_spans); the bound is generous, for a busy machine:
    # a quadratic scan of 100 KB takes minutes
    started = time.process_time()
    address_spans(text)
    assert time.process_time() - started < 5.0


_LOCAL = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éß_.+-!#$*^{|}~", min_size=1
)
_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-ü", min_size=1, max_size=12)
_TLD = st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6)


@given(
    local=_LOCAL.filter(lambda s: not s.startswith("'")),
    labels=st.lists(_LABEL, min_size=1, max_size=3),
    tld=_TLD,
    at=st.sampled_from(["@", "%40"]),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
)
def test_a_generated_address_in_any_text_is_covered_by_a_span(
    local: str, labels: list[str], tld: str, at: str, before: str, after: str
) -> None:
    address = local + at + ".".join([*labels, tld])
    text = before + address + after
    covered = [False] * len(text)
    for start, end in address_spans(text):
        for i in range(start, end):
            covered[i] = True
    # the separator and the whole domain are masked, and the local part's last character
    sep = len(before) + len(local)
    assert all(covered[sep - 1 : len(before) + len(address)]), (text, _addresses(text))
