"""Header hygiene for a reverse proxy (RFC 9110 §7.6.1).

Hop-by-hop headers describe one connection and never cross the proxy, in either
direction; neither do the headers a ``Connection`` header names. Everything else,
Stripe's own headers included, is relayed unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["HOP_BY_HOP", "relay_headers"]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def relay_headers(headers: CIMultiDictProxy[str], *, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop, ``Proxy-*`` and ``drop`` headers.

    ``Host`` is dropped too: the upstream request gets the upstream's own host.
    """
    skip = set(HOP_BY_HOP)
    skip.update(d.lower() for d in drop)
    if "Connection" in headers:
        skip.update(_connection_tokens(headers))
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in skip or lower.startswith("proxy-"):
            continue
        out.add(name, value)
    return out
