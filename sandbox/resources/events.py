"""Events: retrieve and list (``type``, ``types[]``, ``created`` filters), newest first.

Events are made by the other resources' state changes (see :mod:`sandbox.events`).
"""

from __future__ import annotations

from typing import Any

from sandbox.core import Call, bad_request, missing, page, string_value
from sandbox.events import event_log
from sandbox.resources import REGISTRY as api

_LIST_PARAMS = ("created", "type", "types")


@api.route("GET", "/v1/events/{id}", params=())
async def retrieve(call: Call) -> dict[str, Any]:
    event = event_log(call.account).events.get(call.id())
    if event is None:
        raise missing("event", call.id())
    return event


@api.route("GET", "/v1/events", params=_LIST_PARAMS)
async def list_all(call: Call) -> dict[str, Any]:
    keep = call.range_filter("created")
    wanted: list[str] | None = None
    kind = call.text("type")
    types = call.array("types")
    if kind is not None and types is not None:
        raise bad_request("You may only specify one of these parameters: type, types.", "types")
    if types is not None:
        wanted = [string_value(t, f"types[{i}]") for i, t in enumerate(types)]
        if len(wanted) > 20:
            raise bad_request("types must have at most 20 entries.", "types")
    events = [
        e
        for e in event_log(call.account).events.values()
        if keep(e["created"]) and _type_matches(e["type"], kind, wanted)
    ]
    return page(call, events, "/v1/events")


def _type_matches(event_type: str, kind: str | None, wanted: list[str] | None) -> bool:
    """``type`` may end in ``*`` (``identity.verification_session.*``); so may ``types[]``."""
    patterns = [kind] if kind is not None else wanted
    if patterns is None:
        return True
    return any(
        event_type.startswith(p[:-1]) if p.endswith("*") else event_type == p for p in patterns
    )
