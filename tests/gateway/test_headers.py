"""Header hygiene: what never crosses the proxy."""

from __future__ import annotations

import pytest
from aiohttp import HttpVersion10, HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import framing_problem, header_problem, relay_headers


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
