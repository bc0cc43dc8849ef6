"""Stripe Climate: products and suppliers (seeded, read-only) and orders.

Orders are paid from the balance when they are created, so they start ``confirmed``
(as in Stripe's create example). An order for a *spot* product (its delivery year is the
current year) becomes ``delivered`` ``settings.report_delay`` seconds after it was
confirmed, computed on read. Orders can be canceled while ``open`` or ``confirmed``;
canceling gives the reserved tons back to the product.
"""

from __future__ import annotations

import copy
import time
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

from sandbox.core import (
    Account,
    Call,
    bad_request,
    make_object,
    missing,
    page,
    positive_decimal,
    required,
    string_value,
    template,
)
from sandbox.resources import REGISTRY as api

ORDER = "climate.order"
PRODUCT = "climate.product"
SUPPLIER = "climate.supplier"

#: fee Frontier charges on top of the removal price (3%, as in Stripe's examples)
_FEE_RATE = Decimal("0.03")
#: the account's default currency, used when an order names none
_DEFAULT_CURRENCY = "usd"
_CANCELABLE = ("open", "confirmed")
_TON_PLACES = Decimal("0.000001")

# --------------------------------------------------------------------------- seeds

_SUPPLIERS: list[dict[str, Any]] = [
    *template(PRODUCT)["suppliers"],
    {
        "id": "climsup_living_carbon",
        "info_url": "https://frontierclimate.com/portfolio/living-carbon",
        "livemode": False,
        "locations": [
            {
                "city": "Hayward",
                "country": "US",
                "latitude": 37.6688,
                "longitude": -122.0808,
                "region": "CA",
            }
        ],
        "name": "Living Carbon",
        "object": SUPPLIER,
        "removal_pathway": "biomass_carbon_removal_and_storage",
    },
]

#: (id, name, delivery year, usd subtotal per ton, tons available, supplier ids, created)
_PRODUCTS: list[tuple[str, str, int | None, int, str, list[str], int]] = [
    (
        "climsku_frontier_offtake_portfolio_2027",
        "Frontier's 2027 offtake portfolio",
        2027,
        55000,
        "1000000",
        [
            "climsup_charm_industrial",
            "climsup_heirloom",
            "climsup_lithos",
            "climsup_vaulted",
            "climsup_carbon_capture_inc",
        ],
        1688169600,
    ),
    (
        "climsku_frontier_offtake_portfolio_2030",
        "Frontier's 2030 offtake portfolio",
        2030,
        48000,
        "500000",
        ["climsup_heirloom", "climsup_lithos", "climsup_living_carbon"],
        1688256000,
    ),
    (
        "climsku_frontier_pilot_portfolio_2029",
        "Frontier's 2029 pilot portfolio",
        2029,
        72000,
        "25",
        ["climsup_carbon_capture_inc"],
        1688342400,
    ),
    (
        "climsku_frontier_spot_portfolio",
        "Frontier's spot portfolio",
        None,  # the current year: a spot purchase, delivered soon after it is confirmed
        60000,
        "10000",
        ["climsup_charm_industrial", "climsup_vaulted"],
        1688428800,
    ),
]

#: currency -> units of it per usd (prices are quoted in each settlement currency)
_FX = {"usd": Decimal(1), "eur": Decimal("0.92"), "gbp": Decimal("0.79"), "cad": Decimal("1.36")}


def _price(usd_subtotal: int, currency: str) -> dict[str, int]:
    subtotal = int((Decimal(usd_subtotal) * _FX[currency]).quantize(Decimal(1), ROUND_HALF_UP))
    fees = int((Decimal(subtotal) * _FEE_RATE).quantize(Decimal(1), ROUND_HALF_UP))
    return {"amount_fees": fees, "amount_subtotal": subtotal, "amount_total": subtotal + fees}


@api.seeder
def seed(account: Account) -> None:
    suppliers = account.table(SUPPLIER)
    for supplier in _SUPPLIERS:
        suppliers[supplier["id"]] = copy.deepcopy(supplier)
    year = time.gmtime().tm_year
    for pid, name, delivery_year, usd, available, supplier_ids, created in _PRODUCTS:
        product = make_object(
            PRODUCT,
            pid,
            created=created,
            current_prices_per_metric_ton={c: _price(usd, c) for c in _FX},
            delivery_year=delivery_year or year,
            metric_tons_available=available,
            name=name,
            suppliers=[copy.deepcopy(suppliers[s]) for s in supplier_ids],
        )
        account.add(product, PRODUCT)


# --------------------------------------------------------------------------- helpers


def _tons(value: Decimal) -> str:
    """A decimal as Stripe writes tons: no exponent, no trailing zeros."""
    return format(value.normalize(), "f")


