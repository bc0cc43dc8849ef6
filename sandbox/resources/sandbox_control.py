"""Sandbox-only routes under ``/v1/sandbox/``: drive life cycles that Stripe's API cannot.

They are called with the account's API key like any other route (each account has its own
objects), so tests in any language can use them; Stripe has no ``test_helpers`` routes for
these resources. The state changes they make emit events like any other.

* ``POST /v1/sandbox/identity/verification_sessions/{id}/submit`` (``outcome``: ``verified``
  or ``unverified``): the user submits; ``processing`` now, checked ``settings.report_delay``
  seconds later. ``.../verify`` and ``.../fail`` submit and finish the checks at once
  (``verified``, or back in ``requires_input`` with ``last_error``).
* ``POST /v1/sandbox/crypto/onramp_sessions/{id}/progress`` (``status``, default: the next
  one of ``requires_payment``, ``fulfillment_processing``, ``fulfillment_complete``; or
  ``rejected``): emits ``crypto.onramp_session_updated``.
* ``POST /v1/sandbox/financial_connections/sessions/{id}/complete``
  (``account_subcategories[]``): the user links more accounts to a session (emits
  ``financial_connections.account.created`` for each).
* ``POST /v1/sandbox/reporting/report_runs/{id}/succeed``: a pending report run succeeds
  now, whatever ``settings.report_delay`` (emits ``reporting.report_run.succeeded``); a run
  that is no longer pending is answered as it is.
* ``POST /v1/sandbox/trigger`` (``type``, ``object``): emits an event of ``type`` with the
  object's current state as ``data.object``, like ``stripe trigger`` (``object`` is not
  needed for ``tax.settings.*``); answers the event.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from sandbox.core import Call, bad_request, choice_value
from sandbox.events import EMITTED_EVENT_TYPES, event_log
from sandbox.resources import REGISTRY as api
from sandbox.resources import crypto, financial_connections, identity, reporting
from sandbox.resources._tax_common import settings_of

_PREFIX = "/v1/sandbox"


async def _identity(call: Call, outcome: str, at_once: bool) -> dict[str, Any]:
    step = identity.finish if at_once else identity.submit
    step(call.account, call.id(), outcome)
    return identity._render(call, call.account.get(identity.SESSION, call.id()))


@api.route(
    "POST",
    f"{_PREFIX}/identity/verification_sessions/{{id}}/submit",
    params=("outcome",),
    **identity.SESSION_EXPAND,
)
async def identity_submit(call: Call) -> dict[str, Any]:
    outcome = call.choice("outcome", ("verified", "unverified"), default="verified")
    assert outcome is not None
    return await _identity(call, outcome, at_once=False)


@api.route(
    "POST",
    f"{_PREFIX}/identity/verification_sessions/{{id}}/verify",
    params=(),
    **identity.SESSION_EXPAND,
)
async def identity_verify(call: Call) -> dict[str, Any]:
    return await _identity(call, "verified", at_once=True)


@api.route(
    "POST",
    f"{_PREFIX}/identity/verification_sessions/{{id}}/fail",
    params=(),
    **identity.SESSION_EXPAND,
)
async def identity_fail(call: Call) -> dict[str, Any]:
    return await _identity(call, "unverified", at_once=True)


_ONRAMP_STEPS = (
    "initialized",
    "requires_payment",
    "fulfillment_processing",
    "fulfillment_complete",
)


@api.route("POST", f"{_PREFIX}/crypto/onramp_sessions/{{id}}/progress", params=("status",))
async def onramp_progress(call: Call) -> dict[str, Any]:
    session = call.account.get(crypto.SESSION, call.id(), crypto.RESOURCE)
    current = session["status"]
    if current in ("rejected", "fulfillment_complete"):
        raise bad_request(f"This onramp session is already `{current}`.")
    step = _ONRAMP_STEPS.index(current)
    later = (*_ONRAMP_STEPS[step + 1 :], "rejected")
    status = call.choice("status", later, default=later[0])
    assert status is not None
    previous: dict[str, Any] = {"status": current}
    session["status"] = status
    details = session["transaction_details"]
    if status == "fulfillment_complete" and details["transaction_id"] is None:
        previous["transaction_details"] = {"transaction_id": None}
        details["transaction_id"] = "0x" + call.account.ids.new("t", 64)[2:].lower()
    call.account.emit("crypto.onramp_session_updated", session, previous)
    return session


@api.route(
    "POST",
    f"{_PREFIX}/financial_connections/sessions/{{id}}/complete",
    params=("account_subcategories",),
    **financial_connections.SESSION_EXPAND,
)
async def financial_connections_complete(call: Call) -> dict[str, Any]:
    fc = financial_connections
    session = call.account.get(fc.SESSION, call.id(), "financial connections session")
    chosen = call.choices("account_subcategories", tuple(fc._SUBCATEGORIES)) or ["checking"]
    state = fc._state(call.account)
    linked = state.session_accounts.setdefault(session["id"], [])
    for subcategory in chosen:
        obj = fc._new_account(
            call.account,
            session["account_holder"],
            subcategory,
            session["permissions"],
            int(time.time()),
        )
        call.account.add(obj)
        linked.append(obj["id"])
        state.session_of[obj["id"]] = session["id"]
        call.account.emit("financial_connections.account.created", obj)
    return fc._render_session(call.account, session)


@api.route("POST", f"{_PREFIX}/reporting/report_runs/{{id}}/succeed", params=(), expand=("result",))
async def report_run_succeed(call: Call) -> dict[str, Any]:
    run = call.account.get(reporting.RUN, call.id(), "report run")
    return reporting.succeed_now(call.account, run)


@api.route("POST", f"{_PREFIX}/trigger", params=("type", "object"))
async def trigger(call: Call) -> dict[str, Any]:
    event_type = choice_value(call.text("type", required=True), "type", EMITTED_EVENT_TYPES)
    object_type = event_type.rsplit(".", 1)[0]
    if object_type == "crypto":  # crypto.onramp_session_updated
        object_type = crypto.SESSION
    if object_type == "tax.settings":
        obj = settings_of(call.account)
    else:
        object_id = call.text("object", required=True)
        assert object_id is not None
        resource = object_type.replace(".", " ").replace("_", " ")
        obj = call.account.find(object_type, object_id, "object", resource)
    call.account.emit(event_type, copy.deepcopy(obj))
    events = event_log(call.account).events
    return events[next(reversed(events))]  # the event just made
