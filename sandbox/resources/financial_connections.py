"""Financial Connections: accounts, sessions, transactions and account owners.

A session is created already completed, the way a test-mode session ends after the user
picks the test institution's accounts: its ``accounts`` list holds newly linked accounts
(two by default: checking and savings; ``filters[account_subcategories]`` and
``limits[accounts]`` choose others). Refreshing a feature (``refresh``, or a session's
``prefetch``) makes the matching ``*_refresh`` object ``pending``; it is ``succeeded``
``settings.report_delay`` seconds later (on time in the app, emitting
``financial_connections.account.refreshed_<feature>``, or when the account is next read), and
the data it fetched (balance, ownership and owners, transactions) appears then.

Every new account also gets a few linked accounts with data (seeded), so lists, owners and
transactions work without creating a session first.
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sandbox.core import (
    Account,
    Call,
    ExpandRule,
    bad_request,
    boolean_value,
    choice_list,
    choice_value,
    integer_value,
    make_object,
    mapping_value,
    missing,
    missing_param,
    page,
    required,
    string_value,
)
from sandbox.resources import REGISTRY as api

ACCOUNT = "financial_connections.account"
SESSION = "financial_connections.session"
TRANSACTION = "financial_connections.transaction"
OWNER = "financial_connections.account_owner"
OWNERSHIP = "financial_connections.account_ownership"

_ACCOUNTS_URL = "/v1/financial_connections/accounts"
_PERMISSIONS = ("balances", "ownership", "payment_method", "transactions")
_PREFETCH = ("balances", "ownership", "transactions")
#: refresh feature -> (permission it needs, the account's refresh field)
_FEATURES = {
    "balance": ("balances", "balance_refresh"),
    "ownership": ("ownership", "ownership_refresh"),
    "transactions": ("transactions", "transaction_refresh"),
}
_PREFETCH_FEATURE = {
    "balances": "balance",
    "ownership": "ownership",
    "transactions": "transactions",
}
#: subcategory -> (category, display name, last4, payment method types)
_SUBCATEGORIES: dict[str, tuple[str, str, str, list[str]]] = {
    "checking": ("cash", "Sample Checking Account", "6789", ["us_bank_account"]),
    "savings": ("cash", "Sample Savings Account", "4321", ["us_bank_account"]),
    "credit_card": ("credit", "Sample Credit Card", "1881", []),
    "line_of_credit": ("credit", "Sample Line of Credit", "2424", []),
    "mortgage": ("credit", "Sample Mortgage", "9090", []),
}
_DESCRIPTIONS = (
    "Rocket Rides",
    "Corner Coffee",
    "Payroll deposit",
    "Grocery Mart",
    "Electric utility",
    "Transfer to savings",
    "Bookshop",
    "Gas station",
    "Streaming service",
    "Pharmacy",
)
_OWNERS = (
    ("Jenny Rosen", "jenny.rosen@example.com", "+1 555-555-0101", "510 Townsend St, San Francisco"),
    ("Jamie Rosen", "jamie.rosen@example.com", "+1 555-555-0102", "510 Townsend St, San Francisco"),
)


@dataclass
class _State:
    #: (financial connections account id, feature) -> when the refresh was started
    pending: dict[tuple[str, str], float] = field(default_factory=dict)
    #: session id -> ids of the accounts it linked
    session_accounts: dict[str, list[str]] = field(default_factory=dict)
    #: account id -> the session that linked it
    session_of: dict[str, str] = field(default_factory=dict)
    #: transaction refresh ids, oldest first
    refreshes: list[str] = field(default_factory=list)
    #: account id -> the balance the institution reports (cents)
    balances: dict[str, int] = field(default_factory=dict)


def _state(account: Account) -> _State:
    return account.state("financial_connections", _State)


# --------------------------------------------------------------------------- data


def _balance(account: Account, obj: dict[str, Any], at: int) -> dict[str, Any]:
    amount = _state(account).balances.setdefault(obj["id"], account.ids.randint(10_000, 900_000))
    if obj["category"] == "credit":
        return {
            "as_of": at,
            "credit": {"used": {"usd": amount}},
            "current": {"usd": -amount},
            "type": "credit",
        }
    return {
        "as_of": at,
        "cash": {"available": {"usd": amount}},
        "current": {"usd": amount},
        "type": "cash",
    }


def _add_transactions(account: Account, fca: str, refresh_id: str, count: int, newest: int) -> None:
    """``count`` transactions up to ``newest``, added oldest first (lists show newest first)."""
    for i in reversed(range(count)):
        transacted_at = newest - i * 86_400 - account.ids.randint(0, 3_600)
        pending = i == 0
        amount = account.ids.randint(100, 25_000)
        description = _DESCRIPTIONS[account.ids.randint(0, len(_DESCRIPTIONS) - 1)]
        posted_at = None if pending else transacted_at + 3_600
        txn = make_object(
            TRANSACTION,
            account.ids.new("fctxn"),
            account=fca,
            amount=amount if description == "Payroll deposit" else -amount,
            currency="usd",
            description=description,
            status="pending" if pending else "posted",
            status_transitions={"posted_at": posted_at, "void_at": None},
            transacted_at=transacted_at,
            transaction_refresh=refresh_id,
            updated=posted_at or transacted_at,
        )
        account.add(txn, TRANSACTION)


def _add_ownership(account: Account, obj: dict[str, Any], at: int) -> None:
    ownership_id = account.ids.new("fcaowns")
    account.add({"id": ownership_id, "object": OWNERSHIP, "created": at, "owners": None}, OWNERSHIP)
    count = 2 if obj["subcategory"] == "checking" else 1
    for name, email, phone, address in _OWNERS[:count]:
        owner = make_object(
            OWNER,
            account.ids.new("fcaown"),
            email=email,
            name=name,
            ownership=ownership_id,
            phone=phone,
            raw_address=address,
            refreshed_at=at,
        )
        account.add(owner, OWNER)
    obj["ownership"] = ownership_id


def _refresh_object(feature: str, status: str, attempted: int, refresh_id: str | None) -> Any:
    out: dict[str, Any] = {
        "last_attempted_at": attempted,
        "next_refresh_available_at": None if status == "pending" else attempted,
        "status": status,
    }
    if feature == "transactions":
        return {"id": refresh_id, **out}
    return out


def _start(account: Account, obj: dict[str, Any], feature: str, now: float) -> None:
    refresh_id = account.ids.new("fctxnref") if feature == "transactions" else None
    obj[_FEATURES[feature][1]] = _refresh_object(feature, "pending", int(now), refresh_id)
    _state(account).pending[(obj["id"], feature)] = now
    account.at(now + account.settings.report_delay, lambda: _settle(account, obj))


def _finish(account: Account, obj: dict[str, Any], feature: str, started: float) -> None:
    field_name = _FEATURES[feature][1]
    done = int(started + account.settings.report_delay)
    refresh = obj[field_name]
    refresh["status"] = "succeeded"
    refresh["next_refresh_available_at"] = done
    if feature == "balance":
        obj["balance"] = _balance(account, obj, done)
    elif feature == "ownership":
        _add_ownership(account, obj, done)
    else:
        first = obj["id"] not in {t["account"] for t in account.table(TRANSACTION).values()}
        _state(account).refreshes.append(refresh["id"])
        _add_transactions(account, obj["id"], refresh["id"], 8 if first else 2, done)
    account.emit(f"financial_connections.account.refreshed_{feature}", obj)


def _settle(account: Account, obj: dict[str, Any]) -> dict[str, Any]:
    """Finish the account's refreshes that have been pending long enough."""
    state = _state(account)
    now = time.time()
    for feature in _FEATURES:
        started = state.pending.get((obj["id"], feature))
        if started is not None and now - started >= account.settings.report_delay:
            del state.pending[(obj["id"], feature)]
            _finish(account, obj, feature, started)
    return obj


