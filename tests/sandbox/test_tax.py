"""Stripe Tax in the sandbox (calculations, transactions, registrations, settings).

Through the gateway with the official SDK, except where a test needs a raw request.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from sandbox.core import Account
from tests.sandbox.conftest import SANDBOX_KEY, SandboxStack
from tests.sandbox.fidelity import assert_stripe_fields

CA_ADDRESS = {
    "line1": "354 Oyster Point Blvd",
    "city": "South San Francisco",
    "state": "CA",
    "postal_code": "94080",
    "country": "US",
}


def _account(stack: SandboxStack) -> Account:
    return stack.sandbox.accounts[f"{SANDBOX_KEY}|"]


def _activate(client: stripe.StripeClient, *states: str) -> None:
    client.v1.tax.settings.update(
        {"head_office": {"address": {"country": "US", "state": "CA", "postal_code": "94080"}}}
    )
    for state in states:
        client.v1.tax.registrations.create(
            {
                "country": "US",
                "country_options": {"us": {"type": "state_sales_tax", "state": state}},
                "active_from": "now",
            }
        )


def _calculation(client: stripe.StripeClient, **extra: Any) -> Any:
    params: dict[str, Any] = {
        "currency": "usd",
        "line_items": [
            {"amount": 1000, "reference": "pizza", "tax_code": "txcd_40060003"},
            {"amount": 1073, "reference": "wine", "tax_behavior": "inclusive", "quantity": 2},
            {"amount": 500, "reference": "gift card", "tax_code": "txcd_00000000"},
        ],
        "customer_details": {"address": CA_ADDRESS, "address_source": "shipping"},
        "shipping_cost": {"amount": 300},
        **extra,
    }
    return client.v1.tax.calculations.create(params)  # type: ignore[arg-type]


def _error(call: Any) -> stripe.InvalidRequestError:
    with pytest.raises(stripe.InvalidRequestError) as info:
        call()
    return info.value


# --------------------------------------------------------------------------- settings


def test_settings_start_pending_and_activate_with_a_head_office(
    sandbox_stack: SandboxStack,
) -> None:
    client = sandbox_stack.sdk()
    settings = client.v1.tax.settings.retrieve()
    assert settings.status == "pending"
    assert settings.status_details.to_dict() == {"pending": {"missing_fields": ["head_office"]}}
    assert settings.head_office is None
    assert_stripe_fields(settings)
    updated = client.v1.tax.settings.update(
        {
            "defaults": {"tax_behavior": "exclusive", "tax_code": "txcd_10103000"},
            "head_office": {"address": {"country": "us", "state": "ca"}},
        }
    )
    assert updated.status == "active" and updated.status_details.to_dict() == {"active": {}}
    assert updated.defaults.tax_behavior == "exclusive"
    assert updated.defaults.tax_code == "txcd_10103000"
    assert updated.head_office.address.country == "US"
    assert updated.head_office.address.state == "CA"
    assert "id" not in updated
    assert_stripe_fields(updated)
    assert client.v1.tax.settings.retrieve().to_dict() == updated.to_dict()


def test_settings_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    err = _error(lambda: client.v1.tax.settings.update({"defaults": {"tax_behavior": "maybe"}}))
    assert err.http_status == 400 and err.param == "defaults[tax_behavior]"
    err = _error(lambda: client.v1.tax.settings.update({"head_office": {"address": {"city": "X"}}}))  # type: ignore[typeddict-item]
    assert err.code == "parameter_missing"
    assert err.param == "head_office[address][country]"
    err = _error(lambda: client.v1.tax.settings.update({"bogus": "1"}))  # type: ignore[typeddict-unknown-key]
    assert err.code == "parameter_unknown" and err.param == "bogus"
    err = _error(lambda: client.v1.tax.settings.update({"defaults": {"tax_code": "food"}}))
    assert err.param == "defaults[tax_code]"


# --------------------------------------------------------------------------- calculations


def test_calculation_computes_tax_deterministically(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    calc = _calculation(client)
    assert calc.id.startswith("taxcalc_") and calc.object == "tax.calculation"
    assert "line_items" not in calc
    assert_stripe_fields(calc)
    # 1000 exclusive at 7.25% -> 73 (72.5 rounded half up); 1073 inclusive -> 1073 - 1000 = 73;
    # the exempt item carries no tax; shipping 300 exclusive -> 22 (21.75)
    assert calc.tax_amount_exclusive == 73 + 22
    assert calc.tax_amount_inclusive == 73
    assert calc.amount_total == 1000 + 73 + 1073 + 500 + 300 + 22
    assert calc.shipping_cost.to_dict() == {
        "amount": 300,
        "amount_tax": 22,
        "tax_behavior": "exclusive",
        "tax_code": "txcd_92010001",
    }
    breakdown = [b.to_dict() for b in calc.tax_breakdown]
    assert sum(b["amount"] for b in breakdown) == 73 + 22 + 73
    standard = [b for b in breakdown if b["taxability_reason"] == "standard_rated"]
    assert {(b["inclusive"], b["amount"], b["taxable_amount"]) for b in standard} == {
        (False, 95, 1300),
        (True, 73, 1000),
    }
    assert standard[0]["tax_rate_details"] == {
        "country": "US",
        "flat_amount": None,
        "percentage_decimal": "7.25",
        "rate_type": "percentage",
        "state": "CA",
        "tax_type": "sales_tax",
    }
    exempt = [b for b in breakdown if b["taxability_reason"] == "product_exempt"]
    assert exempt[0]["amount"] == 0 and exempt[0]["taxable_amount"] == 0
    assert calc.customer_details.address.to_dict() == {**CA_ADDRESS, "line2": None}
    assert calc.customer_details.taxability_override == "none"
    assert calc.expires_at >= int(time.time()) + 89 * 24 * 3600
    again = client.v1.tax.calculations.retrieve(calc.id)
    assert again.to_dict() == calc.to_dict()


def test_calculation_line_items_and_expand(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    calc = _calculation(client, expand=["line_items"])
    assert calc.line_items.object == "list"
    assert calc.line_items.url == f"/v1/tax/calculations/{calc.id}/line_items"
    assert [li.reference for li in calc.line_items.data] == ["pizza", "wine", "gift card"]
    items = client.v1.tax.calculations.line_items.list(calc.id)
    assert [li.id for li in items.data] == [li.id for li in calc.line_items.data]
    pizza, wine, gift = items.data
    assert pizza.id.startswith("tax_li_") and pizza.amount_tax == 73
    assert pizza.tax_code == "txcd_40060003" and pizza.quantity == 1
    assert wine.tax_behavior == "inclusive" and wine.quantity == 2 and wine.amount_tax == 73
    assert gift.amount_tax == 0 and gift.tax_code == "txcd_00000000"
    for li in items.data:
        assert_stripe_fields(li)
    # the stored object is not changed by expanding
    plain = client.v1.tax.calculations.retrieve(calc.id)
    assert "line_items" not in plain
    expanded = client.v1.tax.calculations.retrieve(calc.id, {"expand": ["line_items"]})
    assert len(expanded.line_items.data) == 3
    err = _error(lambda: client.v1.tax.calculations.retrieve(calc.id, {"expand": ["customer"]}))
    assert err.http_status == 400


def test_calculation_line_items_paginate_in_order(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    calc = client.v1.tax.calculations.create(
        {
            "currency": "usd",
            "line_items": [{"amount": 100 * (i + 1), "reference": f"L{i}"} for i in range(25)],
            "customer_details": {"address": CA_ADDRESS, "address_source": "billing"},
        }
    )
    first = client.v1.tax.calculations.line_items.list(calc.id)
    assert [li.reference for li in first.data] == [f"L{i}" for i in range(10)]
    assert first.has_more is True
    second = client.v1.tax.calculations.line_items.list(
        calc.id, {"starting_after": first.data[-1].id, "limit": 10}
    )
    assert [li.reference for li in second.data] == [f"L{i}" for i in range(10, 20)]
    third = client.v1.tax.calculations.line_items.list(
        calc.id, {"starting_after": second.data[-1].id, "limit": 10}
    )
    assert [li.reference for li in third.data] == [f"L{i}" for i in range(20, 25)]
    assert third.has_more is False
    back = client.v1.tax.calculations.line_items.list(
        calc.id, {"ending_before": third.data[0].id, "limit": 5}
    )
    assert [li.reference for li in back.data] == [f"L{i}" for i in range(15, 20)]
    walked = [
        li.reference
        for li in client.v1.tax.calculations.line_items.list(
            calc.id, {"limit": 7}
        ).auto_paging_iter()
    ]
    assert walked == [f"L{i}" for i in range(25)]


def test_calculation_collects_only_where_registered(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    calc = client.v1.tax.calculations.create(
        {
            "currency": "usd",
            "line_items": [{"amount": 1000, "reference": "a"}],
            "customer_details": {"address": {"country": "US", "state": "NY"}},
        }
    )
    assert calc.tax_amount_exclusive == 0 and calc.amount_total == 1000
    assert calc.tax_breakdown[0].taxability_reason == "not_collecting"
    assert calc.tax_breakdown[0].taxable_amount == 0
    assert calc.shipping_cost is None and calc.ship_from_details is None
    # an EU OSS registration collects VAT everywhere in the EU; GB needs its own
    client.v1.tax.registrations.create(
        {
            "country": "IE",
            "country_options": {"ie": {"type": "oss_union"}},
            "active_from": "now",
        }
    )
    de = client.v1.tax.calculations.create(
        {
            "currency": "eur",
            "line_items": [{"amount": 1190, "reference": "a", "tax_behavior": "inclusive"}],
            "customer_details": {"address": {"country": "DE"}, "address_source": "billing"},
        }
    )
    assert de.tax_amount_inclusive == 190 and de.amount_total == 1190
    assert de.tax_breakdown[0].tax_rate_details.tax_type == "vat"
    assert de.tax_breakdown[0].tax_rate_details.percentage_decimal == "19.0"
    gb = client.v1.tax.calculations.create(
        {
            "currency": "gbp",
            "line_items": [{"amount": 1000, "reference": "a"}],
            "customer_details": {"address": {"country": "GB"}},
        }
    )
    assert gb.tax_breakdown[0].taxability_reason == "not_collecting"
    exempt = client.v1.tax.calculations.create(
        {
            "currency": "usd",
            "line_items": [{"amount": 1000, "reference": "a"}],
            "customer_details": {"address": CA_ADDRESS, "taxability_override": "customer_exempt"},
        }
    )
    assert exempt.amount_total == 1000
    assert exempt.tax_breakdown[0].taxability_reason == "customer_exempt"


def test_calculation_needs_active_settings(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    err = _error(lambda: _calculation(client))
    assert err.http_status == 400 and err.code == "stripe_tax_inactive"


def test_calculation_uses_customer_and_settings_defaults(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "TX")
    client.v1.tax.settings.update(
        {"defaults": {"tax_behavior": "inclusive", "tax_code": "txcd_20030000"}}
    )
    # the sandbox has no customers endpoint: put one in the account as another module would
    customer = {
        "id": "cus_tax",
        "object": "customer",
        "address": None,
        "shipping": {"address": {"country": "US", "state": "TX", "postal_code": "75001"}},
        "tax_exempt": "none",
    }
    _account(sandbox_stack).add(customer, "customer")
    calc = client.v1.tax.calculations.create(
        {
            "currency": "usd",
            "customer": "cus_tax",
            "line_items": [{"amount": 10625, "reference": "a"}],
        }
    )
    assert calc.customer == "cus_tax"
    assert calc.customer_details.address_source == "shipping"
    assert calc.customer_details.address.state == "TX"
    assert calc.tax_amount_inclusive == 625 and calc.amount_total == 10625
    (item,) = client.v1.tax.calculations.line_items.list(calc.id).data
    assert item.tax_behavior == "inclusive" and item.tax_code == "txcd_20030000"
    err = _error(
        lambda: client.v1.tax.calculations.create(
            {
                "currency": "usd",
                "customer": "cus_nope",
                "line_items": [{"amount": 1, "reference": "a"}],
            }
        )
    )
    assert err.http_status == 400 and err.code == "resource_missing"
    assert err.param == "customer"


def test_calculation_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    details = {"address": CA_ADDRESS}
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"line_items": [{"amount": 1, "reference": "a"}], "customer_details": details},
         "currency", "parameter_missing"),
        ({"currency": "usd", "customer_details": details}, "line_items", "parameter_missing"),
        ({"currency": "usd", "line_items": [{"reference": "a"}], "customer_details": details},
         "line_items[0][amount]", "parameter_missing"),
        ({"currency": "usd", "line_items": [{"amount": 1}], "customer_details": details},
         "line_items[0][reference]", "parameter_missing"),
        ({"currency": "usd", "line_items": [{"amount": 1, "reference": "a", "x": "1"}],
          "customer_details": details}, "line_items[0][x]", "parameter_unknown"),
        ({"currency": "usd", "line_items": [{"amount": -5, "reference": "a"}],
          "customer_details": details}, "line_items[0][amount]", "parameter_invalid_integer"),
        ({"currency": "usd", "line_items": [{"amount": 1, "reference": "a"},
                                            {"amount": 1, "reference": "a"}],
          "customer_details": details}, "line_items[1][reference]", None),
        ({"currency": "usd", "line_items": [{"amount": 1, "reference": "a",
                                             "tax_behavior": "both"}],
          "customer_details": details}, "line_items[0][tax_behavior]", None),
        ({"currency": "usd", "line_items": [{"amount": 1, "reference": "a"}]},
         "customer_details", "parameter_missing"),
        ({"currency": "usd", "line_items": [{"amount": 1, "reference": "a"}],
          "customer_details": {"address": {"country": "US"}}},
         "customer_details[address]", "customer_tax_location_invalid"),
        ({"currency": "usd", "line_items": [{"amount": 1, "reference": "a"}],
          "customer_details": details, "bogus": "1"}, "bogus", "parameter_unknown"),
        ({"currency": "usd", "line_items": [{"amount": 1, "reference": "a",
                                             "product": "prod_nope"}],
          "customer_details": details}, "line_items[0][product]", "resource_missing"),
    ]  # fmt: skip
    for params, param, code in cases:
        err = _error(lambda p=params: client.v1.tax.calculations.create(p))  # type: ignore[misc]
        assert err.http_status == 400, params
        assert (err.param, err.code) == (param, code), params
    err = _error(lambda: client.v1.tax.calculations.retrieve("taxcalc_nope"))
    assert err.http_status == 404 and err.code == "resource_missing"
    assert err.param == "id"
    err = _error(lambda: client.v1.tax.calculations.line_items.list("taxcalc_nope"))
    assert err.http_status == 404
    # an amount that is not an integer, sent exactly as a form would
    raw = sandbox_stack.raw(
        "POST",
        "/v1/tax/calculations",
        data={
            "currency": "usd",
            "line_items[0][amount]": "ten",
            "line_items[0][reference]": "a",
            "customer_details[address][country]": "US",
            "customer_details[address][state]": "CA",
        },
    )
    assert raw.status_code == 400
    assert raw.json()["error"]["code"] == "parameter_invalid_integer"
    assert raw.json()["error"]["param"] == "line_items[0][amount]"


# --------------------------------------------------------------------------- transactions


def test_transaction_from_calculation(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    calc = _calculation(client)
    tx = client.v1.tax.transactions.create_from_calculation(
        {"calculation": calc.id, "reference": "order_1", "metadata": {"order": "1"}}
    )
    assert tx.id.startswith("tax_") and tx.object == "tax.transaction"
    assert tx.type == "transaction" and tx.reversal is None and tx.line_items is None
    assert tx.reference == "order_1" and tx.metadata.to_dict() == {"order": "1"}
    assert tx.currency == "usd" and tx.tax_date == calc.tax_date
    assert tx.shipping_cost.to_dict() == calc.shipping_cost.to_dict()
    assert tx.customer_details.to_dict() == calc.customer_details.to_dict()
    assert_stripe_fields(tx)
    got = client.v1.tax.transactions.retrieve(tx.id)
    assert got.to_dict() == tx.to_dict()
    expanded = client.v1.tax.transactions.retrieve(tx.id, {"expand": ["line_items"]})
    assert expanded.line_items.url == f"/v1/tax/transactions/{tx.id}/line_items"
    items = client.v1.tax.transactions.line_items.list(tx.id)
    assert [li.id for li in items.data] == [li.id for li in expanded.line_items.data]
    assert [(li.reference, li.amount, li.amount_tax) for li in items.data] == [
        ("pizza", 1000, 73),
        ("wine", 1073, 73),
        ("gift card", 500, 0),
    ]
    for li in items.data:
        assert li.type == "transaction" and li.reversal is None
        assert_stripe_fields(li)
    assert client.v1.tax.transactions.line_items.list(tx.id, {"limit": 2}).has_more is True


def test_transaction_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    calc = _calculation(client)
    client.v1.tax.transactions.create_from_calculation({"calculation": calc.id, "reference": "r"})
    err = _error(
        lambda: client.v1.tax.transactions.create_from_calculation(
            {"calculation": calc.id, "reference": "r"}
        )
    )
    assert err.http_status == 400 and err.param == "reference"
    err = _error(
        lambda: client.v1.tax.transactions.create_from_calculation(
            {"calculation": "taxcalc_nope", "reference": "r2"}
        )
    )
    assert err.http_status == 400 and err.code == "resource_missing"
    assert err.param == "calculation"
    err = _error(
        lambda: client.v1.tax.transactions.create_from_calculation({"calculation": calc.id})  # type: ignore[typeddict-item]
    )
    assert err.code == "parameter_missing" and err.param == "reference"
    # a calculation past its expires_at cannot become a transaction
    _account(sandbox_stack).table("tax.calculation")[calc.id]["expires_at"] = int(time.time()) - 1
    err = _error(
        lambda: client.v1.tax.transactions.create_from_calculation(
            {"calculation": calc.id, "reference": "r3"}
        )
    )
    assert err.http_status == 400 and "expired" in str(err.user_message)
    err = _error(lambda: client.v1.tax.transactions.retrieve("tax_nope"))
    assert err.http_status == 404 and err.param == "id"
    err = _error(lambda: client.v1.tax.transactions.line_items.list("tax_nope"))
    assert err.http_status == 404


def test_reversals_partial_flat_and_full(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    tx = client.v1.tax.transactions.create_from_calculation(
        {"calculation": _calculation(client).id, "reference": "order"}
    )
    pizza, wine, _gift = client.v1.tax.transactions.line_items.list(tx.id).data
    partial = client.v1.tax.transactions.create_reversal(
        {
            "original_transaction": tx.id,
            "mode": "partial",
            "reference": "order-refund-1",
            "line_items": [
                {
                    "original_line_item": pizza.id,
                    "reference": "pizza-refund",
                    "amount": -500,
                    "amount_tax": -36,
                }
            ],
            "shipping_cost": {"amount": -300, "amount_tax": -22},
            "expand": ["line_items"],
        }
    )
    assert partial.type == "reversal"
    assert partial.reversal.to_dict() == {"original_transaction": tx.id}
    assert partial.shipping_cost.amount == -300 and partial.shipping_cost.amount_tax == -22
    (refunded,) = partial.line_items.data
    assert (refunded.amount, refunded.amount_tax, refunded.type) == (-500, -36, "reversal")
    assert refunded.reversal.to_dict() == {"original_line_item": pizza.id}
    assert_stripe_fields(refunded)
    assert_stripe_fields({**partial.to_dict(), "line_items": None})
    # more than what remains cannot be reversed
    err = _error(
        lambda: client.v1.tax.transactions.create_reversal(
            {
                "original_transaction": tx.id,
                "mode": "partial",
                "reference": "too-much",
                "line_items": [
                    {
                        "original_line_item": pizza.id,
                        "reference": "x",
                        "amount": -501,
                        "amount_tax": 0,
                    }
                ],
            }
        )
    )
    assert err.http_status == 400 and err.param == "line_items[0][amount]"
    err = _error(
        lambda: client.v1.tax.transactions.create_reversal(
            {
                "original_transaction": tx.id,
                "mode": "partial",
                "reference": "ship-again",
                "shipping_cost": {"amount": -1, "amount_tax": 0},
            }
        )
    )
    assert err.param == "shipping_cost[amount]"
    # a flat amount is spread over what remains: wine (1073 incl. tax) is the largest share
    flat = client.v1.tax.transactions.create_reversal(
        {
            "original_transaction": tx.id,
            "mode": "partial",
            "reference": "flat",
            "flat_amount": -1000,
            "expand": ["line_items"],
        }
    )
    gross = sum(
        li.amount + (li.amount_tax if li.tax_behavior == "exclusive" else 0)
        for li in flat.line_items.data
    )
    assert gross == -1000 and flat.shipping_cost is None
    # full reverses everything that is left
    full = client.v1.tax.transactions.create_reversal(
        {
            "original_transaction": tx.id,
            "mode": "full",
            "reference": "full",
            "expand": ["line_items"],
        }
    )
    reversed_items = [
        *partial.line_items.data,
        *flat.line_items.data,
        *full.line_items.data,
    ]
    for original in (pizza, wine):
        mine = [li for li in reversed_items if li.reversal.original_line_item == original.id]
        assert sum(li.amount for li in mine) == -original.amount
        assert sum(li.amount_tax for li in mine) == -original.amount_tax
    assert full.shipping_cost.amount == 0
    err = _error(
        lambda: client.v1.tax.transactions.create_reversal(
            {"original_transaction": tx.id, "mode": "full", "reference": "again"}
        )
    )
    assert err.http_status == 400 and "fully reversed" in str(err.user_message)
    err = _error(
        lambda: client.v1.tax.transactions.create_reversal(
            {"original_transaction": full.id, "mode": "full", "reference": "rev-rev"}
        )
    )
    assert err.http_status == 400 and err.param == "original_transaction"
    listed = client.v1.tax.transactions.line_items.list(full.id)
    assert all(li.type == "reversal" for li in listed.data)


def test_reversal_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    tx = client.v1.tax.transactions.create_from_calculation(
        {"calculation": _calculation(client).id, "reference": "order"}
    )
    base = {"original_transaction": tx.id, "reference": "refund"}
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({**base, "mode": "sometimes"}, "mode", None),
        ({"original_transaction": tx.id, "mode": "full"}, "reference", "parameter_missing"),
        ({**base, "mode": "full", "flat_amount": -1}, "flat_amount", None),
        ({**base, "mode": "partial"}, "line_items", None),
        ({**base, "mode": "partial", "flat_amount": 5}, "flat_amount", None),
        ({**base, "mode": "partial", "flat_amount": 0}, "flat_amount", None),
        ({**base, "mode": "partial", "flat_amount": -99999}, "flat_amount", None),
        ({**base, "mode": "partial", "flat_amount": -1,
          "shipping_cost": {"amount": -1, "amount_tax": 0}}, "flat_amount", None),
        ({**base, "mode": "partial", "line_items": [{"original_line_item": "tax_li_nope",
                                                     "reference": "x", "amount": -1,
                                                     "amount_tax": 0}]},
         "line_items[0][original_line_item]", "resource_missing"),
        ({**base, "original_transaction": "tax_nope", "mode": "full"}, "original_transaction",
         "resource_missing"),
        ({**base, "mode": "full", "reference": "order"}, "reference", None),
    ]  # fmt: skip
    for params, param, code in cases:
        err = _error(lambda p=params: client.v1.tax.transactions.create_reversal(p))  # type: ignore[misc]
        assert err.http_status == 400, params
        assert (err.param, err.code) == (param, code), params


# --------------------------------------------------------------------------- registrations


def test_registrations_lifecycle(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    now = int(time.time())
    active = client.v1.tax.registrations.create(
        {
            "country": "US",
            "country_options": {"us": {"type": "state_sales_tax", "state": "CA"}},
            "active_from": "now",
        }
    )
    assert active.id.startswith("taxreg_") and active.status == "active"
    assert active.country_options.to_dict() == {"us": {"type": "state_sales_tax", "state": "CA"}}
    assert active.expires_at is None and now - 5 <= active.active_from <= now + 5
    assert_stripe_fields(active)
    scheduled = client.v1.tax.registrations.create(
        {
            "country": "GB",
            "country_options": {"gb": {"type": "standard"}},
            "active_from": now + 3600,
            "expires_at": now + 7200,
        }
    )
    assert scheduled.status == "scheduled"
    moved = client.v1.tax.registrations.update(scheduled.id, {"active_from": now + 600})
    assert moved.active_from == now + 600 and moved.status == "scheduled"
    started = client.v1.tax.registrations.update(scheduled.id, {"active_from": "now"})
    assert started.status == "active"
    unlimited = client.v1.tax.registrations.update(scheduled.id, {"expires_at": ""})
    assert unlimited.expires_at is None
    ended = client.v1.tax.registrations.update(active.id, {"expires_at": "now"})
    assert ended.status == "expired"
    assert client.v1.tax.registrations.retrieve(active.id).status == "expired"
    # invalid transitions: an expired registration is final, an active one keeps its start
    err = _error(lambda: client.v1.tax.registrations.update(active.id, {"expires_at": now + 99}))
    assert err.http_status == 400
    err = _error(lambda: client.v1.tax.registrations.update(scheduled.id, {"active_from": "now"}))
    assert err.http_status == 400 and err.param == "active_from"
    # once expired, the same state can be registered again
    again = client.v1.tax.registrations.create(
        {
            "country": "US",
            "country_options": {"us": {"type": "state_sales_tax", "state": "CA"}},
            "active_from": "now",
        }
    )
    by_status = {
        status: [r.id for r in client.v1.tax.registrations.list({"status": status}).data]
        for status in ("active", "expired", "scheduled", "all")
    }
    assert by_status == {
        "active": [again.id, scheduled.id],
        "expired": [active.id],
        "scheduled": [],
        "all": [again.id, scheduled.id, active.id],
    }


def test_registrations_paginate(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    states = ["AL", "AZ", "CA", "CO", "FL", "GA", "IL", "MA", "NY", "TX", "WA", "WI", "UT"]
    made = [
        client.v1.tax.registrations.create(
            {
                "country": "US",
                "country_options": {"us": {"type": "state_sales_tax", "state": state}},
                "active_from": "now",
            }
        ).id
        for state in states
    ]
    newest_first = list(reversed(made))
    first = client.v1.tax.registrations.list()
    assert len(first.data) == 10 and first.has_more is True
    rest = client.v1.tax.registrations.list({"starting_after": first.data[-1].id})
    assert [r.id for r in [*first.data, *rest.data]] == newest_first
    assert rest.has_more is False
    before = client.v1.tax.registrations.list({"ending_before": rest.data[0].id, "limit": 3})
    assert [r.id for r in before.data] == newest_first[7:10]
    walked = client.v1.tax.registrations.list({"limit": 4}).auto_paging_iter()
    assert [r.id for r in walked] == newest_first
    err = _error(lambda: client.v1.tax.registrations.list({"limit": 0}))
    assert err.code == "parameter_invalid_integer"


def test_registration_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    ok = {
        "country": "US",
        "country_options": {"us": {"type": "state_sales_tax", "state": "CA"}},
        "active_from": "now",
    }
    client.v1.tax.registrations.create(ok)  # type: ignore[arg-type]
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({**ok, "country": None}, "country", "parameter_missing"),
        ({**ok, "active_from": None}, "active_from", "parameter_missing"),
        ({**ok, "country_options": None}, "country_options", "parameter_missing"),
        ({**ok, "active_from": "soon"}, "active_from", "parameter_invalid_integer"),
        ({**ok, "active_from": 1000}, "active_from", None),
        ({**ok, "country_options": {"us": {"type": "state_sales_tax"}}},
         "country_options[us][state]", "parameter_missing"),
        ({**ok, "country_options": {"de": {"type": "standard"}}}, "country_options[de]", None),
        ({**ok, "extra": "1"}, "extra", "parameter_unknown"),
        (ok, "country", None),  # already registered there
    ]  # fmt: skip
    for params, param, code in cases:
        given = {k: v for k, v in params.items() if v is not None}
        err = _error(lambda p=given: client.v1.tax.registrations.create(p))  # type: ignore[misc]
        assert err.http_status == 400, params
        assert (err.param, err.code) == (param, code), params
    err = _error(lambda: client.v1.tax.registrations.retrieve("taxreg_nope"))
    assert err.http_status == 404 and err.param == "id"
    err = _error(lambda: client.v1.tax.registrations.update("taxreg_nope", {"expires_at": "now"}))
    assert err.http_status == 404
    err = _error(lambda: client.v1.tax.registrations.list({"status": "paused"}))  # type: ignore[typeddict-item]
    assert err.param == "status"


def test_account_state_is_per_key(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    other = sandbox_stack.sdk("sk_test_someone_else_000001", direct=True)
    assert other.v1.tax.settings.retrieve().status == "pending"
    assert other.v1.tax.registrations.list().data == []


def test_calculation_line_items_carry_their_tax_breakdown(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    _activate(client, "CA")
    calc = _calculation(client)
    pizza, wine, gift = client.v1.tax.calculations.line_items.list(calc.id).data
    (breakdown,) = pizza.tax_breakdown
    assert breakdown.amount == pizza.amount_tax == 73
    assert breakdown.taxable_amount == 1000 and breakdown.taxability_reason == "standard_rated"
    assert breakdown.jurisdiction.to_dict() == {
        "country": "US",
        "display_name": "CA",
        "level": "state",
        "state": "CA",
    }
    assert breakdown.sourcing == "destination"
    assert breakdown.tax_rate_details.tax_type == "sales_tax"
    assert (
        breakdown.tax_rate_details.percentage_decimal
        == calc.tax_breakdown[0].tax_rate_details.percentage_decimal
    )
    assert wine.tax_breakdown[0].amount == wine.amount_tax
    assert gift.tax_breakdown[0].taxability_reason == "product_exempt"
    assert gift.tax_breakdown[0].tax_rate_details is None
    assert pizza.performance_location is None
