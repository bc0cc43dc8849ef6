"""The audit plugin: one JSON line per request with everything an operator needs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.host import PluginHost
from gateway.settings import validate_settings
from plugins.audit import AuditRoute, AuditSettings
from tests.cli_helpers import wait_until
from tests.fake_stripe import WEBHOOK_SECRET
from tests.helpers import (
    ANALYTICS_KEY,
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    ENVIRON,
    Stack,
    complete_lines,
    raw_request,
)
from tests.serving import GatewayConfigFile, get, serve_gateway, wait_for_events


def test_one_line_per_request_with_the_documented_fields(gateway: Stack) -> None:
    client = stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": gateway.gateway_url}, max_network_retries=0
    )
    client.v1.tax.calculations.retrieve(
        "taxcalc_1Nabcdefghijk", options={"stripe_account": "acct_1Nabcdefghijk"}
    )
    client.v1.customers.create({"email": "x@example.com"}, options={"idempotency_key": "idem-1"})
    lines = gateway.audit_lines(2)
    assert len(lines) == 2
    first, second = lines
    # the gateway's own fields of a fixed shape first, then the contributed ones, then the rest
    head = ["timestamp", "team", "method", "livemode", "status", "outcome", "upstream"]
    head += ["duration_ms", "upstream_ms", "attempts", "bytes_in", "bytes_out", "event", "level"]
    rest = ["request_id", "path", "object_id", "stripe_account", "upstream_request_id"]
    rest += ["idempotency_key", "client", "stripe_version", "sdk", "sdk_version", "error"]
    assert list(first) == [*head, "cache", "rate_limit", *rest, "params"]
    assert first["event"] == "request"
    assert first["timestamp"].endswith("Z")
    assert first["request_id"].startswith("gwreq_")
    assert first["team"] == "billing"
    assert first["method"] == "GET"
    assert first["path"] == "/v1/tax/calculations/taxcalc_1Nabcdefghijk"
    assert first["object_id"] == "taxcalc_1Nabcdefghijk"
    assert first["stripe_account"] == "acct_1Nabcdefghijk"
    assert first["livemode"] is False
    assert first["status"] == 200
    assert first["upstream"] == "api"
    assert first["upstream_request_id"].startswith("req_fake")
    assert first["duration_ms"] >= first["upstream_ms"] > 0
    assert first["bytes_in"] == 0 and first["bytes_out"] > 0
    assert first["client"] == "127.0.0.1"
    assert first["cache"] == "MISS" and first["rate_limit"] is None and first["error"] is None
    assert second["method"] == "POST" and second["object_id"] is None
    # the key sent to Stripe (namespaced per team by the idempotency plugin) and the client's
    assert second["idempotency_key"] == "billing:idem-1"
    assert second["idempotency_key_client"] == "idem-1"
    assert second["bytes_in"] == len("email=x%40example.com")


def test_the_line_names_the_sdk_and_api_version_and_starts_with_the_timestamp(
    gateway: Stack,
) -> None:
    client = stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": gateway.gateway_url}, max_network_retries=0
    )
    client.v1.customers.list()
    requests.get(
        f"{gateway.gateway_url}/v1/customers",
        auth=(BILLING_KEY, ""),
        headers={"Stripe-Version": "2024-06-20"},
        timeout=5,
    )
    requests.get(f"{gateway.gateway_url}/v1/customers", timeout=5)  # refused: no key
    by_sdk, by_requests, refused = gateway.audit_lines(3)
    assert by_sdk["sdk"] == "python" and by_sdk["sdk_version"] == stripe.VERSION
    assert by_sdk["stripe_version"] == stripe.api_version
    assert by_requests["sdk"] is None and by_requests["sdk_version"] is None
    assert by_requests["stripe_version"] == "2024-06-20"
    assert refused["status"] == 401 and refused["sdk"] is None
    for line in complete_lines(gateway.audit_path.read_text()):
        assert next(iter(json.loads(line))) == "timestamp", line


HOSTILE_AGENTS = [
    "A" * 7000,
    '{"lang": "python", "bindings_version": "' + BILLING_KEY + '"}',
    f"Stripe/v1 PythonBindings/{BILLING_KEY}",
    f'Stripe/v1 {BILLING_KEY}Bindings/1.0 "}}, "team": "other", "x": {{"',
    '\\u0000\\n\\r{}[]"",',
    f"curl/8.5.0 {BILLING_UPSTREAM_KEY}",
]


def test_hostile_client_headers_never_reach_the_line_as_sent(gateway: Stack) -> None:
    host = gateway.gateway_url.removeprefix("http://")
    for agent in HOSTILE_AGENTS:
        request = (
            f"GET /v1/customers HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {BILLING_KEY}\r\n"
            f"User-Agent: {agent}\r\nX-Stripe-Client-User-Agent: {agent}\r\n"
            f"Stripe-Version: {agent}\r\nConnection: close\r\n\r\n"
        )
        assert raw_request(gateway.gateway_url, request.encode()).status == 200
    lines = gateway.audit_lines(len(HOSTILE_AGENTS))
    assert len(lines) == len(HOSTILE_AGENTS)
    text = gateway.audit_path.read_text()
    assert text.count("\n") == len(HOSTILE_AGENTS)
    assert BILLING_KEY not in text and BILLING_UPSTREAM_KEY not in text and "AAAA" not in text
    for line in lines:
        assert line["team"] == "billing" and line["stripe_version"] == "[invalid]"
        assert line["sdk"] in (None, "python", "other") and line["sdk_version"] is None


def test_refused_requests_are_audited_too(gateway: Stack) -> None:
    requests.get(f"{gateway.gateway_url}/v1/customers", timeout=5)
    requests.post(f"{gateway.gateway_url}/v1/customers", auth=(ANALYTICS_KEY, ""), timeout=5)
    no_key, refused = gateway.audit_lines(2)
    assert no_key["status"] == 401 and no_key["team"] is None and no_key["error"] == "refused"
    assert refused["status"] == 403 and refused["team"] == "analytics"
    assert refused["upstream_ms"] is None


def test_query_parameters_only_redacted_and_never_the_authorization(gateway: Stack) -> None:
    requests.get(
        f"{gateway.gateway_url}/v1/customers?email=secret%40example.com&limit=3",
        auth=(BILLING_KEY, ""),
        timeout=5,
    )
    (line,) = gateway.audit_lines(1)
    assert line["params"] == {"email": "[redacted]", "limit": "3"}
    text = gateway.audit_path.read_text()
    assert "secret" not in text and "Authorization" not in text and "Bearer" not in text
    assert BILLING_KEY not in text and BILLING_UPSTREAM_KEY not in text


def test_a_search_query_with_an_address_reads_as_one_without(gateway: Stack) -> None:
    client = stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": gateway.gateway_url}, max_network_retries=0
    )
    client.v1.customers.search({"query": "email:'jenny+vip@example.com' AND status:'active'"})
    client.v1.customers.search({"query": "metadata['ref']:'abc' AND status:'active'"})
    masked, plain = gateway.audit_lines(2)
    assert masked["params"] == {"query": "email:'[redacted]' AND status:'active'"}
    assert plain["params"] == {"query": "metadata['ref']:'abc' AND status:'active'"}
    text = gateway.audit_path.read_text()
    assert "jenny" not in text and "example.com" not in text


def test_audit_sink_failure_fails_closed(stack: Stack) -> None:
    stack.start_gateway(plugins={"audit": {"path": "/dev/full"}})
    first = requests.get(f"{stack.gateway_url}/v1/customers", auth=(BILLING_KEY, ""), timeout=5)
    assert first.status_code == 200  # already answered when its line failed
    second = requests.get(f"{stack.gateway_url}/v1/customers", auth=(BILLING_KEY, ""), timeout=5)
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "audit_unavailable"
    assert second.headers["Stripe-Should-Retry"] == "true"
    assert len(stack.upstreams["api"].received) == 1
    # the records that could not be written went to the error log instead: the first
    # request's (200), then the refused one's (503), written just after its answer
    failed = stack.error_events("audit_write_failed", at_least=2)
    assert [record["status"] for record in failed] == [200, 503]
    assert all(record["level"] == "error" and record["reason"] for record in failed)


# --------------------------------------------------------------------------- rotation

#: generous: the suite runs on two busy cores
DEADLINE = 15.0


def _get(stack: Stack, tag: str) -> requests.Response:
    """``GET /v1/customers?n=<tag>``: the tag is in the audit line's ``params``."""
    return requests.get(
        f"{stack.gateway_url}/v1/customers?n={tag}", auth=(BILLING_KEY, ""), timeout=10
    )


