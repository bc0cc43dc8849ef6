"""Webhook endpoints: create, retrieve, update, list, delete (``secret`` only on create)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from sandbox.api_versions import API_VERSIONS
from sandbox.core import (
    Call,
    api_version_error,
    bad_request,
    choice_list,
    make_object,
    page,
)
from sandbox.delivery import endpoint_secrets
from sandbox.event_types import EVENT_TYPES
from sandbox.resources import REGISTRY as api

TYPE = "webhook_endpoint"
RESOURCE = "webhook endpoint"
_FIELDS = ("description", "url", "api_version", "connect")
#: what ``enabled_events`` entries may be: ``*`` or one of Stripe's event types
_EVENTS = ("*", *sorted(EVENT_TYPES))


def _enabled_events(call: Call, required: bool) -> list[str] | None:
    events = call.array("enabled_events", required=required)
    if events is None:
        return None
    if not events:
        raise bad_request(
            "Invalid array: enabled_events must be a non-empty array of event types.",
            "enabled_events",
            "parameter_invalid_array",
        )
    return choice_list(events, "enabled_events", _EVENTS)


def _absolute_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number in range
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and port != 0
        and url == url.strip()
        and not any(c.isspace() for c in url)
    )


def _url(call: Call, required: bool) -> str | None:
    """``url``: an absolute http(s) URL with a host."""
    url = call.text("url", required=required)
    if url is not None and not _absolute_http_url(url):
        raise bad_request(f"Invalid URL: {url}", "url", "url_invalid")
    return url


def _api_version(call: Call) -> str | None:
    version = call.text("api_version")
    if version is not None and version not in API_VERSIONS:
        raise api_version_error(version, "api_version")
    return version


@api.route("POST", "/v1/webhook_endpoints", params=(*_FIELDS, "enabled_events", "metadata"))
async def create(call: Call) -> dict[str, Any]:
    url = _url(call, required=True)
    events = _enabled_events(call, required=True)
    version = _api_version(call)
    obj = make_object(
        TYPE,
        call.account.ids.new("we"),
        url=url,
        enabled_events=events,
        description=call.text("description"),
        api_version=version,
        metadata=call.metadata(),
        status="enabled",
        application=None,
    )
    call.account.add(obj, TYPE)
    # the signing secret is shown once, in the create response only (and signs deliveries)
    secret = endpoint_secrets(call.account)[obj["id"]] = "whsec_" + secrets.token_hex(16)
    return {**obj, "secret": secret}


@api.route("GET", "/v1/webhook_endpoints/{id}", params=())
async def retrieve(call: Call) -> dict[str, Any]:
    return call.account.get(TYPE, call.id(), RESOURCE)


@api.route(
    "POST",
    "/v1/webhook_endpoints/{id}",
    params=("description", "url", "enabled_events", "metadata", "disabled"),
)
async def update(call: Call) -> dict[str, Any]:
    obj = call.account.get(TYPE, call.id(), RESOURCE)
    description = call.text("description")
    if description is not None:
        obj["description"] = description
    url = _url(call, required=False)
    if url is not None:
        obj["url"] = url
    events = _enabled_events(call, required=False)
    if events is not None:
        obj["enabled_events"] = events
    disabled = call.boolean("disabled")
    if disabled is not None:
        obj["status"] = "disabled" if disabled else "enabled"
    obj["metadata"] = call.metadata(obj["metadata"])
    return obj


@api.route("GET", "/v1/webhook_endpoints", params=())
async def list_all(call: Call) -> dict[str, Any]:
    return page(call, call.account.table(TYPE).values(), "/v1/webhook_endpoints")


@api.route("DELETE", "/v1/webhook_endpoints/{id}", params=())
async def delete(call: Call) -> dict[str, Any]:
    call.account.get(TYPE, call.id(), RESOURCE)
    del call.account.table(TYPE)[call.id()]
    endpoint_secrets(call.account).pop(call.id(), None)
    return {"id": call.id(), "object": TYPE, "deleted": True}
