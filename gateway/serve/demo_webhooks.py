"""The built-in demo's webhooks: the gateway's way back in, end to end.

The demo registers a webhook endpoint in the sandbox (:func:`register_ingress`) whose URL is
the gateway's ingress (:data:`INGRESS_PATH`), and enables the ``webhooks`` plugin with that
endpoint's signing secret (:func:`webhooks_table`): the sandbox signs each event in Stripe's
scheme, the gateway checks the signature, stores the event and delivers it, re-signed with
each team's own secret, to the demo's subscriptions (:data:`SUBSCRIPTIONS`). They point at a
small receiver the demo serves (:func:`receiver_app`), which verifies each delivery as a
team's service would, with the stripe SDK's ``stripe.Webhook.construct_event`` and the team's
secret, and says one line per event (team, type, id, ``signature verified``); a delivery
that does not verify is refused with 400 and said as refused.

No secret is printed, put in a config or in the environment: the endpoint's secret (shown
once, in the sandbox's answer) and the teams' secrets (random, per run) are each written to a
file of their own (mode 0600) in the demo's private temporary folder, which the plugin's
``secret_file`` settings name and which goes when the demo stops. (The plugin reads
``secret_env`` from ``os.environ``, not from the mapping the demo validates its config with,
so the environment would mean the demo's process environment, which its children inherit.)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

__all__ = [
    "INGRESS_PATH",
    "SUBSCRIPTIONS",
    "DemoWebhooks",
    "receiver_app",
    "register_ingress",
    "team_secrets",
    "webhooks_table",
]

#: where the sandbox posts its events on the gateway's main listener
INGRESS_PATH = "/webhooks/stripe"
#: each demo team's subscription: (team, event-type globs); it delivers to ``/<team>`` on
#: the receiver
SUBSCRIPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("full", ("*",)),
    ("readonly", ("identity.*",)),
)
#: a delivery larger than this is refused by the receiver (the plugin's default body cap)
_MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class DemoWebhooks:
    """What the demo registered: the sandbox endpoint's id and the receiver's address."""

    endpoint_id: str
    ingress_url: str
    receiver_url: str


async def register_ingress(sandbox_url: str, api_key: str, ingress_url: str) -> tuple[str, str]:
    """Create a webhook endpoint for every event type in the sandbox account of ``api_key``,
    posting to ``ingress_url``; its id and its signing secret (``whsec_...``)."""
    form = {
        "url": ingress_url,
        "enabled_events[]": "*",
        "description": "stripe-gateway demo: the gateway's webhook ingress",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sandbox_url}/v1/webhook_endpoints",
            data=form,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response,
    ):
        if response.status != 200:
            text = (await response.text())[:500]
            raise RuntimeError(
                f"the sandbox refused the demo's webhook endpoint ({response.status}): {text}"
            )
        body = await response.json()
    return str(body["id"]), str(body["secret"])


def team_secrets() -> dict[str, str]:
    """A new random signing secret for each demo team (this run only)."""
    return {team: "whsec_" + secrets.token_hex(24) for team, _ in SUBSCRIPTIONS}


def _secret_file(folder: Path, name: str, secret: str) -> str:
    """``secret`` in a new file ``folder/name`` that only this user may read; its path."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secret)
    return str(path)


def webhooks_table(
    folder: Path, receiver_url: str, ingress_secret: str, secrets_: Mapping[str, str]
) -> dict[str, Any]:
    """``[plugins.webhooks]`` of the demo, its store and secret files in ``folder`` (a private
    folder of this run): one source (the sandbox's endpoint, signed with ``ingress_secret``)
    and a subscription per demo team delivering to the receiver at ``receiver_url``, each
    signed with the team's secret in ``secrets_``."""
    return {
        "sqlite_path": str(folder / "webhooks.sqlite3"),
        "sources": [
            {
                "name": "sandbox",
                "path": INGRESS_PATH,
                "secret_file": [_secret_file(folder, "ingress.secret", ingress_secret)],
            }
        ],
        "subscriptions": [
            {
                "name": team,
                "team": team,
                "url": f"{receiver_url}/{team}",
                "events": list(events),
                "secret_file": _secret_file(folder, f"{team}.secret", secrets_[team]),
            }
            for team, events in SUBSCRIPTIONS
        ],
    }


def receiver_app(secrets_: Mapping[str, str], say: Callable[[str], None]) -> web.Application:
    """The demo's receiver: ``POST /<team>`` verifies the body and ``Stripe-Signature`` with
    ``stripe.Webhook.construct_event`` and the team's secret in ``secrets_``; 200 and one line
    said when it verifies, 400 (and a line saying it was refused, without its content) when
    not; 404 for a team it does not know, 413 for a body over 1 MiB."""
    import stripe  # the "demo" extra; the demo does not start the receiver without it

    async def receive(request: web.Request) -> web.Response:
        team = request.match_info["team"]
        secret = secrets_.get(team)
        if secret is None:
            return web.json_response({"error": "no such team"}, status=404)
        body = await request.read()  # at most client_max_size, else 413
        header = request.headers.get("Stripe-Signature", "")
        try:
            event = stripe.Webhook.construct_event(body, header, secret)
        except stripe.SignatureVerificationError:
            say(f"webhook receiver: {team:<9} refused a delivery: its signature does not verify")
            return web.json_response({"error": "signature does not verify"}, status=400)
        except ValueError:
            say(f"webhook receiver: {team:<9} refused a delivery: not a JSON event")
            return web.json_response({"error": "not a JSON event"}, status=400)
        say(f"webhook receiver: {team:<9} {event.type} {event.id} (signature verified)")
        return web.json_response({"received": True})

    app = web.Application(client_max_size=_MAX_BODY)
    app.router.add_post("/{team}", receive)
    return app
