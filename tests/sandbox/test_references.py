"""An object a parameter names that does not exist is Stripe's 400 ``resource_missing``, on
every route whose parameters name other objects (a path id that does not exist is a 404)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import stripe

from sandbox.core import FOREIGN_PREFIXES
from tests.sandbox.conftest import SandboxStack

Client = stripe.StripeClient

_CA = {"line1": "1 Main St", "city": "South San Francisco", "state": "CA", "postal_code": "94080"}
_FORWARD = {
    "url": "https://endpoint-url/v1/payments",
    "replacements": ["card_number"],
    "request": {"body": json.dumps({"card": ""})},
}
_HOLDER = {"type": "customer", "customer": "cus_refs_0001"}


def _fc_account(client: Client) -> str:
    return str(client.v1.financial_connections.accounts.list().data[0].id)


def _interval(client: Client, report_type: str) -> dict[str, int]:
    kind = client.v1.reporting.report_types.retrieve(report_type)
    return {
        "interval_start": kind.data_available_end - 86400,
        "interval_end": kind.data_available_end,
    }


def _calculation(client: Client) -> Any:
    client.v1.tax.settings.update({"head_office": {"address": {"country": "US", **_CA}}})
    return client.v1.tax.calculations.create(
        {
            "currency": "usd",
            "line_items": [{"amount": 1000, "reference": "a"}],
            "customer_details": {"address": {"country": "US", **_CA}},
        }
    )


def _transaction(client: Client) -> Any:
    calc = _calculation(client)
    return client.v1.tax.transactions.create_from_calculation(
        {"calculation": calc.id, "reference": "refs-order"}
    )


@dataclass(frozen=True)
class Case:
    """``call(client)`` names a missing object in ``param``: ``No such <resource>: '<id>'``."""

    route: str
    param: str
    resource: str
    missing_id: str
    call: Callable[[Client, Any], Any]
    #: what ``call`` needs made first (its second argument)
    prepare: Callable[[Client], Any] = lambda c: None


CASES = [
    Case(
        "POST /v1/climate/orders",
        "product",
        "climate product",
        "climsku_nope",
        lambda c, _: c.v1.climate.orders.create({"product": "climsku_nope", "metric_tons": "1"}),
    ),
    Case(
        "POST /v1/file_links",
        "file",
        "file",
        "file_nope",
        lambda c, _: c.v1.file_links.create({"file": "file_nope"}),
    ),
    Case(
        "POST /v1/financial_connections/sessions",
        "account_holder[customer]",
        "customer",
        "nope",
        lambda c, _: c.v1.financial_connections.sessions.create(
            {
                "account_holder": {"type": "customer", "customer": "nope"},
                "permissions": ["balances"],
            }
        ),
    ),
    Case(
        "POST /v1/financial_connections/sessions",
        "account_holder[account]",
        "account",
        "nope",
        lambda c, _: c.v1.financial_connections.sessions.create(
            {"account_holder": {"type": "account", "account": "nope"}, "permissions": ["balances"]}
        ),
    ),
    Case(
        "GET /v1/financial_connections/accounts",
        "account_holder[customer]",
        "customer",
        "nope",
        lambda c, _: c.v1.financial_connections.accounts.list(
            {"account_holder": {"customer": "nope"}}
        ),
    ),
    Case(
        "GET /v1/financial_connections/accounts",
        "session",
        "financial connections session",
        "fcsess_nope",
        lambda c, _: c.v1.financial_connections.accounts.list({"session": "fcsess_nope"}),
    ),
    Case(
        "GET /v1/financial_connections/accounts/{id}/owners",
        "ownership",
        "ownership",
        "fcaowns_nope",
        lambda c, _: c.v1.financial_connections.accounts.owners.list(
            _fc_account(c), {"ownership": "fcaowns_nope"}
        ),
    ),
    Case(
        "GET /v1/financial_connections/transactions",
        "account",
        "financial connections account",
        "fca_nope",
        lambda c, _: c.v1.financial_connections.transactions.list({"account": "fca_nope"}),
    ),
    Case(
        "GET /v1/financial_connections/transactions",
        "transaction_refresh[after]",
        "transaction refresh",
        "fctxnref_nope",
        lambda c, _: c.v1.financial_connections.transactions.list(
            {"account": _fc_account(c), "transaction_refresh": {"after": "fctxnref_nope"}}
        ),
    ),
    Case(
        "POST /v1/forwarding/requests",
        "payment_method",
        "PaymentMethod",
        "pm_nope",
        lambda c, _: c.v1.forwarding.requests.create({**_FORWARD, "payment_method": "pm_nope"}),
    ),
    Case(
        "POST /v1/identity/verification_sessions",
        "verification_flow",
        "verification flow",
        "flow_nope",
        lambda c, _: c.v1.identity.verification_sessions.create({"verification_flow": "flow_nope"}),
    ),
    Case(
        "POST /v1/identity/verification_sessions",
        "related_customer",
        "customer",
        "user_1",
        lambda c, _: c.v1.identity.verification_sessions.create(
            {"type": "document", "related_customer": "user_1"}
        ),
    ),
    Case(
        "POST /v1/identity/verification_sessions",
        "related_customer_account",
        "account",
        "user_1",
        lambda c, _: c.v1.identity.verification_sessions.create(
            {"type": "document", "related_customer_account": "user_1"}
        ),
    ),
    Case(
        "POST /v1/identity/verification_sessions",
        "related_person[account]",
        "account",
        "user_1",
        lambda c, _: c.v1.identity.verification_sessions.create(
            {"type": "document", "related_person": {"account": "user_1", "person": "person_1"}}
        ),
    ),
    Case(
        "POST /v1/identity/verification_sessions",
        "related_person[person]",
        "person",
        "user_1",
        lambda c, _: c.v1.identity.verification_sessions.create(
            {"type": "document", "related_person": {"account": "acct_1", "person": "user_1"}}
        ),
    ),
    Case(
        "POST /v1/reporting/report_runs",
        "parameters[payout]",
        "payout",
        "payout_1",
        lambda c, _: c.v1.reporting.report_runs.create(
            {
                "report_type": "payout_reconciliation.summary.1",
                "parameters": {"payout": "payout_1"},
            }
        ),
    ),
    Case(
        "GET /v1/identity/verification_sessions",
        "related_customer",
        "customer",
        "user_1",
        lambda c, _: c.v1.identity.verification_sessions.list({"related_customer": "user_1"}),
    ),
    Case(
        "GET /v1/identity/verification_sessions",
        "related_customer_account",
        "account",
        "user_1",
        lambda c, _: c.v1.identity.verification_sessions.list(
            {"related_customer_account": "user_1"}
        ),
    ),
    Case(
        "GET /v1/identity/verification_reports",
        "verification_session",
        "verification session",
        "vs_nope",
        lambda c, _: c.v1.identity.verification_reports.list({"verification_session": "vs_nope"}),
    ),
    Case(
        "GET /v1/file_links",
        "file",
        "file",
        "file_nope",
        lambda c, _: c.v1.file_links.list({"file": "file_nope"}),
    ),
    Case(
        "POST /v1/reporting/report_runs",
        "report_type",
        "report type",
        "balance.summary.99",
        lambda c, _: c.v1.reporting.report_runs.create({"report_type": "balance.summary.99"}),
    ),
    Case(
        "POST /v1/tax/calculations",
        "customer",
        "customer",
        "cus_nope",
        lambda c, _: c.v1.tax.calculations.create(
            {
                "currency": "usd",
                "customer": "cus_nope",
                "line_items": [{"amount": 1, "reference": "a"}],
            }
        ),
    ),
    Case(
        "POST /v1/tax/calculations",
        "line_items[0][product]",
        "product",
        "prod_nope",
        lambda c, _: c.v1.tax.calculations.create(
            {
                "currency": "usd",
                "customer_details": {"address": {"country": "US", **_CA}},
                "line_items": [{"amount": 1, "reference": "a", "product": "prod_nope"}],
            }
        ),
    ),
    Case(
        "POST /v1/tax/calculations",
        "shipping_cost[shipping_rate]",
        "shipping rate",
        "shr_nope",
        lambda c, _: c.v1.tax.calculations.create(
            {
                "currency": "usd",
                "customer_details": {"address": {"country": "US", **_CA}},
                "line_items": [{"amount": 1, "reference": "a"}],
                "shipping_cost": {"shipping_rate": "shr_nope"},
            }
        ),
    ),
    Case(
        "POST /v1/tax/transactions/create_from_calculation",
        "calculation",
        "calculation",
        "taxcalc_nope",
        lambda c, _: c.v1.tax.transactions.create_from_calculation(
            {"calculation": "taxcalc_nope", "reference": "r"}
        ),
    ),
    Case(
        "POST /v1/tax/transactions/create_reversal",
        "original_transaction",
        "transaction",
        "tax_nope",
        lambda c, _: c.v1.tax.transactions.create_reversal(
            {"original_transaction": "tax_nope", "reference": "r", "mode": "full"}
        ),
    ),
    Case(
        "POST /v1/tax/transactions/create_reversal",
        "line_items[0][original_line_item]",
        "transaction line item",
        "tax_li_nope",
        lambda c, tx: c.v1.tax.transactions.create_reversal(
            {
                "original_transaction": tx.id,
                "reference": "r",
                "mode": "partial",
                "line_items": [
                    {
                        "original_line_item": "tax_li_nope",
                        "reference": "a",
                        "amount": -1,
                        "amount_tax": 0,
                    }
                ],
            }
        ),
        _transaction,
    ),
    Case(
        "POST /v1/sandbox/trigger",
        "object",
        "climate order",
        "climorder_nope",
        lambda c, _: c.raw_request(
            "post", "/v1/sandbox/trigger", type="climate.order.created", object="climorder_nope"
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.route} {c.param}")
def test_a_missing_object_in_a_parameter_is_a_400_resource_missing(
    sandbox_stack: SandboxStack, case: Case
) -> None:
    client = sandbox_stack.sdk()
    prepared = case.prepare(client)
    events_before = len(client.v1.events.list({"limit": 100}).data)
    with pytest.raises(stripe.InvalidRequestError) as info:
        case.call(client, prepared)
    error = info.value
    assert error.http_status == 400, error.json_body
    assert (error.code, error.param) == ("resource_missing", case.param)
    assert error.user_message == f"No such {case.resource}: '{case.missing_id}'"
    assert error.error is not None and error.error.type == "invalid_request_error"
    # nothing was made
    assert len(client.v1.events.list({"limit": 100}).data) == events_before


def test_a_missing_path_id_is_still_a_404(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.financial_connections.sessions.retrieve("fcsess_nope")
    assert (info.value.http_status, info.value.code, info.value.param) == (
        404,
        "resource_missing",
        "id",
    )


@pytest.mark.parametrize("resource", sorted(FOREIGN_PREFIXES))
def test_an_id_of_a_type_the_sandbox_does_not_serve_is_known_by_its_prefix(
    sandbox_stack: SandboxStack, resource: str
) -> None:
    """Customers, connected accounts, persons, payouts and verification flows cannot be
    created in the sandbox: an id with the type's prefix names one; anything else is missing."""
    account = sandbox_stack.sandbox.accounts
    client = sandbox_stack.sdk()
    client.v1.events.list()  # makes the key's account
    (state,) = account.values()
    prefix = FOREIGN_PREFIXES[resource]
    assert state.foreign(resource, f"{prefix}1", "p") == f"{prefix}1"
    for wrong in (prefix, "x" + prefix + "1", "nope"):
        with pytest.raises(Exception, match=f"No such {resource}: '{wrong}'"):
            state.foreign(resource, wrong, "p")
    # one the account has (a test may add one) exists whatever its id
    state.add({"id": "legacy_1", "object": resource}, resource.replace(" ", "_"))
    assert state.foreign(resource, "legacy_1", "p") == "legacy_1"


def test_foreign_ids_with_their_prefix_are_accepted_over_the_api(
    sandbox_stack: SandboxStack,
) -> None:
    client = sandbox_stack.sdk()
    session = client.v1.identity.verification_sessions.create(
        {
            "type": "document",
            "related_customer": "cus_refs_0001",
            "related_person": {"account": "acct_refs", "person": "person_refs"},
        }
    )
    assert session.related_customer == "cus_refs_0001"
    assert session.related_person.to_dict() == {"account": "acct_refs", "person": "person_refs"}
    fc = client.v1.financial_connections.sessions.create(
        {"account_holder": _HOLDER, "permissions": ["balances"]}
    )
    assert fc.account_holder.customer == "cus_refs_0001"
