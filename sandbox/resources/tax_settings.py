"""Stripe Tax settings: retrieve and update (one settings object per account).

Settings start ``pending`` (no head office); setting ``head_office`` makes them ``active``,
which calculations require (see :mod:`sandbox.resources.tax_calculations`).
"""

from __future__ import annotations

import copy
from typing import Any

from sandbox.core import Call, choice_value, mapping_value, required
from sandbox.resources import REGISTRY as api
from sandbox.resources._tax_common import address, settings_of, tax_code


@api.route("GET", "/v1/tax/settings", params=(), lists=False)
async def retrieve_settings(call: Call) -> dict[str, Any]:
    return settings_of(call.account)


@api.route("POST", "/v1/tax/settings", params=("defaults", "head_office"))
async def update_settings(call: Call) -> dict[str, Any]:
    settings = settings_of(call.account)
    before = copy.deepcopy(settings)
    defaults = settings["defaults"]
    if "defaults" in call.params:
        given = mapping_value(call.params["defaults"], "defaults", ("tax_behavior", "tax_code"))
        if "tax_behavior" in given:
            defaults["tax_behavior"] = choice_value(
                given["tax_behavior"],
                "defaults[tax_behavior]",
                ("exclusive", "inclusive", "inferred_by_currency"),
            )
        if "tax_code" in given:
            defaults["tax_code"] = tax_code(given["tax_code"], "defaults[tax_code]")
    if "head_office" in call.params:
        office = mapping_value(call.params["head_office"], "head_office", ("address",))
        param = "head_office[address]"
        settings["head_office"] = {
            "address": address(required(office.get("address"), param), param)
        }
        settings["status"] = "active"
        settings["status_details"] = {"active": {}}
    changed = {k: v for k, v in before.items() if settings.get(k) != v}
    if changed:
        call.account.emit("tax.settings.updated", settings, changed)
    return settings
