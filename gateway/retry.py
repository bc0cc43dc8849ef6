"""Retrying a request upstream with the same Idempotency-Key: when, how often, how long.

A plugin asks for retries by setting ``ctx.retry`` to a :class:`RetryPolicy` (the
idempotency plugin does, for requests that carry a key). The core then buffers the request
body up to ``body_cap`` so it can be sent again, and retries on a connection failure or
timeout before any answer, on 409 ``idempotency_key_in_use``, on 429 ``lock_timeout``, and
on any answer with ``Stripe-Should-Retry: true``; never on ``Stripe-Should-Retry: false``,
a plain 429 ``rate_limit`` or another 4xx.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

__all__ = ["RetryPolicy", "answer_is_retryable", "needs_body_to_decide"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: retries after the first attempt
    max_retries: int = 2
    #: first backoff in seconds; it doubles each retry, up to max_backoff, with jitter
    backoff: float = 0.5
    max_backoff: float = 5.0
    #: seconds from the first attempt after which no retry starts
    deadline: float = 30.0
    #: largest request body buffered for replay; larger bodies are sent once
    body_cap: int = 1024 * 1024

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based): "equal jitter", half
        fixed and half random, so waits grow but concurrent retries spread out."""
        base: float = min(self.max_backoff, self.backoff * (2.0 ** (retry - 1)))
        return base / 2 + rng.uniform(0.0, base / 2)


def needs_body_to_decide(status: int, should_retry: str | None) -> bool:
    """Whether the error body's ``code`` decides (409 and 429 without a retry header)."""
    return should_retry is None and status in (409, 429)


def answer_is_retryable(status: int, should_retry: str | None, body: bytes | None) -> bool:
    if should_retry is not None:
        return should_retry.strip().lower() == "true"
    if status not in (409, 429) or body is None:
        return False
    try:
        error = orjson.loads(body).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return False
    code = error.get("code") if isinstance(error, dict) else None
    return (status, code) in ((409, "idempotency_key_in_use"), (429, "lock_timeout"))
