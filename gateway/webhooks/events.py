"""Stripe's webhook events as the ``webhooks`` plugin reads them: the ``Stripe-Signature``
scheme (:func:`sign`, :func:`verify`) and what is stored of an event (:func:`describe`)."""

from __future__ import annotations

import hashlib
import hmac

import orjson

from gateway.webhooks.store import EventRecord

__all__ = ["EVENT_OBJECTS", "Rejected", "describe", "sign", "verify"]

#: what ``object`` a snapshot event and a thin event have
EVENT_OBJECTS = ("event", "v2.core.event")


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header for ``payload`` signed with ``secret`` at
    ``timestamp``: ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<payload>">``."""
    signed = str(timestamp).encode() + b"." + payload
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


def verify(
    payload: bytes, header: str, secrets_: tuple[str, ...], tolerance: float, now: float
) -> str | None:
    """``None`` when ``header`` signs ``payload`` with one of ``secrets_`` recently enough,
    else why not: ``no_signature`` (no ``t=`` or no ``v1=``), ``bad_signature``, ``stale``.

    As Stripe's libraries do: the first ``t=`` is the timestamp, every ``v1=`` a candidate,
    each compared in constant time with the expected signature under every secret; the
    timestamp may be at most ``tolerance`` seconds old."""
    pairs = [item.split("=", 1) for item in header.split(",")]
    stamps = [pair[1].strip() for pair in pairs if len(pair) == 2 and pair[0].strip() == "t"]
    candidates = [
        pair[1].strip().encode() for pair in pairs if len(pair) == 2 and pair[0].strip() == "v1"
    ]
    if not stamps or not candidates:
        return "no_signature"
    stamp = stamps[0]
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        return "bad_signature"
    signed = stamp.encode() + b"." + payload
    matched = False
    for secret in secrets_:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        return "bad_signature"
    if int(stamp) < now - tolerance:
        return "stale"
    return None


class Rejected(Exception):
    """A request that is not a verified event: 400, with ``reason`` in the metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def describe(source: str, body: bytes) -> EventRecord:
    """The stored form of an event body (raises :class:`Rejected` when it is not one)."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Rejected("invalid_event", "The body is not JSON.") from None
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not event["id"]
        or event.get("object") not in EVENT_OBJECTS
        or not isinstance(event.get("type"), str)
    ):
        raise Rejected("invalid_event", "The body is not a Stripe event (id, type, object: event).")
    livemode = event.get("livemode")
    if event["object"] == "event":
        account = event.get("account")
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
    else:  # a thin event: the account is its context, the object its related_object
        account = event.get("context")
        obj = event.get("related_object")
    object_id = obj.get("id") if isinstance(obj, dict) else None
    return EventRecord(
        id=event["id"],
        source=source,
        type=event["type"],
        object=event["object"],
        livemode=livemode if isinstance(livemode, bool) else None,
        account=account if isinstance(account, str) else None,
        object_id=object_id if isinstance(object_id, str) and object_id else None,
        body=body,
    )