def _tags(path: Path) -> list[str]:
    """The ``n`` parameter of each line of the audit file at ``path`` (none: no file)."""
    if not path.exists():
        return []
    # a worker may be writing the last line as it is read: only whole lines count
    lines = [json.loads(line) for line in complete_lines(path.read_text()) if line]
    return [line["params"]["n"] for line in lines]


def _wait_tags(path: Path, last: str) -> list[str]:
    """The file's tags once its line tagged ``last`` is there."""
    wait_until(lambda: last in _tags(path), DEADLINE, f"{last!r} never reached {path}")
    return _tags(path)


def test_a_removed_file_is_recreated_and_gets_every_later_line(stack: Stack) -> None:
    path = stack.audit_path
    stack.start_gateway(plugins={"audit": {"path": str(path), "reopen_check_seconds": 0.05}})
    for i in range(3):
        assert _get(stack, f"before{i}").status_code == 200
    assert _wait_tags(path, "before2") == ["before0", "before1", "before2"]
    path.unlink()
    # until the check notices, lines go to the deleted file (documented); traffic goes on
    gap = 0

    def recreated() -> bool:
        nonlocal gap
        assert _get(stack, f"gap{gap}").status_code == 200
        gap += 1
        return path.exists()

    wait_until(recreated, DEADLINE, "the audit file was never recreated")
    after = [f"after{i}" for i in range(5)]
    for tag in after:
        assert _get(stack, tag).status_code == 200
    tags = _wait_tags(path, after[-1])
    # every line from the reopen on is in the new file (a gap line still queued then, too)
    assert [t for t in tags if t.startswith("after")] == after
    assert not [t for t in tags if t.startswith("before")]
    (reopened,) = stack.error_events("audit_reopened")
    assert reopened["cause"] == "missing" and reopened["path"] == str(path)
    assert not stack.error_events("audit_write_failed", timeout=0)


