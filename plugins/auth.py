"""Teams and keys: who is calling, may they make this call, and which Stripe key goes up.

A service presents a gateway-issued key as its Stripe API key (``Authorization: Bearer
KEY``, or Basic with the key as user name, as some SDKs send it). The key's SHA-256 digest
is compared, in constant time, with every team's registered digests. A team with
``upstream_key_env``/``upstream_key_file`` has its requests sent to Stripe with that key;
a team without one registered Stripe keys themselves, which are forwarded unchanged.

Refusals are Stripe-shaped so the SDKs raise the usual classes: 401 for a missing, malformed
or unknown key (``AuthenticationError``), 403 for a route or ``Stripe-Account`` the team
may not use (``PermissionError``). A refusal message shows at most a key's last four
characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from aiohttp import hdrs

from gateway.config import GatewayConfig, TeamConfig
from gateway.context import RequestContext
from gateway.errors import StripeErrorResponse
from gateway.globs import RouteRule, parse_rule
from gateway.hookspecs import hookimpl
from gateway.settings import NoSettings

__all__ = ["AuthPlugin", "presented_key"]

_NO_KEY = (
    "You did not provide an API key. Send your gateway key the way you would send a Stripe "
    "key: in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer KEY')."
)

#: white space as ``str.isspace`` defines it (``\s`` in a str pattern is the same set)
_WHITE_SPACE = re.compile(r"\s")


def presented_key(header: str | None) -> str:
    """The key in an ``Authorization`` header; raises a 401 StripeErrorResponse otherwise."""
    if header and header.startswith("Bearer "):  # how the SDKs send it
        key = header[7:].strip()
    else:
        key = _parse_authorization(header)
    if not key:
        raise StripeErrorResponse(401, _NO_KEY)
    # isprintable() is False for every white space character but " ": three C calls clear
    # almost every key, the others get the exact tests
    if not (key.isascii() and key.isprintable() and " " not in key):
        if _WHITE_SPACE.search(key):
            raise StripeErrorResponse(401, "Invalid API key: it contains white space.")
        if not key.isascii():  # a non-UTF-8 byte arrives as a surrogate: never a key
            raise StripeErrorResponse(401, "Invalid API key: it is not ASCII.")
    return key


def _parse_authorization(header: str | None) -> str:
    if not header:
        raise StripeErrorResponse(401, _NO_KEY)
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if scheme == "bearer":
        key = value
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise StripeErrorResponse(
                401, "Invalid Basic authorization header: it is not base64 of 'KEY:'."
            ) from None
        key = decoded.partition(":")[0]
    else:
        raise StripeErrorResponse(
            401,
            "Invalid Authorization header: use 'Bearer KEY' (or Basic with the key as user name).",
        )
    return key


#: most Authorization headers remembered with their team (then it starts over), and the
#: longest remembered
_MAX_KNOWN = 4096
_MAX_KNOWN_LENGTH = 512


def _tail(key: str) -> str:
    return "…" + key[-4:] if len(key) >= 12 else "…"


@dataclass(frozen=True, slots=True)
class _Team:
    config: TeamConfig
    rules: tuple[RouteRule, ...]
    accounts: frozenset[str] | None
    upstream_key: str | None


class AuthPlugin:
    """Built-in plugin ``auth``: authenticate teams, apply allow rules, swap keys."""

    name = "auth"
    #: no keys of its own: teams are configured in ``[[teams]]``
    settings_model = NoSettings

    def __init__(self) -> None:
        self._digests: tuple[tuple[bytes, _Team], ...] = ()
        #: ``Authorization`` headers that authenticated -> (their team, the key in them).
        #: Only headers that succeeded are kept, so an unknown key always takes the
        #: constant-time walk of :meth:`_team_for`; a lookup here compares strings only
        #: when their (randomly seeded) hashes match, which a caller cannot aim at. Emptied
        #: by ``gateway_configure``, so it never outlives the teams it names.
        self._known: dict[str, tuple[_Team, str]] = {}

    @hookimpl
    def gateway_configure(self, config: GatewayConfig) -> None:
        digests: list[tuple[bytes, _Team]] = []
        for team in config.teams:
            prepared = _Team(
                config=team,
                rules=tuple(parse_rule(rule) for rule in team.allow),
                accounts=frozenset(team.stripe_accounts)
                if team.stripe_accounts is not None
                else None,
                upstream_key=team.upstream_key.get_secret_value() if team.upstream_key else None,
            )
            digests.extend((bytes.fromhex(d), prepared) for d in team.key_sha256)
        self._digests = tuple(digests)
        self._known = {}  # (teams may have changed: nothing remembered carries over)

    def _team_for(self, key: str) -> _Team | None:
        digest = hashlib.sha256(key.encode()).digest()
        found: _Team | None = None
        for registered, team in self._digests:  # no early exit: constant time in the key
            if hmac.compare_digest(registered, digest):
                found = team
        return found

    @hookimpl(tryfirst=True)
    def gateway_authenticate(self, ctx: RequestContext) -> None:
        request = ctx.request
        header = request.headers.get(hdrs.AUTHORIZATION)
        known = self._known.get(header) if header is not None else None
        if known is not None:
            team, key = known
        else:
            key = presented_key(header)
            found = self._team_for(key)
            if found is None:
                raise StripeErrorResponse(401, f"Invalid API Key provided: {_tail(key)}")
            team = found
            if header is not None and len(header) <= _MAX_KNOWN_LENGTH:
                if len(self._known) >= _MAX_KNOWN:
                    self._known.clear()
                self._known[header] = (team, key)
        ctx.team = team.config
        ctx.upstream_key = team.upstream_key or key
        method, path = request.method, request.path
        for rule in team.rules:
            if rule.matches(method, path):
                break
        else:
            raise StripeErrorResponse(
                403,
                f"Team {team.config.name!r} may not call {method} {path} through the gateway "
                "(no allow rule matches).",
                code="route_not_allowed",
            )
        if team.accounts is not None:
            self._check_accounts(team, ctx)

    @staticmethod
    def _check_accounts(team: _Team, ctx: RequestContext) -> None:
        """Every account named by ``Stripe-Account`` or ``Stripe-Context`` must be allowed.

        Without either header the request acts on the platform account itself, which a
        team with an allow-list may still do."""
        assert team.accounts is not None
        headers = ctx.request.headers
        named: list[tuple[str, str]] = []
        if "Stripe-Account" in headers:
            named.append(("Stripe-Account", headers["Stripe-Account"]))
        if "Stripe-Context" in headers:
            # a context is an account id or a path of them: acct_parent/acct_child
            named.extend(("Stripe-Context", part) for part in headers["Stripe-Context"].split("/"))
        for header, account in named:
            if account.strip() not in team.accounts:
                raise StripeErrorResponse(
                    403,
                    f"Team {team.config.name!r} may not act on {header} {account.strip()}.",
                    code="account_not_allowed",
                )