def _beneficiary(call: Call, *, updating: bool) -> tuple[bool, dict[str, str] | None]:
    """(given, value) for ``beneficiary``; an empty value (or name) clears it on update."""
    raw = call.params.get("beneficiary")
    if raw is None:
        return False, None
    if raw == "" and updating:
        return True, None
    given = call.mapping("beneficiary", keys=("public_name",))
    assert given is not None
    param = "beneficiary[public_name]"
    name = string_value(required(given.get("public_name"), param), param)
    if name == "":
        if updating:
            return True, None
        raise bad_request(f"Invalid {param}: must not be empty.", param, "parameter_invalid_empty")
    return True, {"public_name": name}


def _confirmed_key(order_id: str) -> str:
    return f"{ORDER}:{order_id}:confirmed"


_DELIVERY_FIELDS = ("status", "delivered_at", "certificate", "delivery_details")


def _advance(account: Account, order: dict[str, Any]) -> dict[str, Any]:
    """Deliver a confirmed spot order once ``report_delay`` has passed since confirming."""
    if order["status"] != "confirmed":
        return order
    product = account.table(PRODUCT).get(order["product"])
    if product is None or product["delivery_year"] > time.gmtime().tm_year:
        return order
    confirmed = account.private.get(_confirmed_key(order["id"]))
    if confirmed is None:
        return order
    due = confirmed + account.settings.report_delay
    if time.time() < due:
        return order
    supplier = product["suppliers"][0] if product["suppliers"] else None
    previous = {k: copy.deepcopy(order[k]) for k in _DELIVERY_FIELDS}
    order["status"] = "delivered"
    order["delivered_at"] = int(due)
    order["certificate"] = f"https://climate.stripe.com/orders/{order['id']}/certificate"
    if supplier is not None:
        order["delivery_details"] = [
            {
                "delivered_at": int(due),
                "location": copy.deepcopy(supplier["locations"][0])
                if supplier["locations"]
                else None,
                "metric_tons": order["metric_tons"],
                "registry_url": None,
                "supplier": copy.deepcopy(supplier),
            }
        ]
    account.emit("climate.order.delivered", order, previous)
    return order


def _order(call: Call) -> dict[str, Any]:
    order = call.account.get(ORDER, call.id(), "climate order")
    return _advance(call.account, order)


