"""Identity: verification sessions and verification reports.

A session starts ``requires_input`` with a ``client_secret`` and a ``url`` (shown only while
it needs input). The API cannot submit a session, so the sandbox offers two deterministic
ways to get verified sessions and their reports:

* every new account is seeded with sessions already ``verified`` (a document check and an
  ID number check, each with its report), one back in ``requires_input`` after a failed
  check (with ``last_error`` and an unverified report) and one ``canceled``;
* :func:`submit` moves a ``requires_input`` session to ``processing``; it is ``verified``
  (or back in ``requires_input`` for ``outcome="unverified"``) with a new report
  ``settings.report_delay`` seconds later, computed when the session is next read.

``redact`` blanks the personal data at once and shows ``redaction.status`` ``processing``,
then ``redacted`` after ``settings.report_delay`` seconds.
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sandbox.core import (
    Account,
    Call,
    ExpandRule,
    bad_request,
    boolean_value,
    choice_list,
    make_object,
    missing_param,
    page,
    string_value,
    unknown_param,
    wrong_type,
)
from sandbox.resources import REGISTRY as api

__all__ = ["finish", "submit"]

SESSION = "identity.verification_session"
REPORT = "identity.verification_report"
SESSION_RESOURCE = "verification session"
REPORT_RESOURCE = "verification report"

_TYPES = ("document", "id_number")
_STATUSES = ("canceled", "processing", "requires_input", "verified")
_DOCUMENT_TYPES = ("driving_license", "id_card", "passport")
_DOCUMENT_FLAGS = ("require_id_number", "require_live_capture", "require_matching_selfie")
_REDACTED = "[redacted]"
_ERRORS = {
    "document": ("document_expired", "The document is expired."),
    "id_number": ("id_number_mismatch", "The information provided could not be verified."),
    "selfie": ("selfie_face_mismatch", "The provided image of a face does not match the document."),
    "verification_flow": ("document_expired", "The document is expired."),
}


@dataclass
class _State:
    #: session id -> (when it was submitted, "verified" or "unverified")
    processing: dict[str, tuple[float, str]] = field(default_factory=dict)
    #: session id -> when its redaction started
    redacting: dict[str, float] = field(default_factory=dict)


def _state(account: Account) -> _State:
    return account.state("identity", _State)


# --------------------------------------------------------------------------- state machine


def _open(obj: dict[str, Any]) -> None:
    """Back in ``requires_input``: a fresh client secret and URL."""
    token = secrets.token_urlsafe(24)
    obj["status"] = "requires_input"
    obj["client_secret"] = f"{obj['id']}_secret_{token[:24]}"
    obj["url"] = f"https://verify.stripe.com/start/test_{token}"


def _close(obj: dict[str, Any], status: str) -> None:
    obj["status"] = status
    obj["client_secret"] = None
    obj["url"] = None


def _document(account: Account, verified: bool) -> dict[str, Any]:
    code, reason = _ERRORS["document"]
    return {
        "address": {
            "city": "San Francisco",
            "country": "US",
            "line1": "1234 Main St.",
            "line2": None,
            "postal_code": "94111",
            "state": "CA",
        },
        "error": {"code": None, "reason": None} if verified else {"code": code, "reason": reason},
        "expiration_date": {"day": 1, "month": 12, "year": 2030 if verified else 2020},
        "files": [account.ids.new("file"), account.ids.new("file")],
        "first_name": "Jenny",
        "issued_date": {"day": 1, "month": 12, "year": 2020 if verified else 2010},
        "issuing_country": "US",
        "last_name": "Rosen",
        "status": "verified" if verified else "unverified",
        "type": "driving_license",
    }


def _check(verified: bool, kind: str) -> dict[str, Any]:
    """The ``error`` and ``status`` of one check in a report."""
    if verified:
        return {"error": None, "status": "verified"}
    code, reason = _ERRORS[kind]
    return {"error": {"code": code, "reason": reason}, "status": "unverified"}


def _id_number(verified: bool) -> dict[str, Any]:
    return {
        "dob": None,  # shown only when expanded
        "first_name": "Jenny",
        "id_number": None,  # shown only when expanded
        "id_number_type": "us_ssn",
        "last_name": "Rosen",
        **_check(verified, "id_number"),
    }


def _verified_outputs(report: dict[str, Any]) -> dict[str, Any]:
    """What a verified session shows of its user: the verified report's data."""
    document = report["document"] or {}
    id_number = report["id_number"] or {}
    return {
        "address": copy.deepcopy(document.get("address")),
        "dob": None,  # shown only when expanded
        "email": None,
        "first_name": document.get("first_name") or id_number.get("first_name"),
        "id_number": None,  # shown only when expanded
        "id_number_type": id_number.get("id_number_type"),
        "last_name": document.get("last_name") or id_number.get("last_name"),
        "phone": None,
        "sex": None,
        "unparsed_place_of_birth": None,
        "unparsed_sex": None,
    }