def _no_timer(config: GatewayConfigFile, **write: Any) -> None:
    """Write the config with the reopen timer off: only SIGUSR1 reopens the file."""
    config.write(**write)
    text = config.path.read_text()
    assert "[plugins.audit]\n" in text
    config.path.write_text(
        text.replace("[plugins.audit]\n", "[plugins.audit]\nreopen_check_seconds = 0\n")
    )


CUSTOMER = "/v1/customers/cus_Rotation00001"


def test_rename_then_sigusr1_loses_no_line(tmp_path: Path, fake_api: tuple[Any, Any]) -> None:
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    _no_timer(config)
    rotated = config.audit.with_name("audit.jsonl.1")
    with serve_gateway(config.path) as gw:
        for i in range(5):
            assert get(gw, f"{CUSTOMER}?n=old{i}", BILLING_KEY)[0] == 200
        _wait_tags(config.audit, "old4")
        os.rename(config.audit, rotated)  # logrotate's default
        # between the rename and the signal, lines still go to the renamed file
        assert get(gw, f"{CUSTOMER}?n=gap", BILLING_KEY)[0] == 200
        _wait_tags(rotated, "gap")
        gw.proc.send_signal(signal.SIGUSR1)
        (reopened,) = wait_for_events(gw, "audit_reopened", 1, timeout=DEADLINE)
        assert reopened["cause"] == "signal"
        assert config.audit.exists()
        for i in range(5):
            assert get(gw, f"{CUSTOMER}?n=new{i}", BILLING_KEY)[0] == 200
        assert _wait_tags(config.audit, "new4") == [f"new{i}" for i in range(5)]
        assert _tags(rotated) == [*(f"old{i}" for i in range(5)), "gap"]
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(DEADLINE) == 0
    assert len(_tags(rotated)) + len(_tags(config.audit)) == 11  # every request's line
    assert "Traceback" not in gw.output()


def test_sigusr1_to_the_supervisor_reaches_every_worker(
    tmp_path: Path, fake_api: tuple[Any, Any]
) -> None:
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    _no_timer(config, workers=2)
    rotated = config.audit.with_name("audit.jsonl.1")
    with serve_gateway(config.path) as gw:
        sent = 0
        for _ in range(20):  # fresh connections until both workers have served
            for _ in range(10):
                assert get(gw, f"{CUSTOMER}?n=old{sent}", BILLING_KEY)[0] == 200
                sent += 1
            lines = config.audit_lines(sent)
            if {line["worker"] for line in lines} == {0, 1}:
                break
        assert {line["worker"] for line in config.audit_lines(sent)} == {0, 1}
        os.rename(config.audit, rotated)
        gw.proc.send_signal(signal.SIGUSR1)
        reopened = wait_for_events(gw, "audit_reopened", 2, timeout=DEADLINE)
        assert sorted(r["worker"] for r in reopened) == [0, 1]
        assert all(r["cause"] == "signal" for r in reopened)
        new = [f"new{i}" for i in range(20)]
        for tag in new:
            assert get(gw, f"{CUSTOMER}?n={tag}", BILLING_KEY)[0] == 200
        assert sorted(_wait_tags(config.audit, new[-1])) == sorted(new)
        wait_until(lambda: len(_tags(config.audit)) == len(new), DEADLINE, "lines missing")
        assert sorted(_tags(rotated)) == sorted(f"old{i}" for i in range(sent))
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(DEADLINE) == 0
    assert "Traceback" not in gw.output()