def _render(call: Call, order: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``order``, or a copy with ``product`` expanded when asked (``prefix`` for lists)."""
    if f"{prefix}product" not in call.expand:
        return order
    out = dict(order)
    product = call.account.table(PRODUCT).get(order["product"])
    if product is not None:
        out["product"] = copy.deepcopy(product)
    return out


# --------------------------------------------------------------------------- products


@api.route("GET", "/v1/climate/products/{id}", params=())
async def retrieve_product(call: Call) -> dict[str, Any]:
    return call.account.get(PRODUCT, call.id(), "climate product")


@api.route("GET", "/v1/climate/products", params=())
async def list_products(call: Call) -> dict[str, Any]:
    return page(call, call.account.table(PRODUCT).values(), "/v1/climate/products")


# --------------------------------------------------------------------------- suppliers


@api.route("GET", "/v1/climate/suppliers/{id}", params=())
async def retrieve_supplier(call: Call) -> dict[str, Any]:
    return call.account.get(SUPPLIER, call.id(), "climate supplier")


@api.route("GET", "/v1/climate/suppliers", params=())
async def list_suppliers(call: Call) -> dict[str, Any]:
    return page(call, call.account.table(SUPPLIER).values(), "/v1/climate/suppliers")


# --------------------------------------------------------------------------- orders


@api.route(
    "POST",
    "/v1/climate/orders",
    params=("product", "amount", "metric_tons", "currency", "beneficiary", "metadata"),
    expand=("product",),
)
async def create_order(call: Call) -> dict[str, Any]:
    product_id = call.text("product", required=True)
    assert product_id is not None
    raw_tons = call.text("metric_tons")
    tons = None if raw_tons is None else positive_decimal(raw_tons, "metric_tons")
    amount = call.integer("amount")
    if tons is not None and amount is not None:
        raise bad_request(
            "You may only specify one of these parameters: amount, metric_tons.",
            "amount",
            "parameter_invalid",
        )
    if tons is None and amount is None:
        raise bad_request(
            "You must specify one of these parameters: amount, metric_tons.",
            "metric_tons",
            "parameter_missing",
        )
    if amount is not None and amount < 1:
        raise bad_request(
            "Invalid amount: must be a positive integer.", "amount", "parameter_invalid_integer"
        )
    product = call.account.table(PRODUCT).get(product_id)
    if product is None:
        raise missing("climate product", product_id, "product")
    currency = (call.text("currency") or _DEFAULT_CURRENCY).lower()
    prices = product["current_prices_per_metric_ton"].get(currency)
    if prices is None:
        raise bad_request(
            f"The climate product {product_id} cannot be ordered in {currency}; it is priced "
            f"in {', '.join(sorted(product['current_prices_per_metric_ton']))}.",
            "currency",
            "parameter_invalid",
        )
    _, beneficiary = _beneficiary(call, updating=False)
    per_ton_subtotal = Decimal(prices["amount_subtotal"])
    per_ton_fees = Decimal(prices["amount_fees"])
    if tons is not None:
        subtotal = int((tons * per_ton_subtotal).quantize(Decimal(1), ROUND_HALF_UP))
        fees = int((tons * per_ton_fees).quantize(Decimal(1), ROUND_HALF_UP))
        tons_param = "metric_tons"
    else:
        assert amount is not None
        tons = (Decimal(amount) / (per_ton_subtotal + per_ton_fees)).quantize(
            _TON_PLACES, ROUND_DOWN
        )
        subtotal = int((tons * per_ton_subtotal).quantize(Decimal(1), ROUND_HALF_UP))
        fees = amount - subtotal
        tons_param = "amount"
    if tons <= 0 or subtotal < 1:
        raise bad_request(
            "The order is too small: it must buy at least one minor currency unit of "
            "carbon removal.",
            tons_param,
            "parameter_invalid",
        )
    available = Decimal(product["metric_tons_available"])
    if tons > available:
        raise bad_request(
            f"The requested {_tons(tons)} metric tons exceed the {_tons(available)} metric "
            f"tons available for climate product {product_id}.",
            tons_param,
            "parameter_invalid",
        )
    product["metric_tons_available"] = _tons(available - tons)
    now = time.time()
    order = make_object(
        ORDER,
        call.account.ids.new("climorder"),
        created=int(now),
        amount_fees=fees,
        amount_subtotal=subtotal,
        amount_total=subtotal + fees,
        beneficiary=beneficiary,
        canceled_at=None,
        cancellation_reason=None,
        certificate=None,
        confirmed_at=int(now),
        currency=currency,
        delayed_at=None,
        delivered_at=None,
        delivery_details=[],
        expected_delivery_year=product["delivery_year"],
        metadata=call.metadata(),
        metric_tons=_tons(tons),
        product=product_id,
        product_substituted_at=None,
        status="confirmed",
    )
    account = call.account
    account.private[_confirmed_key(order["id"])] = now
    account.add(order, ORDER)
    account.emit("climate.order.created", order)
    account.at(now + account.settings.report_delay, lambda: _advance(account, order))
    return _render(call, order)


@api.route("GET", "/v1/climate/orders/{id}", params=(), expand=("product",))
async def retrieve_order(call: Call) -> dict[str, Any]:
    return _render(call, _order(call))


@api.route(
    "POST", "/v1/climate/orders/{id}", params=("beneficiary", "metadata"), expand=("product",)
)
async def update_order(call: Call) -> dict[str, Any]:
    order = _order(call)
    given, beneficiary = _beneficiary(call, updating=True)
    if given:
        order["beneficiary"] = beneficiary
    order["metadata"] = call.metadata(order["metadata"])
    return _render(call, order)


@api.route("GET", "/v1/climate/orders", params=(), expand=("data.product",))
async def list_orders(call: Call) -> dict[str, Any]:
    orders = [_advance(call.account, o) for o in call.account.table(ORDER).values()]
    listed = page(call, orders, "/v1/climate/orders")
    listed["data"] = [_render(call, o, "data.") for o in listed["data"]]
    return listed


@api.route("POST", "/v1/climate/orders/{id}/cancel", params=(), expand=("product",))
async def cancel_order(call: Call) -> dict[str, Any]:
    order = _order(call)
    if order["status"] not in _CANCELABLE:
        raise bad_request(
            f"You cannot cancel this climate order because it has a status of "
            f"{order['status']}. Only orders with a status of open or confirmed can be "
            "canceled."
        )
    previous = {k: order[k] for k in ("status", "canceled_at", "cancellation_reason")}
    order["status"] = "canceled"
    order["canceled_at"] = int(time.time())
    order["cancellation_reason"] = "requested"
    product = call.account.table(PRODUCT).get(order["product"])
    if product is not None:
        restored = Decimal(product["metric_tons_available"]) + Decimal(order["metric_tons"])
        product["metric_tons_available"] = _tons(restored)
    call.account.emit("climate.order.canceled", order, previous)
    return _render(call, order)
