"""The publicly known keys (the demo's and ``config.example.toml``'s), so that ``serve``
refuses a config in which a team still accepts one, and ``new-key``, which makes a key of
a team's own.

A config copied from the example and put in production would otherwise let anyone who has
read this repository in with the example team's rights. ``stripe-gateway demo`` and
``serve --allow-demo-keys`` (or :data:`ALLOW_ENV` = ``1``) accept them on purpose.
"""

from __future__ import annotations

import hashlib
import secrets
import string

from gateway.config import GatewayConfig
from gateway.errors import ConfigError

__all__ = [
    "ALLOW_ENV",
    "DEMO_ADMIN_TOKEN",
    "DEMO_KEYS",
    "EXAMPLE_KEYS",
    "digest",
    "new_key",
    "refuse_demo_keys",
]

#: ``stripe-gateway demo``'s gateway keys: (team, key, what it may do)
DEMO_KEYS = (
    ("readonly", "gw_demo_readonly_key", "GET only"),
    ("full", "gw_demo_full_key", "everything"),
)
#: ``stripe-gateway demo``'s admin token (``[admin] token_sha256``)
DEMO_ADMIN_TOKEN = "adm_demo_admin_token"
#: the keys whose digests ``config.example.toml``'s teams accept, by team
EXAMPLE_KEYS = {
    "billing": "gw_demo_billing_key",
    "analytics": "sk_test_demo_passthrough_key",
}
#: set to ``1`` (``serve --allow-demo-keys`` sets it for its workers): accept them anyway
ALLOW_ENV = "STRIPE_GATEWAY_ALLOW_DEMO_KEYS"

_ALPHABET = string.ascii_letters + string.digits


def digest(key: str) -> str:
    """The SHA-256 hex digest a team lists in ``key_sha256``."""
    return hashlib.sha256(key.encode()).hexdigest()


#: every publicly known key, by its digest
_PUBLIC = {digest(key): key for key in (*(k for _, k, _ in DEMO_KEYS), *EXAMPLE_KEYS.values())}


def refuse_demo_keys(config: GatewayConfig) -> None:
    """Raise :class:`ConfigError` naming the first team that accepts a publicly known key
    (or an admin token that is the demo's), what to do instead, and the flag that allows it."""
    if config.admin.token_sha256 == digest(DEMO_ADMIN_TOKEN):
        raise ConfigError(
            "admin.token_sha256",
            f"is the digest of the demo's public admin token {DEMO_ADMIN_TOKEN!r}, so anyone "
            "could use the admin endpoints: put the digest of a token of your own here "
            "(`stripe-gateway hash-key`), or start with --allow-demo-keys",
        )
    for index, team in enumerate(config.teams):
        for position, hexdigest in enumerate(team.key_sha256):
            key = _PUBLIC.get(hexdigest.lower())
            if key is None:
                continue
            raise ConfigError(
                f"teams[{index}].key_sha256[{position}]",
                f"team {team.name!r} accepts the publicly known demo key {key!r}, so anyone "
                f"could call as {team.name!r}: make the team a key of its own with "
                f"`stripe-gateway new-key --team {team.name}` and put the key_sha256 line it "
                "prints in its place (or, to try the example as it is, start with "
                "--allow-demo-keys)",
            )


def new_key() -> str:
    """A new random gateway key: ``gw_live_`` and 40 letters and digits (238 bits), a shape
    the redaction plugin masks wherever it appears."""
    return "gw_live_" + "".join(secrets.choice(_ALPHABET) for _ in range(40))