def test_a_path_that_cannot_be_reopened_fails_closed_until_it_can(stack: Stack) -> None:
    logs = stack.tmp / "logs"
    logs.mkdir()
    path = logs / "audit.jsonl"
    stack.start_gateway(plugins={"audit": {"path": str(path), "reopen_check_seconds": 0.05}})
    assert _get(stack, "before").status_code == 200
    _wait_tags(path, "before")
    shutil.rmtree(logs)  # root ignores permission bits: a missing directory fails for all
    answers: list[requests.Response] = []

    def refused() -> bool:
        answers.append(_get(stack, f"gap{len(answers)}"))
        return answers[-1].status_code == 503

    wait_until(refused, DEADLINE, "requests were still served with no audit file")
    assert {r.status_code for r in answers[:-1]} <= {200}
    error = answers[-1].json()["error"]
    assert error["code"] == "audit_unavailable"
    assert answers[-1].headers["Stripe-Should-Retry"] == "true"
    (failed,) = stack.error_events("audit_reopen_failed")
    assert failed["path"] == str(path) and failed["level"] == "error"
    # the refused request's record went to the error log; nothing of it went upstream
    # (written just after its answer, maybe after records of requests served before)
    wait_until(
        lambda: any(r["status"] == 503 for r in stack.error_events("audit_write_failed")),
        DEADLINE,
        "the refused request's record never reached the error log",
    )
    upstream = len(stack.upstreams["api"].received)
    assert upstream == 1 + len(answers) - 1
    assert _get(stack, "still").status_code == 503  # still refused: not a one-off
    logs.mkdir()
    wait_until(
        lambda: _get(stack, f"back{time.monotonic_ns()}").status_code == 200,
        DEADLINE,
        "the gateway did not recover once the directory was back",
    )
    assert _get(stack, "after").status_code == 200
    assert _wait_tags(path, "after")[-1] == "after"
    assert len(stack.error_events("audit_reopen_failed")) == 1  # once per outage


# --------------------------------------------------------------------------- parameters

CARD = "4242424242424242"


def client_for(stack: Stack) -> stripe.StripeClient:
    url = stack.gateway_url
    return stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": url, "files": url}, max_network_retries=0
    )


def test_the_line_carries_the_request_parameters_nested_and_redacted(gateway: Stack) -> None:
    client_for(gateway).v1.payment_intents.create(
        {
            "amount": 2000,
            "currency": "usd",
            "payment_method_data": {
                "type": "card",
                "card": {"number": CARD, "cvc": "123", "exp_month": 12, "exp_year": 2034},
                "billing_details": {"email": "jenny@example.com", "name": "Jenny Rosen"},
            },
            "expand": ["latest_charge"],
            "metadata": {"order": "6735"},
        }
    )
    (line,) = gateway.audit_lines(1)
    assert line["params"] == {
        "amount": "2000",
        "currency": "usd",
        "payment_method_data": {
            "type": "card",
            "card": {
                "number": "…4242",
                "cvc": "[redacted]",
                "exp_month": "[redacted]",
                "exp_year": "[redacted]",
            },
            "billing_details": {"email": "[redacted]", "name": "[redacted]"},
        },
        "expand": ["latest_charge"],
        "metadata": {"order": "6735"},
    }
    assert "request_body" not in line and "response_body" not in line  # off by default
    text = gateway.audit_path.read_text()
    assert CARD not in text and "jenny" not in text and "Jenny" not in text


def test_json_bodies_are_decoded_query_first(gateway: Stack) -> None:
    body = {"amount": 500, "card": {"number": CARD, "cvc": "999"}, "note": "ok"}
    requests.post(
        f"{gateway.gateway_url}/v2/core/things?expand[]=x",
        auth=(BILLING_KEY, ""),
        json=body,
        timeout=5,
    )
    (line,) = gateway.audit_lines(1)
    assert line["params"] == {
        "expand": ["x"],
        "amount": 500,
        "card": {"number": "…4242", "cvc": "[redacted]"},
        "note": "ok",
    }


