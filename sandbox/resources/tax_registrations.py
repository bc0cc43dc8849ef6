"""Stripe Tax registrations: create, retrieve, update (``active_from``, ``expires_at``), list.

A registration's ``status`` (``scheduled``, ``active`` or ``expired``) follows from its
``active_from`` and ``expires_at`` whenever it is read. Calculations collect tax only where
an active registration covers the customer's address
(see :mod:`sandbox.resources._tax_rates`).
"""

from __future__ import annotations

from typing import Any

from sandbox.core import (
    Call,
    bad_request,
    integer_value,
    make_object,
    page,
    required,
    string_value,
    wrong_type,
)
from sandbox.resources import REGISTRY as api
from sandbox.resources._tax_common import (
    REGISTRATION,
    country,
    now,
    registration_status,
    timestamp_or_now,
)


def _shown(registration: dict[str, Any]) -> dict[str, Any]:
    registration["status"] = registration_status(registration)
    return registration


def _registration_key(country: str, options: dict[str, Any]) -> tuple[str, str, str]:
    sub = options.get(country.lower(), {})
    place = sub.get("state") or sub.get("province_standard", {}).get("province") or ""
    return country, str(sub.get("type", "")), str(place)


def _country_options(call: Call, country: str) -> dict[str, Any]:
    """The options for ``country`` (the only key ``country_options`` may have)."""
    raw_options = call.mapping("country_options", required=True)
    assert raw_options is not None
    code = country.lower()
    for key in raw_options:
        if key != code:
            raise bad_request(
                f"country_options[{key}] cannot be used for a registration in {country}.",
                f"country_options[{key}]",
            )
    param = f"country_options[{code}]"
    options = required(raw_options.get(code), param)
    if not isinstance(options, dict):
        raise wrong_type("object", param)
    string_value(required(options.get("type"), f"{param}[type]"), f"{param}[type]")
    if country == "US":
        state = string_value(required(options.get("state"), f"{param}[state]"), f"{param}[state]")
        options["state"] = state.upper()
    return options


@api.route(
    "POST",
    "/v1/tax/registrations",
    params=("active_from", "country", "country_options", "expires_at"),
)
async def create_registration(call: Call) -> dict[str, Any]:
    place = country(call.text("country", required=True), "country")
    active_from = timestamp_or_now(
        required(call.params.get("active_from"), "active_from"), "active_from"
    )
    if active_from < now() and call.params.get("active_from") != "now":
        raise bad_request("active_from must be `now` or a timestamp in the future.", "active_from")
    options = _country_options(call, place)
    expires_at = call.params.get("expires_at")
    expires = None if expires_at in (None, "") else integer_value(expires_at, "expires_at", low=0)
    if expires is not None and expires < active_from:
        raise bad_request("expires_at must be after active_from.", "expires_at")
    code = place.lower()
    identity = _registration_key(place, {code: options})
    for other in call.account.table(REGISTRATION).values():
        if (
            registration_status(other) != "expired"
            and _registration_key(other["country"], other["country_options"]) == identity
        ):
            raise bad_request(
                f"A registration for {place} with these options already exists "
                f"({other['id']}). Set expires_at on it before registering again.",
                "country",
            )
    obj = make_object(
        REGISTRATION,
        call.account.ids.new("taxreg", 14),
        active_from=active_from,
        country=place,
        country_options={code: options},
        expires_at=expires,
        status="active",
    )
    call.account.add(obj, REGISTRATION)
    return _shown(obj)


@api.route("GET", "/v1/tax/registrations/{id}", params=())
async def retrieve_registration(call: Call) -> dict[str, Any]:
    return _shown(call.account.get(REGISTRATION, call.id(), "tax registration"))


@api.route("POST", "/v1/tax/registrations/{id}", params=("active_from", "expires_at"))
async def update_registration(call: Call) -> dict[str, Any]:
    obj = call.account.get(REGISTRATION, call.id(), "tax registration")
    status = registration_status(obj)
    if status == "expired":
        raise bad_request(f"The registration {obj['id']} has expired and can no longer be updated.")
    active_from = obj["active_from"]
    if "active_from" in call.params:
        if status != "scheduled":
            raise bad_request(
                "active_from can only be updated on a scheduled registration.", "active_from"
            )
        active_from = timestamp_or_now(call.params["active_from"], "active_from")
    expires = obj["expires_at"]
    if "expires_at" in call.params:
        raw = call.params["expires_at"]
        expires = None if raw == "" else timestamp_or_now(raw, "expires_at")
    if expires is not None and expires < active_from:
        raise bad_request("expires_at must be after active_from.", "expires_at")
    obj["active_from"] = active_from
    obj["expires_at"] = expires
    return _shown(obj)


@api.route("GET", "/v1/tax/registrations", params=("status",))
async def list_registrations(call: Call) -> dict[str, Any]:
    wanted = call.choice("status", ("active", "all", "expired", "scheduled"), default="all")
    shown = [_shown(r) for r in call.account.table(REGISTRATION).values()]
    if wanted != "all":
        shown = [r for r in shown if r["status"] == wanted]
    return page(call, shown, "/v1/tax/registrations")
