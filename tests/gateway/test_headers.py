"""Header hygiene: what never crosses the proxy."""

from __future__ import annotations

import pytest
from aiohttp import HttpVersion10, HttpVersion11
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import (
    SINGLE,
    framing_problem,
    header_problem,
    listener_problem,
    relay_headers,
)


@pytest.mark.parametrize("drop", [(), ("X-Drop",)])
def test_relay_headers_drops_hop_by_hop_connection_named_and_proxy_headers(
    drop: tuple[str, ...],
) -> None:
    headers = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Host", "gw"),
                ("Accept", "a"),
                ("Connection", "keep-alive, X-Hop"),
                ("x-hop", "1"),
                ("TE", "trailers"),
                ("Proxy-Authorization", "p"),
                ("accept", "b"),
                ("X-Drop", "d"),
            ]
        )
    )
    out = relay_headers(headers, drop=drop)
    expected = [("Accept", "a"), ("accept", "b")] + ([] if drop else [("X-Drop", "d")])
    assert list(out.items()) == expected


def test_an_h2c_upgrade_is_dropped_not_relayed() -> None:
    # curl --http2 on http:// sends these: connection-specific, never forwarded
    headers = CIMultiDictProxy(
        CIMultiDict(
            {
                "Connection": "Upgrade, HTTP2-Settings",
                "Upgrade": "h2c",
                "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA",
                "Stripe-Version": "2024-06-20",
            }
        )
    )
    assert header_problem(headers) is None
    assert dict(relay_headers(headers)) == {"Stripe-Version": "2024-06-20"}


@pytest.mark.parametrize(
    "name", ["Stripe-Account", "Stripe-Context", "Stripe-Version", "Idempotency-Key"]
)
@pytest.mark.parametrize("value", ["key\u00e9", "a\tb", "a\x00b", "a\udcffb"])
def test_a_header_the_gateway_reads_must_be_printable_ascii(name: str, value: str) -> None:
    problem = header_problem(CIMultiDictProxy(CIMultiDict({name: value})))
    assert problem == f"The header {name} must be printable ASCII."


@pytest.mark.parametrize(
    ("codings", "length", "refused"),
    [
        (["chunked"], None, False),
        (["Chunked "], None, False),
        (["gzip, chunked"], None, True),
        (["identity, chunked"], None, True),
        (["chunked, chunked"], None, True),
        (["gzip", "chunked"], None, True),
        ([",chunked"], None, True),
        (["identity"], None, True),
        (["chunked"], "3", True),  # the smuggling shape: never both
    ],
)
def test_only_a_lone_chunked_transfer_encoding_passes(
    codings: list[str], length: str | None, refused: bool
) -> None:
    headers = CIMultiDict([("Transfer-Encoding", c) for c in codings])
    if length is not None:
        headers["Content-Length"] = length
    problem = header_problem(CIMultiDictProxy(headers))
    assert (problem is not None) == refused
    if refused:
        assert problem is not None and "Transfer-Encoding" in problem


@pytest.mark.parametrize("codings", [["chunked"], ["Chunked"], ["gzip"], ["identity"], [""]])
@pytest.mark.parametrize("length", [None, "3"])
def test_an_http10_request_with_any_transfer_encoding_is_faulty_framing(
    codings: list[str], length: str | None
) -> None:
    # RFC 9112 §6.1: even with a Content-Length beside it
    headers = CIMultiDict([("Transfer-Encoding", c) for c in codings])
    if length is not None:
        headers["Content-Length"] = length
    problem = framing_problem(HttpVersion10, CIMultiDictProxy(headers))
    assert problem is not None and "HTTP/1.0" in problem
    assert header_problem(CIMultiDictProxy(headers), HttpVersion10) == problem


def test_an_http10_request_framed_by_content_length_is_sound() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Length": "3"}))
    assert framing_problem(HttpVersion10, headers) is None
    assert header_problem(headers, HttpVersion10) is None
    chunked = CIMultiDictProxy(CIMultiDict({"Transfer-Encoding": "chunked"}))
    assert framing_problem(HttpVersion11, chunked) is None


# ------------------------------------------------------------------ the gateway's own listeners

