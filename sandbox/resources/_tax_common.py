"""What the Stripe Tax modules share: object types, parameter checks, settings, line items.

Not a resource module (its name starts with ``_``): ``tax_settings``, ``tax_registrations``,
``tax_calculations`` and ``tax_transactions`` import it.
"""

from __future__ import annotations

import time
from typing import Any

from sandbox.core import (
    Account,
    Call,
    array_value,
    bad_request,
    integer_value,
    make_object,
    mapping_value,
    page,
    required,
    string_value,
    wrong_type,
)

CALCULATION = "tax.calculation"
CALC_ITEM = "tax.calculation_line_item"
TRANSACTION = "tax.transaction"
TX_ITEM = "tax.transaction_line_item"
REGISTRATION = "tax.registration"
SETTINGS = "tax.settings"

CALCULATIONS_URL = "/v1/tax/calculations"
TRANSACTIONS_URL = "/v1/tax/transactions"

#: account.private key: owner id (taxcalc_/tax_) -> [line item objects]
_LINE_ITEMS = "tax.line_items"

ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")
BEHAVIORS = ("exclusive", "inclusive")


def now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------- parameters


def blank_array(value: Any, param: str) -> list[Any]:
    """An array, where ``""`` (Stripe's way to send an empty one) is one too."""
    return [] if value == "" else array_value(value, param)


def metadata_value(value: Any, param: str) -> dict[str, str]:
    """A nested ``metadata`` hash: string values, empty ones left out."""
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise wrong_type("object", param)
    return {k: string_value(v, f"{param}[{k}]") for k, v in value.items() if v != ""}


def tax_code(value: Any, param: str) -> str:
    code = string_value(value, param)
    if not code.startswith("txcd_") or not code[5:].isdigit():
        raise bad_request(f"Invalid tax code: '{code}' is not a valid tax code.", param)
    return code


def country(value: Any, param: str) -> str:
    code = string_value(value, param).upper()
    if len(code) != 2 or not code.isalpha():
        raise bad_request(
            f"Invalid country: '{value}' is not a valid ISO 3166-1 alpha-2 code.", param
        )
    return code


def address(value: Any, param: str) -> dict[str, str | None]:
    raw = mapping_value(value, param, ADDRESS_KEYS)
    out: dict[str, str | None] = {key: None for key in ADDRESS_KEYS}
    for key in ADDRESS_KEYS:
        if key in raw:
            out[key] = string_value(raw[key], f"{param}[{key}]")
    out["country"] = country(required(raw.get("country"), f"{param}[country]"), f"{param}[country]")
    if out["state"]:
        out["state"] = out["state"].upper()
    return out


def timestamp_or_now(value: Any, param: str) -> int:
    if value == "now":
        return now()
    return integer_value(value, param, low=0)


# --------------------------------------------------------------------------- settings


def settings_of(account: Account) -> dict[str, Any]:
    """The account's tax settings (created on first use, pending a head office)."""
    settings: dict[str, Any] | None = account.private.get(SETTINGS)
    if settings is None:
        settings = make_object(
            SETTINGS,
            None,
            defaults={"provider": "stripe", "tax_behavior": None, "tax_code": None},
            head_office=None,
            status="pending",
            status_details={"pending": {"missing_fields": ["head_office"]}},
        )
        account.private[SETTINGS] = settings
    return settings


def registration_status(registration: dict[str, Any], when: int | None = None) -> str:
    when = now() if when is None else when
    if when < registration["active_from"]:
        return "scheduled"
    expires = registration["expires_at"]
    if expires is not None and when >= expires:
        return "expired"
    return "active"


# --------------------------------------------------------------------------- line items


def line_items(account: Account, owner: str) -> list[dict[str, Any]]:
    """The line items of a calculation or transaction, in the order they were given."""
    stored: dict[str, list[dict[str, Any]]] = account.private.setdefault(_LINE_ITEMS, {})
    return stored.setdefault(owner, [])


def with_line_items(call: Call, obj: dict[str, Any], base_url: str) -> dict[str, Any]:
    """``obj``, with (the first page of) its ``line_items`` when they are expanded."""
    if "line_items" not in call.expand:
        return obj
    items = line_items(call.account, obj["id"])
    listed = {
        "object": "list",
        "url": f"{base_url}/{obj['id']}/line_items",
        "has_more": len(items) > 10,
        "data": items[:10],
    }
    return {**obj, "line_items": listed}


def store(
    call: Call, obj: dict[str, Any], items: list[dict[str, Any]], base_url: str
) -> dict[str, Any]:
    """Add a new calculation or transaction with its line items; the answer to its create."""
    call.account.add(obj)
    line_items(call.account, obj["id"]).extend(items)
    return with_line_items(call, obj, base_url)


def list_line_items(call: Call, object_type: str, resource: str, base_url: str) -> dict[str, Any]:
    """``GET <base_url>/{id}/line_items``: the owner's id is the route's one path parameter."""
    (owner,) = call.path.values()
    call.account.get(object_type, owner, resource)
    # page() lists newest first; line items are listed in the order they were given
    return page(
        call, list(reversed(line_items(call.account, owner))), f"{base_url}/{owner}/line_items"
    )
