"""Stripe Tax transactions: from a calculation, reversals, retrieve, list line items.

A transaction copies an unexpired calculation; a reversal (full, partial by line item and
shipping, or a flat amount spread over them) takes back what remains of a transaction, never
more. A transaction's ``line_items`` is null unless expanded.
"""

from __future__ import annotations

import copy
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sandbox.core import (
    Account,
    Call,
    bad_request,
    integer_value,
    make_object,
    mapping_value,
    missing,
    required,
    string_value,
)
from sandbox.resources import REGISTRY as api
from sandbox.resources._tax_common import (
    CALCULATION,
    TRANSACTION,
    TRANSACTIONS_URL,
    TX_ITEM,
    blank_array,
    line_items,
    list_line_items,
    metadata_value,
    now,
    store,
    with_line_items,
)

#: account.private key: transaction id -> reversal bookkeeping
_REVERSED = "tax.reversed"

_REVERSAL_ITEM_KEYS = (
    "amount",
    "amount_tax",
    "metadata",
    "original_line_item",
    "quantity",
    "reference",
)


def _new_transaction(
    call: Call,
    source: dict[str, Any],
    *,
    posted_at: int | None,
    reference: str,
    reversal: dict[str, str] | None,
    shipping_cost: dict[str, Any] | None,
) -> dict[str, Any]:
    """A transaction (a reversal, with ``reversal``) for ``source``'s customer and tax date."""
    return make_object(
        TRANSACTION,
        call.account.ids.new("tax"),
        currency=source["currency"],
        customer=source["customer"],
        customer_details=copy.deepcopy(source["customer_details"]),
        line_items=None,
        metadata=call.metadata(),
        posted_at=posted_at,
        reference=reference,
        reversal=reversal,
        ship_from_details=copy.deepcopy(source["ship_from_details"]),
        shipping_cost=shipping_cost,
        tax_date=source["tax_date"],
        type="transaction" if reversal is None else "reversal",
    )