#: what the webhook ingress reads (plugins/webhooks.py), the admin listener's token
READS = frozenset({"stripe-signature", "authorization"})


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ([("Stripe-Signature", "t=1,v1=a"), ("stripe-signature", "t=1,v1=b")], "Stripe-Signature"),
        ([("Authorization", "Bearer a"), ("Authorization", "Bearer a")], "Authorization"),
        ([("Content-Type", "a/b"), ("Content-Type", "a/b")], "Content-Type"),
        ([("Content-Length", "3"), ("Content-Length", "3")], "Content-Length"),
        ([("X-Read", "1"), ("x-read", "1")], "X-Read"),  # one of the listener's reads
        ([("Host", "a"), ("Host", "b")], "Host"),
    ],
)
def test_a_listener_refuses_a_header_it_reads_sent_twice(
    headers: list[tuple[str, str]], named: str
) -> None:
    problem = listener_problem(
        HttpVersion11, CIMultiDictProxy(CIMultiDict(headers)), READS | {"x-read"}
    )
    assert problem == f"The header {named} may be sent only once."


@pytest.mark.parametrize("named", ["Stripe-Signature", "Authorization", "Content-Type", "X-Read"])
def test_a_listener_refuses_connection_naming_a_header_it_reads(named: str) -> None:
    headers = CIMultiDict([("Connection", f"keep-alive, {named.lower()}"), (named, "v")])
    problem = listener_problem(HttpVersion11, CIMultiDictProxy(headers), READS | {"x-read"})
    assert problem is not None and f"names {named}" in problem
    # named but absent, or an unread header named: nothing to disagree about
    del headers[named]
    assert listener_problem(HttpVersion11, CIMultiDictProxy(headers), READS) is None
    headers["X-Other"] = "v"
    headers["Connection"] = "X-Other"
    assert listener_problem(HttpVersion11, CIMultiDictProxy(headers), READS) is None


def test_a_listener_refuses_faulty_framing_and_passes_sound_headers() -> None:
    chunked = CIMultiDictProxy(CIMultiDict({"Transfer-Encoding": "chunked"}))
    assert listener_problem(HttpVersion11, chunked) is None
    assert listener_problem(HttpVersion10, chunked) == framing_problem(HttpVersion10, chunked)
    # repeated headers nobody reads are not ambiguous to the listener
    fine = CIMultiDict([("Accept", "a"), ("accept", "b"), ("Authorization", "Bearer t")])
    assert listener_problem(HttpVersion11, CIMultiDictProxy(fine), READS) is None


_NAMES = st.sampled_from(
    sorted(SINGLE | READS | {"stripe-account", "x-other", "accept", "user-agent"})
).map(lambda name: name.upper() if len(name) % 2 else name.title())
_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)


@given(
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
    repeated=st.sampled_from(sorted(SINGLE | READS | {"stripe-account"})),
    at=st.integers(min_value=0),
)
@example(headers=[], repeated="authorization", at=0)
@example(headers=[("Stripe-Signature", "a")], repeated="stripe-signature", at=1)
def test_a_request_repeating_a_header_a_listener_reads_is_always_refused(
    headers: list[tuple[str, str]], repeated: str, at: int
) -> None:
    # whatever else it carries, and in whatever case the name is spelt
    headers = [*headers, (repeated.title(), "1")]
    headers.insert(at % (len(headers) + 1), (repeated.upper(), "2"))
    problem = listener_problem(HttpVersion11, CIMultiDictProxy(CIMultiDict(headers)), READS)
    assert problem is not None
    # and the proxy's own check still refuses what it took once already
    if repeated in SINGLE or repeated.startswith("stripe-"):
        assert header_problem(CIMultiDictProxy(CIMultiDict(headers))) is not None


@given(headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=8, unique_by=lambda h: h[0].lower()))
def test_a_request_naming_each_header_once_passes_a_listener(
    headers: list[tuple[str, str]],
) -> None:
    # no Connection, no Transfer-Encoding among the names: nothing is ambiguous
    assert listener_problem(HttpVersion11, CIMultiDictProxy(CIMultiDict(headers)), READS) is None
