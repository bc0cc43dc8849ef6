"""Stripe Tax calculations: create, retrieve, list line items.

A calculation needs the account's tax settings to be active (a head office is set, else
``stripe_tax_inactive``); the tax itself is computed by :mod:`._tax_rates`. Calculations
expire 90 days after creation (a transaction can only be created from an unexpired one). A
calculation's ``line_items`` is shown only when expanded.
"""

from __future__ import annotations

from typing import Any

from sandbox.core import (
    Call,
    bad_request,
    choice_value,
    integer_value,
    make_object,
    mapping_value,
    missing,
    required,
    string_value,
)
from sandbox.resources import REGISTRY as api
from sandbox.resources._tax_common import (
    ADDRESS_KEYS,
    BEHAVIORS,
    CALC_ITEM,
    CALCULATION,
    CALCULATIONS_URL,
    address,
    blank_array,
    list_line_items,
    metadata_value,
    now,
    settings_of,
    store,
    tax_code,
    with_line_items,
)
from sandbox.resources._tax_rates import Calculator

#: calculations can be turned into transactions for this long
CALCULATION_LIFETIME = 90 * 24 * 3600
#: a calculation's tax_date may be this far from now
_TAX_DATE_WINDOW = 31 * 24 * 3600

DEFAULT_TAX_CODE = "txcd_10000000"
SHIPPING_TAX_CODE = "txcd_92010001"

_LINE_ITEM_KEYS = (
    "amount",
    "metadata",
    "performance_location",
    "product",
    "quantity",
    "reference",
    "tax_behavior",
    "tax_code",
)


def _customer_details(call: Call) -> tuple[str | None, dict[str, Any]]:
    account = call.account
    details: dict[str, Any] = {
        "address": None,
        "address_source": None,
        "ip_address": None,
        "tax_ids": [],
        "taxability_override": "none",
    }
    customer_id = call.text("customer")
    if customer_id is not None:
        customer = account.table("customer").get(customer_id)
        if customer is None:
            raise missing("customer", customer_id, "customer")
        shipping = customer.get("shipping") or {}
        if shipping.get("address") and shipping["address"].get("country"):
            details["address"] = {k: shipping["address"].get(k) for k in ADDRESS_KEYS}
            details["address_source"] = "shipping"
        elif customer.get("address") and customer["address"].get("country"):
            details["address"] = {k: customer["address"].get(k) for k in ADDRESS_KEYS}
            details["address_source"] = "billing"
        exempt = customer.get("tax_exempt")
        if exempt in ("exempt", "reverse"):
            details["taxability_override"] = (
                "customer_exempt" if exempt == "exempt" else "reverse_charge"
            )
    raw = call.params.get("customer_details")
    if raw is None and customer_id is None:
        raise bad_request(
            "Missing required param: customer_details.", "customer_details", "parameter_missing"
        )
    given = mapping_value(
        raw or {},
        "customer_details",
        ("address", "address_source", "ip_address", "tax_ids", "taxability_override"),
    )
    if "address" in given:
        details["address"] = address(given["address"], "customer_details[address]")
    if "address_source" in given:
        details["address_source"] = choice_value(
            given["address_source"], "customer_details[address_source]", ("billing", "shipping")
        )
    if "ip_address" in given:
        details["ip_address"] = string_value(given["ip_address"], "customer_details[ip_address]")
    if "tax_ids" in given:
        tax_ids = []
        for i, tax_id in enumerate(blank_array(given["tax_ids"], "customer_details[tax_ids]")):
            param = f"customer_details[tax_ids][{i}]"
            entry = mapping_value(tax_id, param, ("type", "value"))
            tax_ids.append(
                {
                    key: string_value(
                        required(entry.get(key), f"{param}[{key}]"), f"{param}[{key}]"
                    )
                    for key in ("type", "value")
                }
            )
        details["tax_ids"] = tax_ids
    if "taxability_override" in given:
        details["taxability_override"] = choice_value(
            given["taxability_override"],
            "customer_details[taxability_override]",
            ("customer_exempt", "none", "reverse_charge"),
        )
    place = details["address"]
    if place is None or (place["country"] == "US" and not place["state"]):
        raise bad_request(
            "We could not determine the customer's tax location based on the provided "
            "customer address. US addresses need at least a state.",
            "customer_details[address]",
            "customer_tax_location_invalid",
        )
    return customer_id, details


