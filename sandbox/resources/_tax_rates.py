"""How much Stripe Tax a calculation collects: the rate table and the per-line computation.

Tax is computed deterministically from a fixed rate table (US state rates, national VAT/GST
rates), the way Stripe Tax decides *whether* to collect: only where the account has an
active registration (else ``taxability_reason: not_collecting``). Tax code ``txcd_00000000``
is exempt, ``taxability_override`` is honoured, amounts are rounded half up per line item,
``inclusive`` amounts contain their tax.

Not a resource module (its name starts with ``_``): :mod:`.tax_calculations` uses it.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sandbox.core import Account
from sandbox.resources._tax_common import REGISTRATION, registration_status

EXEMPT_TAX_CODE = "txcd_00000000"

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


def collecting(account: Account, country: str, state: str | None, when: int) -> bool:
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


_DISPLAY_NAMES = {"sales_tax": "Sales Tax", "hst": "HST", "vat": "VAT"}


class Calculator:
    """Computes tax for one calculation's lines, collecting its tax breakdown."""

    def __init__(self, account: Account, details: dict[str, Any], when: int) -> None:
        address = details["address"]
        self.country: str = address["country"]
        self.state: str | None = address["state"] if self.country in ("US", "CA") else None
        self.percent, self.tax_type = _jurisdiction(self.country, self.state)
        self.collecting = collecting(account, self.country, self.state, when)
        self.override: str = details["taxability_override"]
        self.breakdown: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.exclusive = 0
        self.inclusive = 0
        #: the ``tax_breakdown`` of the last line computed (a calculation line item's)
        self.line_breakdown: list[dict[str, Any]] = []

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
        self.line_breakdown = [
            {
                "amount": tax,
                "jurisdiction": {
                    "country": self.country,
                    "display_name": self.state or self.country,
                    "level": "state" if self.state else "country",
                    "state": self.state,
                },
                "sourcing": "destination",
                "tax_rate_details": None
                if reason in _ZERO_REASONS
                else {
                    "display_name": _DISPLAY_NAMES.get(self.tax_type, self.tax_type),
                    "percentage_decimal": percent,
                    "tax_type": self.tax_type,
                },
                "taxability_reason": reason,
                "taxable_amount": taxable,
            }
        ]
        return tax