@pytest.mark.parametrize(
    ("kind", "described"),
    [
        ("multipart", "[multipart {n} bytes]"),
        ("too_large", "[body {n} bytes, not logged]"),
        ("chunked_too_large", "[body {n} bytes, not logged]"),
        ("octet_stream", "[body {n} bytes, not logged]"),
        ("bad_json", "[unparsed {n} bytes]"),
    ],
)
def test_bodies_not_decoded_are_described_never_shown(
    stack: Stack, kind: str, described: str
) -> None:
    stack.start_gateway(plugins={"audit": {"path": str(stack.audit_path), "params_max_bytes": 64}})
    secret = f"card[number]={CARD}&cvc=123&"
    url = f"{stack.gateway_url}/v1/customers"
    auth = (BILLING_KEY, "")
    if kind == "multipart":
        files = {"file": ("jenny-rosen.txt", secret.encode())}
        requests.post(url, auth=auth, files=files, data={"purpose": "x"}, timeout=5)
    elif kind == "too_large":
        requests.post(url, auth=auth, data=secret * 4, timeout=5, headers=_FORM)
    elif kind == "chunked_too_large":
        chunks = iter([secret.encode()] * 4)  # no Content-Length: copied, then dropped
        requests.post(url, auth=auth, data=chunks, timeout=5, headers=_FORM)
    elif kind == "octet_stream":
        headers = {"Content-Type": "application/octet-stream"}
        requests.post(url, auth=auth, data=secret, timeout=5, headers=headers)
    else:
        headers = {"Content-Type": "application/json"}
        requests.post(url, auth=auth, data=secret, timeout=5, headers=headers)
    (line,) = stack.audit_lines(1)
    assert line["params"] == {}
    assert line["request_body"] == described.format(n=line["bytes_in"])
    assert CARD not in stack.audit_path.read_text()


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_routes_turn_params_off_and_response_bodies_on(stack: Stack) -> None:
    stack.start_gateway(
        plugins={
            "audit": {
                "path": str(stack.audit_path),
                "routes": [
                    {"route": "POST /v1/webhook_endpoints", "response_body": True},
                    {"route": "GET /v1/customers/**", "params": False},
                ],
            }
        }
    )
    client = client_for(stack)
    created = client.v1.webhook_endpoints.create(
        {"url": "https://example.com/hook", "enabled_events": ["*"]}
    )
    assert created.secret == WEBHOOK_SECRET  # the client gets the secret, the log never
    requests.get(f"{stack.gateway_url}/v1/customers?limit=3", auth=(BILLING_KEY, ""), timeout=5)
    webhook, customers = stack.audit_lines(2)
    assert webhook["params"] == {"url": "https://example.com/hook", "enabled_events": ["*"]}
    assert webhook["response_body"]["id"] == "we_fake0000000001"
    assert webhook["response_body"]["secret"] == "[redacted]"
    assert "params" not in customers and "response_body" not in customers
    assert WEBHOOK_SECRET not in stack.audit_path.read_text()


def test_response_bodies_that_are_not_json_or_too_large_are_described(stack: Stack) -> None:
    stack.start_gateway(
        plugins={
            "audit": {
                "path": str(stack.audit_path),
                "response_body": True,
                "response_body_max_bytes": 100_000,
            }
        }
    )
    auth = (BILLING_KEY, "")
    csv = requests.get(
        f"{stack.gateway_url}/v1/files/file_1Nabcdefgh/contents?size=2000", auth=auth, timeout=5
    )
    big = requests.get(
        f"{stack.gateway_url}/v1/files/file_1Nabcdefgh/contents?size=200000", auth=auth, timeout=5
    )
    assert len(csv.content) == 2000 and len(big.content) == 200_000
    first, second = stack.audit_lines(2)
    assert first["response_body"] == "[body 2000 bytes, not logged]"
    assert second["response_body"] == "[body 200000 bytes, not logged]"


