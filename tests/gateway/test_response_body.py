"""The ``gateway_response_body`` hook: which answers are read whole, how plugins chain, and
what a failure (a plugin's, or Stripe's mid-body) does."""

from __future__ import annotations

import orjson
import requests
from aiohttp import web
from multidict import CIMultiDict

from gateway.context import RequestContext
from gateway.hookspecs import hookimpl
from tests.helpers import BILLING_KEY, Stack

MODULE = "tests.gateway.test_response_body"


class Marker:
    """Asks for bodies on every request (or on ``/early`` answers itself) and adds a key."""

    def __init__(self, name: str, limit: int = 64 * 1024) -> None:
        self.name = name
        self.limit = limit
        self.seen: list[bytes] = []

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> web.StreamResponse | None:
        if "nobody" not in ctx.path:
            ctx.response_body_limit = max(ctx.response_body_limit, self.limit)
        if ctx.path.endswith("/early") and self.name == "first":
            return web.json_response({"object": "early"})
        return None

    @hookimpl
    def gateway_response_body(
        self, ctx: RequestContext, headers: CIMultiDict[str], body: bytes
    ) -> bytes | None:
        self.seen.append(body)
        doc = orjson.loads(body)
        doc[self.name] = True
        return orjson.dumps(doc)


class Raises:
    name = "raises"

    @hookimpl
    def gateway_response_body(self, body: bytes) -> bytes | None:
        raise RuntimeError("broken plugin")


class Wrong:
    name = "wrong"

    @hookimpl
    def gateway_response_body(self, body: bytes) -> str:
        return "not bytes"


FIRST = Marker("first")
SECOND = Marker("second")
RAISES = Raises()
WRONG = Wrong()


def _get(stack: Stack, path: str) -> requests.Response:
    return requests.get(
        stack.gateway_url + path, headers={"Authorization": f"Bearer {BILLING_KEY}"}, timeout=10
    )


def _start(stack: Stack, *names: str) -> None:
    FIRST.seen.clear()
    SECOND.seen.clear()
    stack.start_gateway(
        plugins={"load": [f"{MODULE}:{name}" for name in names], "disable": ["cache"]}
    )


def test_plugins_chain_in_hook_order_and_the_length_follows(stack: Stack) -> None:
    _start(stack, "FIRST", "SECOND")
    got = _get(stack, "/v1/customers/cus_1Nabcdefghij")
    assert got.status_code == 200
    doc = got.json()
    assert doc["first"] is True and doc["second"] is True
    assert int(got.headers["Content-Length"]) == len(got.content)
    # the most recently registered runs first; the next one sees its body
    assert b'"second":true' in FIRST.seen[0] and b"first" not in SECOND.seen[0]


def test_early_answers_go_through_the_hook_too(stack: Stack) -> None:
    _start(stack, "FIRST", "SECOND")
    got = _get(stack, "/v1/customers/early")
    assert got.json() == {"object": "early", "second": True, "first": True}
    assert stack.upstreams["api"].received == []


def test_without_a_limit_nothing_is_read(stack: Stack) -> None:
    _start(stack, "FIRST")
    got = _get(stack, "/v1/customers/nobody")
    assert got.status_code == 200 and "first" not in got.json()
    assert FIRST.seen == []


def test_a_failing_or_wrong_plugin_is_skipped(stack: Stack) -> None:
    _start(stack, "FIRST", "RAISES", "WRONG")
    got = _get(stack, "/v1/customers/cus_1Nabcdefghij")
    assert got.status_code == 200 and got.json()["first"] is True
    (failed,) = stack.error_events("plugin_failed")
    assert failed["plugin"] == "raises" and failed["hook"] == "gateway_response_body"
    (wrong,) = stack.error_events("plugin_bad_answer")
    assert wrong["plugin"] == "wrong"


def test_stripe_breaking_off_while_read_is_a_stripe_shaped_502(stack: Stack) -> None:
    FIRST.limit = 200_000  # the fault announces 100 000 bytes and sends 1 027
    try:
        _start(stack, "FIRST")
        got = _get(stack, "/v1/test_faults/truncated")
    finally:
        FIRST.limit = 64 * 1024
    assert got.status_code == 502
    assert got.json()["error"]["type"] == "api_error"
    line = stack.audit_lines()[-1]
    assert line["error"] == "upstream_broken_body" and line["outcome"] == "upstream_error"


def test_answers_over_the_limit_stream_untouched(stack: Stack) -> None:
    FIRST.limit = 10
    try:
        _start(stack, "FIRST")
        got = _get(stack, "/v1/customers/cus_1Nabcdefghij")
    finally:
        FIRST.limit = 64 * 1024
    assert got.status_code == 200 and "first" not in got.json()
    assert FIRST.seen == []
