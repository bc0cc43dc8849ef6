"""The fiat-to-crypto onramp: onramp sessions (create, retrieve, list) and quotes.

stripe-python has no service for these endpoints and Stripe's fixtures hold no example
object, so the shapes follow Stripe's API reference:

* https://docs.stripe.com/api/crypto/onramp_sessions/object (``crypto.onramp_session``)
* https://docs.stripe.com/api/crypto/onramp_sessions/create and ``/list``
* https://docs.stripe.com/api/crypto/onramp_quotes/object (``crypto.onramp.quotes``)

Sessions are created ``initialized``; the end customer drives them further in Stripe's
onramp UI, which the sandbox has none of, so they stay there. Requests written for the
onramp beta (``transaction_details[...]``, ``supported_destination_*``, ``*_exchange_amount``
and ``customer_information[...]``) are accepted too, as Stripe still accepts them
(https://docs.stripe.com/crypto/upgrade-onramp-integration), and answered in today's shape.
Exchange rates and fees are fixed, made-up numbers.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Sequence
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal
from typing import Any

from sandbox.core import (
    Call,
    SandboxError,
    bad_request,
    boolean_value,
    choice_list,
    choice_value,
    mapping_value,
    page,
    positive_decimal,
    string_value,
    unknown_param,
)
from sandbox.resources import REGISTRY as api

SESSION = "crypto.onramp_session"
QUOTES = "crypto.onramp.quotes"
RESOURCE = "crypto onramp session"

#: network -> the cryptocurrencies delivered on it
_NETWORK_CURRENCIES: dict[str, tuple[str, ...]] = {
    "avalanche": ("avax", "usdc"),
    "base": ("eth", "usdc"),
    "bitcoin": ("btc",),
    "ethereum": ("eth", "usdc"),
    "optimism": ("eth", "usdc"),
    "polygon": ("matic", "usdc"),
    "solana": ("sol", "usdc"),
    "stellar": ("xlm", "usdc"),
    "worldchain": ("eth", "usdc"),
}
_CURRENCIES = ("btc", "eth", "matic", "sol", "xlm", "avax", "usdc")
#: what a session offers when the platform does not narrow it (as in Stripe's example)
_DEFAULT_NETWORKS = ("bitcoin", "ethereum", "base", "polygon", "solana", "stellar", "avalanche")
#: decimal places each cryptocurrency is settled to
_PRECISION = {"btc": 8, "eth": 18, "matic": 18, "sol": 9, "xlm": 7, "avax": 18, "usdc": 6}
#: usd per unit of each cryptocurrency
_USD_PRICE = {
    "btc": Decimal("62238.21"),
    "eth": Decimal("3435.15"),
    "matic": Decimal("0.5731"),
    "sol": Decimal("153.01"),
    "xlm": Decimal("0.09392"),
    "avax": Decimal("28.78"),
    "usdc": Decimal("1"),
}
#: fiat currencies a session accepts, as units per usd (quotes support usd only)
_FIAT = {"usd": Decimal("1"), "eur": Decimal("0.92")}
#: usd cost of moving each cryptocurrency on each network
_NETWORK_FEE = {
    ("avalanche", "avax"): Decimal("0.03"),
    ("avalanche", "usdc"): Decimal("0.06"),
    ("base", "eth"): Decimal("0.07"),
    ("base", "usdc"): Decimal("0.17"),
    ("bitcoin", "btc"): Decimal("11.89"),
    ("ethereum", "eth"): Decimal("1.25"),
    ("ethereum", "usdc"): Decimal("3.76"),
    ("optimism", "eth"): Decimal("0.05"),
    ("optimism", "usdc"): Decimal("0.08"),
    ("polygon", "matic"): Decimal("0.01"),
    ("polygon", "usdc"): Decimal("0.01"),
    ("solana", "sol"): Decimal("0.01"),
    ("solana", "usdc"): Decimal("0.01"),
    ("stellar", "xlm"): Decimal("0.18"),
    ("stellar", "usdc"): Decimal("0.18"),
    ("worldchain", "eth"): Decimal("0.05"),
    ("worldchain", "usdc"): Decimal("0.08"),
}
_TRANSACTION_FEE_RATE = Decimal("0.0404")
_CENT = Decimal("0.01")

_EVM = re.compile(r"^0x[0-9a-fA-F]{40}$")
_BASE58 = "[1-9A-HJ-NP-Za-km-z]"
#: wallet_addresses key -> a pattern for its addresses
_WALLETS: dict[str, re.Pattern[str]] = {
    "base_network": _EVM,
    "bitcoin": re.compile(rf"^((bc1|tb1)[02-9ac-hj-np-z]{{8,87}}|[123mn]{_BASE58}{{25,34}})$"),
    "ethereum": _EVM,
    "optimism": _EVM,
    "polygon": _EVM,
    "solana": re.compile(rf"^{_BASE58}{{32,44}}$"),
    "stellar": re.compile(r"^G[A-Z2-7]{55}$"),
    "worldchain": _EVM,
}
_STELLAR_TAG = re.compile(r"^[0-9A-Za-z]{1,28}$")

#: onramp-beta names inside transaction_details -> today's top-level parameter
_BETA_FIELDS = {
    "destination_amount": "destination_amount",
    "destination_exchange_amount": "destination_amount",
    "destination_currencies": "destination_currencies",
    "supported_destination_currencies": "destination_currencies",
    "destination_currency": "destination_currency",
    "destination_network": "destination_network",
    "destination_networks": "destination_networks",
    "supported_destination_networks": "destination_networks",
    "lock_wallet_address": "lock_wallet_address",
    "source_amount": "source_amount",
    "source_exchange_amount": "source_amount",
    "source_currency": "source_currency",
    "wallet_address": "wallet_address",
    "wallet_addresses": "wallet_addresses",
}
_CREATE_PARAMS = (
    "customer_ip_address",
    "destination_amount",
    "destination_currencies",
    "destination_currency",
    "destination_network",
    "destination_networks",
    "kyc_details",
    "lock_wallet_address",
    "metadata",
    "source_amount",
    "source_currency",
    "wallet_addresses",
    # the onramp beta's forms
    "transaction_details",
    "customer_information",
)


# --------------------------------------------------------------------------- parameters


def _invalid(param: str, message: str) -> SandboxError:
    return bad_request(message, param, "parameter_invalid")


def _enum(value: Any, allowed: Sequence[str], param: str) -> str:
    """One of ``allowed``, in any case."""
    return choice_value(value, param, allowed, code="parameter_invalid", fold_case=True)


def _enum_list(value: Any, allowed: Sequence[str], param: str) -> list[str]:
    """A non-empty array of ``allowed`` values; a bad one is named by the array's name."""
    out = choice_list(
        value, param, allowed, code="parameter_invalid", fold_case=True, indexed=False
    )
    if not out:
        raise _invalid(param, f"Invalid array: {param} must not be empty.")
    return out


