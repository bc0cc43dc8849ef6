"""Crypto onramp sessions and quotes in the sandbox, through the gateway.

stripe-python has no service for these endpoints, so the tests call them with the SDK's
``raw_request`` (through the gateway, like every other SDK call).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import stripe

from tests.sandbox.conftest import SandboxStack

SESSIONS = "/v1/crypto/onramp_sessions"
QUOTES = "/v1/crypto/onramp/quotes"
ETH_WALLET = "0xB00F0759DbeeF5E543Cc3E3B07A6442F5f3928a2"
SOL_WALLET = "bufoH37MTiMTNAfBS4VEZ94dCEwMsmeSijD2vZRShuV"

# fidelity.py has no example for these types (Stripe's fixtures have none), so the key sets
# come from Stripe's API reference, https://docs.stripe.com/api/crypto/onramp_sessions/object
# and https://docs.stripe.com/api/crypto/onramp_quotes/object.
SESSION_KEYS = {
    "id",
    "object",
    "client_secret",
    "created",
    "kyc_details_provided",
    "livemode",
    "metadata",
    "redirect_url",
    "status",
    "transaction_details",
}
TRANSACTION_DETAILS_KEYS = {
    "destination_amount",
    "destination_currencies",
    "destination_currency",
    "destination_network",
    "destination_networks",
    "fees",
    "lock_wallet_address",
    "source_amount",
    "source_currency",
    "transaction_id",
    "wallet_address",
    "wallet_addresses",
}
WALLET_ADDRESSES_KEYS = {
    "base_network",
    "bitcoin",
    "destination_tags",
    "ethereum",
    "optimism",
    "polygon",
    "solana",
    "stellar",
    "worldchain",
}
QUOTES_KEYS = {
    "id",
    "object",
    "destination_network_quotes",
    "livemode",
    "rate_fetched_at",
    "source_amount",
    "source_currency",
}
QUOTE_KEYS = {
    "id",
    "destination_amount",
    "destination_currency",
    "destination_network",
    "fees",
    "source_total_amount",
}


def call(client: stripe.StripeClient, method: str, path: str, **params: Any) -> dict[str, Any]:
    response = client.raw_request(method, path, **params)
    data = response.data
    assert isinstance(data, dict)
    return data


def failure(client: stripe.StripeClient, method: str, path: str, **params: Any) -> Any:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.raw_request(method, path, **params)
    return info.value


def assert_session_fields(session: dict[str, Any]) -> None:
    assert set(session) == SESSION_KEYS
    assert set(session["transaction_details"]) == TRANSACTION_DETAILS_KEYS
    assert session["object"] == "crypto.onramp_session" and session["livemode"] is False
    assert session["id"].startswith("cos_") and isinstance(session["created"], int)
    wallets = session["transaction_details"]["wallet_addresses"]
    assert wallets is None or set(wallets) == WALLET_ADDRESSES_KEYS


# --------------------------------------------------------------------------- sessions


def test_create_a_bare_session_then_retrieve_it(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    session = call(client, "post", SESSIONS)
    assert_session_fields(session)
    assert session["client_secret"].startswith(session["id"] + "_secret_")
    assert session["status"] == "initialized" and session["kyc_details_provided"] is False
    assert session["metadata"] == {} and session["redirect_url"] is None
    details = session["transaction_details"]
    assert details["destination_currencies"] == [
        "btc",
        "eth",
        "matic",
        "sol",
        "xlm",
        "avax",
        "usdc",
    ]
    assert details["destination_networks"] == [
        "bitcoin",
        "ethereum",
        "base",
        "polygon",
        "solana",
        "stellar",
        "avalanche",
    ]
    assert details["fees"] is None and details["lock_wallet_address"] is False
    assert details["wallet_addresses"] is None and details["transaction_id"] is None
    got = call(client, "get", f"{SESSIONS}/{session['id']}")
    assert got == session
    assert_session_fields(got)


def test_create_with_amounts_wallets_and_kyc(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    session = call(
        client,
        "post",
        SESSIONS,
        customer_ip_address="8.8.8.8",
        source_currency="usd",
        source_amount="200",
        destination_currency="usdc",
        destination_network="ethereum",
        destination_networks=["ethereum", "solana"],
        wallet_addresses={"ethereum": ETH_WALLET, "solana": SOL_WALLET},
        lock_wallet_address="true",
        kyc_details={"email": "ada@example.com", "first_name": "Ada"},
        metadata={"user": "42"},
    )
    assert_session_fields(session)
    details = session["transaction_details"]
    assert details["source_amount"] == "200.00" and details["source_currency"] == "usd"
    assert details["destination_amount"] == "200.000000"
    assert details["destination_currencies"] == ["eth", "sol", "usdc"]
    assert details["destination_networks"] == ["ethereum", "solana"]
    assert set(details["fees"]) == {"network_fee_amount", "transaction_fee_amount"}
    assert Decimal(details["fees"]["transaction_fee_amount"]) > 0
    assert details["wallet_addresses"]["ethereum"] == ETH_WALLET
    assert details["wallet_addresses"]["solana"] == SOL_WALLET
    assert details["wallet_addresses"]["bitcoin"] is None
    assert details["lock_wallet_address"] is True
    assert session["kyc_details_provided"] is True and session["metadata"] == {"user": "42"}

    by_destination = call(
        client,
        "post",
        SESSIONS,
        destination_amount="0.1",
        destination_currency="eth",
        destination_network="base",
    )
    details = by_destination["transaction_details"]
    assert details["destination_amount"] == "0.100000000000000000"
    assert Decimal(details["source_amount"]) > 0 and details["fees"] is not None


def test_onramp_beta_request_forms_are_accepted(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    session = call(
        client,
        "post",
        SESSIONS,
        transaction_details={
            "wallet_addresses": {"ethereum": ETH_WALLET},
            "source_currency": "usd",
            "destination_exchange_amount": "10",
            "destination_currency": "eth",
            "destination_network": "ethereum",
            "supported_destination_currencies": ["eth"],
            "supported_destination_networks": ["ethereum"],
        },
        customer_information={"email": "ada@example.com"},
    )
    assert_session_fields(session)
    details = session["transaction_details"]
    assert details["destination_currencies"] == ["eth"]
    assert details["destination_networks"] == ["ethereum"]
    assert details["destination_amount"] == "10.000000000000000000"
    assert details["wallet_addresses"]["ethereum"] == ETH_WALLET
    assert session["kyc_details_provided"] is True
    error = failure(client, "post", SESSIONS, transaction_details={"bogus": "1"})
    assert (error.code, error.param) == ("parameter_unknown", "transaction_details[bogus]")


def test_session_create_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    error = failure(client, "post", SESSIONS, bogus="1")
    assert (error.code, error.param) == ("parameter_unknown", "bogus")
    error = failure(
        client,
        "post",
        SESSIONS,
        source_amount="10",
        destination_amount="1",
        destination_currency="eth",
        destination_network="ethereum",
    )
    assert error.http_status == 400 and error.param == "source_amount"
    error = failure(client, "post", SESSIONS, destination_amount="1")
    assert error.param == "destination_amount"
    error = failure(client, "post", SESSIONS, source_amount="10.001")
    assert (error.code, error.param) == ("parameter_invalid_decimal", "source_amount")
    error = failure(client, "post", SESSIONS, destination_currency="doge")
    assert (error.code, error.param) == ("parameter_invalid", "destination_currency")
    error = failure(
        client,
        "post",
        SESSIONS,
        destination_currency="btc",
        destination_network="ethereum",
    )
    assert error.param == "destination_currency"
    error = failure(
        client,
        "post",
        SESSIONS,
        destination_currencies=["usdc"],
        destination_currency="eth",
    )
    assert error.param == "destination_currency"
    error = failure(client, "post", SESSIONS, wallet_addresses={"ethereum": ETH_WALLET})
    assert error.param == "wallet_addresses"
    error = failure(
        client,
        "post",
        SESSIONS,
        destination_network="ethereum",
        wallet_addresses={"ethereum": "0x123"},
    )
    assert error.param == "wallet_addresses[ethereum]"
    error = failure(
        client,
        "post",
        SESSIONS,
        destination_network="ethereum",
        wallet_addresses={"dogechain": "D123"},
    )
    assert (error.code, error.param) == ("parameter_unknown", "wallet_addresses[dogechain]")
    error = failure(client, "post", SESSIONS, customer_ip_address="not-an-ip")
    assert error.param == "customer_ip_address"
    error = failure(client, "post", SESSIONS, lock_wallet_address="maybe")
    assert (error.code, error.param) == ("parameter_invalid_boolean", "lock_wallet_address")
    error = failure(client, "post", SESSIONS, source_currency="jpy")
    assert error.param == "source_currency"


def test_unknown_session_is_404(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    error = failure(client, "get", f"{SESSIONS}/cos_nope")
    assert error.http_status == 404 and (error.code, error.param) == ("resource_missing", "id")
    assert "crypto onramp session" in str(error)


def test_sessions_list_paginates_and_filters(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    made = [
        call(
            client,
            "post",
            SESSIONS,
            destination_network="solana" if i % 3 == 0 else "ethereum",
            metadata={"n": str(i)},
        )["id"]
        for i in range(12)
    ]
    everything = [s["id"] for s in call(client, "get", SESSIONS, limit=100)["data"]]
    assert sorted(everything) == sorted(made) and len(everything) == 12
    first = call(client, "get", SESSIONS, limit=5)
    assert first["object"] == "list" and first["url"] == SESSIONS
    assert [s["id"] for s in first["data"]] == everything[:5] and first["has_more"] is True
    for s in first["data"]:
        assert_session_fields(s)
    second = call(client, "get", SESSIONS, limit=5, starting_after=everything[4])
    assert [s["id"] for s in second["data"]] == everything[5:10] and second["has_more"]
    third = call(client, "get", SESSIONS, limit=5, starting_after=everything[9])
    assert [s["id"] for s in third["data"]] == everything[10:] and not third["has_more"]
    back = call(client, "get", SESSIONS, limit=3, ending_before=everything[5])
    assert [s["id"] for s in back["data"]] == everything[2:5]

    solana = call(client, "get", SESSIONS, destination_network="solana", limit=100)["data"]
    assert len(solana) == 4
    assert {s["transaction_details"]["destination_network"] for s in solana} == {"solana"}
    assert len(call(client, "get", SESSIONS, status="initialized", limit=100)["data"]) == 12
    assert call(client, "get", SESSIONS, status="fulfillment_complete")["data"] == []
    created = call(client, "get", f"{SESSIONS}/{made[0]}")["created"]
    assert len(call(client, "get", SESSIONS, created={"gte": created}, limit=100)["data"]) == 12
    assert call(client, "get", SESSIONS, created={"lt": created})["data"] == []

    error = failure(client, "get", SESSIONS, limit="lots")
    assert (error.code, error.param) == ("parameter_invalid_integer", "limit")
    error = failure(client, "get", SESSIONS, status="done")
    assert error.param == "status"
    error = failure(client, "get", SESSIONS, created={"after": "1"})
    assert (error.code, error.param) == ("parameter_unknown", "created[after]")
    error = failure(client, "get", SESSIONS, wallet="x")
    assert (error.code, error.param) == ("parameter_unknown", "wallet")


# --------------------------------------------------------------------------- quotes


def test_quotes_for_every_network_by_default(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    quotes = call(client, "get", QUOTES)
    assert set(quotes) == QUOTES_KEYS
    assert quotes["object"] == "crypto.onramp.quotes" and quotes["livemode"] is False
    assert quotes["source_amount"] == "100.00" and quotes["source_currency"] == "usd"
    assert isinstance(quotes["rate_fetched_at"], float)
    by_network = quotes["destination_network_quotes"]
    assert set(by_network) == {
        "avalanche",
        "base_network",
        "bitcoin",
        "ethereum",
        "optimism",
        "polygon",
        "solana",
        "stellar",
        "worldchain",
    }
    assert [q["destination_currency"] for q in by_network["bitcoin"]] == ["btc"]
    for network_quotes in by_network.values():
        for quote in network_quotes:
            assert set(quote) == QUOTE_KEYS
            assert set(quote["fees"]) == {"network_fee_monetary", "transaction_fee_monetary"}
            fees = sum(Decimal(v) for v in quote["fees"].values())
            assert Decimal(quote["source_total_amount"]) == Decimal("100.00") + fees
    assert by_network["base_network"][0]["destination_network"] == "base"


def test_quotes_narrowed_by_currency_network_and_amount(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    quotes = call(
        client,
        "get",
        QUOTES,
        source_amount="200",
        destination_currencies=["usdc"],
        destination_networks=["ethereum", "base"],
    )
    by_network = quotes["destination_network_quotes"]
    assert set(by_network) == {"ethereum", "base_network"}
    (usdc,) = by_network["ethereum"]
    assert usdc["destination_currency"] == "usdc" and usdc["destination_amount"] == "200.000000"
    assert quotes["source_amount"] == "200.00"

    exact = call(
        client,
        "get",
        QUOTES,
        destination_amount="0.5",
        destination_currencies=["eth"],
        destination_networks=["ethereum"],
    )
    (eth,) = exact["destination_network_quotes"]["ethereum"]
    assert eth["destination_amount"] == "0.500000000000000000"
    assert Decimal(exact["source_amount"]) > 0


def test_quote_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    error = failure(client, "get", QUOTES, source_amount="10", destination_amount="1")
    assert error.http_status == 400 and error.param == "source_amount"
    error = failure(
        client,
        "get",
        QUOTES,
        destination_amount="1",
        destination_currencies=["eth", "usdc"],
        destination_networks=["ethereum"],
    )
    assert error.param == "destination_amount"
    error = failure(client, "get", QUOTES, source_currency="eur")
    assert error.param == "source_currency"
    error = failure(
        client, "get", QUOTES, destination_currencies=["btc"], destination_networks=["solana"]
    )
    assert error.param == "destination_currencies"
    error = failure(client, "get", QUOTES, destination_networks=["dogechain"])
    assert (error.code, error.param) == ("parameter_invalid", "destination_networks")
    error = failure(client, "get", QUOTES, source_amount="ten")
    assert (error.code, error.param) == ("parameter_invalid_decimal", "source_amount")
    error = failure(client, "get", QUOTES, wallet="x")
    assert (error.code, error.param) == ("parameter_unknown", "wallet")
