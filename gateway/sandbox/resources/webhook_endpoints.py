"""Webhook endpoints: create, retrieve, update, list, delete (``secret`` only on create)."""

from __future__ import annotations

import secrets
from typing import Any

from gateway.sandbox.core import Call, bad_request, make_object, page
from gateway.sandbox.delivery import endpoint_secrets
from gateway.sandbox.resources import REGISTRY as api

TYPE = "webhook_endpoint"
RESOURCE = "webhook endpoint"
_FIELDS = ("description", "url", "api_version", "connect")


def _enabled_events(call: Call, required: bool) -> list[str] | None:
    events = call.array("enabled_events", required=required)
    if events is None:
        return None
    if not events or not all(isinstance(e, str) and e for e in events):
        raise bad_request(
            "Invalid array: enabled_events must be a non-empty array of event types.",
            "enabled_events",
            "parameter_invalid_array",
        )
    return events


@api.route("POST", "/v1/webhook_endpoints", params=(*_FIELDS, "enabled_events", "metadata"))
async def create(call: Call) -> dict[str, Any]:
    url = call.text("url", required=True)
    events = _enabled_events(call, required=True)
    obj = make_object(
        TYPE,
        call.account.ids.new("we"),
        url=url,
        enabled_events=events,
        description=call.text("description"),
        api_version=call.text("api_version"),
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
    for name in ("description", "url"):
        value = call.text(name)
        if value is not None:
            obj[name] = value
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
