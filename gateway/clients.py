"""What a client says about itself: the Stripe API version it pins and the Stripe SDK (language
and version) it runs, read from ``Stripe-Version``, ``X-Stripe-Client-User-Agent`` and
``User-Agent`` for the audit line.

Every value comes from a hostile client, so none is copied as sent: the language must be one of
the official SDKs' (else ``"other"``), a version must have a version's shape and length, an API
version a date's shape (else ``"[invalid]"``). Nothing a client writes there, a key included,
can reach a log line except through those shapes.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import orjson

__all__ = ["ClientFields", "api_version", "client_fields", "sdk"]

#: an API version as Stripe names them: ``2024-06-20``, ``2025-03-31.basil``
_API_VERSION = re.compile(r"20\d\d-[01]\d-[0-3]\d(?:\.[a-z]{1,16})?", re.ASCII)
#: an SDK version: ``12.0.0``, ``v76.1.0``, ``13.0.0b1``, ``14.0.0-beta.2``
_VERSION = re.compile(
    r"v?\d{1,4}(?:\.\d{1,4}){0,3}(?:[-.+]?(?:a|b|rc|alpha|beta|dev|post)\.?\d{0,4})?", re.ASCII
)
#: ``Stripe/v1 PythonBindings/12.0.0``, what each official SDK puts in ``User-Agent``
_USER_AGENT = re.compile(r"Stripe/v1 ([.A-Za-z]{1,16})Bindings/(\S{1,40})", re.ASCII)
#: the official SDKs' language names (``lang`` in ``X-Stripe-Client-User-Agent``), by the
#: lower-case name either header uses
_LANGUAGES = {
    "python": "python",
    "ruby": "ruby",
    "node": "node",
    "java": "java",
    "go": "go",
    "php": "php",
    ".net": ".net",
    "dotnet": ".net",
}
#: the longest header read; a longer one is not parsed at all
_MAX_HEADER = 4096
INVALID = "[invalid]"


class ClientFields(NamedTuple):
    """The SDK a request came from: ``sdk`` (its language; ``"other"`` for a language that is
    none of the official SDKs' or an ``X-Stripe-Client-User-Agent`` that names none; ``None``
    for a client that is no Stripe SDK, curl say) and ``sdk_version`` (``None`` when missing
    or not shaped like a version)."""

    sdk: str | None
    sdk_version: str | None


def api_version(header: str | None) -> str | None:
    """``Stripe-Version`` when it is shaped like one, ``"[invalid]"`` otherwise, ``None`` when
    the request has none (the account's default version applies)."""
    if header is None:
        return None
    return header if _API_VERSION.fullmatch(header) else INVALID


def _version(value: Any) -> str | None:
    return value if isinstance(value, str) and _VERSION.fullmatch(value) else None


def _language(value: Any) -> str:
    if not isinstance(value, str):
        return "other"
    return _LANGUAGES.get(value.lower(), "other")


@functools.lru_cache(maxsize=256)
def sdk(client_user_agent: str | None, user_agent: str | None) -> ClientFields:
    """The SDK named by ``X-Stripe-Client-User-Agent`` (a JSON object: ``lang``,
    ``bindings_version``), else by ``User-Agent`` (``Stripe/v1 <Lang>Bindings/<version>``).
    Cached: a service sends the same headers on every request."""
    if client_user_agent is not None and len(client_user_agent) <= _MAX_HEADER:
        try:
            described = orjson.loads(client_user_agent)
        except orjson.JSONDecodeError:
            described = None
        if isinstance(described, dict) and "lang" in described:
            return ClientFields(
                _language(described.get("lang")), _version(described.get("bindings_version"))
            )
    if user_agent is not None and len(user_agent) <= _MAX_HEADER:
        found = _USER_AGENT.search(user_agent)
        if found:
            return ClientFields(_language(found[1]), _version(found[2]))
    # an X-Stripe-Client-User-Agent no SDK would send; no SDK at all (curl, a browser)
    return ClientFields("other" if client_user_agent is not None else None, None)


def client_fields(headers: Any) -> dict[str, str | None]:
    """``stripe_version``, ``sdk`` and ``sdk_version`` for the audit line, from a request's
    headers."""
    found = sdk(headers.get("X-Stripe-Client-User-Agent"), headers.get("User-Agent"))
    return {
        "stripe_version": api_version(headers.get("Stripe-Version")),
        "sdk": found.sdk,
        "sdk_version": found.sdk_version,
    }
