"""The catalogue of sensitive field names and the card number rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.redaction.sensitive import (
    CATEGORIES,
    FieldTable,
    card_digits,
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
