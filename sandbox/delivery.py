"""Webhook delivery: each event POSTed, signed, to every enabled endpoint that wants it.

The body is the event's JSON; the ``Stripe-Signature`` header is Stripe's scheme,
``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the endpoint's secret>``, so
``stripe.Webhook.construct_event(body, header, secret)`` accepts it. The delivered event's
``api_version`` is the endpoint's ``api_version`` when it has one, else the event's (the
account's default, ``settings.api_version``, as ``GET /v1/events`` shows it).

An attempt fails on a connection error, a timeout (``settings.webhook_timeout``) or a non-2xx
answer; it is retried after ``settings.webhook_backoff`` seconds, then twice as long each time
(at most ``settings.webhook_backoff_max``), until ``settings.webhook_attempts`` attempts were
made. The event's ``pending_webhooks`` counts the endpoints still to succeed or give up. At
most ``settings.webhook_max_pending`` deliveries are pending at once; an endpoint beyond that
is not delivered to (and not counted).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

import aiohttp
import orjson

from sandbox.core import Account, SandboxSettings

__all__ = ["Deliverer", "endpoint_secrets", "signature_header", "wants"]

_log = logging.getLogger(__name__)

#: the webhook endpoint object type (see sandbox.resources.webhook_endpoints)
ENDPOINT = "webhook_endpoint"
_USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


def endpoint_secrets(account: Account) -> dict[str, str]:
    """Webhook endpoint id -> its signing secret (``whsec_...``)."""
    return account.state("webhook_endpoint.secrets", dict)


def signature_header(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header for ``payload`` signed at ``timestamp``."""
    signed = str(timestamp).encode() + b"." + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def wants(endpoint: dict[str, Any], event_type: str) -> bool:
    """Whether an endpoint is enabled and subscribed to ``event_type`` (``*``: everything)."""
    if endpoint.get("status") != "enabled":
        return False
    enabled = endpoint.get("enabled_events") or []
    return "*" in enabled or event_type in enabled


class Deliverer:
    """Runs deliveries as background tasks (one per event and endpoint, retries included)."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def submit(self, account: Account, event: dict[str, Any]) -> None:
        """Start delivering ``event`` to the account's endpoints that want it."""
        secrets = endpoint_secrets(account)
        targets = [
            (endpoint["url"], secrets[endpoint["id"]], endpoint.get("api_version"))
            for endpoint in account.table(ENDPOINT).values()
            if wants(endpoint, event["type"]) and endpoint["id"] in secrets
        ]
        room = max(0, self.settings.webhook_max_pending - len(self._tasks))
        if len(targets) > room:
            _log.warning(
                "sandbox: %s not delivered to %d endpoint(s): %d deliveries pending",
                event["id"],
                len(targets) - room,
                len(self._tasks),
            )
            targets = targets[:room]
        if not targets:
            return
        event["pending_webhooks"] = len(targets)
        payloads: dict[str | None, bytes] = {}
        for url, secret, version in targets:
            payload = payloads.get(version)
            if payload is None:
                shown = event if version is None else {**event, "api_version": version}
                payload = payloads[version] = orjson.dumps(shown)
            self._spawn(event, url, secret, payload)

    def _spawn(self, event: dict[str, Any], url: str, secret: str, payload: bytes) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a state change made from another thread (tests' hooks)
            loop = None
        if loop is not None and (self.loop is None or loop is self.loop):
            self._start(event, url, secret, payload)
        elif self.loop is not None:
            self.loop.call_soon_threadsafe(self._start, event, url, secret, payload)
        else:
            event["pending_webhooks"] -= 1

    def _start(self, event: dict[str, Any], url: str, secret: str, payload: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(event, url, secret, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": _USER_AGENT}, raise_for_status=False
            )
        return self._session

    async def _deliver(self, event: dict[str, Any], url: str, secret: str, payload: bytes) -> None:
        settings = self.settings
        delay = settings.webhook_backoff
        try:
            for attempt in range(1, max(1, settings.webhook_attempts) + 1):
                if attempt > 1:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, settings.webhook_backoff_max)
                if await self._attempt(url, secret, payload):
                    return
            _log.info("sandbox: gave up delivering %s to %s", event["id"], url)
        finally:
            event["pending_webhooks"] = max(0, event["pending_webhooks"] - 1)

    async def _attempt(self, url: str, secret: str, payload: bytes) -> bool:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature_header(payload, secret, int(time.time())),
        }
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout)
        try:
            async with self._client().post(
                url, data=payload, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                await response.read()
                return 200 <= response.status < 300
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            _log.info("sandbox: delivery to %s failed: %r", url, exc)
            return False

    def cancel(self) -> None:
        """Stop every pending delivery (their events keep their ``pending_webhooks``)."""
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    async def close(self) -> None:
        self.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
