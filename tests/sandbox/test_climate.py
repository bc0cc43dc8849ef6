"""Climate products, suppliers and orders in the sandbox, through the gateway with the SDK."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
import stripe

from sandbox.core import SandboxSettings
from tests.sandbox.conftest import SandboxStack
from tests.sandbox.fidelity import assert_stripe_fields

OFFTAKE_2027 = "climsku_frontier_offtake_portfolio_2027"
PILOT = "climsku_frontier_pilot_portfolio_2029"
SPOT = "climsku_frontier_spot_portfolio"
DELAY = 0.1


@pytest.fixture
def sandbox_settings() -> SandboxSettings:
    return SandboxSettings(report_delay=DELAY, seed=1234)


def _invalid(info: pytest.ExceptionInfo[stripe.InvalidRequestError]) -> tuple[Any, Any]:
    return info.value.code, info.value.param


# --------------------------------------------------------------------------- products


def test_products_are_seeded_with_prices_and_suppliers(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    products = client.v1.climate.products.list()
    assert [p.id for p in products.data] == [
        SPOT,
        PILOT,
        "climsku_frontier_offtake_portfolio_2030",
        OFFTAKE_2027,
    ]
    assert products.has_more is False
    product = client.v1.climate.products.retrieve(OFFTAKE_2027)
    assert product.current_prices_per_metric_ton["usd"].to_dict() == {
        "amount_fees": 1650,
        "amount_subtotal": 55000,
        "amount_total": 56650,
    }
    assert product.delivery_year == 2027 and product.metric_tons_available == Decimal("1000000")
    assert [s.id for s in product.suppliers][:2] == ["climsup_charm_industrial", "climsup_heirloom"]
    assert client.v1.climate.products.retrieve(SPOT).delivery_year == time.gmtime().tm_year
    for p in products.data:
        assert_stripe_fields(p)
        for supplier in p.suppliers:
            assert_stripe_fields(supplier)
    page = client.v1.climate.products.list({"limit": 2})
    assert len(page.data) == 2 and page.has_more is True


def test_suppliers_retrieve_list_and_paginate(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    everything = client.v1.climate.suppliers.list({"limit": 100}).data
    assert len(everything) == 6
    ids = [s.id for s in everything]
    first = client.v1.climate.suppliers.list({"limit": 4})
    assert [s.id for s in first.data] == ids[:4] and first.has_more is True
    rest = client.v1.climate.suppliers.list({"limit": 4, "starting_after": ids[3]})
    assert [s.id for s in rest.data] == ids[4:] and rest.has_more is False
    back = client.v1.climate.suppliers.list({"limit": 2, "ending_before": ids[4]})
    assert [s.id for s in back.data] == ids[2:4]
    heirloom = client.v1.climate.suppliers.retrieve("climsup_heirloom")
    assert heirloom.name == "Heirloom" and heirloom.removal_pathway == "direct_air_capture"
    assert_stripe_fields(heirloom)


def test_unknown_product_and_supplier_are_404(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.climate.products.retrieve("climsku_nope")
    assert info.value.http_status == 404 and _invalid(info) == ("resource_missing", "id")
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.climate.suppliers.retrieve("climsup_nope")
    assert info.value.http_status == 404 and _invalid(info) == ("resource_missing", "id")


# --------------------------------------------------------------------------- orders


def test_order_create_retrieve_update_list_cancel(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    order = client.v1.climate.orders.create(
        {
            "product": OFFTAKE_2027,
            "metric_tons": Decimal("0.01"),
            "beneficiary": {"public_name": "Frontier Climate"},
            "metadata": {"order_id": "6735"},
        }
    )
    assert order.id.startswith("climorder_") and order.object == "climate.order"
    # Stripe's own example: 0.01 t at 550.00/t plus 3% fees
    assert (order.amount_subtotal, order.amount_fees, order.amount_total) == (550, 17, 567)
    assert order.metric_tons == Decimal("0.01") and order.currency == "usd"
    assert order.status == "confirmed" and order.confirmed_at == order.created
    assert order.product == OFFTAKE_2027 and order.expected_delivery_year == 2027
    assert order.beneficiary is not None and order.beneficiary.public_name == "Frontier Climate"
    assert order.canceled_at is None and order.delivery_details == []
    assert_stripe_fields(order)
    product = client.v1.climate.products.retrieve(OFFTAKE_2027)
    assert product.metric_tons_available == Decimal("999999.99")

    got = client.v1.climate.orders.retrieve(order.id)
    assert got.to_dict() == order.to_dict()
    updated = client.v1.climate.orders.update(
        order.id,
        {"beneficiary": {"public_name": "Acme"}, "metadata": {"order_id": "", "team": "x"}},
    )
    assert updated.beneficiary is not None and updated.beneficiary.public_name == "Acme"
    assert updated.metadata.to_dict() == {"team": "x"}
    cleared = client.v1.climate.orders.update(order.id, {"beneficiary": ""})
    assert cleared.beneficiary is None
    assert [o.id for o in client.v1.climate.orders.list().data] == [order.id]

    canceled = client.v1.climate.orders.cancel(order.id)
    assert canceled.status == "canceled" and canceled.cancellation_reason == "requested"
    assert isinstance(canceled.canceled_at, int)
    assert_stripe_fields(canceled)
    product = client.v1.climate.products.retrieve(OFFTAKE_2027)
    assert product.metric_tons_available == Decimal("1000000")
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.climate.orders.cancel(order.id)
    assert info.value.http_status == 400 and "status of canceled" in str(info.value)


def test_order_by_amount_and_in_another_currency(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    order = client.v1.climate.orders.create({"product": OFFTAKE_2027, "amount": 56650})
    assert order.metric_tons == Decimal("1")
    assert (order.amount_subtotal, order.amount_fees, order.amount_total) == (55000, 1650, 56650)
    assert order.beneficiary is None
    eur = client.v1.climate.orders.create(
        {"product": OFFTAKE_2027, "metric_tons": Decimal("2"), "currency": "EUR"}
    )
    prices = client.v1.climate.products.retrieve(OFFTAKE_2027).current_prices_per_metric_ton
    assert eur.currency == "eur"
    assert eur.amount_subtotal == 2 * prices["eur"].amount_subtotal
    assert eur.amount_total == eur.amount_subtotal + eur.amount_fees


def test_product_expands_on_retrieve_and_list(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    order = client.v1.climate.orders.create({"product": PILOT, "metric_tons": Decimal("1.5")})
    expanded = client.v1.climate.orders.retrieve(order.id, {"expand": ["product"]}).product
    assert isinstance(expanded, stripe.climate.Product)
    assert expanded.object == "climate.product" and expanded.id == PILOT
    assert expanded.metric_tons_available == Decimal("23.5")
    assert_stripe_fields(expanded)
    listed = client.v1.climate.orders.list({"expand": ["data.product"]}).data[0].product
    assert isinstance(listed, stripe.climate.Product) and listed.id == PILOT
    # expanding never changes the stored order
    assert client.v1.climate.orders.retrieve(order.id).product == PILOT
    updated = client.v1.climate.orders.update(order.id, {"expand": ["product"]}).product
    assert isinstance(updated, stripe.climate.Product) and updated.id == PILOT


def test_orders_paginate_newest_first(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    created = [
        client.v1.climate.orders.create(
            {"product": OFFTAKE_2027, "metric_tons": Decimal("0.1"), "metadata": {"n": str(i)}}
        ).id
        for i in range(12)
    ]
    everything = [o.id for o in client.v1.climate.orders.list({"limit": 100}).data]
    assert sorted(everything) == sorted(created) and len(everything) == 12
    first = client.v1.climate.orders.list({"limit": 5})
    assert [o.id for o in first.data] == everything[:5] and first.has_more is True
    second = client.v1.climate.orders.list({"limit": 5, "starting_after": everything[4]})
    assert [o.id for o in second.data] == everything[5:10] and second.has_more is True
    third = client.v1.climate.orders.list({"limit": 5, "starting_after": everything[9]})
    assert [o.id for o in third.data] == everything[10:] and third.has_more is False
    back = client.v1.climate.orders.list({"limit": 3, "ending_before": everything[5]})
    assert [o.id for o in back.data] == everything[2:5] and back.has_more is True
    walked = [o.id for o in client.v1.climate.orders.list({"limit": 4}).auto_paging_iter()]
    assert walked == everything


def test_spot_order_is_delivered_and_then_cannot_be_canceled(
    sandbox_stack: SandboxStack,
) -> None:
    client = sandbox_stack.sdk()
    order = client.v1.climate.orders.create({"product": SPOT, "metric_tons": Decimal("2")})
    assert order.status == "confirmed" and order.delivered_at is None
    time.sleep(DELAY + 0.05)
    delivered = client.v1.climate.orders.retrieve(order.id)
    assert delivered.status == "delivered" and isinstance(delivered.delivered_at, int)
    assert delivered.certificate is not None
    (detail,) = delivered.delivery_details
    assert detail.metric_tons == "2" and detail.supplier.id == "climsup_charm_industrial"
    assert_stripe_fields(delivered)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.climate.orders.cancel(order.id)
    assert info.value.http_status == 400 and "status of delivered" in str(info.value)
    # an offtake order is not a spot purchase: it stays confirmed
    offtake = client.v1.climate.orders.create(
        {"product": OFFTAKE_2027, "metric_tons": Decimal("1")}
    )
    time.sleep(DELAY + 0.05)
    assert client.v1.climate.orders.retrieve(offtake.id).status == "confirmed"


def test_order_create_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    orders = client.v1.climate.orders
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create({"metric_tons": Decimal("1")})  # type: ignore[typeddict-item]
    assert _invalid(info) == ("parameter_missing", "product")
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create({"product": OFFTAKE_2027})
    assert info.value.http_status == 400 and info.value.code == "parameter_missing"
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create({"product": OFFTAKE_2027, "metric_tons": Decimal("1"), "amount": 100})
    assert _invalid(info) == ("parameter_invalid", "amount")
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create({"product": OFFTAKE_2027, "amount": "lots"})  # type: ignore[typeddict-item]
    assert _invalid(info) == ("parameter_invalid_integer", "amount")
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create({"product": OFFTAKE_2027, "metric_tons": "-1"})  # type: ignore[typeddict-item]
    assert info.value.param == "metric_tons"
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create(
            {"product": OFFTAKE_2027, "metric_tons": Decimal("1"), "tons": "1"}  # type: ignore[typeddict-unknown-key]
        )
    assert _invalid(info) == ("parameter_unknown", "tons")
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create({"product": "climsku_nope", "metric_tons": Decimal("1")})
    assert info.value.http_status == 400 and _invalid(info) == ("resource_missing", "product")
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create({"product": OFFTAKE_2027, "metric_tons": Decimal("1"), "currency": "jpy"})
    assert info.value.param == "currency"
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create({"product": PILOT, "metric_tons": Decimal("25.5")})
    assert info.value.param == "metric_tons" and "exceed" in str(info.value)
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create({"product": PILOT, "amount": 10**9})
    assert info.value.param == "amount" and "exceed" in str(info.value)
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create(
            {"product": PILOT, "metric_tons": "1", "beneficiary": {"public_name": ""}}  # type: ignore[typeddict-item]
        )
    assert _invalid(info) == ("parameter_invalid_empty", "beneficiary[public_name]")
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.create(
            {"product": PILOT, "metric_tons": "1", "beneficiary": {"name": "x"}}  # type: ignore[typeddict-item]
        )
    assert _invalid(info) == ("parameter_unknown", "beneficiary[name]")
    # nothing was reserved by the failed calls
    assert client.v1.climate.products.retrieve(PILOT).metric_tons_available == Decimal("25")


def test_order_errors_on_retrieve_update_cancel_and_list(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    orders = client.v1.climate.orders
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.retrieve("climorder_nope")
    assert info.value.http_status == 404 and _invalid(info) == ("resource_missing", "id")
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.update("climorder_nope", {"metadata": {"a": "b"}})
    assert info.value.http_status == 404 and _invalid(info) == ("resource_missing", "id")
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.cancel("climorder_nope")
    assert info.value.http_status == 404 and _invalid(info) == ("resource_missing", "id")
    order = orders.create({"product": PILOT, "metric_tons": Decimal("1")})
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.update(order.id, {"metric_tons": "2"})  # type: ignore[arg-type]
    assert _invalid(info) == ("parameter_unknown", "metric_tons")
    with pytest.raises(stripe.InvalidRequestError) as info:
        orders.list({"limit": "many"})  # type: ignore[arg-type]
    assert _invalid(info) == ("parameter_invalid_integer", "limit")