def _amount(value: Any, param: str, places: int) -> Decimal:
    amount = positive_decimal(value, param)
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > places:
        raise bad_request(
            f"Invalid {param}: {value} has more than {places} decimal places.",
            param,
            "parameter_invalid_decimal",
        )
    return amount


def _session_params(call: Call) -> tuple[dict[str, Any], dict[str, str]]:
    """The create parameters by today's names, and the name each one was sent under."""
    given: dict[str, Any] = {}
    names: dict[str, str] = {}
    beta = call.params.get("transaction_details")
    if beta is not None:
        for key, value in mapping_value(beta, "transaction_details").items():
            field = _BETA_FIELDS.get(key)
            if field is None:
                raise unknown_param(f"transaction_details[{key}]")
            given[field] = value
            names[field] = f"transaction_details[{key}]"
    for key in _CREATE_PARAMS:
        if key in ("transaction_details", "customer_information") or key not in call.params:
            continue
        given[key] = call.params[key]
        names[key] = key
    if "customer_information" in call.params and "kyc_details" not in given:
        given["kyc_details"] = call.params["customer_information"]
        names["kyc_details"] = "customer_information"
    return given, names


def _wallet_addresses(value: Any, param: str) -> dict[str, Any]:
    given = mapping_value(value, param)
    out: dict[str, Any] = {
        "base_network": None,
        "bitcoin": None,
        "destination_tags": None,
        "ethereum": None,
        "optimism": None,
        "polygon": None,
        "solana": None,
        "stellar": None,
        "worldchain": None,
    }
    for key, address in given.items():
        if key == "destination_tags":
            tags = mapping_value(address, f"{param}[destination_tags]")
            for network, tag in tags.items():
                name = f"{param}[destination_tags][{network}]"
                if network != "stellar":
                    raise unknown_param(name)
                if not _STELLAR_TAG.match(string_value(tag, name)):
                    raise _invalid(name, f"Invalid stellar destination tag: {tag}")
            out["destination_tags"] = {"stellar": tags.get("stellar")} if tags else None
            continue
        network = "base_network" if key == "base" else key
        name = f"{param}[{key}]"
        pattern = _WALLETS.get(network)
        if pattern is None:
            raise unknown_param(name)
        text = string_value(address, name)
        if not pattern.match(text):
            raise _invalid(name, f"Invalid {network} wallet address: {text}")
        out[network] = text
    return out


