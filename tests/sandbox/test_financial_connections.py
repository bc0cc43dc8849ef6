"""Financial Connections in the sandbox, through the gateway with the official SDK."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from tests.sandbox.conftest import SandboxStack
from tests.sandbox.fidelity import assert_stripe_fields

ALL_PERMISSIONS = ["balances", "ownership", "payment_method", "transactions"]


def _session(client: stripe.StripeClient, **extra: Any) -> Any:
    params: dict[str, Any] = {
        "account_holder": {"type": "customer", "customer": "cus_fc_test_0001"},
        "permissions": ALL_PERMISSIONS,
        **extra,
    }
    return client.v1.financial_connections.sessions.create(params)  # type: ignore[arg-type]


def _settled(client: stripe.StripeClient, fca: str, field: str) -> Any:
    deadline = time.monotonic() + 3
    while True:
        account = client.v1.financial_connections.accounts.retrieve(fca)
        if account[field]["status"] != "pending" or time.monotonic() > deadline:
            return account
        time.sleep(0.05)


def _seeded(client: stripe.StripeClient, subcategory: str) -> Any:
    accounts = client.v1.financial_connections.accounts.list({"limit": 100}).data
    return next(a for a in accounts if a.subcategory == subcategory)


def test_seeded_accounts_have_data(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    accounts = client.v1.financial_connections.accounts.list().data
    assert sorted(a.subcategory for a in accounts) == ["checking", "credit_card", "savings"]
    for account in accounts:
        assert_stripe_fields(account)
        assert account.id.startswith("fca_") and account.status == "active"
        assert account.balance_refresh.status == "succeeded"
        assert account.transaction_refresh.id.startswith("fctxnref_")
        assert account.ownership.startswith("fcaowns_")
    checking = _seeded(client, "checking")
    assert checking.balance.type == "cash" and checking.balance.current.usd > 0
    assert checking.subscriptions == ["transactions"]
    credit = _seeded(client, "credit_card")
    assert credit.category == "credit" and credit.balance.type == "credit"
    customer = checking.account_holder.customer
    listed = client.v1.financial_connections.accounts.list(
        {"account_holder": {"customer": customer}}
    )
    assert len(listed.data) == 3
    none = client.v1.financial_connections.accounts.list(
        {"account_holder": {"customer": "cus_nobody"}}
    )
    assert none.data == []
    got = client.v1.financial_connections.accounts.retrieve(checking.id)
    assert got.to_dict() == checking.to_dict()


def test_session_links_accounts(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    session = _session(client, return_url="https://example.com/back")
    assert_stripe_fields(session)
    assert session.id.startswith("fcsess_")
    assert session.client_secret.startswith(session.id + "_secret_")
    assert session.account_holder.to_dict() == {"type": "customer", "customer": "cus_fc_test_0001"}
    assert session.permissions == ALL_PERMISSIONS and session.prefetch == []
    linked = session.accounts.data
    assert [a.subcategory for a in linked] == ["checking", "savings"]
    for account in linked:
        assert_stripe_fields(account)
        assert account.permissions == ALL_PERMISSIONS
        assert account.balance is None and account.transaction_refresh is None
    again = client.v1.financial_connections.sessions.retrieve(session.id)
    assert again.to_dict() == session.to_dict()
    by_session = client.v1.financial_connections.accounts.list({"session": session.id})
    assert {a.id for a in by_session.data} == {a.id for a in linked}
    by_customer = client.v1.financial_connections.accounts.list(
        {"account_holder": {"customer": "cus_fc_test_0001"}}
    )
    assert {a.id for a in by_customer.data} == {a.id for a in linked}

    platform = client.v1.financial_connections.sessions.create(
        {
            "account_holder": {"type": "account", "account": "acct_1Platform00001"},
            "permissions": ["payment_method"],
            "filters": {"account_subcategories": ["credit_card", "savings", "mortgage"]},
            "limits": {"accounts": 2},
        }
    )
    assert platform.account_holder.to_dict() == {
        "type": "account",
        "account": "acct_1Platform00001",
    }
    assert [a.subcategory for a in platform.accounts.data] == ["credit_card", "savings"]
    assert platform.accounts.data[0].category == "credit"
    by_account = client.v1.financial_connections.accounts.list(
        {"account_holder": {"account": "acct_1Platform00001"}}
    )
    assert len(by_account.data) == 2


def test_session_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    create = client.v1.financial_connections.sessions.create
    holder = {"type": "customer", "customer": "cus_1"}
    ok: dict[str, Any] = {"account_holder": holder, "permissions": ["balances"]}
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"permissions": ["balances"]}, "account_holder", "parameter_missing"),
        ({"account_holder": holder}, "permissions", "parameter_missing"),
        (
            {**ok, "account_holder": {"customer": "cus_1"}},
            "account_holder[type]",
            "parameter_missing",
        ),
        (
            {**ok, "account_holder": {"type": "customer"}},
            "account_holder[customer]",
            "parameter_missing",
        ),
        ({**ok, "account_holder": {**holder, "type": "bank"}}, "account_holder[type]", None),
        ({**ok, "permissions": ["money"]}, "permissions[0]", None),
        (
            {**ok, "account_holder": {**holder, "customer": "nope"}},
            "account_holder[customer]",
            "resource_missing",
        ),
        ({**ok, "bogus": "1"}, "bogus", "parameter_unknown"),
        ({**ok, "limits": {"accounts": "many"}}, "limits[accounts]", "parameter_invalid_integer"),
        ({**ok, "prefetch": ["transactions"]}, "prefetch", None),
    ]
    for params, param, code in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            create(params)  # type: ignore[arg-type]
        assert (info.value.param, info.value.code) == (param, code), params
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.financial_connections.sessions.retrieve("fcsess_missing")
    assert info.value.http_status == 404
    assert info.value.code == "resource_missing" and info.value.param == "id"


def test_refresh_goes_pending_then_succeeded(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    fca = _session(client).accounts.data[0].id
    accounts = client.v1.financial_connections.accounts
    refreshed = accounts.refresh(fca, {"features": ["balance", "ownership", "transactions"]})
    assert refreshed.balance_refresh.status == "pending"
    assert refreshed.balance_refresh.next_refresh_available_at is None
    assert refreshed.ownership_refresh.status == "pending"
    assert refreshed.transaction_refresh.status == "pending"
    refresh_id = refreshed.transaction_refresh.id
    assert refresh_id.startswith("fctxnref_")
    assert refreshed.balance is None and refreshed.ownership is None
    done = _settled(client, fca, "transaction_refresh")
    assert done.balance_refresh.status == "succeeded"
    assert done.ownership_refresh.status == "succeeded"
    assert done.transaction_refresh.to_dict()["status"] == "succeeded"
    assert done.balance.type == "cash" and done.balance.cash.available.usd > 0
    assert done.ownership.startswith("fcaowns_")
    transactions = client.v1.financial_connections.transactions.list({"account": fca}).data
    assert len(transactions) == 8
    assert {t.transaction_refresh for t in transactions} == {refresh_id}
    for txn in transactions:
        assert_stripe_fields(txn)

    again = accounts.refresh(fca, {"features": ["transactions"]})
    second = again.transaction_refresh.id
    assert second != refresh_id and again.transaction_refresh.status == "pending"
    _settled(client, fca, "transaction_refresh")
    newer = client.v1.financial_connections.transactions.list(
        {"account": fca, "transaction_refresh": {"after": refresh_id}}
    ).data
    assert len(newer) == 2 and {t.transaction_refresh for t in newer} == {second}


def test_prefetch_refreshes_on_link(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    session = _session(client, prefetch=["balances"])
    assert session.prefetch == ["balances"]
    account = session.accounts.data[0]
    assert account.balance_refresh.status == "pending" and account.ownership_refresh is None
    assert _settled(client, account.id, "balance_refresh").balance.current.usd > 0


def test_refresh_errors_and_disconnect(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    accounts = client.v1.financial_connections.accounts
    only_pm = client.v1.financial_connections.sessions.create(
        {
            "account_holder": {"type": "customer", "customer": "cus_fc_test_0002"},
            "permissions": ["payment_method"],
        }
    )
    fca = only_pm.accounts.data[0].id
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.refresh(fca, {"features": ["balance"]})
    assert info.value.param == "features" and "`balances`" in info.value.user_message
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.subscribe(fca, {"features": ["transactions"]})
    assert info.value.param == "features"
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.refresh(fca, {"features": ["vibes"]})  # type: ignore[list-item]
    assert info.value.param == "features[0]"
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.refresh(fca, {})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_missing" and info.value.param == "features"

    checking = _seeded(client, "checking")
    disconnected = accounts.disconnect(checking.id)
    assert disconnected.status == "disconnected" and disconnected.subscriptions == []
    assert accounts.disconnect(checking.id).status == "disconnected"
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.refresh(checking.id, {"features": ["balance"]})
    assert info.value.http_status == 400 and "disconnected" in info.value.user_message
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.subscribe(checking.id, {"features": ["transactions"]})
    assert "disconnected" in info.value.user_message
    for method in (accounts.retrieve, accounts.disconnect):
        with pytest.raises(stripe.InvalidRequestError) as info:
            method("fca_missing")
        assert info.value.http_status == 404 and info.value.param == "id"


def test_subscribe_and_unsubscribe(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    accounts = client.v1.financial_connections.accounts
    savings = _seeded(client, "savings")
    assert savings.subscriptions == []
    subscribed = accounts.subscribe(savings.id, {"features": ["transactions"]})
    assert subscribed.subscriptions == ["transactions"]
    assert accounts.subscribe(savings.id, {"features": ["transactions"]}).subscriptions == [
        "transactions"
    ]
    assert accounts.retrieve(savings.id).subscriptions == ["transactions"]
    unsubscribed = accounts.unsubscribe(savings.id, {"features": ["transactions"]})
    assert unsubscribed.subscriptions == []
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.unsubscribe(savings.id, {"features": ["balance"]})  # type: ignore[list-item]
    assert info.value.param == "features[0]"


def test_owners_and_ownership_expansion(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    accounts = client.v1.financial_connections.accounts
    checking = _seeded(client, "checking")
    owners = accounts.owners.list(checking.id, {"ownership": checking.ownership})
    assert [o.name for o in owners.data] == ["Jamie Rosen", "Jenny Rosen"]
    for owner in owners.data:
        assert_stripe_fields(owner)
        assert owner.id.startswith("fcaown_") and owner.ownership == checking.ownership
    first = accounts.owners.list(checking.id, {"ownership": checking.ownership, "limit": 1})
    assert first.has_more is True and len(first.data) == 1
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.owners.list(checking.id, {})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_missing" and info.value.param == "ownership"
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.owners.list(checking.id, {"ownership": "fcaowns_other"})
    assert info.value.code == "resource_missing" and info.value.param == "ownership"

    expanded = accounts.retrieve(checking.id, {"expand": ["ownership"]})
    ownership = expanded.ownership
    assert ownership.object == "financial_connections.account_ownership"
    assert ownership.id == checking.ownership
    assert {o.id for o in ownership.owners.data} == {o.id for o in owners.data}
    assert accounts.retrieve(checking.id).ownership == checking.ownership  # not stored expanded
    listed = accounts.list({"expand": ["data.ownership"]})
    assert all(a.ownership.object == "financial_connections.account_ownership" for a in listed.data)
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.retrieve(checking.id, {"expand": ["institution_name"]})
    assert info.value.param == "expand"


def test_transactions_pagination_and_filters(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    transactions = client.v1.financial_connections.transactions
    checking = _seeded(client, "checking")
    every = transactions.list({"account": checking.id, "limit": 100}).data
    assert len(every) == 15
    times = [t.transacted_at for t in every]
    assert times == sorted(times, reverse=True)
    assert every[0].status == "pending" and every[0].status_transitions.posted_at is None
    assert all(t.status == "posted" for t in every[1:])
    assert {t.account for t in every} == {checking.id}

    walked: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"account": checking.id, "limit": 4}
        if after:
            params["starting_after"] = after
        batch = transactions.list(params)  # type: ignore[arg-type]
        walked += [t.id for t in batch.data]
        if not batch.has_more:
            break
        after = batch.data[-1].id
    assert walked == [t.id for t in every]
    before = transactions.list({"account": checking.id, "ending_before": every[6].id, "limit": 3})
    assert [t.id for t in before.data] == [t.id for t in every[3:6]] and before.has_more
    default = transactions.list({"account": checking.id})
    assert len(default.data) == 10 and default.has_more is True

    cut = every[5].transacted_at
    recent = transactions.list(
        {"account": checking.id, "transacted_at": {"gte": cut}, "limit": 100}
    )
    assert [t.id for t in recent.data] == [t.id for t in every[:6]]
    exact = transactions.list({"account": checking.id, "transacted_at": cut})
    assert [t.id for t in exact.data] == [every[5].id]

    got = transactions.retrieve(every[3].id)
    assert got.to_dict() == every[3].to_dict()
    assert_stripe_fields(got)

    with pytest.raises(stripe.InvalidRequestError) as info:
        transactions.list({})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_missing" and info.value.param == "account"
    with pytest.raises(stripe.InvalidRequestError) as info:
        transactions.list({"account": "fca_missing"})
    assert info.value.code == "resource_missing" and info.value.param == "account"
    with pytest.raises(stripe.InvalidRequestError) as info:
        transactions.retrieve("fctxn_missing")
    assert info.value.http_status == 404 and info.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as info:
        transactions.list({"account": checking.id, "limit": "ten"})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_invalid_integer" and info.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as info:
        transactions.list({"account": checking.id, "transacted_at": {"gte": "soon"}})  # type: ignore[typeddict-item]
    assert info.value.param == "transacted_at[gte]"
    with pytest.raises(stripe.InvalidRequestError) as info:
        transactions.list({"account": checking.id, "transaction_refresh": {"after": "fctxnref_x"}})
    assert info.value.param == "transaction_refresh[after]"


def test_account_list_pagination_and_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    accounts = client.v1.financial_connections.accounts
    for _ in range(5):
        _session(client)
    every = accounts.list({"limit": 100}).data
    assert len(every) == 13
    page1 = accounts.list({"limit": 6})
    page2 = accounts.list({"limit": 6, "starting_after": page1.data[-1].id})
    page3 = accounts.list({"limit": 6, "starting_after": page2.data[-1].id})
    assert page1.has_more and page2.has_more and not page3.has_more
    assert [a.id for a in [*page1.data, *page2.data, *page3.data]] == [a.id for a in every]
    back = accounts.list({"limit": 6, "ending_before": page3.data[0].id})
    assert [a.id for a in back.data] == [a.id for a in page2.data]

    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.list({"account_holder": {"customer": "cus_1", "account": "acct_1"}})
    assert info.value.param == "account_holder"
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.list({"session": "fcsess_missing"})
    assert info.value.code == "resource_missing" and info.value.param == "session"
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.list({"bogus": "1"})  # type: ignore[typeddict-unknown-key]
    assert info.value.code == "parameter_unknown" and info.value.param == "bogus"
    with pytest.raises(stripe.InvalidRequestError) as info:
        accounts.list({"limit": 0})
    assert info.value.code == "parameter_invalid_integer"


def test_direct_http_shapes(sandbox_stack: SandboxStack) -> None:
    accounts = sandbox_stack.raw("GET", "/v1/financial_connections/accounts").json()
    assert accounts["object"] == "list" and accounts["url"] == "/v1/financial_connections/accounts"
    fca = accounts["data"][0]["id"]
    response = sandbox_stack.raw(
        "POST", f"/v1/financial_connections/accounts/{fca}/refresh", data={"features[]": "balance"}
    )
    assert response.status_code == 200 and response.json()["balance_refresh"]["status"] == "pending"


def test_session_shows_its_filters_and_limits(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    session = _session(
        client,
        filters={"account_subcategories": ["savings"], "country": "US"},
        limits={"accounts": 1},
        return_url="https://example.com/back",
    )
    assert session.filters.to_dict() == {
        "account_subcategories": ["savings"],
        "country": "US",
        "require_payment_method_support": None,
    }
    assert session.limits.to_dict() == {"accounts": 1}
    assert session.return_url == "https://example.com/back"
    assert client.v1.financial_connections.sessions.retrieve(session.id).limits.accounts == 1
    plain = _session(client)
    assert plain.filters is None and plain.limits is None
    account = plain.accounts.data[0]
    assert "status_details" in account and account.status_details is None
