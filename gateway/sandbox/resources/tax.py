"""Stripe Tax: calculations, transactions (from a calculation, reversals), registrations, settings.

Tax is computed deterministically from a fixed rate table (US state rates, national VAT/GST
rates), the way Stripe Tax decides *whether* to collect: the account's tax settings must be
active (a head office is set, else ``stripe_tax_inactive``), and tax is only collected where
the account has an active registration (else ``taxability_reason: not_collecting``).
Tax code ``txcd_00000000`` is exempt, ``taxability_override`` is honoured, amounts are
rounded half up per line item, ``inclusive`` amounts contain their tax.

Calculations expire 90 days after creation; a transaction can only be created from an
unexpired one. A calculation's ``line_items`` is shown only when expanded; a transaction's
``line_items`` is null unless expanded.
"""

from __future__ import annotations

import copy
import time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from gateway.sandbox.core import Account, Call, SandboxError, expand_fields, make_object, page
from gateway.sandbox.resources import REGISTRY as api

CALCULATION = "tax.calculation"
CALC_ITEM = "tax.calculation_line_item"
TRANSACTION = "tax.transaction"
TX_ITEM = "tax.transaction_line_item"
REGISTRATION = "tax.registration"
SETTINGS = "tax.settings"

#: account.private keys
_LINE_ITEMS = "tax.line_items"  # owner id (taxcalc_/tax_) -> [line item objects]
_REVERSED = "tax.reversed"  # transaction id -> reversal bookkeeping

#: calculations can be turned into transactions for this long
CALCULATION_LIFETIME = 90 * 24 * 3600
#: a calculation's tax_date may be this far from now
_TAX_DATE_WINDOW = 31 * 24 * 3600

DEFAULT_TAX_CODE = "txcd_10000000"
SHIPPING_TAX_CODE = "txcd_92010001"
EXEMPT_TAX_CODE = "txcd_00000000"

_ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")
_BEHAVIORS = ("exclusive", "inclusive")

#: state-level sales tax rates (percent)
US_STATE_RATES: dict[str, str] = {
    "AL": "4.0", "AK": "0.0", "AZ": "5.6", "AR": "6.5", "CA": "7.25", "CO": "2.9",
    "CT": "6.35", "DC": "6.0", "DE": "0.0", "FL": "6.0", "GA": "4.0", "HI": "4.0",
    "ID": "6.0", "IL": "6.25", "IN": "7.0", "IA": "6.0", "KS": "6.5", "KY": "6.0",
    "LA": "4.45", "ME": "5.5", "MD": "6.0", "MA": "6.25", "MI": "6.0", "MN": "6.875",
    "MS": "7.0", "MO": "4.225", "MT": "0.0", "NE": "5.5", "NV": "6.85", "NH": "0.0",
    "NJ": "6.625", "NM": "4.875", "NY": "4.0", "NC": "4.75", "ND": "5.0", "OH": "5.75",
    "OK": "4.5", "OR": "0.0", "PA": "6.0", "RI": "7.0", "SC": "6.0", "SD": "4.2",
    "TN": "7.0", "TX": "6.25", "UT": "6.1", "VT": "6.0", "VA": "5.3", "WA": "6.5",
    "WV": "6.0", "WI": "5.0", "WY": "4.0",
}  # fmt: skip

#: national rates (percent) and tax type
COUNTRY_RATES: dict[str, tuple[str, str]] = {
    "AT": ("20.0", "vat"), "AU": ("10.0", "gst"), "BE": ("21.0", "vat"),
    "BG": ("20.0", "vat"), "CA": ("5.0", "gst"), "CH": ("8.1", "vat"),
    "CY": ("19.0", "vat"), "CZ": ("21.0", "vat"), "DE": ("19.0", "vat"),
    "DK": ("25.0", "vat"), "EE": ("22.0", "vat"), "ES": ("21.0", "vat"),
    "FI": ("25.5", "vat"), "FR": ("20.0", "vat"), "GB": ("20.0", "vat"),
    "GR": ("24.0", "vat"), "HR": ("25.0", "vat"), "HU": ("27.0", "vat"),
    "IE": ("23.0", "vat"), "IN": ("18.0", "igst"), "IT": ("22.0", "vat"),
    "JP": ("10.0", "jct"), "LT": ("21.0", "vat"), "LU": ("17.0", "vat"),
    "LV": ("21.0", "vat"), "MT": ("18.0", "vat"), "MX": ("16.0", "vat"),
    "NL": ("21.0", "vat"), "NO": ("25.0", "vat"), "NZ": ("15.0", "gst"),
    "PL": ("23.0", "vat"), "PT": ("23.0", "vat"), "RO": ("19.0", "vat"),
    "SE": ("25.0", "vat"), "SG": ("9.0", "gst"), "SI": ("22.0", "vat"),
    "SK": ("23.0", "vat"),
}  # fmt: skip

