"""The auth plugin: team keys, key swap, allow rules, Stripe-Account allow-lists."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.errors import StripeErrorResponse
from gateway.testing import request_context
from plugins.auth import AuthPlugin, presented_key
from tests.helpers import (
    ANALYTICS_KEY,
    ANALYTICS_UPSTREAM_KEY,
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    Stack,
    raw_request,
    team,
)


def _get(stack: Stack, path: str, key: str, **headers: str) -> requests.Response:
    return requests.get(
        f"{stack.gateway_url}{path}",
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=5,
    )


def test_bearer_and_basic_keys_are_read_as_the_sdks_send_them() -> None:
    assert presented_key("Bearer sk_test_abc") == "sk_test_abc"
    assert presented_key("bearer   sk_test_abc  ") == "sk_test_abc"
    basic = base64.b64encode(b"gw_key_123:").decode()
    assert presented_key(f"Basic {basic}") == "gw_key_123"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Digest x", "Basic %%%", "Bearer a\tb"])
def test_malformed_authorization_is_refused_with_401(header: str | None) -> None:
    with pytest.raises(StripeErrorResponse) as info:
        presented_key(header)
    assert info.value.status == 401


def test_each_team_gets_its_own_upstream_key(gateway: Stack) -> None:
    assert _get(gateway, "/v1/customers/cus_1Nabcdefghijk", BILLING_KEY).status_code == 200
    assert (
        gateway.upstreams["api"].last().headers["Authorization"] == f"Bearer {BILLING_UPSTREAM_KEY}"
    )
    assert _get(gateway, "/v1/sigma/scheduled_query_runs", ANALYTICS_KEY).status_code == 200
    assert (
        gateway.upstreams["api"].last().headers["Authorization"]
        == f"Bearer {ANALYTICS_UPSTREAM_KEY}"
    )
    teams = [line["team"] for line in gateway.audit_lines(2)]
    assert teams == ["billing", "analytics"]


def test_upstream_key_never_reaches_the_client_or_the_logs(
    gateway: Stack, capfd: pytest.CaptureFixture[str]
) -> None:
    responses = [
        _get(gateway, "/v1/customers/cus_1Nabcdefghijk", BILLING_KEY),
        _get(gateway, "/v1/customers", ANALYTICS_KEY),  # refused by allow rules
        _get(gateway, "/v1/test_faults/stall", BILLING_KEY),  # 504
        _get(gateway, "/v1/customers", "gw_wrong_key_000000000000000000"),
    ]
    assert [r.status_code for r in responses] == [200, 403, 504, 401]
    gateway.audit_lines(4)
    assert gateway.error_events("upstream_error")  # the 504 was logged
    out, err = capfd.readouterr()
    audit = gateway.audit_path.read_text()
    errors = gateway.errors_path.read_text()
    for text in [out, err, audit, errors, *(r.text + str(r.headers) for r in responses)]:
        for secret in (BILLING_UPSTREAM_KEY, ANALYTICS_UPSTREAM_KEY, BILLING_KEY, ANALYTICS_KEY):
            assert secret not in text


def test_refusal_message_shows_at_most_the_last_four_characters(gateway: Stack) -> None:
    response = _get(gateway, "/v1/customers", "gw_secret_prefix_material_WXYZ")
    message = response.json()["error"]["message"]
    assert "WXYZ" in message
    assert "gw_secret" not in message and "material" not in message
    short = _get(gateway, "/v1/customers", "abc").json()["error"]["message"]
    assert "abc" not in short


def test_allow_rules_use_method_and_path_globs(stack: Stack) -> None:
    stack.start_gateway(
        teams=[
            team(
                "reports",
                BILLING_KEY,
                upstream_env="BILLING_STRIPE_KEY",
                allow=["GET /v1/reporting/**", "POST /v1/reporting/report_runs", "* /v1/tax/*"],
            )
        ]
    )
    cases = [
        ("GET", "/v1/reporting/report_runs/frr_1Nabcdefghijk", 200),
        ("GET", "/v1/reporting/report_types", 200),
        ("POST", "/v1/reporting/report_runs", 200),
        ("POST", "/v1/reporting/report_runs/frr_1Nabcdefghijk", 403),
        ("DELETE", "/v1/tax/registrations", 200),
        ("GET", "/v1/tax/registrations/taxreg_1Nabcdefghijk", 403),  # `*` is one segment
        ("GET", "/v1/reportingx", 403),
        ("GET", "/v1/customers", 403),
    ]
    for method, path, status in cases:
        response = requests.request(
            method, f"{stack.gateway_url}{path}", auth=(BILLING_KEY, ""), timeout=5
        )
        assert response.status_code == status, (method, path)
        if status == 403:
            assert response.json()["error"]["code"] == "route_not_allowed"


def test_stripe_account_allow_list(gateway: Stack) -> None:
    client = stripe.StripeClient(
        ANALYTICS_KEY, base_addresses={"api": gateway.gateway_url}, max_network_retries=0
    )
    client.v1.sigma.scheduled_query_runs.list()  # no Stripe-Account: the platform account
    client.v1.sigma.scheduled_query_runs.list(options={"stripe_account": "acct_allowed000001"})
    with pytest.raises(stripe.PermissionError) as info:
        client.v1.sigma.scheduled_query_runs.list(options={"stripe_account": "acct_nope00000001"})
    assert "acct_nope00000001" in str(info.value)
    assert len(gateway.upstreams["api"].received) == 2


def test_upstream_key_from_a_file(stack: Stack) -> None:
    key_file = stack.tmp / "stripe.key"
    key_file.write_text("sk_test_fromfile0000000000001\n")
    stack.start_gateway(teams=[team("filed", BILLING_KEY, upstream_key_file=str(key_file))])
    assert _get(stack, "/v1/customers", BILLING_KEY).status_code == 200
    assert (
        stack.upstreams["api"].last().headers["Authorization"]
        == "Bearer sk_test_fromfile0000000000001"
    )


def test_auth_rejects_settings_it_does_not_know(stack: Stack) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        stack.start_gateway(plugins={"audit": {}, "auth": {"mode": "open"}})
    assert info.value.path == "plugins.auth.mode"


def test_without_the_auth_plugin_the_client_key_passes_unchanged(stack: Stack) -> None:
    stack.start_gateway(plugins={"disable": ["auth"], "audit": {"path": str(stack.audit_path)}})
    response = _get(stack, "/v1/customers", "sk_test_clientown00000000000001")
    assert response.status_code == 200
    assert stack.upstreams["api"].last().headers["Authorization"] == (
        "Bearer sk_test_clientown00000000000001"
    )


def test_stripe_context_is_checked_against_the_account_allow_list(gateway: Stack) -> None:
    ok = _get(
        gateway,
        "/v1/sigma/scheduled_query_runs",
        ANALYTICS_KEY,
        **{"Stripe-Context": "acct_allowed000001"},
    )
    assert ok.status_code == 200
    refused = _get(
        gateway,
        "/v1/sigma/scheduled_query_runs",
        ANALYTICS_KEY,
        **{"Stripe-Context": "acct_allowed000001/acct_other00000001"},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "account_not_allowed"


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer gw_test_\xff\xfe", b"Bearer \xc3\x28", b"Basic " + base64.b64encode(b"\xff:")],
)
def test_a_non_utf8_key_is_a_401_not_a_plugin_failure(gateway: Stack, authorization: bytes) -> None:
    response = raw_request(
        gateway.gateway_url,
        b"GET /v1/customers HTTP/1.1\r\nHost: g\r\nAuthorization: "
        + authorization
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert response.status == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert gateway.upstreams["api"].received == []
    assert gateway.audit_lines()[-1]["status"] == 401


def test_presented_key_refuses_a_key_that_is_not_ascii() -> None:
    with pytest.raises(StripeErrorResponse) as info:
        presented_key("Bearer gw_test_\udcff")
    assert info.value.status == 401


# --------------------------------------------------------------------------- remembered keys

_KEYS = st.sampled_from([BILLING_KEY, ANALYTICS_KEY, BILLING_KEY + "x", "sk_test_unknown_0123"])
_HEADERS = st.one_of(
    st.builds(lambda key: f"Bearer {key}", _KEYS),
    st.builds(lambda key: f"bearer  {key} ", _KEYS),
    st.builds(lambda key: "Basic " + base64.b64encode(f"{key}:".encode()).decode(), _KEYS),
    st.sampled_from(["", "Bearer ", "Token abc", f"Bearer {BILLING_KEY[:-1]}"]),
)


def _configured(teams: list[dict[str, Any]]) -> AuthPlugin:
    plugin = AuthPlugin()
    plugin.gateway_configure(parse_config({"teams": teams}, environ=_UPSTREAM_ENV))
    return plugin


_UPSTREAM_ENV = {"BILLING_STRIPE_KEY": BILLING_UPSTREAM_KEY}
_TEAMS = [
    team("billing", BILLING_KEY, upstream_env="BILLING_STRIPE_KEY"),
    team("analytics", ANALYTICS_KEY),
]


def _outcome(plugin: AuthPlugin, header: str, path: str = "/v1/customers") -> tuple[Any, ...]:
    ctx = request_context("GET", path, {"Authorization": header})
    try:
        plugin.gateway_authenticate(ctx)
    except StripeErrorResponse as exc:
        return ("refused", exc.status, str(exc))
    assert ctx.team is not None
    return (ctx.team.name, ctx.upstream_key)


@settings(max_examples=150, deadline=None)
@given(headers=st.lists(_HEADERS, min_size=1, max_size=12))
def test_a_remembered_key_authenticates_exactly_as_the_first_time(headers: list[str]) -> None:
    """The plugin remembers headers that authenticated: whatever the order, each header
    gets what a plugin that never saw one before gives it (team, upstream key, refusal)."""
    remembering = _configured(_TEAMS)
    for header in headers:
        assert _outcome(remembering, header) == _outcome(_configured(_TEAMS), header)
    # only headers that authenticated are remembered: unknown keys cannot fill it
    assert all(_outcome(_configured(_TEAMS), h)[0] != "refused" for h in remembering._known)


def test_a_remembered_key_is_forgotten_when_the_teams_change() -> None:
    plugin = _configured(_TEAMS)
    header = f"Bearer {ANALYTICS_KEY}"
    assert _outcome(plugin, header) == ("analytics", ANALYTICS_KEY)
    # the analytics team is removed (a reload configures the plugin again)
    plugin.gateway_configure(parse_config({"teams": _TEAMS[:1]}, environ=_UPSTREAM_ENV))
    assert _outcome(plugin, header)[:2] == ("refused", 401)


def test_a_remembered_key_still_meets_the_allow_rules() -> None:
    teams = [team("billing", BILLING_KEY, allow=["GET /v1/customers*"])]
    plugin = _configured(teams)
    header = f"Bearer {BILLING_KEY}"
    assert _outcome(plugin, header) == ("billing", BILLING_KEY)
    assert _outcome(plugin, header, "/v1/charges")[:2] == ("refused", 403)
    assert _outcome(plugin, header)[0] == "billing"