def _default_behavior(call: Call, currency: str) -> str:
    default = settings_of(call.account)["defaults"]["tax_behavior"]
    if default == "inferred_by_currency":
        return "exclusive" if currency in ("usd", "cad") else "inclusive"
    return str(default) if default in BEHAVIORS else "exclusive"


def _line_items(call: Call, currency: str) -> list[dict[str, Any]]:
    raw = blank_array(required(call.params.get("line_items"), "line_items"), "line_items")
    if not raw:
        raise bad_request(
            "line_items must contain at least one line item.",
            "line_items",
            "parameter_invalid_empty",
        )
    if len(raw) > 100:
        raise bad_request("You can pass up to 100 line items.", "line_items")
    default_code = settings_of(call.account)["defaults"]["tax_code"] or DEFAULT_TAX_CODE
    behavior_default = _default_behavior(call, currency)
    lines: list[dict[str, Any]] = []
    references: set[str] = set()
    for i, item in enumerate(raw):
        p = f"line_items[{i}]"
        entry = mapping_value(item, p, _LINE_ITEM_KEYS)
        amount = integer_value(required(entry.get("amount"), f"{p}[amount]"), f"{p}[amount]", low=0)
        reference = string_value(
            required(entry.get("reference"), f"{p}[reference]"), f"{p}[reference]"
        )
        if reference in references:
            raise bad_request(
                f"Line item references must be unique: '{reference}' is used more than once.",
                f"{p}[reference]",
            )
        references.add(reference)
        quantity = integer_value(entry.get("quantity", "1"), f"{p}[quantity]", low=1)
        product_id = None
        code = None
        if "product" in entry:
            product_id = string_value(entry["product"], f"{p}[product]")
            product = call.account.table("product").get(product_id)
            if product is None:
                raise missing("product", product_id, f"{p}[product]")
            if isinstance(product.get("tax_code"), str):
                code = product["tax_code"]
        if "tax_code" in entry:
            code = tax_code(entry["tax_code"], f"{p}[tax_code]")
        behavior = behavior_default
        if "tax_behavior" in entry:
            behavior = choice_value(entry["tax_behavior"], f"{p}[tax_behavior]", BEHAVIORS)
        lines.append(
            {
                "amount": amount,
                "metadata": metadata_value(entry["metadata"], f"{p}[metadata]")
                if "metadata" in entry
                else None,
                "performance_location": string_value(
                    entry["performance_location"], f"{p}[performance_location]"
                )
                if "performance_location" in entry
                else None,
                "product": product_id,
                "quantity": quantity,
                "reference": reference,
                "tax_behavior": behavior,
                "tax_code": code or default_code,
            }
        )
    return lines


def _shipping_cost(call: Call, currency: str) -> dict[str, Any] | None:
    if "shipping_cost" not in call.params:
        return None
    p = "shipping_cost"
    given = mapping_value(
        call.params[p], p, ("amount", "shipping_rate", "tax_behavior", "tax_code")
    )
    behavior = _default_behavior(call, currency)
    code = SHIPPING_TAX_CODE
    if "shipping_rate" in given:
        for name in ("amount", "tax_behavior", "tax_code"):
            if name in given:
                raise bad_request(
                    f"You cannot pass {p}[{name}] together with {p}[shipping_rate].", f"{p}[{name}]"
                )
        rate_id = string_value(given["shipping_rate"], f"{p}[shipping_rate]")
        rate = call.account.table("shipping_rate").get(rate_id)
        if rate is None:
            raise missing("shipping rate", rate_id, f"{p}[shipping_rate]")
        amount = int((rate.get("fixed_amount") or {}).get("amount") or 0)
        if rate.get("tax_behavior") in BEHAVIORS:
            behavior = rate["tax_behavior"]
        if isinstance(rate.get("tax_code"), str):
            code = rate["tax_code"]
    else:
        amount = integer_value(required(given.get("amount"), f"{p}[amount]"), f"{p}[amount]", low=0)
        if "tax_behavior" in given:
            behavior = choice_value(given["tax_behavior"], f"{p}[tax_behavior]", BEHAVIORS)
        if "tax_code" in given:
            code = tax_code(given["tax_code"], f"{p}[tax_code]")
    return {"amount": amount, "amount_tax": 0, "tax_behavior": behavior, "tax_code": code}