def _report(account: Account, session: dict[str, Any], verified: bool, at: int) -> dict[str, Any]:
    kind = "id_number" if session["type"] == "id_number" else "document"
    document_options = copy.deepcopy(session["options"].get("document", {}))
    options = {"id_number": {}} if kind == "id_number" else {"document": document_options}
    document = _document(account, verified) if kind == "document" else None
    selfie = None
    if document is not None and document_options.get("require_matching_selfie"):
        selfie = {
            "document": document["files"][0],
            "selfie": account.ids.new("file"),
            **_check(verified, "selfie"),
        }
    wants_id_number = kind == "id_number" or document_options.get("require_id_number")
    report = make_object(
        REPORT,
        account.ids.new("vr"),
        created=at,
        client_reference_id=session["client_reference_id"],
        document=document,
        email=None,
        id_number=_id_number(verified) if wants_id_number else None,
        options=options,
        phone=None,
        selfie=selfie,
        type=kind,
        verification_flow=session["verification_flow"],
        verification_session=session["id"],
    )
    account.add(report, REPORT)
    session["last_verification_report"] = report["id"]
    if verified:
        session["last_error"] = None
        session["verified_outputs"] = _verified_outputs(report)
        _close(session, "verified")
    else:
        code, reason = _ERRORS[session["type"]]
        session["last_error"] = {"code": code, "reason": reason}
        _open(session)
    return report


def _redact_report(report: dict[str, Any]) -> None:
    document = report.get("document")
    if document:
        for key in ("first_name", "last_name", "issuing_country"):
            document[key] = _REDACTED
        document["address"] = {k: _REDACTED for k in document["address"]}
        for key in ("expiration_date", "issued_date"):
            if document.get(key) is not None:
                document[key] = {"day": 1, "month": 1, "year": 1970}
        document["files"] = []
    id_number = report.get("id_number")
    if id_number:
        id_number["first_name"] = id_number["last_name"] = _REDACTED
    selfie = report.get("selfie")
    if selfie:
        selfie["document"] = selfie["selfie"] = None


#: the fields a status change changes (``data.previous_attributes`` of its event)
_CHANGING = ("status", "client_secret", "url", "last_error", "last_verification_report")


def _settle(account: Account, obj: dict[str, Any]) -> dict[str, Any]:
    """Finish a submitted session's checks, and a redaction, once they have taken long enough."""
    state = _state(account)
    now = time.time()
    delay = account.settings.report_delay
    submitted = state.processing.get(obj["id"])
    if submitted is not None and now - submitted[0] >= delay:
        del state.processing[obj["id"]]
        previous = {k: obj[k] for k in _CHANGING}
        _report(account, obj, submitted[1] == "verified", int(submitted[0] + delay))
        account.emit(f"identity.verification_session.{obj['status']}", obj, previous)
    started = state.redacting.get(obj["id"])
    if started is not None and now - started >= delay:
        del state.redacting[obj["id"]]
        obj["redaction"] = {"status": "redacted"}
        account.emit(
            "identity.verification_session.redacted", obj, {"redaction": {"status": "processing"}}
        )
    return obj


def _settle_all(account: Account) -> None:
    state = _state(account)
    for session_id in [*state.processing, *state.redacting]:
        obj = account.table(SESSION).get(session_id)
        if obj is not None:
            _settle(account, obj)


def submit(account: Account, session_id: str, outcome: str = "verified") -> dict[str, Any]:
    """Submit a ``requires_input`` session as its user would (a sandbox test hook).

    It is ``processing`` until ``settings.report_delay`` seconds have passed, then
    ``verified`` (``outcome="verified"``) or back in ``requires_input`` with ``last_error``
    (``outcome="unverified"``), with a new verification report either way.
    """
    if outcome not in ("verified", "unverified"):
        raise ValueError(f"outcome must be 'verified' or 'unverified', not {outcome!r}")
    obj = _settle(account, account.get(SESSION, session_id, SESSION_RESOURCE))
    if obj["status"] != "requires_input" or obj["redaction"] is not None:
        raise bad_request(
            f"This VerificationSession cannot be submitted because it has status "
            f"`{obj['status']}`.",
        )
    previous = {k: obj[k] for k in ("status", "client_secret", "url")}
    _close(obj, "processing")
    entry = _state(account).processing[session_id] = (time.time(), outcome)
    account.emit("identity.verification_session.processing", obj, previous)
    account.at(entry[0] + account.settings.report_delay, lambda: _settle(account, obj))
    return obj