def _new_account(
    account: Account,
    holder: dict[str, Any],
    subcategory: str,
    permissions: list[str],
    created: int,
) -> dict[str, Any]:
    category, name, last4, methods = _SUBCATEGORIES[subcategory]
    return make_object(
        ACCOUNT,
        account.ids.new("fca"),
        created=created,
        account_holder=dict(holder),
        account_numbers=None,
        balance=None,
        balance_refresh=None,
        category=category,
        display_name=name,
        institution_name="StripeBank",
        last4=last4,
        ownership=None,
        ownership_refresh=None,
        permissions=list(permissions),
        status="active",
        status_details=None,
        subcategory=subcategory,
        subscriptions=[],
        supported_payment_method_types=list(methods),
        transaction_refresh=None,
    )


# --------------------------------------------------------------------------- rendering


def _ownership(account: Account, ownership_id: str, fca: str) -> dict[str, Any]:
    ownership = copy.deepcopy(account.get(OWNERSHIP, ownership_id, "ownership"))
    owners = [o for o in account.table(OWNER).values() if o["ownership"] == ownership_id]
    ownership["owners"] = {
        "object": "list",
        "data": copy.deepcopy(owners),
        "has_more": False,
        "url": f"{_ACCOUNTS_URL}/{fca}/owners?ownership={ownership_id}",
    }
    return ownership