#: Canadian provinces charging harmonized sales tax instead of GST
CA_HST: dict[str, str] = {"NB": "15.0", "NL": "15.0", "NS": "14.0", "ON": "13.0", "PE": "15.0"}

EU = frozenset(
    ("AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
     "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK")
)  # fmt: skip

#: reasons for which no tax is computed
_ZERO_REASONS = frozenset(
    {
        "not_collecting",
        "not_supported",
        "not_subject_to_tax",
        "product_exempt",
        "customer_exempt",
        "reverse_charge",
    }
)


# --------------------------------------------------------------------------- helpers


def _now() -> int:
    return int(time.time())


def _bad(message: str, param: str | None = None, code: str | None = None) -> SandboxError:
    return SandboxError(400, message, code=code, param=param)


def _no_such(resource: str, object_id: str, param: str) -> SandboxError:
    return _bad(f"No such {resource}: '{object_id}'", param, "resource_missing")


def _required(value: Any, param: str) -> Any:
    if value is None:
        raise _bad(f"Missing required param: {param}.", param, "parameter_missing")
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"Invalid string: {param} must be a string.", param, "parameter_invalid_string")
    return value


def _integer(value: Any, param: str, *, low: int | None = None, high: int | None = None) -> int:
    if not isinstance(value, str):
        raise _bad(
            f"Invalid integer: {param} must be an integer.", param, "parameter_invalid_integer"
        )
    try:
        number = int(value)
    except ValueError:
        raise _bad(f"Invalid integer: {value}", param, "parameter_invalid_integer") from None
    if low is not None and number < low:
        raise _bad(
            f"Invalid integer: {param} must be greater than or equal to {low}.",
            param,
            "parameter_invalid_integer",
        )
    if high is not None and number > high:
        raise _bad(
            f"Invalid integer: {param} must be less than or equal to {high}.",
            param,
            "parameter_invalid_integer",
        )
    return number