def finish(account: Account, session_id: str, outcome: str = "verified") -> dict[str, Any]:
    """:func:`submit`, and the checks done at once: ``verified`` or back in ``requires_input``."""
    obj = submit(account, session_id, outcome)
    state = _state(account)
    submitted, result = state.processing[session_id]
    state.processing[session_id] = (submitted - account.settings.report_delay, result)
    return _settle(account, obj)


# --------------------------------------------------------------------------- parameters


def _options(call: Call, kind: str, current: dict[str, Any] | None) -> dict[str, Any]:
    given = call.mapping("options", keys=("document",))
    if kind == "id_number":
        base: dict[str, Any] = {"id_number": {}}
    elif kind == "verification_flow":
        base = {}
    else:
        base = {"document": copy.deepcopy((current or {}).get("document", {}))}
    if given is None:
        return base
    document = given.get("document")
    if document is None:
        return base
    if kind != "document":
        raise bad_request(
            "options[document] can only be set when the VerificationSession's type is `document`.",
            "options[document]",
        )
    if document == "":
        return {"document": {}}
    if not isinstance(document, dict):
        raise wrong_type("object", "options[document]")
    out: dict[str, Any] = base["document"]
    for key, value in document.items():
        param = f"options[document][{key}]"
        if key == "allowed_types":
            out["allowed_types"] = choice_list(value, param, _DOCUMENT_TYPES)
        elif key in _DOCUMENT_FLAGS:
            out[key] = boolean_value(value, param)
        else:
            raise unknown_param(param)
    return {"document": out}


