"""The sandbox serves every route of its resource families, with Stripe's object shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sandbox.core import template, template_types
from sandbox.resources import REGISTRY
from tests.sandbox.conftest import GATEWAY_KEY, SandboxStack
from tests.sandbox.fidelity import ONLY_SOMETIMES, assert_stripe_fields, sdk_fields

#: the object types the sandbox makes (one template each)
TYPES = set(template_types())

ROUTES = json.loads((Path(__file__).parents[1] / "data" / "sandbox_routes.json").read_text())[
    "routes"
]

#: routes of these families that the sandbox leaves out on purpose
NOT_SERVED = {
    ("GET", "/v1/tax/associations/find"): "not in the sandbox's scope (Tax associations)",
}


def _concrete(template: str) -> str:
    return re.sub(r"\{\w+\}", "x_1Nabcdefgh", template)


@pytest.mark.parametrize(
    "route",
    [r for r in ROUTES if (r["method"], r["path"]) not in NOT_SERVED],
    ids=lambda r: f"{r['method']} {r['path']}",
)
def test_every_route_is_served(route: dict[str, str]) -> None:
    assert REGISTRY.match(route["method"], _concrete(route["path"])) is not None


def _objects(value: Any) -> list[dict[str, Any]]:
    """Every nested dict that names a Stripe object type the sandbox makes."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if value.get("object") in TYPES:
            found.append(value)
        for item in value.values():
            found.extend(_objects(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_objects(item))
    return found


@pytest.mark.parametrize("object_type", sorted(TYPES))
def test_every_template_has_the_current_sdk_models_fields(object_type: str) -> None:
    """Each object the sandbox makes starts from its template: the SDK's model has the same
    top-level fields (fields shown only sometimes, like a webhook endpoint's ``secret``, aside).
    """
    got = set(template(object_type))
    expected = sdk_fields(object_type) - ONLY_SOMETIMES.get(object_type, set())
    assert got == expected, f"missing {sorted(expected - got)}, unexpected {sorted(got - expected)}"


def test_everything_listed_and_retrieved_has_stripes_fields(sandbox_stack: SandboxStack) -> None:
    seen: set[str] = set()
    lists = [
        e
        for e in REGISTRY.endpoints
        if e.method == "GET" and "{" not in e.template and not e.template.endswith("/quotes")
    ]
    required = {"/v1/financial_connections/transactions": "account"}
    fc_account = None
    for endpoint in sorted(lists, key=lambda e: e.template):
        params: dict[str, str] = {"limit": "3"} if "limit" in (endpoint.params or ()) else {}
        if endpoint.template in required:
            assert fc_account is not None
            params[required[endpoint.template]] = fc_account
        response = sandbox_stack.raw(
            "GET", endpoint.template, key=GATEWAY_KEY, direct=False, params=params
        )
        assert response.status_code == 200, (endpoint.template, response.text)
        body = response.json()
        if body.get("object") != "list":  # a singleton such as tax settings
            for obj in _objects(body):
                assert_stripe_fields(obj)
                seen.add(obj["object"])
            continue
        for item in body["data"]:
            if endpoint.template == "/v1/financial_connections/accounts":
                fc_account = fc_account or item["id"]
            for obj in _objects(item):
                assert_stripe_fields(obj)
                seen.add(obj["object"])
            if "id" in item:
                retrieve = REGISTRY.match("GET", f"{endpoint.template}/{item['id']}")
                if retrieve is not None:
                    got = sandbox_stack.raw(
                        "GET", f"{endpoint.template}/{item['id']}", key=GATEWAY_KEY, direct=False
                    )
                    assert got.status_code == 200, got.text
                    assert got.json() == item or got.json()["id"] == item["id"]
                    assert_stripe_fields(got.json())
    # the seeded, read-only types are all among what a new account lists
    for kind in (
        "scheduled_query_run",
        "file",
        "reporting.report_type",
        "financial_connections.account",
        "identity.verification_session",
        "identity.verification_report",
        "climate.product",
        "climate.supplier",
        "tax.settings",
    ):
        assert kind in seen, kind
