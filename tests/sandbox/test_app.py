"""The sandbox's request pipeline: keys, routing, errors, lists, idempotency, per-key state."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import requests
import stripe

from sandbox.app import Sandbox, create_sandbox_app
from sandbox.core import Call, Registry
from tests.helpers import LoopThread, start_app
from tests.sandbox.conftest import OTHER_SANDBOX_KEY, SANDBOX_KEY, SandboxStack


def _hook(client: stripe.StripeClient, n: int = 0) -> Any:
    return client.v1.webhook_endpoints.create(
        {"url": f"https://example.com/{n}", "enabled_events": ["*"]}
    )


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "You did not provide an API key"),
        ("Token abc", "You did not provide an API key"),
        ("Bearer sk_live_1234567890abcdef", "Invalid API Key provided"),
        ("Bearer pk_test_1234567890abcdef", "Invalid API Key provided"),
        ("Basic %%%", "Invalid API Key provided"),
    ],
)
def test_missing_or_malformed_keys_are_401(
    sandbox_stack: SandboxStack, header: str | None, fragment: str
) -> None:
    headers = {"Authorization": header} if header else {}
    response = requests.get(
        f"{sandbox_stack.sandbox_url}/v1/webhook_endpoints", headers=headers, timeout=5
    )
    assert response.status_code == 401
    assert fragment in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["Request-Id"].startswith("req_")
    assert "1234567890abcdef" not in response.text


def test_unknown_url_is_stripes_404_and_every_answer_has_a_request_id(
    sandbox_stack: SandboxStack,
) -> None:
    response = sandbox_stack.raw("GET", "/v1/not_a_thing")
    assert response.status_code == 404
    assert response.json()["error"]["message"].startswith("Unrecognized request URL (GET: /v1/")
    ok = sandbox_stack.raw("GET", "/v1/webhook_endpoints")
    ids = {response.headers["Request-Id"], ok.headers["Request-Id"]}
    assert len(ids) == 2 and all(i.startswith("req_") for i in ids)


def test_each_key_sees_only_its_own_data(sandbox_stack: SandboxStack) -> None:
    mine = sandbox_stack.sdk(SANDBOX_KEY, direct=True)
    other = sandbox_stack.sdk(OTHER_SANDBOX_KEY, direct=True)
    created = _hook(mine)
    assert [w.id for w in mine.v1.webhook_endpoints.list().data] == [created.id]
    assert other.v1.webhook_endpoints.list().data == []
    with pytest.raises(stripe.InvalidRequestError):
        other.v1.webhook_endpoints.retrieve(created.id)
    # a connected account (Stripe-Account) is a separate account too
    assert mine.v1.webhook_endpoints.list(options={"stripe_account": "acct_1X"}).data == []


def test_pagination_newest_first_with_cursors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    ids = [_hook(client, n).id for n in range(13)]
    newest_first = list(reversed(ids))
    first = client.v1.webhook_endpoints.list()
    assert [w.id for w in first.data] == newest_first[:10] and first.has_more
    assert first.url == "/v1/webhook_endpoints"
    rest = client.v1.webhook_endpoints.list({"starting_after": first.data[-1].id})
    assert [w.id for w in rest.data] == newest_first[10:] and not rest.has_more
    back = client.v1.webhook_endpoints.list({"ending_before": rest.data[0].id, "limit": 3})
    assert [w.id for w in back.data] == newest_first[7:10] and back.has_more
    walked = [w.id for w in client.v1.webhook_endpoints.list({"limit": 4}).auto_paging_iter()]
    assert walked == newest_first


@pytest.mark.parametrize(("limit", "param"), [("0", "limit"), ("101", "limit"), ("ten", "limit")])
def test_invalid_limit_is_parameter_invalid_integer(
    sandbox_stack: SandboxStack, limit: str, param: str
) -> None:
    response = sandbox_stack.raw("GET", f"/v1/webhook_endpoints?limit={limit}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "parameter_invalid_integer" and error["param"] == param


def test_unknown_cursor_is_resource_missing(sandbox_stack: SandboxStack) -> None:
    response = sandbox_stack.raw("GET", "/v1/webhook_endpoints?starting_after=we_nope")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "resource_missing"


def test_idempotent_replay_and_mismatch(sandbox_stack: SandboxStack) -> None:
    body = {"url": "https://example.com/i", "enabled_events[]": "*"}
    first = sandbox_stack.raw(
        "POST", "/v1/webhook_endpoints", data=body, headers={"Idempotency-Key": "k1"}
    )
    again = sandbox_stack.raw(
        "POST", "/v1/webhook_endpoints", data=body, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == again.status_code == 200
    assert first.headers["Idempotent-Replayed"] == "false"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["Request-Id"] != first.headers["Request-Id"]
    assert len(sandbox_stack.raw("GET", "/v1/webhook_endpoints").json()["data"]) == 1
    other = sandbox_stack.raw(
        "POST",
        "/v1/webhook_endpoints",
        data={**body, "description": "x"},
        headers={"Idempotency-Key": "k1"},
    )
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"
    # the same key under another API key is a different slot
    elsewhere = sandbox_stack.raw(
        "POST",
        "/v1/webhook_endpoints",
        data=body,
        key=OTHER_SANDBOX_KEY,
        headers={"Idempotency-Key": "k1"},
    )
    assert elsewhere.headers["Idempotent-Replayed"] == "false"


def test_sdk_sees_idempotent_replays_through_the_gateway(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    a = client.v1.webhook_endpoints.create(
        {"url": "https://example.com/a", "enabled_events": ["*"]}, {"idempotency_key": "same"}
    )
    b = client.v1.webhook_endpoints.create(
        {"url": "https://example.com/a", "enabled_events": ["*"]}, {"idempotency_key": "same"}
    )
    assert a.id == b.id
    assert b.last_response.headers["Idempotent-Replayed"] == "true"
    with pytest.raises(stripe.IdempotencyError):
        client.v1.webhook_endpoints.create(
            {"url": "https://example.com/b", "enabled_events": ["*"]}, {"idempotency_key": "same"}
        )


def test_concurrent_use_of_one_key_is_409(loop_thread: LoopThread) -> None:
    registry = Registry()
    gate = threading.Event()
    entered = threading.Event()

    @registry.route("POST", "/v1/slow_things", params=("n",))
    async def slow(call: Call) -> dict[str, Any]:
        entered.set()
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return {"id": "slow_1", "object": "slow_thing"}

    served = loop_thread.run(start_app(create_sandbox_app(Sandbox(registry=registry))))
    try:
        url = f"{served.url}/v1/slow_things"
        headers = {"Authorization": f"Bearer {SANDBOX_KEY}", "Idempotency-Key": "busy"}
        results: list[requests.Response] = []
        first = threading.Thread(
            target=lambda: results.append(
                requests.post(url, data={"n": "1"}, headers=headers, timeout=10)
            )
        )
        first.start()
        assert entered.wait(10)  # the first request holds the key (its handler waits on the gate)
        second = requests.post(url, data={"n": "1"}, headers=headers, timeout=10)
        assert second.status_code == 409
        assert second.json()["error"]["code"] == "idempotency_key_in_use"
        gate.set()
        first.join(10)
        assert results[0].status_code == 200
        third = requests.post(url, data={"n": "1"}, headers=headers, timeout=10)
        assert third.headers["Idempotent-Replayed"] == "true"
    finally:
        gate.set()
        loop_thread.run(served.runner.cleanup())


def test_wrong_method_on_a_known_path_is_unrecognized(sandbox_stack: SandboxStack) -> None:
    response = sandbox_stack.raw("PUT", "/v1/webhook_endpoints")
    assert response.status_code == 404


def test_a_request_that_fails_validation_is_not_saved_under_its_idempotency_key(
    sandbox_stack: SandboxStack,
) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as bad:
        client.v1.webhook_endpoints.create(
            {"url": "https://example.com/fixed", "enabled_events": []},
            {"idempotency_key": "fix-me"},
        )
    fixed = client.v1.webhook_endpoints.create(
        {"url": "https://example.com/fixed", "enabled_events": ["*"]},
        {"idempotency_key": "fix-me"},
    )
    assert fixed.id.startswith("we_")
    assert fixed.last_response.headers["Idempotent-Replayed"] == "false"
    again = client.v1.webhook_endpoints.create(
        {"url": "https://example.com/fixed", "enabled_events": ["*"]},
        {"idempotency_key": "fix-me"},
    )
    assert again.id == fixed.id
    assert bad.value.headers["Idempotency-Key"] == "fix-me"


def test_idempotent_answers_echo_the_key_and_name_the_original_request(
    sandbox_stack: SandboxStack,
) -> None:
    body = {"url": "https://example.com/o", "enabled_events[]": "*"}
    first = sandbox_stack.raw(
        "POST", "/v1/webhook_endpoints", data=body, headers={"Idempotency-Key": "k-orig"}
    )
    again = sandbox_stack.raw(
        "POST", "/v1/webhook_endpoints", data=body, headers={"Idempotency-Key": "k-orig"}
    )
    assert first.headers["Idempotency-Key"] == again.headers["Idempotency-Key"] == "k-orig"
    assert first.headers["Original-Request"] == first.headers["Request-Id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Original-Request"] == first.headers["Request-Id"]
    assert again.headers["Request-Id"] != first.headers["Request-Id"]
    plain = sandbox_stack.raw("POST", "/v1/webhook_endpoints", data=body)
    assert "Idempotency-Key" not in plain.headers and "Original-Request" not in plain.headers


def test_an_unknown_stripe_version_is_refused_like_stripe(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk(stripe_version="2099-01-01")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.webhook_endpoints.list()
    assert refused.value.http_status == 400
    assert refused.value.user_message == "Invalid Stripe API version: 2099-01-01"
    assert refused.value.headers["Stripe-Version"] == stripe._api_version._ApiVersion.CURRENT
    malformed = sandbox_stack.raw(
        "GET", "/v1/webhook_endpoints", headers={"Stripe-Version": "2019-2-19"}
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "version",
    [
        stripe._api_version._ApiVersion.CURRENT,
        "2020-08-27",
        "2024-09-30.acacia",
        f"{stripe._api_version._ApiVersion.CURRENT}; identity_beta=v2",
    ],
)
def test_every_answer_echoes_the_stripe_version_it_followed(
    sandbox_stack: SandboxStack, version: str
) -> None:
    ok = sandbox_stack.raw("GET", "/v1/webhook_endpoints", headers={"Stripe-Version": version})
    assert ok.status_code == 200
    assert ok.headers["Stripe-Version"] == version
    missing = sandbox_stack.raw(
        "GET", "/v1/webhook_endpoints/we_nope", headers={"Stripe-Version": version}
    )
    assert missing.status_code == 404
    assert missing.headers["Stripe-Version"] == version
    unversioned = sandbox_stack.raw("GET", "/v1/webhook_endpoints")
    assert unversioned.headers["Stripe-Version"] == stripe._api_version._ApiVersion.CURRENT


def test_error_bodies_carry_a_request_log_url(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.webhook_endpoints.retrieve("we_missing")
    error = missing.value.json_body["error"]
    request_id = missing.value.request_id
    assert error["request_log_url"].startswith(
        f"https://dashboard.stripe.com/test/logs/{request_id}?t="
    )
    assert error["request_log_url"].rpartition("=")[2].isdigit()


@pytest.mark.parametrize("param", ["limit", "starting_after", "ending_before"])
def test_retrieve_endpoints_refuse_list_parameters(sandbox_stack: SandboxStack, param: str) -> None:
    client = sandbox_stack.sdk()
    hook = _hook(client)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.retrieve(hook.id, {param: "1"})  # type: ignore[arg-type]
    assert info.value.user_message == f"Received unknown parameter: {param}"
    assert info.value.code == "parameter_unknown"
    assert client.v1.webhook_endpoints.list({"limit": 1}).data[0].id == hook.id
    # nor do the GETs that are not lists: a singleton and a computed answer
    for path in ("/v1/tax/settings", "/v1/crypto/onramp/quotes"):
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.raw_request("get", path, **{param: "1"})
        assert info.value.code == "parameter_unknown" and info.value.param == param
