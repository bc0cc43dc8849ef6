"""The idempotency plugin: keys injected and namespaced, retries with the same key."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import requests
import stripe

from gateway.errors import ConfigError
from gateway.keys import GENERATIONS
from gateway.retry import RetryPolicy, answer_is_retryable
from plugins.idempotency import namespaced
from tests.helpers import ANALYTICS_KEY, BILLING_KEY, Stack, team

FORWARD = "/v1/forwarding/requests"
FORWARD_PARAMS: dict[str, Any] = {
    "payment_method": "pm_card_visa",
    "url": "https://destination.example/pay",
    "replacements": ["card_number", "card_cvc"],
    "request": {
        "headers": [{"name": "Idempotency-Key", "value": "destination-key-1"}],
        "body": '{"card": "{{CARD_NUMBER}}"}',
    },
}
FAST = {"backoff": 0.01, "max_backoff": 0.02}


def _client(stack: Stack, key: str = BILLING_KEY, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        key, base_addresses={"api": stack.gateway_url}, max_network_retries=retries
    )


def _post(stack: Stack, path: str = FORWARD, key: str = BILLING_KEY, **headers: str) -> Any:
    return requests.post(
        stack.gateway_url + path,
        data={"payment_method": "pm_card_visa", "url": "https://d.example"},
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=10,
    )


def _keys(stack: Stack, path: str = FORWARD) -> list[str | None]:
    return [
        r.headers.get("Idempotency-Key") for r in stack.upstreams["api"].received if r.path == path
    ]


def test_a_key_is_injected_and_returned_for_retrying(stack: Stack) -> None:
    stack.start_gateway(plugins={"idempotency": FAST})
    response = _post(stack)
    assert response.status_code == 200
    client_key = response.headers["Idempotency-Key"]
    assert client_key.startswith("gwik_") and len(client_key) <= 255
    (upstream_key,) = _keys(stack)
    assert upstream_key == namespaced("billing", client_key)
    # retrying with the returned key reaches Stripe with exactly the first attempt's key
    again = _post(stack, **{"Idempotency-Key": client_key})
    assert again.headers["Idempotency-Key"] == client_key
    assert _keys(stack) == [upstream_key, upstream_key]
    line = stack.audit_lines(2)[0]
    assert line["idempotency_key"] == upstream_key
    assert line["idempotency_key_client"] == client_key
    assert line["attempts"] == 1


def test_the_sdk_happy_path_with_its_own_key(stack: Stack) -> None:
    stack.start_gateway(plugins={"idempotency": FAST})
    created = _client(stack).v1.forwarding.requests.create(
        FORWARD_PARAMS, {"idempotency_key": "sdk-key-1"}
    )
    assert created.last_response.headers["Idempotency-Key"] == "sdk-key-1"
    assert _keys(stack) == ["billing:sdk-key-1"]
    # the destination's own Idempotency-Key inside request[headers] is untouched
    body = stack.upstreams["api"].last().body.decode()
    assert "destination-key-1" in body


def test_retries_carry_the_same_key(stack: Stack) -> None:
    stack.start_gateway(plugins={"idempotency": FAST})
    stack.upstreams["api"].plan = ["retry500", "reset", "ok"]
    response = _post(stack)
    assert response.status_code == 200
    assert response.headers["X-Gateway-Attempts"] == "3"
    keys = _keys(stack)  # the reset attempt reached the upstream too, then lost its answer
    assert len(keys) == 3 and len(set(keys)) == 1
    bodies = {r.body for r in stack.upstreams["api"].received}
    assert len(bodies) == 1  # the buffered body is replayed byte for byte
    assert stack.audit_lines(1)[0]["attempts"] == 3


@pytest.mark.parametrize("outcome", ["409", "lock"])
def test_key_in_use_and_lock_timeout_are_retried(stack: Stack, outcome: str) -> None:
    stack.start_gateway(plugins={"idempotency": FAST})
    stack.upstreams["api"].plan = [outcome, "ok"]
    response = _post(stack, **{"Idempotency-Key": "mine"})
    assert response.status_code == 200
    assert _keys(stack) == ["billing:mine", "billing:mine"]


@pytest.mark.parametrize(("outcome", "status"), [("noretry500", 500), ("429", 429)])
def test_never_retried(stack: Stack, outcome: str, status: int) -> None:
    stack.start_gateway(plugins={"idempotency": FAST})
    stack.upstreams["api"].plan = [outcome, "ok"]
    response = _post(stack)
    assert response.status_code == status
    assert response.headers["X-Gateway-Attempts"] == "1"
    assert len(stack.upstreams["api"].received) == 1


def test_attempts_are_bounded_and_the_last_answer_returns(stack: Stack) -> None:
    stack.start_gateway(plugins={"idempotency": {**FAST, "max_retries": 2}})
    stack.upstreams["api"].plan = ["retry500"] * 5
    response = _post(stack)
    assert response.status_code == 500
    assert response.headers["Stripe-Should-Retry"] == "true"
    assert response.headers["X-Gateway-Attempts"] == "3"
    assert len(stack.upstreams["api"].received) == 3


def test_the_deadline_is_honoured(stack: Stack) -> None:
    stack.start_gateway(
        plugins={
            "idempotency": {"backoff": 0.4, "max_backoff": 0.4, "max_retries": 10, "deadline": 1.0}
        }
    )
    stack.upstreams["api"].plan = ["retry500"] * 20
    started = time.monotonic()
    response = _post(stack)
    elapsed = time.monotonic() - started
    assert response.status_code == 500
    attempts = int(response.headers["X-Gateway-Attempts"])
    # waits are 0.2-0.4 s (equal jitter of 0.4): retries start at >= 0.2, 0.4, 0.6, 0.8 s,
    # and none at 1.0 s or later (a stalled machine may make fewer in time, never more)
    assert 1 <= attempts <= 5
    assert elapsed < 4.0  # without the deadline, 10 retries would wait 2 s or more


class _Alternating(random.Random):
    """Jitter that alternates between the shortest and the longest wait."""

    def __init__(self) -> None:
        super().__init__(0)
        self.calls = 0

    def uniform(self, a: float, b: float) -> float:
        self.calls += 1
        return a if self.calls % 2 else b


def test_the_wait_checked_against_the_deadline_is_the_wait_slept(stack: Stack) -> None:
    # The deadline was checked with one random wait and slept with another; when the
    # second check refused, the retry went out at once, with no wait and past the deadline.
    stack.start_gateway(
        plugins={
            "idempotency": {"backoff": 0.4, "max_backoff": 0.4, "max_retries": 10, "deadline": 1.0}
        }
    )
    assert stack.app is not None
    stack.app[GENERATIONS].current.proxy._rng = _Alternating()
    stack.upstreams["api"].plan = ["retry500"] * 20
    response = _post(stack)
    assert response.status_code == 500
    assert 2 <= int(response.headers["X-Gateway-Attempts"]) <= 5


def test_unreachable_upstream_after_retries_is_502(stack: Stack) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack.start_gateway(upstream={"api": f"http://127.0.0.1:{port}"}, plugins={"idempotency": FAST})
    response = _post(stack)
    assert response.status_code == 502
    assert response.headers["X-Gateway-Attempts"] == "3"
    assert response.json()["error"]["type"] == "api_error"


def test_gets_never_get_a_key(stack: Stack) -> None:
    stack.start_gateway(plugins={"idempotency": {**FAST, "all_writes": True}})
    requests.get(
        stack.gateway_url + "/v1/forwarding/requests/fwdreq_1Nabcdefghij",
        auth=(BILLING_KEY, ""),
        timeout=5,
    )
    assert stack.upstreams["api"].last().headers.get("Idempotency-Key") is None


def test_two_teams_with_one_client_key_reach_stripe_with_different_keys(stack: Stack) -> None:
    stack.start_gateway(
        teams=[
            team("billing", BILLING_KEY, upstream_env="BILLING_STRIPE_KEY"),
            team("payouts", ANALYTICS_KEY, upstream_env="BILLING_STRIPE_KEY"),
        ],
        plugins={"idempotency": FAST},
    )
    _post(stack, key=BILLING_KEY, **{"Idempotency-Key": "same"})
    _post(stack, key=ANALYTICS_KEY, **{"Idempotency-Key": "same"})
    assert _keys(stack) == ["billing:same", "payouts:same"]


def test_namespacing_can_be_turned_off(stack: Stack) -> None:
    stack.start_gateway(plugins={"idempotency": {**FAST, "namespace": False}})
    _post(stack, **{"Idempotency-Key": "plain"})
    assert _keys(stack) == ["plain"]


def test_other_routes_get_no_injected_key_unless_configured(stack: Stack) -> None:
    stack.start_gateway(plugins={"idempotency": FAST})
    _post(stack, "/v1/customers")
    assert stack.upstreams["api"].last().headers.get("Idempotency-Key") is None
    _post(stack, "/v1/customers", **{"Idempotency-Key": "k"})  # a client key is namespaced
    assert stack.upstreams["api"].last().headers["Idempotency-Key"] == "billing:k"


def test_all_writes_covers_every_post_and_v2_delete(stack: Stack) -> None:
    stack.start_gateway(plugins={"idempotency": {**FAST, "all_writes": True}})
    _post(stack, "/v1/customers")
    assert stack.upstreams["api"].last().headers["Idempotency-Key"].startswith("billing:gwik_")
    requests.delete(
        stack.gateway_url + "/v2/core/event_destinations/ed_1Nabcdefghij",
        auth=(BILLING_KEY, ""),
        timeout=5,
    )
    assert stack.upstreams["api"].last().headers["Idempotency-Key"].startswith("billing:gwik_")


def test_sdk_retries_on_top_of_the_gateway_keep_one_key(stack: Stack) -> None:
    stack.start_gateway(plugins={"idempotency": {**FAST, "max_retries": 0}})
    stack.upstreams["api"].plan = ["retry500", "ok"]
    created = _client(stack, retries=2).v1.forwarding.requests.create(FORWARD_PARAMS)
    assert created.id
    keys = _keys(stack)
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0] is not None
    assert keys[0].startswith("billing:")


def test_long_keys_stay_within_255_characters() -> None:
    key = "k" * 255
    assert len(namespaced("team", key)) <= 255
    assert namespaced("team", key) == namespaced("team", key)
    assert namespaced("a", key) != namespaced("b", key)


def test_retry_decisions() -> None:
    assert answer_is_retryable(503, "true", None)
    assert not answer_is_retryable(500, "false", None)
    assert answer_is_retryable(409, None, b'{"error": {"code": "idempotency_key_in_use"}}')
    assert answer_is_retryable(429, None, b'{"error": {"code": "lock_timeout"}}')
    assert not answer_is_retryable(429, None, b'{"error": {"code": "rate_limit"}}')
    assert not answer_is_retryable(400, None, b'{"error": {}}')
    assert not answer_is_retryable(409, None, b"not json")
    import random

    policy = RetryPolicy(backoff=0.5, max_backoff=5.0)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 8)]
    assert 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0
    assert all(2.5 <= d <= 5.0 for d in delays[4:])


@pytest.mark.parametrize(
    ("table", "path"),
    [
        ({"bogus": 1}, "bogus"),
        ({"routes": ["GET /v1/x"]}, "routes[0]"),
        ({"routes": ["FETCH /v1/x"]}, "routes[0]"),
        ({"max_retries": -1}, "max_retries"),
        ({"backoff": 0}, "backoff"),
        ({"namespace": "yes"}, "namespace"),
    ],
)
def test_bad_settings_stop_startup(stack: Stack, table: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        stack.start_gateway(plugins={"idempotency": table})
    assert info.value.path == f"plugins.idempotency.{path}"


# --------------------------------------------------------------------------- the caller's key


@pytest.fixture
def sandbox_url(stack: Stack) -> str:
    """The sandbox as the api upstream (Stripe's idempotency checks), the gateway in front."""
    from sandbox.app import Sandbox, create_sandbox_app
    from tests.helpers import start_app

    served = stack.loop.run(start_app(create_sandbox_app(Sandbox())))
    stack._runners.append(served.runner)
    stack.start_gateway(upstream={"api": served.url})
    return served.url


def _reuse(stack: Stack, key: str) -> stripe.IdempotencyError:
    """Use ``key`` twice with different parameters; the SDK's exception for the second."""
    client = _client(stack)
    params: dict[str, Any] = {"url": "https://example.com/hook", "enabled_events": ["*"]}
    first = client.v1.webhook_endpoints.create(
        {**params, "description": "first"}, {"idempotency_key": key}
    )
    assert first.last_response.headers["Idempotency-Key"] == key
    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.webhook_endpoints.create(
            {**params, "description": "second"}, {"idempotency_key": key}
        )
    return info.value


def _assert_only_the_callers_key(error: stripe.IdempotencyError, key: str, stack: Stack) -> None:
    assert f"a key other than '{key}'" in str(error.user_message)
    assert error.headers is not None
    assert error.headers["Idempotency-Key"] == key
    body = str(error.http_body)
    assert "billing:" not in body and "sha256:" not in body
    assert all("billing:" not in value for value in error.headers.values())
    # Stripe got the namespaced key
    line = stack.audit_lines(at_least=2)[-1]
    assert line["idempotency_key"] == namespaced("billing", key)
    assert line["idempotency_key_client"] == key


def test_a_reused_key_error_shows_the_callers_key(stack: Stack, sandbox_url: str) -> None:
    error = _reuse(stack, "idem-1")
    assert error.http_status == 400
    _assert_only_the_callers_key(error, "idem-1", stack)


@pytest.mark.parametrize(
    "key",
    [
        "k.*+?[](){}$^|\\1\\\"'",  # regex and JSON specials, quotes, backslashes
        "analytics:idem-1",  # another team's namespace, as a key: shown as sent
        "billing:idem-1",  # the own namespace, as a key: shown as sent
        "x" * 300,  # hashed on the way to Stripe
    ],
)
def test_every_key_comes_back_as_the_caller_sent_it(
    stack: Stack, sandbox_url: str, key: str
) -> None:
    error = _reuse(stack, key)
    if key.startswith("billing:"):
        assert f"'{key}'" in str(error.user_message)
        assert "billing:billing:" not in str(error.http_body)
    else:
        _assert_only_the_callers_key(error, key, stack)


def test_without_namespacing_nothing_is_read(stack: Stack, sandbox_url: str) -> None:
    stack.reload(upstream={"api": sandbox_url}, plugins={"idempotency": {"namespace": False}})
    error = _reuse(stack, "idem-plain")
    assert "a key other than 'idem-plain'" in str(error.user_message)


def test_headers_and_error_bodies_quoting_the_key_show_the_callers(stack: Stack) -> None:
    from aiohttp import web

    from tests.helpers import start_app

    async def echo(request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        status = 200 if request.path.endswith("/ok") else 409
        return web.json_response(
            {"error": {"type": "idempotency_error", "message": f"in use: {key}", "key": key}},
            status=status,
            headers={"X-Echo": f"<{key}>", "X-Other": key, "Request-Id": "req_1"},
        )

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    served = stack.loop.run(start_app(app))
    stack._runners.append(served.runner)
    stack.start_gateway(upstream={"api": served.url})
    sent = 'a"b\\c'
    got = _post(stack, "/v1/customers", **{"Idempotency-Key": sent})
    assert got.status_code == 409
    assert got.json()["error"] == {
        "type": "idempotency_error",
        "message": f"in use: {sent}",
        "key": sent,
    }
    assert got.headers["X-Echo"] == f"<{sent}>" and got.headers["X-Other"] == sent
    assert "billing:" not in got.text
    # a successful answer is not read: it streams as Stripe sent it
    ok = _post(stack, "/v1/customers/ok", **{"Idempotency-Key": sent})
    assert ok.status_code == 200 and ok.json()["error"]["key"] == f"billing:{sent}"
    assert ok.headers["X-Other"] == sent  # headers always show the caller's key


async def test_the_plugin_alone_rewrites_only_error_bodies() -> None:
    from gateway.testing import PluginTest
    from plugins.idempotency import IdempotencyPlugin

    async with PluginTest(IdempotencyPlugin()) as t:
        ctx = t.context("POST", "/v1/customers", {"Idempotency-Key": "k1"}, team="billing")
        await t.request(ctx)
        up = await t.upstream_headers(ctx)
        assert up["Idempotency-Key"] == "billing:k1" and up["Accept-Encoding"] == "identity"
        error = b'{"error": {"message": "Try using a key other than \'billing:k1\'."}}'
        got = await t.response_body(ctx, error, status=400)
        assert got == b'{"error": {"message": "Try using a key other than \'k1\'."}}'
        ok = t.context("POST", "/v1/customers", {"Idempotency-Key": "k1"}, team="billing")
        await t.request(ok)
        await t.upstream_headers(ok)
        assert await t.response_body(ok, b'{"k": "billing:k1"}') == b'{"k": "billing:k1"}'
        assert ok.response_body_limit == 0  # a success is never read
        # a JSON encoder that escapes "/" as "\/"
        slash = t.context("POST", "/v1/customers", {"Idempotency-Key": "a/b"}, team="billing")
        await t.request(slash)
        await t.upstream_headers(slash)
        escaped = b'{"error": {"message": "other than \'billing:a\\/b\'"}}'
        got = await t.response_body(slash, escaped, status=400)
        assert got == b'{"error": {"message": "other than \'a\\/b\'"}}'