# --------------------------------------------------------------------------- pricing


def _to_fiat(usd: Decimal, currency: str) -> Decimal:
    return usd * _FIAT[currency]


def _fees(network: str, currency: str, source: Decimal, fiat: str) -> tuple[Decimal, Decimal]:
    """(network fee, transaction fee) in ``fiat`` for onramping ``source`` of it."""
    network_fee = _to_fiat(_NETWORK_FEE[(network, currency)], fiat).quantize(_CENT, ROUND_UP)
    transaction_fee = (source * _TRANSACTION_FEE_RATE).quantize(_CENT, ROUND_HALF_UP)
    return network_fee, transaction_fee


def _destination_for(source: Decimal, currency: str, fiat: str) -> Decimal:
    price = _to_fiat(_USD_PRICE[currency], fiat)
    return (source / price).quantize(Decimal(1).scaleb(-_PRECISION[currency]), ROUND_DOWN)


def _source_for(destination: Decimal, currency: str, fiat: str) -> Decimal:
    return (destination * _to_fiat(_USD_PRICE[currency], fiat)).quantize(_CENT, ROUND_UP)


def _crypto(amount: Decimal, currency: str) -> str:
    return str(amount.quantize(Decimal(1).scaleb(-_PRECISION[currency])))


def _hex_id(call: Call) -> str:
    return f"{call.account.ids.randint(0, 2**256 - 1):064x}"


# --------------------------------------------------------------------------- sessions


