"""Header hygiene for a reverse proxy (RFC 9110 §7.6.1).

Hop-by-hop headers describe one connection and never cross the proxy, in either
direction; neither do the headers a ``Connection`` header names. Everything else,
Stripe's own headers included, is relayed unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import HttpVersion, HttpVersion11, hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import new_request_id
from gateway.errors import CLOSE, error_response

__all__ = [
    "HOP_BY_HOP",
    "SINGLE",
    "framing_problem",
    "header_problem",
    "listener_problem",
    "listener_refusal",
    "relay_headers",
    "strip_hop_by_hop",
]

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
        # RFC 9113 §3.2.1 (h2c upgrade): connection-specific; curl --http2 sends it
        "http2-settings",
    }
)

#: headers a request may carry once at most (and every ``Stripe-*`` header): with two, the
#: gateway's checks and Stripe could each read a different one
SINGLE = frozenset(
    {
        "authorization",
        "content-length",
        "content-type",
        "host",
        "idempotency-key",
    }
)
#: headers the gateway or its plugins read from the request (with every ``Stripe-*``
#: header): one named in ``Connection`` would be judged here and dropped on the way up
_READ_BY_GATEWAY = SINGLE | {"cache-control", "content-encoding", "x-forwarded-for"}
#: headers whose value the gateway reads and logs: they must be printable ASCII (a
#: non-UTF-8 byte would reach Stripe as one thing and the audit line as another)
_ASCII_VALUED = ("stripe-account", "stripe-context", "stripe-version", "idempotency-key")


def _connection_tokens(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def framing_problem(
    version: HttpVersion, headers: CIMultiDictProxy[str] | CIMultiDict[str]
) -> str | None:
    """Why a request's body framing is faulty (RFC 9112 §6), or None when it is sound.

    - an HTTP/1.0 request carries ``Transfer-Encoding`` (§6.1: HTTP/1.0 has no transfer
      codings, so a message with one "MUST" be treated as faulty framing, even with a
      ``Content-Length``: an HTTP/1.0 hop behind or in front of the gateway may frame it
      by ``Content-Length`` or by the connection's end where aiohttp reads chunks, the
      request smuggling shape);
    - ``Transfer-Encoding`` is anything but one ``chunked`` (``gzip, chunked`` would reach
      Stripe still gzip-coded), or comes with a ``Content-Length`` (the request smuggling
      shape; aiohttp's parser refuses it too).

    The answer to such a request closes the connection: whatever follows it on the same
    connection cannot be told apart from its body.
    """
    if hdrs.TRANSFER_ENCODING not in headers:
        return None
    if version < HttpVersion11:
        return (
            "HTTP/1.0 requests may not carry a Transfer-Encoding header: send the body "
            "with a Content-Length, or use HTTP/1.1."
        )
    codings = headers.getall("Transfer-Encoding")
    if len(codings) != 1 or codings[0].strip().lower() != "chunked":
        return "The only Transfer-Encoding the gateway accepts is 'chunked', alone."
    if hdrs.CONTENT_LENGTH in headers:
        return "A request may not carry both Transfer-Encoding and Content-Length."
    return None


def header_problem(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], version: HttpVersion = HttpVersion11
) -> str | None:
    """Why a request's headers cannot be forwarded as they are, or None when they can.

    - a header of :data:`SINGLE` or a ``Stripe-*`` header appears more than once;
    - ``Connection`` names a header the request carries that the gateway reads (a header
      of :data:`SINGLE`, a ``Stripe-*`` header, ``Cache-Control``, ``Content-Encoding``,
      ``X-Forwarded-For``): the proxy would drop it, so what the gateway judged (cache
      key, allow-lists, audit line) and what Stripe gets would differ. Other headers named
      in ``Connection`` are dropped on the way, as RFC 9110 asks;
    - ``Stripe-Account``, ``Stripe-Context``, ``Stripe-Version`` or ``Idempotency-Key`` is
      not printable ASCII;
    - the body's framing is faulty (:func:`framing_problem`, for the request's HTTP
      ``version``).
    """
    problem = _ambiguous(version, headers, SINGLE, _READ_BY_GATEWAY)
    if problem is not None:
        return problem
    for key in _ASCII_VALUED:
        text = headers.get(key)
        if text is not None and not (text.isascii() and text.isprintable()):
            return f"The header {_title(key)} must be printable ASCII."
    return None


def listener_problem(
    version: HttpVersion,
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    reads: frozenset[str] = frozenset(),
) -> str | None:
    """Why a request to one of the gateway's own listeners is ambiguous, or None when it is
    not: the listeners whose requests do not go through the proxy's checks
    (:func:`header_problem`): the webhook ingress, ``/healthz``, the admin listener.
    ``reads`` are the (lower-case) names of the headers the listener reads.

    - a header of :data:`SINGLE`, a ``Stripe-*`` header or one of ``reads`` appears more
      than once: which one the listener read (the ``Stripe-Signature`` it verified, the
      ``Authorization`` token it checked) would be a guess;
    - ``Connection`` names such a header that the request carries: a hop in front that
      honours it would drop the header this listener reads;
    - the body's framing is faulty (:func:`framing_problem`, for the request's HTTP
      ``version``).
    """
    read = SINGLE | reads
    return _ambiguous(version, headers, read, read)


def _ambiguous(
    version: HttpVersion,
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    single: frozenset[str],
    read: frozenset[str],
) -> str | None:
    """A name of ``single`` (or ``Stripe-*``) that repeats, a header of ``read`` (or
    ``Stripe-*``) that ``Connection`` names, or faulty framing; None for none of these."""
    if len(headers) != (len(headers.keys()) if _KEYS_FOLD else _distinct(headers)):
        problem = _repeated(headers, single)  # a name repeats (len counts every value)
        if problem is not None:
            return problem
    if hdrs.CONNECTION in headers:
        problem = _named_by_connection(headers, read)
        if problem is not None:
            return problem
    return framing_problem(version, headers)


def listener_refusal(
    request: web.Request, reads: frozenset[str] = frozenset()
) -> web.Response | None:
    """The Stripe-shaped 400 (``invalid_request_error``, code ``invalid_header``, as the
    proxy answers) for a request to one of the gateway's own listeners whose headers are
    ambiguous (:func:`listener_problem`, with the names of the headers it ``reads``), which
    closes the connection; None when they are not. The listener calls it before any work."""
    problem = listener_problem(request.version, request.headers, reads)
    if problem is None:
        return None
    return error_response(
        400, problem, request_id=new_request_id(), code="invalid_header", headers=dict(CLOSE)
    )


def _repeated(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], single: frozenset[str]
) -> str | None:
    """The problem with the first name of ``single`` (or ``Stripe-*``) that repeats."""
    seen: set[str] = set()
    for name, _ in headers.items():
        name = name.lower()
        if name in seen and (name in single or name.startswith("stripe-")):
            return f"The header {_title(name)} may be sent only once."
        seen.add(name)
    return None


def _named_by_connection(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], read: frozenset[str]
) -> str | None:
    """The problem with the first header of ``read`` (or ``Stripe-*``) that ``Connection``
    names and the request carries."""
    for name in _connection_tokens(headers):
        if (name in read or name.startswith("stripe-")) and name in headers:
            return (
                f"The Connection header names {_title(name)}, which this request "
                "carries: the gateway does not drop end-to-end headers."
            )
    return None


def _distinct(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> int:
    return len({name.lower() for name in headers})


#: whether this multidict's ``keys()`` holds each name once, whatever its case (multidict 6
#: does): then a length comparison in C finds a repeated name
_KEYS_FOLD = len(CIMultiDict([("A", ""), ("a", "")]).keys()) == 1


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))[:64]


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
    if hdrs.CONNECTION in headers:
        for token in _connection_tokens(headers):
            headers.popall(token, None)
    for name in headers.keys() & HOP_BY_HOP:  # (a set operation in C, case-insensitive)
        headers.popall(name, None)
    for name in drop:
        headers.popall(name, None)
    if "\nproxy-" in ("\n" + "\n".join(headers.keys())).lower():  # rare: look name by name
        for name in [name for name in headers if name.lower().startswith("proxy-")]:
            headers.popall(name, None)
