"""The admin listener: health, readiness, the token check and the admin endpoints, over
real sockets with the gateway in front of the fake Stripe hosts (and a real Redis)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.keys import ADMIN_URLS, GENERATIONS
from gateway.serve.admin import masked_config
from tests.conftest import RedisServer
from tests.helpers import (
    ANALYTICS_KEY,
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    ENVIRON,
    Stack,
    default_teams,
    digest,
    free_port,
    until_closed,
)

ADMIN_TOKEN = "adm_test_token_00000000000000001"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CUSTOMER_ID = "cus_1Nadmin000001"


def _start(stack: Stack, *, token: bool = True, **overrides: Any) -> str:
    admin: dict[str, Any] = {"port": free_port()}
    if token:
        admin["token_sha256"] = digest(ADMIN_TOKEN)
    stack.start_gateway(admin=admin, **overrides)
    return stack.admin_url


def _client(stack: Stack) -> stripe.StripeClient:
    return stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": stack.gateway_url}, max_network_retries=0
    )


def _error_of(response: requests.Response) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"type", "message"}
    return error


# ------------------------------------------------------------------ the listener


def test_no_admin_listener_without_a_port(stack: Stack) -> None:
    stack.start_gateway()
    assert stack.app is not None and stack.app[ADMIN_URLS] == []
    # the public listener keeps its own /healthz
    assert requests.get(stack.gateway_url + "/healthz", timeout=5).json()["status"] == "ok"


def test_admin_listener_is_on_its_own_port(stack: Stack) -> None:
    admin = _start(stack)
    assert admin != stack.gateway_url
    assert requests.get(admin + "/healthz", timeout=5).json()["status"] == "ok"
    assert requests.get(stack.gateway_url + "/healthz", timeout=5).json()["status"] == "ok"
    # admin paths are not on the public listener: there they are unknown gateway paths
    public = requests.get(stack.gateway_url + "/admin/teams", headers=AUTH, timeout=5)
    assert public.status_code == 404 and _error_of(public)["code"] == "unrecognized_url"


def test_admin_listener_closes_with_the_gateway(stack: Stack) -> None:
    admin = _start(stack)
    stack.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(admin + "/healthz", timeout=5)


# ------------------------------------------------------------------ readiness


def test_ready_when_config_and_upstream_session_are(stack: Stack) -> None:
    admin = _start(stack)
    response = requests.get(admin + "/readyz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"config": True, "upstream_session": True},
    }


def test_readyz_checks_redis_and_answers_503_naming_it_when_it_is_gone(
    stack: Stack, redis_server: RedisServer
) -> None:
    admin = _start(
        stack,
        plugins={
            "cache": {"backend": "redis", "redis_url": redis_server.url, "redis_timeout": 5.0},
            "rate_limit": {
                "backend": "redis",
                "redis_url": redis_server.url,
                "redis_timeout": 5.0,
                "default": {"read": {"rate": 100}},
            },
        },
    )
    ready = requests.get(admin + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "config": True,
        "upstream_session": True,
        "cache_redis": True,
        "rate_limit_redis": True,
    }
    redis_server.kill()
    down = requests.get(admin + "/readyz", timeout=10)
    assert down.status_code == 503
    body = down.json()
    assert body["status"] == "not_ready"
    assert body["not_ready"] == ["cache_redis", "rate_limit_redis"]
    assert body["checks"]["upstream_session"] is True
    # liveness is not readiness
    assert requests.get(admin + "/healthz", timeout=5).status_code == 200


# ------------------------------------------------------------------ the token


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong_token_000000000000000001"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": ADMIN_TOKEN},
    ],
    ids=["none", "wrong", "not-bearer", "empty", "no-scheme"],
)
def test_admin_endpoints_refuse_without_the_token(stack: Stack, headers: dict[str, str]) -> None:
    admin = _start(stack)
    for method, path in (
        ("GET", "/admin/teams"),
        ("GET", "/admin/config"),
        ("POST", "/admin/cache/purge"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/nothing-here"),
    ):
        response = requests.request(method, admin + path, headers=headers, timeout=5)
        assert response.status_code == 401, (method, path)
        error = _error_of(response)
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "admin_unauthorized"
        assert response.headers["Request-Id"].startswith("gwreq_")


def test_without_a_configured_digest_every_token_is_refused(stack: Stack) -> None:
    admin = _start(stack, token=False)
    assert requests.get(admin + "/admin/teams", headers=AUTH, timeout=5).status_code == 401
    # the open endpoints stay open
    assert requests.get(admin + "/metrics", timeout=5).status_code == 200
    assert requests.get(admin + "/readyz", timeout=5).status_code == 200


def test_unknown_admin_paths_and_methods_are_json_errors(stack: Stack) -> None:
    admin = _start(stack)
    missing = requests.get(admin + "/nothing", timeout=5)
    assert missing.status_code == 404 and _error_of(missing)["type"] == "invalid_request_error"
    wrong = requests.get(admin + "/admin/cache/purge", headers=AUTH, timeout=5)
    assert wrong.status_code == 405 and "GET" in _error_of(wrong)["message"]


# ------------------------------------------------------------------ cache purge


def test_purge_drops_every_cached_variant_of_an_object(stack: Stack) -> None:
    admin = _start(stack)
    client = _client(stack)
    client.v1.customers.retrieve(CUSTOMER_ID)
    client.v1.customers.retrieve(CUSTOMER_ID, {"expand": ["default_source"]})
    hit = client.v1.customers.retrieve(CUSTOMER_ID)
    assert hit.last_response.headers["X-Cache"] == "HIT"

    response = requests.post(
        admin + "/admin/cache/purge", data={"object_id": CUSTOMER_ID}, headers=AUTH, timeout=5
    )
    assert response.status_code == 200
    assert response.json() == {"object": "cache_purge", "object_id": CUSTOMER_ID, "purged": 2}
    again = client.v1.customers.retrieve(CUSTOMER_ID)
    assert again.last_response.headers["X-Cache"] == "MISS"
    assert stack.upstreams["api"].count("GET", f"/v1/customers/{CUSTOMER_ID}") == 3


def test_purge_takes_json_and_answers_zero_for_nothing_cached(stack: Stack) -> None:
    admin = _start(stack)
    response = requests.post(
        admin + "/admin/cache/purge", json={"object_id": "cus_1Nnothing00001"}, headers=AUTH
    )
    assert response.status_code == 200 and response.json()["purged"] == 0


@pytest.mark.parametrize(
    ("data", "code"),
    [({}, "parameter_missing"), ({"object_id": "../etc"}, "parameter_invalid")],
)
def test_purge_refuses_a_missing_or_malformed_id(
    stack: Stack, data: dict[str, str], code: str
) -> None:
    admin = _start(stack)
    response = requests.post(admin + "/admin/cache/purge", data=data, headers=AUTH, timeout=5)
    assert response.status_code == 400 and _error_of(response)["code"] == code


def test_purge_without_the_cache_plugin(stack: Stack) -> None:
    admin = _start(stack, plugins={"disable": ["cache"]})
    response = requests.post(
        admin + "/admin/cache/purge", data={"object_id": CUSTOMER_ID}, headers=AUTH, timeout=5
    )
    # the route is the cache plugin's own: without the plugin there is no such URL
    assert response.status_code == 404
    assert _error_of(response)["message"].startswith("Unrecognized admin URL")


# ------------------------------------------------------------------ teams and config


def test_teams_show_rules_accounts_digest_prefixes_and_rate_limit_levels(stack: Stack) -> None:
    admin = _start(
        stack,
        plugins={"rate_limit": {"teams": {"billing": {"read": {"rate": 1, "burst": 5}}}}},
    )
    client = _client(stack)
    for _ in range(3):
        client.v1.customers.list()
    response = requests.get(admin + "/admin/teams", headers=AUTH, timeout=5)
    assert response.status_code == 200
    teams = {t["name"]: t for t in response.json()["data"]}
    assert list(teams) == ["billing", "analytics", "direct"]
    analytics = teams["analytics"]
    assert analytics["allow"][0] == "GET /v1/sigma/**"
    assert analytics["stripe_accounts"] == ["acct_allowed000001"]
    assert analytics["key_sha256_prefixes"] == [digest(ANALYTICS_KEY)[:12] + "…"]
    assert analytics["upstream_key"] == "env"
    assert teams["direct"]["upstream_key"] == "passthrough"
    billing = teams["billing"]["rate_limit"]
    assert billing["limited"] is True and billing["backend"] == "memory"
    (read,) = billing["limits"]
    assert read["name"] == "read" and (read["rate"], read["burst"]) == (1.0, 5)
    assert 1 <= read["remaining"] <= 3  # 3 spent of 5; time refills at most one meanwhile
    unlimited = teams["analytics"]["rate_limit"]
    assert unlimited["limited"] is False and unlimited["limits"] == []
    # no whole digest and no key anywhere
    text = response.text
    for key in (BILLING_KEY, ANALYTICS_KEY, BILLING_UPSTREAM_KEY):
        assert key not in text and digest(key) not in text


def test_config_is_shown_with_secrets_masked(stack: Stack) -> None:
    admin = _start(stack)
    response = requests.get(admin + "/admin/config", headers=AUTH, timeout=5)
    assert response.status_code == 200
    config = response.json()
    assert config["admin"]["token_sha256"] == digest(ADMIN_TOKEN)[:12] + "…"
    assert config["upstream"]["api"] == stack.upstream_urls["api"]
    billing = config["teams"][0]
    assert billing["name"] == "billing" and "upstream_key" not in billing
    assert billing["upstream_key_env"] == "BILLING_STRIPE_KEY"
    assert billing["key_sha256"] == [digest(BILLING_KEY)[:12] + "…"]
    text = response.text
    assert BILLING_UPSTREAM_KEY not in text and digest(BILLING_KEY) not in text
    assert digest(ADMIN_TOKEN) not in text


def test_masked_config_hides_url_passwords_and_secret_looking_keys() -> None:
    config = parse_config(
        {
            "upstream": {"api": "http://user:hunter2@127.0.0.1:9"},
            "plugins": {
                "cache": {"backend": "redis", "redis_url_env": "CACHE_REDIS", "key_prefix": "x"},
                "redaction": {"mask": "hmac", "hmac_key_env": "LOG_KEY"},
            },
        },
        environ={**ENVIRON, "CACHE_REDIS": "redis://:pw@h:1", "LOG_KEY": "k" * 16},
    )
    data = masked_config(config)
    text = json.dumps(data)
    assert "hunter2" not in text and "pw@" not in text
    assert data["upstream"]["api"] == "http://[masked]@127.0.0.1:9"
    # names of variables and prefixes are not secrets
    assert data["plugins"]["cache"]["redis_url_env"] == "CACHE_REDIS"
    assert data["plugins"]["cache"]["key_prefix"] == "x"
    assert data["plugins"]["redaction"]["hmac_key_env"] == "LOG_KEY"
    assert masked_config(parse_config({"plugins": {"x": {"api_key": "s"}}}))["plugins"]["x"] == {
        "api_key": "[masked]"
    }


# ------------------------------------------------------------------ reload


def test_reload_swaps_the_config_or_keeps_it_with_the_reason(stack: Stack) -> None:
    admin_table: dict[str, Any] = {"port": free_port(), "token_sha256": digest(ADMIN_TOKEN)}
    stack.start_gateway(admin=admin_table)
    admin = stack.admin_url
    customers = f"{stack.gateway_url}/v1/customers"
    assert requests.get(customers, auth=(ANALYTICS_KEY, ""), timeout=5).status_code == 403
    # the file now has the billing team only
    stack._next_data = stack.gateway_data(
        admin=admin_table, teams=[t for t in default_teams() if t["name"] == "billing"]
    )
    response = requests.post(admin + "/admin/reload", headers=AUTH, timeout=5)
    assert response.status_code == 200
    answer = response.json()
    assert (answer["reloaded"], answer["generation"], answer["error"]) == (True, 2, None)
    assert requests.get(customers, auth=(ANALYTICS_KEY, ""), timeout=5).status_code == 401
    assert requests.get(customers, auth=(BILLING_KEY, ""), timeout=5).status_code == 200
    # an invalid file: 400 with the key path and reason; the running config stays
    stack._next_data = stack.gateway_data(
        admin=admin_table, teams=[{"name": "billing", "key_sha256": ["not-hex"]}]
    )
    response = requests.post(admin + "/admin/reload", headers=AUTH, timeout=5)
    assert response.status_code == 400
    error = _error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "config_invalid")
    assert "teams[0].key_sha256" in error["message"]
    assert requests.get(customers, auth=(BILLING_KEY, ""), timeout=5).status_code == 200
    assert requests.post(admin + "/admin/reload", timeout=5).status_code == 401


def test_a_reload_rotates_the_admin_token_at_once(stack: Stack) -> None:
    admin_table: dict[str, Any] = {"port": free_port(), "token_sha256": digest(ADMIN_TOKEN)}
    stack.start_gateway(admin=admin_table)
    teams = stack.admin_url + "/admin/teams"
    new_token = "adm_test_token_rotated000000001"
    assert requests.get(teams, headers=AUTH, timeout=5).status_code == 200
    answer = stack.reload(admin={**admin_table, "token_sha256": digest(new_token)})
    assert answer["reloaded"] is True and answer["not_reloaded"] == []
    assert requests.get(teams, headers=AUTH, timeout=5).status_code == 401  # revoked
    rotated = {"Authorization": f"Bearer {new_token}"}
    assert requests.get(teams, headers=rotated, timeout=5).status_code == 200
    # the listener's own address stays: a warning names it
    moved = stack.reload(admin={**admin_table, "port": free_port()})
    assert moved["not_reloaded"] == ["admin.port"]
    assert requests.get(teams, headers=AUTH, timeout=5).status_code == 200


def test_a_non_utf8_token_is_refused_not_a_server_error(stack: Stack) -> None:
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(_start(stack))
    with socket.create_connection((url.hostname, url.port), timeout=5) as conn:
        conn.sendall(
            b"GET /admin/teams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Connection: close\r\n\r\n"
        )
        head = conn.recv(65536).split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 401"), head


# ------------------------------------------------------------------ ambiguous headers

WRONG = "Authorization: Bearer adm_test_token_wrong0000000001\r\n"
RIGHT = f"Authorization: Bearer {ADMIN_TOKEN}\r\n"


def _generation(stack: Stack) -> int:
    assert stack.app is not None
    return stack.app[GENERATIONS].current.number


def _assert_refused(answer: tuple[int, dict[str, str], bytes], named: str) -> None:
    status, headers, body = answer
    assert status == 400, body
    assert headers["connection"].lower() == "close"
    assert headers["request-id"].startswith("gwreq_")
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_header")
    assert named in error["message"]


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        (RIGHT + RIGHT, "Authorization"),
        (RIGHT + WRONG, "Authorization"),  # which token is checked would be a guess
        (WRONG + RIGHT, "Authorization"),
        (RIGHT + "Connection: keep-alive, Authorization\r\n", "Authorization"),
        (RIGHT + "X-Stripe-Gateway-Fanout: 1\r\nX-Stripe-Gateway-Fanout: 1\r\n", "Fanout"),
        (RIGHT + "Connection: X-Stripe-Gateway-Fanout\r\nX-Stripe-Gateway-Fanout: 1\r\n", "Fanout"),
        (RIGHT + "Stripe-Account: acct_1\r\nStripe-Account: acct_2\r\n", "Stripe-Account"),
    ],
)
def test_ambiguous_headers_are_refused_before_an_admin_action(
    stack: Stack, headers: str, named: str
) -> None:
    admin = _start(stack)
    assert stack.config is not None
    stack._next_data = stack.gateway_data(admin=stack.config.admin.model_dump())
    request = f"POST /admin/reload HTTP/1.1\r\nHost: admin\r\n{headers}Content-Length: 0\r\n\r\n"
    _assert_refused(until_closed(admin, request.encode()), named)
    assert _generation(stack) == 1  # not reloaded
    # the same request with its headers once each is served
    response = requests.post(admin + "/admin/reload", headers=AUTH, timeout=5)
    assert response.status_code == 200, response.text
    assert _generation(stack) == 2


@pytest.mark.parametrize("listener", ["admin", "public"])
@pytest.mark.parametrize(
    ("headers", "named"),
    [
        (RIGHT + RIGHT, "Authorization"),
        ("Idempotency-Key: a\r\nIdempotency-Key: b\r\n", "Idempotency-Key"),
        ("Stripe-Version: a\r\nstripe-version: a\r\n", "Stripe-Version"),
        ("Connection: Stripe-Account\r\nStripe-Account: acct_1\r\n", "Stripe-Account"),
    ],
)
def test_healthz_refuses_ambiguous_headers_on_either_listener(
    stack: Stack, listener: str, headers: str, named: str
) -> None:
    admin = _start(stack)
    url = admin if listener == "admin" else stack.gateway_url
    request = f"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\n{headers}\r\n"
    if "Connection:" in headers:  # one Connection header, naming both
        request = request.replace("Connection: keep-alive\r\n", "")
    _assert_refused(until_closed(url, request.encode()), named)
    assert requests.get(url + "/healthz", headers=AUTH, timeout=5).json()["status"] == "ok"


@given(
    others=st.lists(
        st.sampled_from(
            [
                "Accept: */*\r\n",
                "User-Agent: curl/8\r\n",
                "Content-Type: application/x-www-form-urlencoded\r\n",
                "Stripe-Version: 2024-06-20\r\n",
                "Connection: keep-alive\r\n",
            ]
        ),
        max_size=4,
        unique=True,
    ),
    tokens=st.lists(
        st.sampled_from([RIGHT, WRONG, RIGHT.lower(), RIGHT.upper()[:15] + RIGHT[15:]]),
        min_size=2,
        max_size=3,
    ),
    at=st.integers(min_value=0, max_value=8),
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_two_authorization_headers_never_reach_an_admin_action(
    stack: Stack, others: list[str], tokens: list[str], at: int
) -> None:
    # with the right token in every copy or in one, in any case, among any other headers:
    # refused before the token is checked, and nothing reloaded
    if stack.app is None:  # one gateway for every example
        _start(stack)
        assert stack.config is not None
        stack._next_data = stack.gateway_data(admin=stack.config.admin.model_dump())
    lines = [*others]
    for token in tokens:
        lines.insert(at % (len(lines) + 1), token)
    request = (
        f"POST /admin/reload HTTP/1.1\r\nHost: admin\r\n{''.join(lines)}Content-Length: 0\r\n\r\n"
    )
    _assert_refused(until_closed(stack.admin_url, request.encode()), "Authorization")
    assert _generation(stack) == 1


def test_reuse_port_lets_worker_processes_share_the_admin_port(stack: Stack) -> None:
    from gateway.app import create_app
    from tests.helpers import start_app

    port = free_port()
    config = parse_config(
        {"upstream": stack.upstream_urls, "admin": {"port": port}}, environ=ENVIRON
    )
    apps = [create_app(config, reuse_port=True) for _ in range(2)]
    served = [stack.loop.run(start_app(app, gateway=True)) for app in apps]
    try:
        for app in apps:
            assert app[ADMIN_URLS] == [f"http://127.0.0.1:{port}"]
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        for s in served:
            stack.loop.run(s.runner.cleanup())