@api.route("POST", "/v1/crypto/onramp_sessions", params=_CREATE_PARAMS)
async def create(call: Call) -> dict[str, Any]:
    given, names = _session_params(call)

    ip = given.get("customer_ip_address")
    if ip is not None:
        try:
            ipaddress.ip_address(string_value(ip, names["customer_ip_address"]))
        except ValueError:
            raise _invalid(names["customer_ip_address"], f"Invalid IP address: {ip}") from None

    networks: list[str] | None = None
    if "destination_networks" in given:
        networks = _enum_list(
            given["destination_networks"],
            tuple(_NETWORK_CURRENCIES),
            names["destination_networks"],
        )
    currencies: list[str] | None = None
    if "destination_currencies" in given:
        currencies = _enum_list(
            given["destination_currencies"], _CURRENCIES, names["destination_currencies"]
        )
    network = None
    if "destination_network" in given:
        param = names["destination_network"]
        network = _enum(given["destination_network"], tuple(networks or _NETWORK_CURRENCIES), param)
    currency = None
    if "destination_currency" in given:
        param = names["destination_currency"]
        currency = _enum(given["destination_currency"], tuple(currencies or _CURRENCIES), param)
    if (
        network is not None
        and currency is not None
        and currency not in _NETWORK_CURRENCIES[network]
    ):
        raise _invalid(
            names["destination_currency"],
            f"The destination_currency {currency} is not supported on the {network} network; "
            f"it supports {', '.join(_NETWORK_CURRENCIES[network])}.",
        )

    fiat = None
    if "source_currency" in given:
        fiat = _enum(given["source_currency"], tuple(_FIAT), names["source_currency"])
    if "source_amount" in given and "destination_amount" in given:
        raise _invalid(
            names["source_amount"],
            "You may only specify one of these parameters: destination_amount, source_amount.",
        )
    source = destination = None
    fees = None
    pricing_fiat = fiat or "usd"
    if "source_amount" in given:
        source = _amount(given["source_amount"], names["source_amount"], 2)
        if currency is not None and network is not None:
            destination = _destination_for(source, currency, pricing_fiat)
    if "destination_amount" in given:
        param = names["destination_amount"]
        if currency is None or network is None:
            raise _invalid(
                param,
                "When destination_amount is set, destination_currency and "
                "destination_network must be set too.",
            )
        destination = _amount(given["destination_amount"], param, _PRECISION[currency])
        source = _source_for(destination, currency, pricing_fiat)
    if source is not None and destination is not None:
        assert currency is not None and network is not None
        network_fee, transaction_fee = _fees(network, currency, source, pricing_fiat)
        fees = {
            "network_fee_amount": str(network_fee),
            "transaction_fee_amount": str(transaction_fee),
        }

    wallets = None
    if "wallet_addresses" in given:
        wallets = _wallet_addresses(given["wallet_addresses"], names["wallet_addresses"])
        if networks is None and network is None:
            raise _invalid(
                names["wallet_addresses"],
                "When wallet_addresses is set, destination_networks or destination_network "
                "must be set too.",
            )
    wallet = None
    if "wallet_address" in given:
        wallet = string_value(given["wallet_address"], names["wallet_address"])
    lock = False
    if "lock_wallet_address" in given:
        lock = boolean_value(given["lock_wallet_address"], names["lock_wallet_address"])
    kyc = (
        mapping_value(given["kyc_details"], names["kyc_details"]) if "kyc_details" in given else {}
    )

    shown_networks = networks or list(_DEFAULT_NETWORKS)
    if currencies is None:
        offered = {c for n in shown_networks for c in _NETWORK_CURRENCIES[n]}
        currencies = [c for c in _CURRENCIES if c in offered]
    session_id = call.account.ids.new("cos")
    return call.account.add(
        {
            "id": session_id,
            "object": SESSION,
            "client_secret": f"{session_id}_secret_{call.account.ids.new('x', 35)[2:]}",
            "created": int(time.time()),
            "kyc_details_provided": bool(kyc),
            "livemode": False,
            "metadata": call.metadata(),
            "redirect_url": None,
            "status": "initialized",
            "transaction_details": {
                "destination_amount": _crypto(destination, currency)
                if destination is not None and currency is not None
                else None,
                "destination_currencies": currencies,
                "destination_currency": currency,
                "destination_network": network,
                "destination_networks": shown_networks,
                "fees": fees,
                "lock_wallet_address": lock,
                "source_amount": str(source.quantize(_CENT)) if source is not None else None,
                "source_currency": fiat,
                "transaction_id": None,
                "wallet_address": wallet,
                "wallet_addresses": wallets,
            },
        },
        SESSION,
    )


@api.route("GET", "/v1/crypto/onramp_sessions/{id}", params=())
async def retrieve(call: Call) -> dict[str, Any]:
    return call.account.get(SESSION, call.id(), RESOURCE)


_STATUSES = (
    "initialized",
    "rejected",
    "requires_payment",
    "fulfillment_processing",
    "fulfillment_complete",
)