def test_response_capture_is_shared_with_the_cache(stack: Stack) -> None:
    stack.start_gateway(
        plugins={
            "audit": {"path": str(stack.audit_path), "response_body": True},
            "cache": {"max_entry_bytes": 100},
        }
    )
    url = f"{stack.gateway_url}/v1/customers/cus_1Nabcdefghijk"
    for _ in range(2):  # answers larger than the cache's limit are still not cached
        response = requests.get(url, auth=(BILLING_KEY, ""), timeout=5)
        assert response.headers["X-Cache"] == "MISS"
    lines = stack.audit_lines(2)
    assert [line["response_body"]["id"] for line in lines] == ["cus_1Nabcdefghijk"] * 2


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_every_key(tmp_path: Path) -> None:
    assert validate_settings(AuditSettings, {}) == AuditSettings()
    default = AuditSettings()
    assert default.default == AuditRoute(params=True, response_body=False)
    assert default.params_max_bytes == 16384 and default.response_body_max_bytes == 65536
    assert default.reopen_check_seconds == 1.0
    assert validate_settings(AuditSettings, {"reopen_check_seconds": 0}).reopen_check_seconds == 0.0
    settings = validate_settings(
        AuditSettings,
        {
            "path": str(tmp_path / "audit.jsonl"),
            "params": False,
            "params_max_bytes": 1024,
            "response_body": True,
            "response_body_max_bytes": 2048,
            "routes": [
                {"route": "POST /v1/forwarding/**", "params": True},
                {"route": "* /v1/identity/**", "response_body": False},
            ],
        },
    )
    assert settings.file == tmp_path / "audit.jsonl"
    assert settings.route("POST", "/v1/forwarding/requests") == AuditRoute(True, True)
    assert settings.route("GET", "/v1/identity/verification_sessions") == AuditRoute(False, False)
    assert settings.route("GET", "/v1/customers") == AuditRoute(False, True)


@pytest.mark.parametrize(
    ("table", "path", "reason"),
    [
        ({"colour": "red"}, "colour", "unknown key"),
        ({"params": "yes"}, "params", "true or false"),
        ({"response_body": 1}, "response_body", "true or false"),
        ({"params_max_bytes": 0}, "params_max_bytes", "between 1 and 1048576"),
        ({"params_max_bytes": True}, "params_max_bytes", "whole number"),
        ({"response_body_max_bytes": 1 << 21}, "response_body_max_bytes", "between 1 and"),
        ({"routes": {"route": "GET /v1/**"}}, "routes", "must be a list"),
        ({"routes": ["GET /v1/**"]}, "routes[0]", "must be a table"),
        ({"routes": [{"params": False}]}, "routes[0].route", "is required"),
        ({"routes": [{"route": "FETCH /v1/**"}]}, "routes[0].route", "unknown method"),
        ({"routes": [{"route": "GET v1/**"}]}, "routes[0].route", "must start with '/'"),
        ({"routes": [{"route": 3}]}, "routes[0].route", "must be a string"),
        ({"routes": [{"route": "GET /v1/**", "params": "no"}]}, "routes[0].params", "true or"),
        (
            {"routes": [{"route": "GET /v1/**"}, {"route": "GET /x", "body": True}]},
            "routes[1].body",
            "unknown key",
        ),
        ({"reopen_check_seconds": -1}, "reopen_check_seconds", "between 0 and 3600"),
        ({"reopen_check_seconds": 3601}, "reopen_check_seconds", "between 0 and 3600"),
        ({"reopen_check_seconds": float("nan")}, "reopen_check_seconds", "finite number"),
        (
            {"reopen_check_seconds": True},
            "reopen_check_seconds",
            "number between 0 and 3600, not true",
        ),
        ({"reopen_check_seconds": "1"}, "reopen_check_seconds", "not a string"),
        ({"path": ""}, "path", "file path"),
        ({"path": "/nonexistent-dir/audit.jsonl"}, "path", "does not exist"),
    ],
)
def test_bad_settings_stop_start_up_with_the_key_path(
    table: dict[str, Any], path: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_settings(AuditSettings, table)
    assert info.value.path == path
    assert reason in info.value.reason


def test_the_host_prefixes_the_table_path() -> None:
    config = parse_config(
        {"plugins": {"audit": {"routes": [{"route": "GET /v1/**", "params": 1}]}}},
        environ=ENVIRON,
    )
    with pytest.raises(ConfigError) as info:
        PluginHost(config, entry_points_enabled=False)
    assert info.value.path == "plugins.audit.routes[0].params"


def test_without_redaction_start_up_warns_that_params_are_logged_as_sent(stack: Stack) -> None:
    stack.start_gateway(plugins={"disable": ["redaction"]})
    (warning,) = stack.error_events("audit_params_unredacted")
    assert warning["level"] == "warning"
