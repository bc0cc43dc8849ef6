"""Webhook endpoints in the sandbox, through the gateway with the official SDK."""

from __future__ import annotations

import typing

import pytest
import stripe

from sandbox.api_versions import API_VERSIONS
from sandbox.event_types import EVENT_TYPES
from tests.sandbox.conftest import SandboxStack
from tests.sandbox.fidelity import assert_stripe_fields


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


@pytest.mark.parametrize(
    "url",
    [
        "example.com/hook",
        "/hook",
        "ftp://example.com/hook",
        "javascript:alert(1)",
        "https://",
        "https:///path",
        "http://example.com:99999/hook",
        "https://exa mple.com/hook",
        " https://example.com/hook",
        "",
    ],
)
def test_url_must_be_an_absolute_http_url(sandbox_stack: SandboxStack, url: str) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.create({"url": url, "enabled_events": ["*"]})
    assert info.value.http_status == 400 and info.value.param == "url"
    hook = client.v1.webhook_endpoints.create(
        {"url": "http://localhost:8000/hook", "enabled_events": ["*"]}
    )
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.update(hook.id, {"url": url})
    assert info.value.param == "url"
    assert client.v1.webhook_endpoints.list().data[0].url == "http://localhost:8000/hook"


def test_enabled_events_must_be_known_event_types(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.create(
            {"url": "https://example.com/h", "enabled_events": ["*", "charge.succeded"]}  # type: ignore[list-item]
        )
    assert info.value.param == "enabled_events[1]"
    assert "Invalid enabled_events[1]: must be one of *, account." in str(info.value.user_message)
    hook = client.v1.webhook_endpoints.create(
        {
            "url": "https://example.com/h",
            "enabled_events": [
                "reporting.report_run.succeeded",
                "identity.verification_session.verified",
            ],
        }
    )
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.update(hook.id, {"enabled_events": ["nope"]})  # type: ignore[list-item]
    assert info.value.param == "enabled_events[0]"
    assert len(client.v1.webhook_endpoints.retrieve(hook.id).enabled_events) == 2


def test_the_event_type_and_version_lists_are_the_installed_sdks() -> None:
    """After an SDK upgrade, rerun scripts/sandbox_stripe_lists.py."""
    hints = stripe.params.WebhookEndpointCreateParams.__annotations__
    (events,) = typing.get_args(hints["enabled_events"])
    assert set(typing.get_args(events)) - {"*"} == EVENT_TYPES
    (versions,) = typing.get_args(hints["api_version"])
    assert set(typing.get_args(versions)) == API_VERSIONS
    assert stripe._api_version._ApiVersion.CURRENT in API_VERSIONS


def test_api_version_must_be_a_published_version(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.create(
            {"url": "https://example.com/h", "enabled_events": ["*"], "api_version": "2099-01-01"}  # type: ignore[typeddict-item]
        )
    assert info.value.param == "api_version"
    assert info.value.user_message == "Invalid Stripe API version: 2099-01-01"
    hook = client.v1.webhook_endpoints.create(
        {"url": "https://example.com/h", "enabled_events": ["*"], "api_version": "2020-08-27"}
    )
    assert hook.api_version == "2020-08-27"