@api.route(
    "GET",
    "/v1/crypto/onramp_sessions",
    params=("created", "destination_currency", "destination_network", "status"),
)
async def list_all(call: Call) -> dict[str, Any]:
    created = call.range_filter("created")
    wanted: dict[str, str] = {}
    for name, allowed in (
        ("destination_currency", _CURRENCIES),
        ("destination_network", tuple(_NETWORK_CURRENCIES)),
        ("status", _STATUSES),
    ):
        if name in call.params:
            wanted[name] = _enum(call.params[name], allowed, name)

    def keep(session: dict[str, Any]) -> bool:
        details = session["transaction_details"]
        return (
            created(session["created"])
            and ("status" not in wanted or session["status"] == wanted["status"])
            and all(
                details[key] == wanted[key]
                for key in ("destination_currency", "destination_network")
                if key in wanted
            )
        )

    sessions = [s for s in call.account.table(SESSION).values() if keep(s)]
    return page(call, sessions, "/v1/crypto/onramp_sessions")


# --------------------------------------------------------------------------- quotes


@api.route(
    "GET",
    "/v1/crypto/onramp/quotes",
    params=(
        "source_amount",
        "destination_amount",
        "source_currency",
        "destination_currencies",
        "destination_networks",
    ),
    lists=False,
)
async def quotes(call: Call) -> dict[str, Any]:
    fiat = _enum(call.params.get("source_currency", "usd"), ("usd",), "source_currency")
    networks = list(_NETWORK_CURRENCIES)
    if "destination_networks" in call.params:
        networks = _enum_list(
            call.params["destination_networks"], tuple(_NETWORK_CURRENCIES), "destination_networks"
        )
    currencies = list(_CURRENCIES)
    if "destination_currencies" in call.params:
        currencies = _enum_list(
            call.params["destination_currencies"], _CURRENCIES, "destination_currencies"
        )
    if "source_amount" in call.params and "destination_amount" in call.params:
        raise _invalid(
            "source_amount",
            "You may only specify one of these parameters: destination_amount, source_amount.",
        )
    destination = None
    if "destination_amount" in call.params:
        if (
            "destination_currencies" not in call.params
            or "destination_networks" not in call.params
            or len(currencies) != 1
            or len(networks) != 1
        ):
            raise _invalid(
                "destination_amount",
                "When destination_amount is set, destination_currencies and "
                "destination_networks must each hold exactly one value.",
            )
        destination = _amount(
            call.params["destination_amount"], "destination_amount", _PRECISION[currencies[0]]
        )
        source = _source_for(destination, currencies[0], fiat)
    else:
        source = _amount(call.params.get("source_amount", "100.00"), "source_amount", 2)

    by_network: dict[str, list[dict[str, Any]]] = {}
    for network in sorted(networks):
        for currency in _NETWORK_CURRENCIES[network]:
            if currency not in currencies:
                continue
            amount = (
                destination if destination is not None else _destination_for(source, currency, fiat)
            )
            network_fee, transaction_fee = _fees(network, currency, source, fiat)
            key = "base_network" if network == "base" else network
            by_network.setdefault(key, []).append(
                {
                    "id": _hex_id(call),
                    "destination_amount": _crypto(amount, currency),
                    "destination_currency": currency,
                    "destination_network": network,
                    "fees": {
                        "network_fee_monetary": str(network_fee),
                        "transaction_fee_monetary": str(transaction_fee),
                    },
                    "source_total_amount": str(
                        (source + network_fee + transaction_fee).quantize(_CENT)
                    ),
                }
            )
    if not by_network:
        raise _invalid(
            "destination_currencies",
            "None of the destination_currencies can be delivered on the destination_networks "
            "requested, so there is nothing to quote.",
        )
    return {
        "id": _hex_id(call),
        "object": QUOTES,
        "destination_network_quotes": by_network,
        "livemode": False,
        "rate_fetched_at": time.time(),
        "source_amount": str(source.quantize(_CENT)),
        "source_currency": fiat,
    }