def _mapping(value: Any, param: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _bad(f"Invalid object: {param} must be a hash.", param, "parameter_invalid_object")
    for key in value:
        if key not in allowed:
            raise _bad(
                f"Received unknown parameter: {param}[{key}]",
                f"{param}[{key}]",
                "parameter_unknown",
            )
    return value


def _array(value: Any, param: str) -> list[Any]:
    if (isinstance(value, dict) and not value) or value == "":
        return []
    if not isinstance(value, list):
        raise _bad(f"Invalid array: {param} must be an array.", param, "parameter_invalid_array")
    return value


def _enum(value: Any, param: str, choices: tuple[str, ...]) -> str:
    text = _string(value, param)
    if text not in choices:
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        raise _bad(f"Invalid {param}: must be one of {listed}", param)
    return text


def _metadata(value: Any, param: str) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _bad(f"Invalid object: {param} must be a hash.", param, "parameter_invalid_object")
    return {k: _string(v, f"{param}[{k}]") for k, v in value.items() if v != ""}


def _tax_code(value: Any, param: str) -> str:
    code = _string(value, param)
    if not code.startswith("txcd_") or not code[5:].isdigit():
        raise _bad(f"Invalid tax code: '{code}' is not a valid tax code.", param)
    return code


def _country(value: Any, param: str) -> str:
    country = _string(value, param).upper()
    if len(country) != 2 or not country.isalpha():
        raise _bad(f"Invalid country: '{value}' is not a valid ISO 3166-1 alpha-2 code.", param)
    return country


def _address(value: Any, param: str) -> dict[str, str | None]:
    raw = _mapping(value, param, _ADDRESS_KEYS)
    address: dict[str, str | None] = {key: None for key in _ADDRESS_KEYS}
    for key in _ADDRESS_KEYS:
        if key in raw:
            address[key] = _string(raw[key], f"{param}[{key}]")
    address["country"] = _country(
        _required(raw.get("country"), f"{param}[country]"), f"{param}[country]"
    )
    if address["state"]:
        address["state"] = address["state"].upper()
    return address


def _timestamp_or_now(value: Any, param: str) -> int:
    if value == "now":
        return _now()
    return _integer(value, param, low=0)


def _expand(call: Call, allowed: tuple[str, ...]) -> list[str]:
    fields = expand_fields(call)
    for name in fields:
        if name not in allowed:
            raise _bad(f"This property cannot be expanded ({name}).", "expand")
    return fields


def _items(account: Account, owner: str) -> list[dict[str, Any]]:
    stored: dict[str, list[dict[str, Any]]] = account.private.setdefault(_LINE_ITEMS, {})
    return stored.setdefault(owner, [])


def _items_list(account: Account, owner: str, url: str) -> dict[str, Any]:
    items = _items(account, owner)
    return {"object": "list", "url": url, "has_more": len(items) > 10, "data": items[:10]}


def _items_page(call: Call, owner: str, url: str) -> dict[str, Any]:
    # page() lists newest first; line items are listed in the order they were given
    return page(call, list(reversed(_items(call.account, owner))), url)


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


@api.route("GET", "/v1/tax/settings", params=())
async def retrieve_settings(call: Call) -> dict[str, Any]:
    _expand(call, ())
    return settings_of(call.account)


@api.route("POST", "/v1/tax/settings", params=("defaults", "head_office"))
async def update_settings(call: Call) -> dict[str, Any]:
    _expand(call, ())
    settings = settings_of(call.account)
    defaults = settings["defaults"]
    if "defaults" in call.params:
        given = _mapping(call.params["defaults"], "defaults", ("tax_behavior", "tax_code"))
        if "tax_behavior" in given:
            defaults["tax_behavior"] = _enum(
                given["tax_behavior"],
                "defaults[tax_behavior]",
                ("exclusive", "inclusive", "inferred_by_currency"),
            )
        if "tax_code" in given:
            defaults["tax_code"] = _tax_code(given["tax_code"], "defaults[tax_code]")
    if "head_office" in call.params:
        office = _mapping(call.params["head_office"], "head_office", ("address",))
        address = _address(
            _required(office.get("address"), "head_office[address]"), "head_office[address]"
        )
        settings["head_office"] = {"address": address}
        settings["status"] = "active"
        settings["status_details"] = {"active": {}}
    return settings


# --------------------------------------------------------------------------- registrations


def registration_status(registration: dict[str, Any], when: int | None = None) -> str:
    when = _now() if when is None else when
    if when < registration["active_from"]:
        return "scheduled"
    expires = registration["expires_at"]
    if expires is not None and when >= expires:
        return "expired"
    return "active"


def _shown(registration: dict[str, Any]) -> dict[str, Any]:
    registration["status"] = registration_status(registration)
    return registration


def _registration_key(country: str, options: dict[str, Any]) -> tuple[str, str, str]:
    sub = options.get(country.lower(), {})
    place = sub.get("state") or sub.get("province_standard", {}).get("province") or ""
    return country, str(sub.get("type", "")), str(place)


@api.route(
    "POST",
    "/v1/tax/registrations",
    params=("active_from", "country", "country_options", "expires_at"),
)
async def create_registration(call: Call) -> dict[str, Any]:
    _expand(call, ())
    country = _country(call.text("country", required=True), "country")
    active_from = _timestamp_or_now(
        _required(call.params.get("active_from"), "active_from"), "active_from"
    )
    now = _now()
    if active_from < now and call.params.get("active_from") != "now":
        raise _bad("active_from must be `now` or a timestamp in the future.", "active_from")
    raw_options = call.mapping("country_options", required=True)
    assert raw_options is not None
    code = country.lower()
    for key in raw_options:
        if key != code:
            raise _bad(
                f"country_options[{key}] cannot be used for a registration in {country}.",
                f"country_options[{key}]",
            )
    if code not in raw_options:
        raise _bad(
            f"Missing required param: country_options[{code}].",
            f"country_options[{code}]",
            "parameter_missing",
        )
    options = raw_options[code]
    if not isinstance(options, dict):
        raise _bad(
            f"Invalid object: country_options[{code}] must be a hash.",
            f"country_options[{code}]",
            "parameter_invalid_object",
        )
    _string(
        _required(options.get("type"), f"country_options[{code}][type]"),
        f"country_options[{code}][type]",
    )
    if country == "US":
        state = _string(
            _required(options.get("state"), "country_options[us][state]"),
            "country_options[us][state]",
        )
        options["state"] = state.upper()
    expires_at = call.params.get("expires_at")
    expires = None if expires_at in (None, "") else _integer(expires_at, "expires_at", low=0)
    if expires is not None and expires < active_from:
        raise _bad("expires_at must be after active_from.", "expires_at")
    identity = _registration_key(country, {code: options})
    for other in call.account.table(REGISTRATION).values():
        if (
            registration_status(other) != "expired"
            and _registration_key(other["country"], other["country_options"]) == identity
        ):
            raise _bad(
                f"A registration for {country} with these options already exists "
                f"({other['id']}). Set expires_at on it before registering again.",
                "country",
            )
    obj = make_object(
        REGISTRATION,
        call.account.ids.new("taxreg", 14),
        active_from=active_from,
        country=country,
        country_options={code: options},
        expires_at=expires,
        status="active",
    )
    call.account.add(obj, REGISTRATION)
    return _shown(obj)


@api.route("GET", "/v1/tax/registrations/{id}", params=())
async def retrieve_registration(call: Call) -> dict[str, Any]:
    _expand(call, ())
    return _shown(call.account.get(REGISTRATION, call.id(), "tax registration"))


@api.route("POST", "/v1/tax/registrations/{id}", params=("active_from", "expires_at"))
async def update_registration(call: Call) -> dict[str, Any]:
    _expand(call, ())
    obj = call.account.get(REGISTRATION, call.id(), "tax registration")
    status = registration_status(obj)
    if status == "expired":
        raise _bad(
            f"The registration {obj['id']} has expired and can no longer be updated.",
            None,
        )
    active_from = obj["active_from"]
    if "active_from" in call.params:
        if status != "scheduled":
            raise _bad(
                "active_from can only be updated on a scheduled registration.", "active_from"
            )
        active_from = _timestamp_or_now(call.params["active_from"], "active_from")
    expires = obj["expires_at"]
    if "expires_at" in call.params:
        raw = call.params["expires_at"]
        expires = None if raw == "" else _timestamp_or_now(raw, "expires_at")
    if expires is not None and expires < active_from:
        raise _bad("expires_at must be after active_from.", "expires_at")
    obj["active_from"] = active_from
    obj["expires_at"] = expires
    return _shown(obj)


@api.route("GET", "/v1/tax/registrations", params=("status",))
async def list_registrations(call: Call) -> dict[str, Any]:
    _expand(call, ())
    wanted = call.text("status", default="all")
    assert wanted is not None
    _enum(wanted, "status", ("active", "all", "expired", "scheduled"))
    shown = [_shown(r) for r in call.account.table(REGISTRATION).values()]
    if wanted != "all":
        shown = [r for r in shown if r["status"] == wanted]
    return page(call, shown, "/v1/tax/registrations")


def _collecting(account: Account, country: str, state: str | None, when: int) -> bool:
    """Whether an active registration makes the account collect tax there."""
    for reg in account.table(REGISTRATION).values():
        if registration_status(reg, when) != "active":
            continue
        options = reg["country_options"].get(reg["country"].lower(), {})
        if reg["country"] == country:
            if country != "US" or options.get("state") == state:
                return True
        elif country in EU and reg["country"] in EU and options.get("type") == "oss_union":
            return True
    return False


# --------------------------------------------------------------------------- calculations


def _jurisdiction(country: str, state: str | None) -> tuple[str | None, str]:
    """(rate percent or None when unsupported, tax type) for an address."""
    if country == "US":
        return US_STATE_RATES.get(state or ""), "sales_tax"
    if country == "CA" and state in CA_HST:
        return CA_HST[state], "hst"
    rate = COUNTRY_RATES.get(country)
    if rate is None:
        return None, "vat"
    return rate


def _tax(amount: int, percent: str, inclusive: bool) -> int:
    rate = Decimal(percent) / 100
    if inclusive:
        net = (Decimal(amount) / (1 + rate)).quantize(Decimal(1), ROUND_HALF_UP)
        return amount - int(net)
    return int((Decimal(amount) * rate).quantize(Decimal(1), ROUND_HALF_UP))


class _Calculator:
    """Computes tax for one calculation's lines, collecting its tax breakdown."""

    def __init__(self, account: Account, details: dict[str, Any], when: int) -> None:
        address = details["address"]
        self.country: str = address["country"]
        self.state: str | None = address["state"] if self.country in ("US", "CA") else None
        self.percent, self.tax_type = _jurisdiction(self.country, self.state)
        self.collecting = _collecting(account, self.country, self.state, when)
        self.override: str = details["taxability_override"]
        self.breakdown: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.exclusive = 0
        self.inclusive = 0

    def reason(self, tax_code: str) -> str:
        if self.percent is None:
            return "not_supported"
        if Decimal(self.percent) == 0:
            return "not_subject_to_tax"
        if not self.collecting:
            return "not_collecting"
        if self.override in ("customer_exempt", "reverse_charge"):
            return self.override
        if tax_code == EXEMPT_TAX_CODE:
            return "product_exempt"
        return "standard_rated"

    def line(self, amount: int, tax_code: str, behavior: str) -> int:
        inclusive = behavior == "inclusive"
        reason = self.reason(tax_code)
        percent = "0.0" if reason in _ZERO_REASONS else self.percent
        assert percent is not None
        tax = _tax(amount, percent, inclusive)
        taxable = 0 if reason in _ZERO_REASONS else amount - tax if inclusive else amount
        if inclusive:
            self.inclusive += tax
        else:
            self.exclusive += tax
        key = (inclusive, reason, percent)
        entry = self.breakdown.get(key)
        if entry is None:
            entry = {
                "amount": 0,
                "inclusive": inclusive,
                "tax_rate_details": {
                    "country": self.country,
                    "flat_amount": None,
                    "percentage_decimal": percent,
                    "rate_type": "percentage",
                    "state": self.state,
                    "tax_type": self.tax_type,
                },
                "taxability_reason": reason,
                "taxable_amount": 0,
            }
            self.breakdown[key] = entry
        entry["amount"] += tax
        entry["taxable_amount"] += taxable
        return tax


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
            raise _no_such("customer", customer_id, "customer")
        shipping = customer.get("shipping") or {}
        if shipping.get("address") and shipping["address"].get("country"):
            details["address"] = {k: shipping["address"].get(k) for k in _ADDRESS_KEYS}
            details["address_source"] = "shipping"
        elif customer.get("address") and customer["address"].get("country"):
            details["address"] = {k: customer["address"].get(k) for k in _ADDRESS_KEYS}
            details["address_source"] = "billing"
        exempt = customer.get("tax_exempt")
        if exempt in ("exempt", "reverse"):
            details["taxability_override"] = (
                "customer_exempt" if exempt == "exempt" else "reverse_charge"
            )
    raw = call.params.get("customer_details")
    if raw is None and customer_id is None:
        raise _bad(
            "Missing required param: customer_details.", "customer_details", "parameter_missing"
        )
    given = _mapping(
        raw or {},
        "customer_details",
        ("address", "address_source", "ip_address", "tax_ids", "taxability_override"),
    )
    if "address" in given:
        details["address"] = _address(given["address"], "customer_details[address]")
    if "address_source" in given:
        details["address_source"] = _enum(
            given["address_source"], "customer_details[address_source]", ("billing", "shipping")
        )
    if "ip_address" in given:
        details["ip_address"] = _string(given["ip_address"], "customer_details[ip_address]")
    if "tax_ids" in given:
        tax_ids = []
        for i, tax_id in enumerate(_array(given["tax_ids"], "customer_details[tax_ids]")):
            param = f"customer_details[tax_ids][{i}]"
            entry = _mapping(tax_id, param, ("type", "value"))
            tax_ids.append(
                {
                    "type": _string(
                        _required(entry.get("type"), f"{param}[type]"), f"{param}[type]"
                    ),
                    "value": _string(
                        _required(entry.get("value"), f"{param}[value]"), f"{param}[value]"
                    ),
                }
            )
        details["tax_ids"] = tax_ids
    if "taxability_override" in given:
        details["taxability_override"] = _enum(
            given["taxability_override"],
            "customer_details[taxability_override]",
            ("customer_exempt", "none", "reverse_charge"),
        )
    address = details["address"]
    if address is None or (address["country"] == "US" and not address["state"]):
        raise _bad(
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
    return str(default) if default in _BEHAVIORS else "exclusive"


def _line_items(call: Call, currency: str) -> list[dict[str, Any]]:
    raw = _array(_required(call.params.get("line_items"), "line_items"), "line_items")
    if not raw:
        raise _bad(
            "line_items must contain at least one line item.",
            "line_items",
            "parameter_invalid_empty",
        )
    if len(raw) > 100:
        raise _bad("You can pass up to 100 line items.", "line_items")
    default_code = settings_of(call.account)["defaults"]["tax_code"] or DEFAULT_TAX_CODE
    behavior_default = _default_behavior(call, currency)
    lines: list[dict[str, Any]] = []
    references: set[str] = set()
    for i, item in enumerate(raw):
        p = f"line_items[{i}]"
        entry = _mapping(
            item,
            p,
            (
                "amount",
                "metadata",
                "performance_location",
                "product",
                "quantity",
                "reference",
                "tax_behavior",
                "tax_code",
            ),
        )
        amount = _integer(_required(entry.get("amount"), f"{p}[amount]"), f"{p}[amount]", low=0)
        reference = _string(_required(entry.get("reference"), f"{p}[reference]"), f"{p}[reference]")
        if reference in references:
            raise _bad(
                f"Line item references must be unique: '{reference}' is used more than once.",
                f"{p}[reference]",
            )
        references.add(reference)
        quantity = _integer(entry.get("quantity", "1"), f"{p}[quantity]", low=1)
        product_id = None
        tax_code = None
        if "product" in entry:
            product_id = _string(entry["product"], f"{p}[product]")
            product = call.account.table("product").get(product_id)
            if product is None:
                raise _no_such("product", product_id, f"{p}[product]")
            if isinstance(product.get("tax_code"), str):
                tax_code = product["tax_code"]
        if "tax_code" in entry:
            tax_code = _tax_code(entry["tax_code"], f"{p}[tax_code]")
        behavior = behavior_default
        if "tax_behavior" in entry:
            behavior = _enum(entry["tax_behavior"], f"{p}[tax_behavior]", _BEHAVIORS)
        lines.append(
            {
                "amount": amount,
                "metadata": _metadata(entry["metadata"], f"{p}[metadata]")
                if "metadata" in entry
                else None,
                "product": product_id,
                "quantity": quantity,
                "reference": reference,
                "tax_behavior": behavior,
                "tax_code": tax_code or default_code,
            }
        )
    return lines


def _shipping_cost(call: Call, currency: str) -> dict[str, Any] | None:
    if "shipping_cost" not in call.params:
        return None
    p = "shipping_cost"
    given = _mapping(call.params[p], p, ("amount", "shipping_rate", "tax_behavior", "tax_code"))
    behavior = _default_behavior(call, currency)
    tax_code = SHIPPING_TAX_CODE
    if "shipping_rate" in given:
        for name in ("amount", "tax_behavior", "tax_code"):
            if name in given:
                raise _bad(
                    f"You cannot pass {p}[{name}] together with {p}[shipping_rate].", f"{p}[{name}]"
                )
        rate_id = _string(given["shipping_rate"], f"{p}[shipping_rate]")
        rate = call.account.table("shipping_rate").get(rate_id)
        if rate is None:
            raise _no_such("shipping rate", rate_id, f"{p}[shipping_rate]")
        amount = int((rate.get("fixed_amount") or {}).get("amount") or 0)
        if rate.get("tax_behavior") in _BEHAVIORS:
            behavior = rate["tax_behavior"]
        if isinstance(rate.get("tax_code"), str):
            tax_code = rate["tax_code"]
    else:
        amount = _integer(_required(given.get("amount"), f"{p}[amount]"), f"{p}[amount]", low=0)
        if "tax_behavior" in given:
            behavior = _enum(given["tax_behavior"], f"{p}[tax_behavior]", _BEHAVIORS)
        if "tax_code" in given:
            tax_code = _tax_code(given["tax_code"], f"{p}[tax_code]")
    return {"amount": amount, "amount_tax": 0, "tax_behavior": behavior, "tax_code": tax_code}


def _ship_from(call: Call) -> dict[str, Any] | None:
    if "ship_from_details" not in call.params:
        return None
    given = _mapping(call.params["ship_from_details"], "ship_from_details", ("address",))
    address = _address(
        _required(given.get("address"), "ship_from_details[address]"), "ship_from_details[address]"
    )
    return {"address": address}


def _calculation_view(call: Call, obj: dict[str, Any]) -> dict[str, Any]:
    if "line_items" not in _expand(call, ("line_items",)):
        return obj
    url = f"/v1/tax/calculations/{obj['id']}/line_items"
    return {**obj, "line_items": _items_list(call.account, obj["id"], url)}


@api.route(
    "POST",
    "/v1/tax/calculations",
    params=(
        "currency",
        "customer",
        "customer_details",
        "line_items",
        "ship_from_details",
        "shipping_cost",
        "tax_date",
    ),
)
async def create_calculation(call: Call) -> dict[str, Any]:
    account = call.account
    _expand(call, ("line_items",))
    currency = _string(call.text("currency", required=True), "currency").lower()
    if len(currency) != 3 or not currency.isalpha():
        raise _bad(f"Invalid currency: {currency}.", "currency", "parameter_invalid")
    now = _now()
    tax_date = call.integer(
        "tax_date", default=now, low=now - _TAX_DATE_WINDOW, high=now + _TAX_DATE_WINDOW
    )
    assert tax_date is not None
    customer, details = _customer_details(call)
    lines = _line_items(call, currency)
    shipping = _shipping_cost(call, currency)
    ship_from = _ship_from(call)
    if settings_of(account)["status"] != "active":
        raise _bad(
            "Stripe Tax has not been activated on your account. Please visit "
            "https://stripe.com/docs/tax/set-up to get started.",
            None,
            "stripe_tax_inactive",
        )
    calculator = _Calculator(account, details, tax_date)
    total = 0
    items = []
    for line in lines:
        tax = calculator.line(line["amount"], line["tax_code"], line["tax_behavior"])
        total += line["amount"] + (tax if line["tax_behavior"] == "exclusive" else 0)
        items.append(make_object(CALC_ITEM, account.ids.new("tax_li", 14), amount_tax=tax, **line))
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
        expires_at=now + CALCULATION_LIFETIME,
        ship_from_details=ship_from,
        shipping_cost=shipping,
        tax_amount_exclusive=calculator.exclusive,
        tax_amount_inclusive=calculator.inclusive,
        tax_breakdown=list(calculator.breakdown.values()),
        tax_date=tax_date,
    )
    account.add(obj, CALCULATION)
    _items(account, obj["id"]).extend(items)
    return _calculation_view(call, obj)


@api.route("GET", "/v1/tax/calculations/{calculation}", params=())
async def retrieve_calculation(call: Call) -> dict[str, Any]:
    obj = call.account.get(CALCULATION, call.id("calculation"), "tax calculation")
    return _calculation_view(call, obj)


@api.route("GET", "/v1/tax/calculations/{calculation}/line_items", params=())
async def list_calculation_line_items(call: Call) -> dict[str, Any]:
    _expand(call, ())
    calc_id = call.id("calculation")
    call.account.get(CALCULATION, calc_id, "tax calculation")
    return _items_page(call, calc_id, f"/v1/tax/calculations/{calc_id}/line_items")


# --------------------------------------------------------------------------- transactions


def _transaction_view(call: Call, obj: dict[str, Any]) -> dict[str, Any]:
    if "line_items" not in _expand(call, ("line_items",)):
        return obj
    url = f"/v1/tax/transactions/{obj['id']}/line_items"
    return {**obj, "line_items": _items_list(call.account, obj["id"], url)}


def _unique_reference(account: Account, reference: str) -> None:
    for other in account.table(TRANSACTION).values():
        if other["reference"] == reference:
            raise _bad(
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
)
async def create_from_calculation(call: Call) -> dict[str, Any]:
    account = call.account
    _expand(call, ("line_items",))
    calc_id = _string(call.text("calculation", required=True), "calculation")
    reference = _string(call.text("reference", required=True), "reference")
    calc = account.table(CALCULATION).get(calc_id)
    if calc is None:
        raise _no_such("calculation", calc_id, "calculation")
    now = _now()
    if now >= calc["expires_at"]:
        raise _bad(
            f"The calculation '{calc_id}' has expired and can no longer be used to create a "
            "transaction.",
            "calculation",
        )
    _unique_reference(account, reference)
    posted_at = call.integer(
        "posted_at", default=now, low=min(calc["tax_date"], now), high=max(calc["tax_date"], now)
    )
    obj = make_object(
        TRANSACTION,
        account.ids.new("tax"),
        currency=calc["currency"],
        customer=calc["customer"],
        customer_details=copy.deepcopy(calc["customer_details"]),
        line_items=None,
        metadata=call.metadata(),
        posted_at=posted_at,
        reference=reference,
        reversal=None,
        ship_from_details=copy.deepcopy(calc["ship_from_details"]),
        shipping_cost=copy.deepcopy(calc["shipping_cost"]),
        tax_date=calc["tax_date"],
        type="transaction",
    )
    items = []
    for line in _items(account, calc_id):
        items.append(
            make_object(
                TX_ITEM,
                account.ids.new("tax_li", 14),
                amount=line["amount"],
                amount_tax=line["amount_tax"],
                metadata=copy.deepcopy(line["metadata"]),
                product=line["product"],
                quantity=line["quantity"],
                reference=line["reference"],
                reversal=None,
                tax_behavior=line["tax_behavior"],
                tax_code=line["tax_code"],
                type="transaction",
            )
        )
    account.add(obj, TRANSACTION)
    _items(account, obj["id"]).extend(items)
    return _transaction_view(call, obj)


def _negative(value: Any, param: str) -> int:
    number = _integer(_required(value, param), param)
    if number > 0:
        raise _bad(f"{param} must be negative or zero: amounts are reversed.", param)
    return number


def _check_remaining(reversing: int, remaining: int, param: str) -> None:
    if -reversing > remaining:
        raise _bad(
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
)
async def create_reversal(call: Call) -> dict[str, Any]:
    account = call.account
    _expand(call, ("line_items",))
    original_id = _string(call.text("original_transaction", required=True), "original_transaction")
    mode = _enum(call.text("mode", required=True), "mode", ("full", "partial"))
    reference = _string(call.text("reference", required=True), "reference")
    original = account.table(TRANSACTION).get(original_id)
    if original is None:
        raise _no_such("transaction", original_id, "original_transaction")
    if original["type"] != "transaction":
        raise _bad("A reversal transaction cannot itself be reversed.", "original_transaction")
    books = _reversed(account, original_id)
    if books["full"]:
        raise _bad(
            f"The transaction {original_id} has already been fully reversed.",
            "original_transaction",
        )
    _unique_reference(account, reference)
    originals = {li["id"]: li for li in _items(account, original_id)}
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
            raise _bad(f"{given[0]} cannot be used with mode=full.", given[0])
        for li in originals.values():
            amount, tax = remaining(li)
            if amount or tax or li["id"] not in done:
                reversing.append(
                    (li, -amount, -tax, li["quantity"], li["reference"], li["metadata"])
                )
        if shipping:
            ship_reversal = (-ship_left[0], -ship_left[1])
    elif not given:
        raise _bad(
            "One of line_items, shipping_cost or flat_amount is required when mode=partial.",
            "line_items",
        )
    elif "flat_amount" in call.params:
        if len(given) > 1:
            raise _bad(
                "flat_amount cannot be combined with line_items or shipping_cost.", "flat_amount"
            )
        flat = _negative(call.params["flat_amount"], "flat_amount")
        if flat == 0:
            raise _bad("flat_amount must be a negative amount.", "flat_amount")
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
        raw_items = _array(call.params.get("line_items", []), "line_items")
        for i, item in enumerate(raw_items):
            p = f"line_items[{i}]"
            entry = _mapping(
                item,
                p,
                ("amount", "amount_tax", "metadata", "original_line_item", "quantity", "reference"),
            )
            li_id = _string(
                _required(entry.get("original_line_item"), f"{p}[original_line_item]"),
                f"{p}[original_line_item]",
            )
            target = originals.get(li_id)
            if target is None:
                raise _no_such("transaction line item", li_id, f"{p}[original_line_item]")
            if li_id in seen:
                raise _bad(
                    f"Line item {li_id} is reversed more than once in this request.",
                    f"{p}[original_line_item]",
                )
            seen.add(li_id)
            ref = _string(_required(entry.get("reference"), f"{p}[reference]"), f"{p}[reference]")
            if ref in refs:
                raise _bad(
                    f"Line item references must be unique: '{ref}' is used twice.",
                    f"{p}[reference]",
                )
            refs.add(ref)
            amount = _negative(entry.get("amount"), f"{p}[amount]")
            tax = _negative(entry.get("amount_tax"), f"{p}[amount_tax]")
            left_amount, left_tax = remaining(target)
            _check_remaining(amount, left_amount, f"{p}[amount]")
            _check_remaining(tax, left_tax, f"{p}[amount_tax]")
            quantity = _integer(
                entry.get("quantity", str(target["quantity"])), f"{p}[quantity]", low=1
            )
            metadata = (
                _metadata(entry["metadata"], f"{p}[metadata]")
                if "metadata" in entry
                else target["metadata"]
            )
            reversing.append((target, amount, tax, quantity, ref, metadata))
        if "shipping_cost" in call.params:
            if not shipping:
                raise _bad(
                    "The original transaction has no shipping cost to reverse.", "shipping_cost"
                )
            ship = _mapping(call.params["shipping_cost"], "shipping_cost", ("amount", "amount_tax"))
            amount = _negative(ship.get("amount"), "shipping_cost[amount]")
            tax = _negative(ship.get("amount_tax"), "shipping_cost[amount_tax]")
            _check_remaining(amount, ship_left[0], "shipping_cost[amount]")
            _check_remaining(tax, ship_left[1], "shipping_cost[amount_tax]")
            ship_reversal = (amount, tax)
    if not reversing and (ship_reversal is None or ship_reversal == (0, 0)):
        if mode == "full":
            raise _bad(
                f"The transaction {original_id} has already been fully reversed.",
                "original_transaction",
            )
        raise _bad("Nothing to reverse: every amount given is zero.", given[0])
    obj = make_object(
        TRANSACTION,
        account.ids.new("tax"),
        currency=original["currency"],
        customer=original["customer"],
        customer_details=copy.deepcopy(original["customer_details"]),
        line_items=None,
        metadata=call.metadata(),
        posted_at=_now(),
        reference=reference,
        reversal={"original_transaction": original_id},
        ship_from_details=copy.deepcopy(original["ship_from_details"]),
        shipping_cost=None
        if ship_reversal is None
        else {**shipping, "amount": ship_reversal[0], "amount_tax": ship_reversal[1]},
        tax_date=original["tax_date"],
        type="reversal",
    )
    items = []
    for li, amount, tax, quantity, ref, metadata in reversing:
        spent = done.setdefault(li["id"], [0, 0])
        spent[0] -= amount
        spent[1] -= tax
        items.append(
            make_object(
                TX_ITEM,
                account.ids.new("tax_li", 14),
                amount=amount,
                amount_tax=tax,
                metadata=copy.deepcopy(metadata),
                product=li["product"],
                quantity=quantity,
                reference=ref,
                reversal={"original_line_item": li["id"]},
                tax_behavior=li["tax_behavior"],
                tax_code=li["tax_code"],
                type="reversal",
            )
        )
    if ship_reversal is not None:
        books["shipping"][0] -= ship_reversal[0]
        books["shipping"][1] -= ship_reversal[1]
    if mode == "full":
        books["full"] = True
    account.add(obj, TRANSACTION)
    _items(account, obj["id"]).extend(items)
    return _transaction_view(call, obj)


@api.route("GET", "/v1/tax/transactions/{transaction}", params=())
async def retrieve_transaction(call: Call) -> dict[str, Any]:
    obj = call.account.get(TRANSACTION, call.id("transaction"), "tax transaction")
    return _transaction_view(call, obj)


@api.route("GET", "/v1/tax/transactions/{transaction}/line_items", params=())
async def list_transaction_line_items(call: Call) -> dict[str, Any]:
    _expand(call, ())
    tx_id = call.id("transaction")
    call.account.get(TRANSACTION, tx_id, "tax transaction")
    return _items_page(call, tx_id, f"/v1/tax/transactions/{tx_id}/line_items")
