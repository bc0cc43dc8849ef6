"""Checks that sandbox objects look like Stripe's published examples.

``tests/data/stripe_object_keys.json`` holds the top-level keys of Stripe's example object
for each type the sandbox serves (taken from Stripe's fixtures3.json, MIT licence), so the
suite runs without ``../shared``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_DATA = json.loads((Path(__file__).parents[2] / "data" / "stripe_object_keys.json").read_text())
EXAMPLE_KEYS: dict[str, list[str]] = _DATA["keys"]

#: types whose ids are names, not prefixed random ids (balance.summary.1)
IDS_WITHOUT_PREFIX = {"reporting.report_type"}

#: fields Stripe shows only in some answers (e.g. a webhook endpoint's secret on create)
ONLY_SOMETIMES = {"webhook_endpoint": {"secret"}}


def assert_stripe_fields(obj: Any, object_type: str | None = None) -> None:
    """``obj`` (a dict or StripeObject) has exactly the example's top-level keys."""
    data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    kind = object_type or data["object"]
    expected = set(EXAMPLE_KEYS[kind])
    got = set(data) - ONLY_SOMETIMES.get(kind, set())
    assert got == expected, (
        f"{kind}: missing {sorted(expected - got)}, unexpected {sorted(got - expected)}"
    )
    if "id" in data:
        assert isinstance(data["id"], str)
        if kind not in IDS_WITHOUT_PREFIX:
            assert "_" in data["id"]
    if "livemode" in data:
        assert data["livemode"] is False
    if "created" in data:
        assert isinstance(data["created"], int)