def _render_account(account: Account, obj: dict[str, Any], expand: set[str]) -> dict[str, Any]:
    _settle(account, obj)
    out = copy.deepcopy(obj)
    if "ownership" in expand and out["ownership"]:
        out["ownership"] = _ownership(account, out["ownership"], out["id"])
    return out


#: what an account's routes may expand: ``ownership`` (``account_holder.*`` is accepted but
#: not done: the sandbox has no customers or connected accounts to show)
_ACCOUNT_EXPAND: ExpandRule = {"expand": ("ownership",), "expand_ignored": ("account_holder.",)}
_ACCOUNTS_EXPAND: ExpandRule = {
    "expand": ("data.ownership",),
    "expand_ignored": ("data.account_holder.",),
}
#: a session's ``accounts`` are always shown; ``account_holder.*`` is accepted, not done
SESSION_EXPAND: ExpandRule = {"expand_ignored": ("accounts.", "account_holder.")}


def _account_expand(call: Call, prefix: str = "") -> set[str]:
    """``ownership`` when asked for (``data.ownership`` on a list: ``prefix``)."""
    return {name.removeprefix(prefix) for name in call.expand}


def _render_session(account: Account, obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    ids = _state(account).session_accounts.get(obj["id"], [])
    linked = [_render_account(account, account.get(ACCOUNT, i), set()) for i in ids]
    out["accounts"] = {"object": "list", "data": linked, "has_more": False, "url": _ACCOUNTS_URL}
    return out


# --------------------------------------------------------------------------- accounts


def _get_account(call: Call) -> dict[str, Any]:
    return call.account.get(ACCOUNT, call.id(), "financial connections account")


@api.route("GET", "/v1/financial_connections/accounts/{id}", params=(), **_ACCOUNT_EXPAND)
async def retrieve_account(call: Call) -> dict[str, Any]:
    obj = _get_account(call)
    return _render_account(call.account, obj, _account_expand(call))


@api.route(
    "GET",
    "/v1/financial_connections/accounts",
    params=("account_holder", "session"),
    **_ACCOUNTS_EXPAND,
)
async def list_accounts(call: Call) -> dict[str, Any]:
    holder = call.mapping("account_holder", keys=("account", "customer", "customer_account"))
    for key, value in (holder or {}).items():
        kind = "customer" if key == "customer" else "account"
        call.account.foreign(kind, value, f"account_holder[{key}]")
    if holder and len(holder) > 1:
        raise bad_request(
            "You may only specify one of these parameters: "
            + ", ".join(f"account_holder[{k}]" for k in sorted(holder))
            + ".",
            "account_holder",
        )
    session = call.text("session")
    objects = list(call.account.table(ACCOUNT).values())
    if session is not None:
        call.account.find(SESSION, session, "session", "financial connections session")
        wanted = set(_state(call.account).session_accounts.get(session, []))
        objects = [o for o in objects if o["id"] in wanted]
    for key, value in (holder or {}).items():
        objects = [o for o in objects if o["account_holder"].get(key) == value]
    expand = _account_expand(call, "data.")
    result = page(call, objects, _ACCOUNTS_URL)
    result["data"] = [_render_account(call.account, o, expand) for o in result["data"]]
    return result


@api.route(
    "POST", "/v1/financial_connections/accounts/{id}/disconnect", params=(), **_ACCOUNT_EXPAND
)
async def disconnect(call: Call) -> dict[str, Any]:
    obj = _settle(call.account, _get_account(call))
    if obj["status"] != "disconnected":
        previous = {"status": obj["status"], "subscriptions": obj["subscriptions"]}
        obj["status"] = "disconnected"
        obj["status_details"] = None
        obj["subscriptions"] = []
        call.account.emit("financial_connections.account.disconnected", obj, previous)
    return _render_account(call.account, obj, _account_expand(call))


def _require_connected(obj: dict[str, Any], action: str) -> None:
    if obj["status"] == "disconnected":
        raise bad_request(
            f"You cannot {action} the Financial Connections Account {obj['id']} because it "
            "has been disconnected.",
        )


def _require_permission(obj: dict[str, Any], feature: str) -> None:
    permission = _FEATURES[feature][0]
    if permission not in obj["permissions"]:
        raise bad_request(
            f"The Financial Connections Account {obj['id']} does not have the `{permission}` "
            f"permission, which is required to access `{feature}` data. Collect it with a "
            "new Financial Connections Session.",
            param="features",
        )


@api.route(
    "POST",
    "/v1/financial_connections/accounts/{id}/refresh",
    params=("features",),
    **_ACCOUNT_EXPAND,
)
async def refresh(call: Call) -> dict[str, Any]:
    obj = _settle(call.account, _get_account(call))
    features = call.choices("features", tuple(_FEATURES), required=True)
    _require_connected(obj, "refresh")
    for feature in features:
        _require_permission(obj, feature)
    now = time.time()
    for feature in features:
        _start(call.account, obj, feature, now)
    return _render_account(call.account, obj, _account_expand(call))


@api.route(
    "POST",
    "/v1/financial_connections/accounts/{id}/subscribe",
    params=("features",),
    **_ACCOUNT_EXPAND,
)
async def subscribe(call: Call) -> dict[str, Any]:
    obj = _settle(call.account, _get_account(call))
    features = call.choices("features", ("transactions",), required=True)
    _require_connected(obj, "subscribe to")
    for feature in features:
        _require_permission(obj, feature)
        if feature not in obj["subscriptions"]:
            obj["subscriptions"].append(feature)
    return _render_account(call.account, obj, _account_expand(call))


@api.route(
    "POST",
    "/v1/financial_connections/accounts/{id}/unsubscribe",
    params=("features",),
    **_ACCOUNT_EXPAND,
)
async def unsubscribe(call: Call) -> dict[str, Any]:
    obj = _settle(call.account, _get_account(call))
    features = call.choices("features", ("transactions",), required=True)
    obj["subscriptions"] = [s for s in obj["subscriptions"] if s not in features]
    return _render_account(call.account, obj, _account_expand(call))


@api.route("GET", "/v1/financial_connections/accounts/{id}/owners", params=("ownership",))
async def list_owners(call: Call) -> dict[str, Any]:
    obj = _settle(call.account, _get_account(call))
    ownership = call.text("ownership", required=True)
    if ownership != obj["ownership"]:
        raise missing("ownership", str(ownership), "ownership")
    owners = [o for o in call.account.table(OWNER).values() if o["ownership"] == ownership]
    return page(call, owners, f"{_ACCOUNTS_URL}/{obj['id']}/owners")


# --------------------------------------------------------------------------- sessions


def _account_holder(call: Call) -> dict[str, Any]:
    holder = call.mapping("account_holder", required=True)
    assert holder is not None
    kind = choice_value(
        required(holder.get("type"), "account_holder[type]"),
        "account_holder[type]",
        ("account", "customer"),
    )
    mapping_value(holder, "account_holder", ("type", "account", "customer", "customer_account"))
    if kind == "account":
        if "customer" in holder or "customer_account" in holder:
            raise bad_request(
                "account_holder[customer] can only be set when account_holder[type] is `customer`.",
                "account_holder[customer]",
            )
        wanted = "account"
    else:
        if "account" in holder:
            raise bad_request(
                "account_holder[account] can only be set when account_holder[type] is `account`.",
                "account_holder[account]",
            )
        wanted = "customer_account" if "customer_account" in holder else "customer"
    param = f"account_holder[{wanted}]"
    value = required(holder.get(wanted), param)
    found = call.account.foreign("customer" if wanted == "customer" else "account", value, param)
    return {"type": kind, wanted: found}


def _subcategories(call: Call) -> list[str]:
    filters = call.mapping(
        "filters", keys=("account_subcategories", "country", "require_payment_method_support")
    )
    chosen = (filters or {}).get("account_subcategories")
    if chosen is None:
        subcategories = ["checking", "savings"]
    else:
        param = "filters[account_subcategories]"
        if not isinstance(chosen, list) or not chosen:
            raise bad_request(
                f"Invalid array: {param} must be a non-empty array.",
                param,
                "parameter_invalid_array",
            )
        subcategories = choice_list(chosen, param, tuple(_SUBCATEGORIES))
    limits = call.mapping("limits")
    if limits is not None and limits.get("accounts", "") != "":
        cap = integer_value(limits["accounts"], "limits[accounts]", low=1, high=100)
        subcategories = subcategories[:cap]
    return subcategories


def _link_session(
    account: Account,
    holder: dict[str, Any],
    permissions: list[str],
    prefetch: list[str],
    subcategories: list[str],
    created: int,
) -> dict[str, Any]:
    session_id = account.ids.new("fcsess")
    session = make_object(
        SESSION,
        session_id,
        account_holder=dict(holder),
        accounts={"object": "list", "data": [], "has_more": False, "url": _ACCOUNTS_URL},
        client_secret=f"{session_id}_secret_{secrets.token_urlsafe(18)}",
        permissions=list(permissions),
        prefetch=list(prefetch),
    )
    account.add(session, SESSION)
    state = _state(account)
    linked = state.session_accounts.setdefault(session_id, [])
    for subcategory in subcategories:
        obj = account.add(_new_account(account, holder, subcategory, permissions, created))
        linked.append(obj["id"])
        state.session_of[obj["id"]] = session_id
        account.emit("financial_connections.account.created", obj)
    return session


@api.route(
    "POST",
    "/v1/financial_connections/sessions",
    params=(
        "account_holder",
        "permissions",
        "filters",
        "limits",
        "manual_entry",
        "prefetch",
        "return_url",
    ),
    **SESSION_EXPAND,
)
async def create_session(call: Call) -> dict[str, Any]:
    holder = _account_holder(call)
    permissions = call.choices("permissions", _PERMISSIONS, required=True)
    prefetch = call.choices("prefetch", _PREFETCH)
    for feature in prefetch:
        needed = _FEATURES[_PREFETCH_FEATURE[feature]][0]
        if needed not in permissions:
            raise bad_request(
                f"prefetch includes `{feature}`, which requires the `{needed}` permission.",
                "prefetch",
            )
    subcategories = _subcategories(call)
    manual_entry = call.mapping("manual_entry", keys=("mode",))
    return_url = call.text("return_url")
    given = call.mapping("filters")
    filters = None
    if given:
        country = given.get("country")
        support = given.get("require_payment_method_support")
        filters = {
            "account_subcategories": subcategories if "account_subcategories" in given else None,
            "country": None if country is None else string_value(country, "filters[country]"),
            "require_payment_method_support": None
            if support is None
            else boolean_value(support, "filters[require_payment_method_support]"),
        }
    limits = call.mapping("limits")
    now = time.time()
    session = _link_session(call.account, holder, permissions, prefetch, subcategories, int(now))
    session["filters"] = filters
    if limits and limits.get("accounts", "") != "":
        session["limits"] = {"accounts": int(limits["accounts"])}
    if manual_entry:
        session["manual_entry"] = {"mode": manual_entry.get("mode")}
    session["return_url"] = return_url
    for fca in _state(call.account).session_accounts[session["id"]]:
        obj = call.account.get(ACCOUNT, fca)
        for feature in prefetch:
            _start(call.account, obj, _PREFETCH_FEATURE[feature], now)
    return _render_session(call.account, session)


@api.route("GET", "/v1/financial_connections/sessions/{id}", params=(), **SESSION_EXPAND)
async def retrieve_session(call: Call) -> dict[str, Any]:
    obj = call.account.get(SESSION, call.id(), "financial connections session")
    return _render_session(call.account, obj)


# --------------------------------------------------------------------------- transactions


@api.route("GET", "/v1/financial_connections/transactions/{id}", params=())
async def retrieve_transaction(call: Call) -> dict[str, Any]:
    return call.account.get(TRANSACTION, call.id(), "financial connections transaction")


@api.route(
    "GET",
    "/v1/financial_connections/transactions",
    params=("account", "transacted_at", "transaction_refresh"),
)
async def list_transactions(call: Call) -> dict[str, Any]:
    fca = call.text("account", required=True)
    assert fca is not None
    obj = call.account.find(ACCOUNT, fca, "account", "financial connections account")
    _settle(call.account, obj)
    keep = call.range_filter("transacted_at")
    objects = [
        t
        for t in call.account.table(TRANSACTION).values()
        if t["account"] == fca and keep(t["transacted_at"])
    ]
    after_spec = call.mapping("transaction_refresh")
    if after_spec is not None:
        param = "transaction_refresh[after]"
        after = after_spec.get("after")
        if not isinstance(after, str):
            raise missing_param(param)
        order = _state(call.account).refreshes
        if after not in order:
            raise missing("transaction refresh", after, param)
        newer = set(order[order.index(after) + 1 :])
        objects = [t for t in objects if t["transaction_refresh"] in newer]
    return page(call, objects, "/v1/financial_connections/transactions")


# --------------------------------------------------------------------------- seed


@api.seeder
def seed(account: Account) -> None:
    """A customer's completed session with checking, savings and a credit card, with data."""
    now = int(time.time())
    created = now - 30 * 86_400
    holder = {"type": "customer", "customer": account.ids.new("cus", 14)}
    session = _link_session(
        account,
        holder,
        ["balances", "ownership", "payment_method", "transactions"],
        ["balances", "ownership", "transactions"],
        ["checking", "savings", "credit_card"],
        created,
    )
    state = _state(account)
    counts = {"checking": 15, "savings": 4, "credit_card": 6}
    refreshed = now - 3_600
    for fca in state.session_accounts[session["id"]]:
        obj = account.get(ACCOUNT, fca)
        obj["balance"] = _balance(account, obj, refreshed)
        obj["balance_refresh"] = _refresh_object("balance", "succeeded", refreshed, None)
        _add_ownership(account, obj, refreshed)
        obj["ownership_refresh"] = _refresh_object("ownership", "succeeded", refreshed, None)
        refresh_id = account.ids.new("fctxnref")
        state.refreshes.append(refresh_id)
        _add_transactions(account, fca, refresh_id, counts[obj["subcategory"]], refreshed)
        obj["transaction_refresh"] = _refresh_object(
            "transactions", "succeeded", refreshed, refresh_id
        )
        if obj["subcategory"] == "checking":
            obj["subscriptions"] = ["transactions"]
