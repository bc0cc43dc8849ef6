"""Header hygiene for a reverse proxy (RFC 9110 §7.6.1).

Hop-by-hop headers describe one connection and never cross the proxy, in either
direction; neither do the headers a ``Connection`` header names. Everything else,
Stripe's own headers included, is relayed unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["HOP_BY_HOP", "relay_headers", "strip_hop_by_hop"]

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


def _connection_tokens(headers: CIMultiDict[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def relay_headers(headers: CIMultiDictProxy[str], *, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop, ``Proxy-*`` and ``drop`` headers.

    ``Host`` is dropped too: the upstream request gets the upstream's own host.
    """
    out: CIMultiDict[str] = CIMultiDict(headers)
    strip_hop_by_hop(out, drop=drop)
    return out


def strip_hop_by_hop(headers: CIMultiDict[str], *, drop: Iterable[str] = ()) -> None:
    """Remove hop-by-hop, ``Proxy-*`` and ``drop`` headers from ``headers``, in place.

    (Copying everything in C and then deleting a few names is cheaper than filtering name
    by name in Python.)
    """
    if "Connection" in headers:
        for token in _connection_tokens(headers):
            headers.popall(token, None)
    for name in headers.keys() & HOP_BY_HOP:  # (a set operation in C, case-insensitive)
        headers.popall(name, None)
    for name in drop:
        headers.popall(name, None)
    if "\nproxy-" in ("\n" + "\n".join(headers.keys())).lower():  # rare: look name by name
        for name in [name for name in headers if name.lower().startswith("proxy-")]:
            headers.popall(name, None)
