"""Per-request state shared by the core and the plugins.

One :class:`RequestContext` is made for every request before the first hook runs and is
passed to every request hook. Plugins read what the core filled in and write what they
decide (the team, the upstream key; their own state in ``ctx.state``); the audit plugin
turns it into the request's one log line when the request is done, with the fields each
plugin contributes (``gateway_audit_fields``).
"""

from __future__ import annotations

import base64
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict, istr

from gateway.config import TeamConfig
from gateway.retry import RetryPolicy

__all__ = [
    "OBJECT_ID",
    "OUTCOMES",
    "RequestContext",
    "milliseconds",
    "new_request_id",
    "object_id_of",
]

# header names as istr: multidict looks them up without case-folding them first
_STRIPE_ACCOUNT = istr("Stripe-Account")
#: livemode by the first 8 characters of a Stripe secret or restricted key
_LIVEMODE = {"sk_live_": True, "rk_live_": True, "sk_test_": False, "rk_test_": False}

# Stripe object ids: a lowercase prefix, an underscore, then at least 8 base62 characters
# of which one is a digit or a capital (sqr_1Nx..., taxcalc_...); collection names such as
# "webhook_endpoints" or "line_items" are all lowercase letters and never match.
OBJECT_ID = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*_(?=[a-z]*[A-Z0-9])[A-Za-z0-9]{8,}$")

#: how a request ended (``ctx.outcome``): ``ok`` (a whole response was sent, whatever its
#: status), ``upstream_error`` (Stripe could not be reached or answered in time, broke off
#: mid-answer, or no pooled connection came free in time), ``client_closed`` (the client
#: left before its body or the response was complete), ``body_timeout`` (the client's body
#: stalled: 408), ``send_timeout`` (the client stopped reading its answer for
#: send_timeout seconds), ``drain_timeout`` (cut off by the shutdown's drain_timeout)
OUTCOMES = (
    "ok",
    "upstream_error",
    "client_closed",
    "body_timeout",
    "send_timeout",
    "drain_timeout",
)

#: request ids made in advance, taken with ``list.pop`` (atomic, so safe across threads)
_request_ids: list[str] = []
_ID_BATCH = 512
_XY = str.maketrans("-_", "xy")
# a forked child must not hand out the ids its parent will
os.register_at_fork(after_in_child=_request_ids.clear)


def _more_request_ids() -> None:
    # 18 random bytes are exactly 24 base64 characters, with no padding: one getrandom()
    # call and one encoding make a batch of ids
    text = base64.urlsafe_b64encode(os.urandom(18 * _ID_BATCH)).decode("ascii").translate(_XY)
    _request_ids.extend("gwreq_" + text[i : i + 24] for i in range(0, len(text), 24))


def new_request_id() -> str:
    """The gateway's own request id (``gwreq_`` + 24 random base62-ish characters)."""
    try:
        return _request_ids.pop()
    except IndexError:
        _more_request_ids()
        return _request_ids.pop()


def object_id_of(path: str) -> str | None:
    """The last Stripe object id in ``path``, if it has one (``/v1/customers/cus_123/...``)."""
    head, _, last = path.rpartition("/")
    if "_" in last and OBJECT_ID.match(last):  # most often the id ends the path
        return last
    for segment in reversed(head.split("/")):
        if "_" in segment and OBJECT_ID.match(segment):
            return segment
    return None


