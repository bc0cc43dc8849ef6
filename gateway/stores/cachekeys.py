"""What the cache may store, and under which key.

Only retrieves of one object are cacheable: ``GET`` of a path whose last segment is a
Stripe object id (``/v1/tax/calculations/taxcalc_1N…``, ``/v1/customers/cus_…``). Lists,
searches, ``/v1/balance``, file contents and ``/v1/events`` never are.

A key is a digest of everything that can change what Stripe answers: the upstream
credential, ``Stripe-Account``, ``Stripe-Context``, ``Stripe-Version``, the path and the
query string in a normal form (``expand[]=a&expand[]=b``, ``expand[0]=a&expand[1]=b`` and
their percent-encoded forms are one key; the order of ``expand`` does not matter).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, quote

from gateway.context import OBJECT_ID

__all__ = ["cache_key", "is_cacheable_retrieve", "normal_query", "object_ids_in"]

#: retrieves under these prefixes are never cached (file contents and quote PDFs end in
#: ``/contents`` and ``/pdf``, never in an id, so they are not retrieves to begin with)
_NEVER = ("/v1/events/", "/v2/core/events/", "/v1/balance/")
_EXPAND = re.compile(r"^expand\[\d*\]$")


def is_cacheable_retrieve(method: str, path: str) -> bool:
    """True for ``GET`` of a single object (the last path segment is an object id)."""
    if method != "GET" or not path.startswith(("/v1/", "/v2/")):
        return False
    if path.startswith(_NEVER):
        return False
    last = path.rpartition("/")[2]
    return "_" in last and OBJECT_ID.match(last) is not None


def object_ids_in(path: str) -> list[str]:
    """Every object id in a path: a write to ``/v1/customers/cus_1/sources/src_2`` touches
    both objects."""
    # (an id has an underscore: the cheap test spares most segments the pattern)
    return [s for s in path.split("/") if "_" in s and OBJECT_ID.match(s)]


def normal_query(query_string: str) -> str:
    """A canonical form of a query string: ``expand`` values sorted and de-duplicated,
    other parameters sorted by name, everything percent-encoded one way."""
    if not query_string:  # most retrieves: nothing to parse
        return ""
    expand: set[str] = set()
    other: list[tuple[str, str]] = []
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if name == "expand" or _EXPAND.match(name):
            expand.add(value)
        else:
            other.append((name, value))
    pairs = sorted(other) + [("expand[]", value) for value in sorted(expand)]
    return "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in pairs)


def cache_key(
    *,
    credential: str,
    account: str | None,
    context: str | None,
    version: str | None,
    path: str,
    query_string: str,
) -> str:
    """The digest that names one cached answer."""
    parts = (
        credential,
        account or "",
        context or "",
        version or "",
        path,
        normal_query(query_string),
    )
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()
