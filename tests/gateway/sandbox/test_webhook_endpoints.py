"""Webhook endpoints in the sandbox, through the gateway with the official SDK."""

from __future__ import annotations

import pytest
import stripe

from tests.gateway.sandbox.conftest import SandboxStack
from tests.gateway.sandbox.fidelity import assert_stripe_fields


def test_create_shows_the_secret_once_then_crud(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    created = client.v1.webhook_endpoints.create(
        {
            "url": "https://example.com/hook",
            "enabled_events": ["charge.succeeded"],
            "metadata": {"team": "billing"},
        }
    )
    assert created.id.startswith("we_")
    assert created.secret.startswith("whsec_")
    assert created.livemode is False and created.status == "enabled"
    got = client.v1.webhook_endpoints.retrieve(created.id)
    assert "secret" not in got
    assert got.url == "https://example.com/hook" and got.metadata.to_dict() == {"team": "billing"}
    updated = client.v1.webhook_endpoints.update(
        created.id, {"disabled": True, "metadata": {"team": "", "x": "1"}}
    )
    assert updated.status == "disabled" and updated.metadata.to_dict() == {"x": "1"}
    assert [w.id for w in client.v1.webhook_endpoints.list().data] == [created.id]
    deleted = client.v1.webhook_endpoints.delete(created.id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.retrieve(created.id)
    assert info.value.code == "resource_missing" and info.value.param == "id"


def test_missing_and_unknown_parameters(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.create({"enabled_events": ["*"]})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_missing" and info.value.param == "url"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.create(
            {"url": "https://x.example", "enabled_events": ["*"], "bogus": "1"}  # type: ignore[typeddict-unknown-key]
        )
    assert info.value.code == "parameter_unknown" and info.value.param == "bogus"


def test_webhook_endpoint_has_stripes_fields(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    created = client.v1.webhook_endpoints.create(
        {"url": "https://example.com/hook", "enabled_events": ["*"]}
    )
    assert_stripe_fields(created)
    assert_stripe_fields(client.v1.webhook_endpoints.retrieve(created.id))
