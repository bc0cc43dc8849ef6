"""Header hygiene: what never crosses the proxy."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import relay_headers


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