def _check_keys(call: Call, name: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    given = call.mapping(name, keys=allowed)
    if given is None:
        return
    for key, value in given.items():
        string_value(value, f"{name}[{key}]")
    for key in required:
        if key not in given:
            raise missing_param(f"{name}[{key}]")


def _provided_details(call: Call, current: dict[str, Any] | None) -> dict[str, Any] | None:
    """``provided_details`` given (email and phone, merged into ``current``)."""
    given = call.mapping("provided_details")
    if not given:
        return current
    out = dict(current or {"email": None, "phone": None})
    out.update(given)
    return out


def _related_customer(call: Call) -> str | None:
    customer = call.text("related_customer")
    if customer is None:
        return None
    return call.account.foreign("customer", customer, "related_customer")


# --------------------------------------------------------------------------- rendering


#: what a session's routes may expand: ``last_verification_report``; ``verified_outputs.*``
#: (``dob``, ``id_number``) is accepted but not done: the sandbox shows no sensitive data
SESSION_EXPAND: ExpandRule = {
    "expand": ("last_verification_report",),
    "expand_ignored": ("verified_outputs.",),
}
_SESSIONS_EXPAND: ExpandRule = {
    "expand": ("data.last_verification_report",),
    "expand_ignored": ("data.verified_outputs.",),
}
#: a report's sensitive fields (``document.dob``, ``id_number.id_number``...) stay null
_REPORT_EXPAND: ExpandRule = {"expand_ignored": ("document.", "id_number.")}
_REPORTS_EXPAND: ExpandRule = {"expand_ignored": ("data.document.", "data.id_number.")}


def _expand(call: Call, prefix: str = "") -> set[str]:
    """``last_verification_report`` when asked for (``data.`` on a list: ``prefix``)."""
    return {name.removeprefix(prefix) for name in call.expand}


def _render(call: Call, obj: dict[str, Any], expand: set[str] | None = None) -> dict[str, Any]:
    if expand is None:
        expand = _expand(call)
    _settle(call.account, obj)
    out = copy.deepcopy(obj)
    if "last_verification_report" in expand and out["last_verification_report"]:
        report = call.account.get(REPORT, out["last_verification_report"], REPORT_RESOURCE)
        out["last_verification_report"] = copy.deepcopy(report)
    return out


def _get(call: Call) -> dict[str, Any]:
    return _settle(call.account, call.account.get(SESSION, call.id(), SESSION_RESOURCE))


def _not_redacted(obj: dict[str, Any], action: str) -> None:
    if obj["redaction"] is not None:
        raise bad_request(
            f"You cannot {action} VerificationSession {obj['id']} because it has been redacted.",
        )


# --------------------------------------------------------------------------- sessions

_CREATE = (
    "client_reference_id",
    "metadata",
    "options",
    "provided_details",
    "related_customer",
    "related_customer_account",
    "related_person",
    "return_url",
    "type",
    "verification_flow",
)


@api.route("POST", "/v1/identity/verification_sessions", params=_CREATE, **SESSION_EXPAND)
async def create(call: Call) -> dict[str, Any]:
    kind = call.choice("type", _TYPES)
    flow = call.text("verification_flow")
    if kind is None and flow is None:
        raise bad_request(
            "Missing required param: type. You must provide a `type` if not passing "
            "`verification_flow`.",
            code="parameter_missing",
            param="type",
        )
    if kind is not None and flow is not None:
        raise bad_request(
            "You may only specify one of these parameters: type, verification_flow.", "type"
        )
    if flow is not None:
        call.account.foreign("verification flow", flow, "verification_flow")
    kind = kind or "verification_flow"
    _check_keys(call, "provided_details", ("email", "phone"), ())
    _check_keys(call, "related_person", ("account", "person"), ("account", "person"))
    related_person = call.mapping("related_person")
    if related_person is not None:
        call.account.foreign("account", related_person["account"], "related_person[account]")
        call.account.foreign("person", related_person["person"], "related_person[person]")
    related_customer_account = call.text("related_customer_account")
    if related_customer_account is not None:
        call.account.foreign("account", related_customer_account, "related_customer_account")
    call.text("return_url")
    obj = make_object(
        SESSION,
        call.account.ids.new("vs"),
        client_reference_id=call.text("client_reference_id"),
        last_error=None,
        last_verification_report=None,
        metadata=call.metadata(),
        options=_options(call, kind, None),
        provided_details=_provided_details(call, None),
        redaction=None,
        related_customer=_related_customer(call),
        related_customer_account=related_customer_account,
        related_person=related_person,
        type=kind,
        verification_flow=flow,
        verified_outputs=None,
    )
    _open(obj)
    call.account.add(obj, SESSION)
    call.account.emit("identity.verification_session.created", obj)
    return _render(call, obj)


@api.route("GET", "/v1/identity/verification_sessions/{id}", params=(), **SESSION_EXPAND)
async def retrieve(call: Call) -> dict[str, Any]:
    return _render(call, _get(call))


@api.route(
    "POST",
    "/v1/identity/verification_sessions/{id}",
    params=("metadata", "options", "provided_details", "type"),
    **SESSION_EXPAND,
)
async def update(call: Call) -> dict[str, Any]:
    obj = _get(call)
    _not_redacted(obj, "update")
    if obj["status"] != "requires_input":
        raise bad_request(
            f"You can only update a VerificationSession when its status is `requires_input`; "
            f"this one has status `{obj['status']}`.",
        )
    kind = call.choice("type", _TYPES)
    if kind is not None and obj["type"] == "verification_flow":
        raise bad_request(
            "You cannot change the type of a VerificationSession created from a verification flow.",
            "type",
        )
    new_kind = kind or obj["type"]
    options = _options(call, new_kind, obj["options"] if new_kind == obj["type"] else None)
    _check_keys(call, "provided_details", ("email", "phone"), ())
    obj["provided_details"] = _provided_details(call, obj["provided_details"])
    obj["type"] = new_kind
    obj["options"] = options
    obj["metadata"] = call.metadata(obj["metadata"])
    return _render(call, obj)


@api.route(
    "GET",
    "/v1/identity/verification_sessions",
    params=(
        "created",
        "client_reference_id",
        "related_customer",
        "related_customer_account",
        "status",
    ),
    **_SESSIONS_EXPAND,
)
async def list_sessions(call: Call) -> dict[str, Any]:
    _settle_all(call.account)
    status = call.choice("status", _STATUSES)
    keep = call.range_filter("created")
    expand = _expand(call, "data.")
    objects = [o for o in call.account.table(SESSION).values() if keep(o["created"])]
    if status is not None:
        objects = [o for o in objects if o["status"] == status]
    if (customer := call.text("related_customer")) is not None:
        call.account.foreign("customer", customer, "related_customer")
    if (customer_account := call.text("related_customer_account")) is not None:
        call.account.foreign("account", customer_account, "related_customer_account")
    for name in ("client_reference_id", "related_customer", "related_customer_account"):
        value = call.text(name)
        if value is not None:
            objects = [o for o in objects if o[name] == value]
    result = page(call, objects, "/v1/identity/verification_sessions")
    result["data"] = [_render(call, o, expand) for o in result["data"]]
    return result


@api.route("POST", "/v1/identity/verification_sessions/{id}/cancel", params=(), **SESSION_EXPAND)
async def cancel(call: Call) -> dict[str, Any]:
    obj = _get(call)
    _not_redacted(obj, "cancel")
    if obj["status"] != "requires_input":
        raise bad_request(
            "You can only cancel a VerificationSession when its status is `requires_input`; "
            f"this one has status `{obj['status']}`.",
        )
    previous = {k: obj[k] for k in ("status", "client_secret", "url")}
    _close(obj, "canceled")
    call.account.emit("identity.verification_session.canceled", obj, previous)
    return _render(call, obj)


@api.route("POST", "/v1/identity/verification_sessions/{id}/redact", params=(), **SESSION_EXPAND)
async def redact(call: Call) -> dict[str, Any]:
    obj = _get(call)
    _not_redacted(obj, "redact")
    if obj["status"] not in ("requires_input", "verified"):
        raise bad_request(
            "You can only redact a VerificationSession when its status is `requires_input` or "
            f"`verified`; this one has status `{obj['status']}`.",
        )
    if obj["status"] == "requires_input":
        previous = {k: obj[k] for k in ("status", "client_secret", "url")}
        _close(obj, "canceled")
        call.account.emit("identity.verification_session.canceled", obj, previous)
    obj["metadata"] = {}
    obj["redaction"] = {"status": "processing"}
    for report in call.account.table(REPORT).values():
        if report["verification_session"] == obj["id"]:
            _redact_report(report)
    outputs = obj["verified_outputs"]
    if outputs:
        obj["verified_outputs"] = {k: _REDACTED if v else v for k, v in outputs.items()}
    if obj["provided_details"]:
        obj["provided_details"] = {k: _REDACTED for k in obj["provided_details"]}
    account = call.account
    started = _state(account).redacting[obj["id"]] = time.time()
    account.at(started + account.settings.report_delay, lambda: _settle(account, obj))
    return _render(call, obj)


# --------------------------------------------------------------------------- reports


@api.route("GET", "/v1/identity/verification_reports/{id}", params=(), **_REPORT_EXPAND)
async def retrieve_report(call: Call) -> dict[str, Any]:
    _settle_all(call.account)
    return call.account.get(REPORT, call.id(), REPORT_RESOURCE)


@api.route(
    "GET",
    "/v1/identity/verification_reports",
    params=("client_reference_id", "created", "type", "verification_session"),
    **_REPORTS_EXPAND,
)
async def list_reports(call: Call) -> dict[str, Any]:
    _settle_all(call.account)
    kind = call.choice("type", _TYPES)
    keep = call.range_filter("created")
    objects = [o for o in call.account.table(REPORT).values() if keep(o["created"])]
    if kind is not None:
        objects = [o for o in objects if o["type"] == kind]
    if (session := call.text("verification_session")) is not None:
        call.account.find(SESSION, session, "verification_session", SESSION_RESOURCE)
    for name in ("client_reference_id", "verification_session"):
        value = call.text(name)
        if value is not None:
            objects = [o for o in objects if o[name] == value]
    return page(call, objects, "/v1/identity/verification_reports")


# --------------------------------------------------------------------------- seed


@api.seeder
def seed(account: Account) -> None:
    """Two verified sessions with reports, one failed back to requires_input, one canceled."""
    now = int(time.time())
    customer = account.ids.new("cus", 14)
    plans = [
        ("document", "verified", 10, {"document": {"require_matching_selfie": True}}),
        ("id_number", "verified", 8, {"id_number": {}}),
        ("document", "unverified", 6, {"document": {"allowed_types": ["driving_license"]}}),
        ("document", "canceled", 4, {"document": {}}),
    ]
    for n, (kind, outcome, days, options) in enumerate(plans, start=1):
        created = now - days * 86_400
        obj = make_object(
            SESSION,
            account.ids.new("vs"),
            created=created,
            client_reference_id=f"user_{1000 + n}",
            last_error=None,
            last_verification_report=None,
            metadata={"seeded": "true"},
            options=options,
            provided_details=None,
            redaction=None,
            related_customer=customer,
            related_customer_account=None,
            related_person=None,
            type=kind,
            verification_flow=None,
            verified_outputs=None,
        )
        account.add(obj, SESSION)
        if outcome == "canceled":
            _close(obj, "canceled")
        else:
            _report(account, obj, outcome == "verified", created + 600)