def _new_line_item(
    account: Account,
    source: dict[str, Any],
    *,
    amount: int,
    amount_tax: int,
    metadata: Any,
    quantity: int,
    reference: str,
    reversal: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A transaction line item for ``source`` (a calculation's or transaction's line item)."""
    return make_object(
        TX_ITEM,
        account.ids.new("tax_li", 14),
        amount=amount,
        amount_tax=amount_tax,
        metadata=copy.deepcopy(metadata),
        product=source["product"],
        quantity=quantity,
        reference=reference,
        reversal=reversal,
        tax_behavior=source["tax_behavior"],
        tax_code=source["tax_code"],
        type="transaction" if reversal is None else "reversal",
    )


def _unique_reference(account: Account, reference: str) -> None:
    for other in account.table(TRANSACTION).values():
        if other["reference"] == reference:
            raise bad_request(
                f"A transaction with reference '{reference}' already exists "
                f"({other['id']}). References must be unique across all transactions.",
                "reference",
            )


def _reversed(account: Account, transaction_id: str) -> dict[str, Any]:
    """How much of each line item (and shipping) of a transaction is already reversed."""
    books: dict[str, dict[str, Any]] = account.private.setdefault(_REVERSED, {})
    return books.setdefault(transaction_id, {"items": {}, "shipping": [0, 0], "full": False})


@api.route(
    "POST",
    "/v1/tax/transactions/create_from_calculation",
    params=("calculation", "metadata", "posted_at", "reference"),
    expand=("line_items",),
)
async def create_from_calculation(call: Call) -> dict[str, Any]:
    account = call.account
    calc_id = string_value(call.text("calculation", required=True), "calculation")
    reference = string_value(call.text("reference", required=True), "reference")
    calc = account.table(CALCULATION).get(calc_id)
    if calc is None:
        raise missing("calculation", calc_id, "calculation")
    today = now()
    if today >= calc["expires_at"]:
        raise bad_request(
            f"The calculation '{calc_id}' has expired and can no longer be used to create a "
            "transaction.",
            "calculation",
        )
    _unique_reference(account, reference)
    posted_at = call.integer(
        "posted_at",
        default=today,
        low=min(calc["tax_date"], today),
        high=max(calc["tax_date"], today),
    )
    obj = _new_transaction(
        call,
        calc,
        posted_at=posted_at,
        reference=reference,
        reversal=None,
        shipping_cost=copy.deepcopy(calc["shipping_cost"]),
    )
    items = [
        _new_line_item(
            account,
            line,
            amount=line["amount"],
            amount_tax=line["amount_tax"],
            metadata=line["metadata"],
            quantity=line["quantity"],
            reference=line["reference"],
        )
        for line in line_items(account, calc_id)
    ]
    return store(call, obj, items, TRANSACTIONS_URL)


def _negative(value: Any, param: str) -> int:
    number = integer_value(required(value, param), param)
    if number > 0:
        raise bad_request(f"{param} must be negative or zero: amounts are reversed.", param)
    return number


def _check_remaining(reversing: int, remaining: int, param: str) -> None:
    if -reversing > remaining:
        raise bad_request(
            f"{param} ({reversing}) exceeds the amount that remains to be reversed ({-remaining}).",
            param,
        )


def _split(amounts: list[int], total: int) -> list[int]:
    """Split ``total`` proportionally to ``amounts`` (summing exactly to ``total``)."""
    whole = sum(amounts)
    shares = [
        int((Decimal(a) * total / whole).quantize(Decimal(1), ROUND_HALF_UP)) for a in amounts
    ]
    drift = total - sum(shares)
    for i in reversed(range(len(shares))):
        if drift == 0:
            break
        if amounts[i]:
            step = max(-shares[i], min(drift, amounts[i] - shares[i]))
            shares[i] += step
            drift -= step
    return shares


@api.route(
    "POST",
    "/v1/tax/transactions/create_reversal",
    params=(
        "flat_amount",
        "line_items",
        "metadata",
        "mode",
        "original_transaction",
        "reference",
        "shipping_cost",
    ),
    expand=("line_items",),
)
async def create_reversal(call: Call) -> dict[str, Any]:
    account = call.account
    original_id = string_value(
        call.text("original_transaction", required=True), "original_transaction"
    )
    mode = call.choice("mode", ("full", "partial"), required=True)
    reference = string_value(call.text("reference", required=True), "reference")
    original = account.table(TRANSACTION).get(original_id)
    if original is None:
        raise missing("transaction", original_id, "original_transaction")
    if original["type"] != "transaction":
        raise bad_request(
            "A reversal transaction cannot itself be reversed.", "original_transaction"
        )
    books = _reversed(account, original_id)
    if books["full"]:
        raise bad_request(
            f"The transaction {original_id} has already been fully reversed.",
            "original_transaction",
        )
    _unique_reference(account, reference)
    originals = {li["id"]: li for li in line_items(account, original_id)}
    done: dict[str, list[int]] = books["items"]

    def remaining(li: dict[str, Any]) -> tuple[int, int]:
        spent = done.get(li["id"], [0, 0])
        return li["amount"] - spent[0], li["amount_tax"] - spent[1]

    shipping = original["shipping_cost"]
    ship_left = (
        (shipping["amount"] - books["shipping"][0], shipping["amount_tax"] - books["shipping"][1])
        if shipping
        else (0, 0)
    )
    #: (original line item, amount, amount_tax, quantity, reference, metadata)
    reversing: list[tuple[dict[str, Any], int, int, int, str, Any]] = []
    ship_reversal: tuple[int, int] | None = None
    given = [n for n in ("line_items", "shipping_cost", "flat_amount") if n in call.params]
    if mode == "full":
        if given:
            raise bad_request(f"{given[0]} cannot be used with mode=full.", given[0])
        for li in originals.values():
            amount, tax = remaining(li)
            if amount or tax or li["id"] not in done:
                reversing.append(
                    (li, -amount, -tax, li["quantity"], li["reference"], li["metadata"])
                )
        if shipping:
            ship_reversal = (-ship_left[0], -ship_left[1])
    elif not given:
        raise bad_request(
            "One of line_items, shipping_cost or flat_amount is required when mode=partial.",
            "line_items",
        )
    elif "flat_amount" in call.params:
        if len(given) > 1:
            raise bad_request(
                "flat_amount cannot be combined with line_items or shipping_cost.", "flat_amount"
            )
        flat = _negative(call.params["flat_amount"], "flat_amount")
        if flat == 0:
            raise bad_request("flat_amount must be a negative amount.", "flat_amount")
        parts: list[tuple[dict[str, Any] | None, int, int, bool]] = [
            (li, *remaining(li), li["tax_behavior"] == "inclusive") for li in originals.values()
        ]
        if shipping:
            parts.append((None, *ship_left, shipping["tax_behavior"] == "inclusive"))
        gross = [a + (0 if inclusive else t) for _, a, t, inclusive in parts]
        _check_remaining(flat, sum(gross), "flat_amount")
        for (source, _amount, tax, inclusive), g, share in zip(
            parts, gross, _split(gross, -flat), strict=True
        ):
            if not g:
                continue
            share_tax = int((Decimal(share) * tax / g).quantize(Decimal(1), ROUND_HALF_UP))
            share_amount = share if inclusive else share - share_tax
            if source is None:
                ship_reversal = (-share_amount, -share_tax)
            else:
                reversing.append(
                    (
                        source,
                        -share_amount,
                        -share_tax,
                        source["quantity"],
                        source["reference"],
                        source["metadata"],
                    )
                )
    else:
        seen: set[str] = set()
        refs: set[str] = set()
        raw_items = blank_array(call.params.get("line_items", []), "line_items")
        for i, item in enumerate(raw_items):
            p = f"line_items[{i}]"
            entry = mapping_value(item, p, _REVERSAL_ITEM_KEYS)
            li_id = string_value(
                required(entry.get("original_line_item"), f"{p}[original_line_item]"),
                f"{p}[original_line_item]",
            )
            target = originals.get(li_id)
            if target is None:
                raise missing("transaction line item", li_id, f"{p}[original_line_item]")
            if li_id in seen:
                raise bad_request(
                    f"Line item {li_id} is reversed more than once in this request.",
                    f"{p}[original_line_item]",
                )
            seen.add(li_id)
            ref = string_value(
                required(entry.get("reference"), f"{p}[reference]"), f"{p}[reference]"
            )
            if ref in refs:
                raise bad_request(
                    f"Line item references must be unique: '{ref}' is used twice.",
                    f"{p}[reference]",
                )
            refs.add(ref)
            amount = _negative(entry.get("amount"), f"{p}[amount]")
            tax = _negative(entry.get("amount_tax"), f"{p}[amount_tax]")
            left_amount, left_tax = remaining(target)
            _check_remaining(amount, left_amount, f"{p}[amount]")
            _check_remaining(tax, left_tax, f"{p}[amount_tax]")
            quantity = integer_value(
                entry.get("quantity", str(target["quantity"])), f"{p}[quantity]", low=1
            )
            metadata = (
                metadata_value(entry["metadata"], f"{p}[metadata]")
                if "metadata" in entry
                else target["metadata"]
            )
            reversing.append((target, amount, tax, quantity, ref, metadata))
        if "shipping_cost" in call.params:
            if not shipping:
                raise bad_request(
                    "The original transaction has no shipping cost to reverse.", "shipping_cost"
                )
            ship = mapping_value(
                call.params["shipping_cost"], "shipping_cost", ("amount", "amount_tax")
            )
            amount = _negative(ship.get("amount"), "shipping_cost[amount]")
            tax = _negative(ship.get("amount_tax"), "shipping_cost[amount_tax]")
            _check_remaining(amount, ship_left[0], "shipping_cost[amount]")
            _check_remaining(tax, ship_left[1], "shipping_cost[amount_tax]")
            ship_reversal = (amount, tax)
    if not reversing and (ship_reversal is None or ship_reversal == (0, 0)):
        if mode == "full":
            raise bad_request(
                f"The transaction {original_id} has already been fully reversed.",
                "original_transaction",
            )
        raise bad_request("Nothing to reverse: every amount given is zero.", given[0])
    obj = _new_transaction(
        call,
        original,
        posted_at=now(),
        reference=reference,
        reversal={"original_transaction": original_id},
        shipping_cost=None
        if ship_reversal is None
        else {**shipping, "amount": ship_reversal[0], "amount_tax": ship_reversal[1]},
    )
    items = []
    for li, amount, tax, quantity, ref, metadata in reversing:
        spent = done.setdefault(li["id"], [0, 0])
        spent[0] -= amount
        spent[1] -= tax
        items.append(
            _new_line_item(
                account,
                li,
                amount=amount,
                amount_tax=tax,
                metadata=metadata,
                quantity=quantity,
                reference=ref,
                reversal={"original_line_item": li["id"]},
            )
        )
    if ship_reversal is not None:
        books["shipping"][0] -= ship_reversal[0]
        books["shipping"][1] -= ship_reversal[1]
    if mode == "full":
        books["full"] = True
    return store(call, obj, items, TRANSACTIONS_URL)


@api.route("GET", "/v1/tax/transactions/{transaction}", params=(), expand=("line_items",))
async def retrieve_transaction(call: Call) -> dict[str, Any]:
    obj = call.account.get(TRANSACTION, call.id("transaction"), "tax transaction")
    return with_line_items(call, obj, TRANSACTIONS_URL)


@api.route("GET", "/v1/tax/transactions/{transaction}/line_items", params=())
async def list_transaction_line_items(call: Call) -> dict[str, Any]:
    return list_line_items(call, TRANSACTION, "tax transaction", TRANSACTIONS_URL)