def _ship_from(call: Call) -> dict[str, Any] | None:
    if "ship_from_details" not in call.params:
        return None
    given = mapping_value(call.params["ship_from_details"], "ship_from_details", ("address",))
    param = "ship_from_details[address]"
    return {"address": address(required(given.get("address"), param), param)}


@api.route(
    "POST",
    CALCULATIONS_URL,
    params=(
        "currency",
        "customer",
        "customer_details",
        "line_items",
        "ship_from_details",
        "shipping_cost",
        "tax_date",
    ),
    expand=("line_items",),
)
async def create_calculation(call: Call) -> dict[str, Any]:
    account = call.account
    currency = string_value(call.text("currency", required=True), "currency").lower()
    if len(currency) != 3 or not currency.isalpha():
        raise bad_request(f"Invalid currency: {currency}.", "currency", "parameter_invalid")
    today = now()
    tax_date = call.integer(
        "tax_date", default=today, low=today - _TAX_DATE_WINDOW, high=today + _TAX_DATE_WINDOW
    )
    assert tax_date is not None
    customer, details = _customer_details(call)
    lines = _line_items(call, currency)
    shipping = _shipping_cost(call, currency)
    ship_from = _ship_from(call)
    if settings_of(account)["status"] != "active":
        raise bad_request(
            "Stripe Tax has not been activated on your account. Please visit "
            "https://stripe.com/docs/tax/set-up to get started.",
            None,
            "stripe_tax_inactive",
        )
    calculator = Calculator(account, details, tax_date)
    total = 0
    items = []
    for line in lines:
        tax = calculator.line(line["amount"], line["tax_code"], line["tax_behavior"])
        total += line["amount"] + (tax if line["tax_behavior"] == "exclusive" else 0)
        items.append(
            make_object(
                CALC_ITEM,
                account.ids.new("tax_li", 14),
                amount_tax=tax,
                tax_breakdown=calculator.line_breakdown,
                **line,
            )
        )
    if shipping is not None:
        tax = calculator.line(shipping["amount"], shipping["tax_code"], shipping["tax_behavior"])
        shipping["amount_tax"] = tax
        total += shipping["amount"] + (tax if shipping["tax_behavior"] == "exclusive" else 0)
    obj = make_object(
        CALCULATION,
        account.ids.new("taxcalc"),
        amount_total=total,
        currency=currency,
        customer=customer,
        customer_details=details,
        expires_at=today + CALCULATION_LIFETIME,
        ship_from_details=ship_from,
        shipping_cost=shipping,
        tax_amount_exclusive=calculator.exclusive,
        tax_amount_inclusive=calculator.inclusive,
        tax_breakdown=list(calculator.breakdown.values()),
        tax_date=tax_date,
    )
    return store(call, obj, items, CALCULATIONS_URL)


@api.route("GET", "/v1/tax/calculations/{calculation}", params=(), expand=("line_items",))
async def retrieve_calculation(call: Call) -> dict[str, Any]:
    obj = call.account.get(CALCULATION, call.id("calculation"), "tax calculation")
    return with_line_items(call, obj, CALCULATIONS_URL)


@api.route("GET", "/v1/tax/calculations/{calculation}/line_items", params=())
async def list_calculation_line_items(call: Call) -> dict[str, Any]:
    return list_line_items(call, CALCULATION, "tax calculation", CALCULATIONS_URL)