@dataclass(slots=True)
class RequestContext:
    """Everything known about one request on its way through the gateway."""

    request: web.Request
    request_id: str
    #: ``api``, ``files``, ``connect`` or ``meter_events``; None for paths no Stripe host serves
    upstream_name: str | None
    #: base URL of the chosen upstream (scheme://host[:port])
    upstream_url: str
    #: time.perf_counter() when the request arrived
    started: float = field(default_factory=time.perf_counter)
    #: the authenticated team (set by the auth plugin)
    team: TeamConfig | None = None
    #: the key sent upstream as ``Authorization: Bearer``; None forwards the client's header
    upstream_key: str | None = None
    #: response status sent to the client (0 until known)
    status: int = 0
    #: Stripe's ``Request-Id`` from the upstream response
    upstream_request_id: str | None = None
    #: seconds from sending upstream to the end of the upstream body (None: never sent)
    upstream_seconds: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    #: ``Idempotency-Key`` sent upstream, when there is one
    idempotency_key: str | None = None
    #: why the gateway answered itself or broke the response, e.g. ``upstream_timeout``
    error: str | None = None
    #: how the request ended, one of :data:`OUTCOMES` (None until it has)
    outcome: str | None = None
    #: what went wrong with each failed upstream attempt, retried ones included, in order:
    #: ``connect``, ``dns``, ``tls``, ``reset``, ``disconnected``, ``connect_timeout``,
    #: ``read_timeout``, ``write_timeout``, ``broken_body``, ``timeout_mid_body``, ``other``
    upstream_failures: tuple[str, ...] = ()
    #: set by a plugin (in gateway_request) to get a copy of the response body, up to this
    #: many bytes, in ``response_body`` when the request is finished; 0: no copy
    capture_limit: int = 0
    #: set by a plugin (in gateway_request or gateway_upstream_response) to have a JSON
    #: answer up to this many bytes read whole and passed to gateway_response_body, which
    #: may change it; 0: the answer streams untouched. Larger, compressed or non-JSON
    #: answers always stream untouched.
    response_body_limit: int = 0
    #: set by a plugin (in gateway_request) to get a copy of the request body, up to this
    #: many bytes, in ``request_body`` when the request is finished; 0: no copy. The body
    #: still streams upstream; the copy is taken chunk by chunk as it goes.
    request_capture_limit: int = 0
    #: set by a plugin to have the core retry upstream with the same Idempotency-Key
    #: (see gateway/retry.py); only used when the request carries a key
    retry: RetryPolicy | None = None
    #: upstream attempts made (0: none)
    attempts: int = 0
    #: the whole response body sent to the client, when capture was asked for and the body
    #: was complete and within the limit; None otherwise
    response_body: bytes | None = None
    #: the response's headers as sent to the client (set when capture was asked for)
    response_headers: CIMultiDict[str] | None = None
    #: the whole request body sent upstream, when capture was asked for and the body was
    #: complete and within the limit; None otherwise
    request_body: bytes | None = None
    #: further fields plugins want in the audit line (also: ``gateway_audit_fields``)
    audit: dict[str, Any] = field(default_factory=dict)
    #: scratch space for plugins, keyed by plugin name
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def object_id(self) -> str | None:
        return object_id_of(self.request.path)

    @property
    def stripe_account(self) -> str | None:
        return self.request.headers.get(_STRIPE_ACCOUNT)

    @property
    def credential(self) -> str | None:
        """What Stripe will authenticate this request by: the upstream key (set by the auth
        plugin), else the client's own ``Authorization`` header as sent; None without
        either. Anything shared per Stripe credential (cached answers, the account's
        rate-limit budget) is partitioned by it."""
        return self.upstream_key or self.request.headers.get(hdrs.AUTHORIZATION)

    @property
    def livemode(self) -> bool | None:
        """True/False from the credential's key prefix; None when it is not a Stripe key."""
        credential = self.credential
        if credential is None:
            return None
        if self.upstream_key is None:  # the client's header: the key is its bearer token
            scheme, _, value = credential.partition(" ")
            if scheme.lower() != "bearer" or not value:
                return None
            credential = value.strip()
        return _LIVEMODE.get(credential[:8])

    def elapsed_ms(self) -> float:
        """Milliseconds since the request arrived, to the microsecond."""
        return milliseconds(time.perf_counter() - self.started)


def milliseconds(seconds: float) -> float:
    """``seconds`` in milliseconds, to the microsecond (what ``round(ms, 3)`` gives, faster)."""
    return round(seconds * 1_000_000.0) / 1000.0
