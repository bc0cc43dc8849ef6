"""Faults on demand, set through the control endpoint and seen through the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
import stripe

from sandbox.faults import Faults, control_app
from tests.helpers import start_app
from tests.sandbox.conftest import SandboxStack


@pytest.fixture
def control(sandbox_stack: SandboxStack) -> Iterator[str]:
    sandbox = sandbox_stack.sandbox
    served = sandbox_stack.loop.run(start_app(control_app(sandbox.faults, sandbox.reset)))
    yield served.url
    sandbox_stack.loop.run(served.runner.cleanup())


def _set(control: str, **faults: float) -> None:
    response = requests.post(f"{control}/faults", json=faults, timeout=5)
    assert response.status_code == 200, response.text


def test_control_endpoint_shows_changes_and_clears(control: str) -> None:
    assert requests.get(f"{control}/faults", timeout=5).json()["error_rate"] == 0
    _set(control, error_rate=0.25, latency_ms=5)
    shown = requests.get(f"{control}/faults", timeout=5).json()
    assert shown["error_rate"] == 0.25 and shown["latency_ms"] == 5
    bad = requests.post(f"{control}/faults", json={"error_rate": 2}, timeout=5)
    assert bad.status_code == 400 and "between 0 and 1" in bad.json()["error"]
    unknown = requests.post(f"{control}/faults", json={"explode": 1}, timeout=5)
    assert unknown.status_code == 400
    cleared = requests.delete(f"{control}/faults", timeout=5).json()
    assert all(value == 0 for value in cleared.values())


def test_injected_500_is_retryable_api_error(sandbox_stack: SandboxStack, control: str) -> None:
    _set(control, error_rate=1)
    with pytest.raises(stripe.APIError) as info:
        sandbox_stack.sdk().v1.webhook_endpoints.list()
    assert info.value.http_status == 500
    assert info.value.headers["Stripe-Should-Retry"] == "true"
    assert info.value.request_id is not None and info.value.request_id.startswith("req_")


def test_injected_429_is_rate_limit_error(sandbox_stack: SandboxStack, control: str) -> None:
    _set(control, rate_limit_rate=1)
    with pytest.raises(stripe.RateLimitError) as info:
        sandbox_stack.sdk().v1.webhook_endpoints.list()
    assert info.value.json_body["error"]["code"] == "rate_limit"  # type: ignore[index]


def test_injected_reset_is_502_from_the_gateway(sandbox_stack: SandboxStack, control: str) -> None:
    _set(control, reset_rate=1)
    with pytest.raises(stripe.APIError) as info:
        sandbox_stack.sdk().v1.webhook_endpoints.list()
    assert info.value.http_status == 502
    assert info.value.request_id is not None and info.value.request_id.startswith("gwreq_")


def test_injected_truncation_reaches_the_client_as_a_broken_body(
    sandbox_stack: SandboxStack, control: str
) -> None:
    _set(control, truncate_rate=1)
    with pytest.raises(requests.exceptions.RequestException):
        response = sandbox_stack.raw(
            "GET", "/v1/webhook_endpoints", direct=False, key="gw_test_sandbox_full_0000000001"
        )
        response.json()


def test_latency_is_added(sandbox_stack: SandboxStack, control: str) -> None:
    _set(control, latency_ms=150)
    started = time.monotonic()
    sandbox_stack.raw("GET", "/v1/webhook_endpoints")
    assert time.monotonic() - started >= 0.15


def test_reset_forgets_all_data(sandbox_stack: SandboxStack, control: str) -> None:
    client = sandbox_stack.sdk()
    client.v1.webhook_endpoints.create({"url": "https://example.com/x", "enabled_events": ["*"]})
    assert len(client.v1.webhook_endpoints.list().data) == 1
    assert requests.post(f"{control}/reset", timeout=5).status_code == 200
    assert client.v1.webhook_endpoints.list().data == []


def test_fault_draw_respects_rates() -> None:
    import random

    rng = random.Random(7)
    faults = Faults(error_rate=0.5)
    drawn = [faults.draw(rng) for _ in range(2000)]
    assert 800 < drawn.count("error") < 1200
    assert set(drawn) == {"error", None}
