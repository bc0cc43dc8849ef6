"""Identity verification sessions and reports in the sandbox, through the gateway."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from sandbox.core import Account
from sandbox.resources.identity import submit
from tests.sandbox.conftest import SANDBOX_KEY, SandboxStack
from tests.sandbox.fidelity import assert_stripe_fields

REPORT = "identity.verification_report"


def _account(stack: SandboxStack) -> Account:
    return stack.sandbox.accounts[f"{SANDBOX_KEY}|"]


def _wait(client: stripe.StripeClient, session_id: str, done: Any) -> Any:
    deadline = time.monotonic() + 3
    while True:
        session = client.v1.identity.verification_sessions.retrieve(session_id)
        if done(session) or time.monotonic() > deadline:
            return session
        time.sleep(0.05)


def _seeded(client: stripe.StripeClient, status: str, kind: str = "document") -> Any:
    sessions = client.v1.identity.verification_sessions.list({"status": status, "limit": 100})
    return next(s for s in sessions.data if s.type == kind)  # type: ignore[arg-type]


def test_create_retrieve_update_cancel(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    sessions = client.v1.identity.verification_sessions
    created = sessions.create(
        {
            "type": "document",
            "options": {
                "document": {"require_matching_selfie": True, "allowed_types": ["passport"]}
            },
            "metadata": {"user": "42"},
            "client_reference_id": "user_42",
            "related_customer": "cus_identity0001",
            "provided_details": {"email": "jenny@example.com"},
            "return_url": "https://example.com/done",
        }
    )
    assert_stripe_fields(created)
    assert created.id.startswith("vs_") and created.status == "requires_input"
    assert created.client_secret.startswith(created.id + "_secret_")
    assert created.url.startswith("https://verify.stripe.com/start/test_")
    assert created.options.to_dict() == {
        "document": {"require_matching_selfie": True, "allowed_types": ["passport"]}
    }
    assert created.last_error is None and created.last_verification_report is None
    assert created.redaction is None and created.related_customer == "cus_identity0001"
    got = sessions.retrieve(created.id)
    assert got.to_dict() == created.to_dict()

    updated = sessions.update(
        created.id,
        {
            "metadata": {"user": "", "tier": "gold"},
            "options": {"document": {"require_id_number": True}},
        },
    )
    assert updated.metadata.to_dict() == {"tier": "gold"}
    assert updated.options.document.require_id_number is True
    assert updated.options.document.require_matching_selfie is True
    switched = sessions.update(created.id, {"type": "id_number"})
    assert switched.type == "id_number" and switched.options.to_dict() == {"id_number": {}}

    canceled = sessions.cancel(created.id)
    assert canceled.status == "canceled"
    assert canceled.client_secret is None and canceled.url is None
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.cancel(created.id)
    assert info.value.http_status == 400 and "`canceled`" in info.value.user_message
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.update(created.id, {"metadata": {"x": "1"}})
    assert info.value.http_status == 400 and "`requires_input`" in info.value.user_message
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.redact(created.id)
    assert info.value.http_status == 400


def test_create_validation(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    sessions = client.v1.identity.verification_sessions
    flow = sessions.create({"verification_flow": "vf_1Flow000000001"})
    assert flow.type == "verification_flow" and flow.status == "requires_input"
    assert_stripe_fields(flow)
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.update(flow.id, {"type": "document"})
    assert info.value.param == "type"
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({}, "type", "parameter_missing"),
        ({"type": "selfie"}, "type", None),
        ({"type": "document", "verification_flow": "vf_1"}, "type", None),
        ({"verification_flow": "flow_1"}, "verification_flow", "resource_missing"),
        ({"type": "document", "bogus": "1"}, "bogus", "parameter_unknown"),
        (
            {"type": "document", "options": {"selfie": {"on": True}}},
            "options[selfie]",
            "parameter_unknown",
        ),
        (
            {"type": "document", "options": {"document": {"allowed_types": ["visa"]}}},
            "options[document][allowed_types][0]",
            None,
        ),
        (
            {"type": "document", "options": {"document": {"require_live_capture": "maybe"}}},
            "options[document][require_live_capture]",
            "parameter_invalid_boolean",
        ),
        (
            {"type": "id_number", "options": {"document": {"require_id_number": True}}},
            "options[document]",
            None,
        ),
        (
            {"type": "document", "related_customer": "user_1"},
            "related_customer",
            "resource_missing",
        ),
        (
            {"type": "document", "related_person": {"account": "acct_1"}},
            "related_person[person]",
            "parameter_missing",
        ),
        (
            {"type": "document", "provided_details": {"name": "x"}},
            "provided_details[name]",
            "parameter_unknown",
        ),
    ]
    for params, param, code in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            sessions.create(params)  # type: ignore[arg-type]
        assert (info.value.param, info.value.code) == (param, code), params
    for method in (sessions.retrieve, sessions.cancel, sessions.redact):
        with pytest.raises(stripe.InvalidRequestError) as info:
            method("vs_missing")
        assert info.value.http_status == 404
        assert info.value.code == "resource_missing" and info.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.update("vs_missing", {"metadata": {"a": "b"}})
    assert info.value.http_status == 404


def test_seeded_sessions_and_reports(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    sessions = client.v1.identity.verification_sessions
    reports = client.v1.identity.verification_reports
    everything = sessions.list().data
    assert sorted(s.status for s in everything) == [
        "canceled",
        "requires_input",
        "verified",
        "verified",
    ]
    for session in everything:
        assert_stripe_fields(session)
    verified = sessions.list({"status": "verified"}).data
    assert {s.type for s in verified} == {"document", "id_number"}
    assert all(s.client_secret is None and s.url is None for s in verified)
    document = _seeded(client, "verified")
    report = reports.retrieve(document.last_verification_report)
    assert_stripe_fields(report)
    assert report.id.startswith("vr_") and report.verification_session == document.id
    assert report.type == "document" and report.document.status == "verified"
    assert report.document.first_name == "Jenny" and len(report.document.files) == 2
    assert report.client_reference_id == document.client_reference_id

    expanded = sessions.retrieve(document.id, {"expand": ["last_verification_report"]})
    assert expanded.last_verification_report.to_dict() == report.to_dict()
    assert sessions.retrieve(document.id).last_verification_report == report.id
    listed = sessions.list({"status": "verified", "expand": ["data.last_verification_report"]})
    assert all(s.last_verification_report.object == REPORT for s in listed.data)
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.retrieve(document.id, {"expand": ["options"]})
    assert info.value.param == "expand"

    failed = _seeded(client, "requires_input")
    assert failed.last_error.code == "document_expired"
    assert failed.client_secret is not None and failed.url is not None
    failed_report = reports.retrieve(failed.last_verification_report)
    assert failed_report.document.status == "unverified"
    assert failed_report.document.error.code == "document_expired"

    id_number = reports.list({"type": "id_number"}).data
    assert len(id_number) == 1 and id_number[0].document is None
    assert_stripe_fields(id_number[0])
    for_session = reports.list({"verification_session": document.id}).data
    assert [r.id for r in for_session] == [report.id]
    assert reports.list({"client_reference_id": "nobody"}).data == []
    every = reports.list().data
    assert len(every) == 3
    first = reports.list({"limit": 1})
    second = reports.list({"limit": 1, "starting_after": first.data[0].id})
    back = reports.list({"limit": 1, "ending_before": second.data[0].id})
    assert [first.data[0].id, second.data[0].id] == [r.id for r in every[:2]]
    assert back.data[0].id == first.data[0].id and first.has_more
    recent = reports.list({"created": {"gte": every[0].created}}).data
    assert every[0].id in [r.id for r in recent] and every[-1].id not in [r.id for r in recent]

    with pytest.raises(stripe.InvalidRequestError) as info:
        reports.retrieve("vr_missing")
    assert info.value.http_status == 404 and info.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as info:
        reports.list({"type": "selfie"})  # type: ignore[typeddict-item]
    assert info.value.param == "type"
    with pytest.raises(stripe.InvalidRequestError) as info:
        reports.list({"limit": "lots"})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_invalid_integer"

    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.cancel(document.id)
    assert "`verified`" in info.value.user_message
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.update(document.id, {"metadata": {"a": "b"}})
    assert info.value.http_status == 400


def test_submit_hook_moves_to_verified(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    sessions = client.v1.identity.verification_sessions
    created = sessions.create({"type": "document", "client_reference_id": "user_7"})
    sandbox_stack.sandbox.settings.report_delay = 3600.0  # processing until told, however slow
    submitted = submit(_account(sandbox_stack), created.id)
    assert submitted["status"] == "processing"
    processing = sessions.retrieve(created.id)
    assert processing.status == "processing" and processing.client_secret is None
    for action in (sessions.cancel, sessions.redact):
        with pytest.raises(stripe.InvalidRequestError) as info:
            action(created.id)
        assert "`processing`" in info.value.user_message
    assert [s.id for s in sessions.list({"status": "processing"}).data] == [created.id]
    sandbox_stack.sandbox.settings.report_delay = 0.0  # the checks are done now
    done = _wait(client, created.id, lambda s: s.status != "processing")
    assert done.status == "verified" and done.url is None
    report = client.v1.identity.verification_reports.retrieve(done.last_verification_report)
    assert report.client_reference_id == "user_7" and report.document.status == "verified"

    retry = sessions.create({"type": "id_number"})
    first_secret = retry.client_secret
    submit(_account(sandbox_stack), retry.id, outcome="unverified")
    failed = _wait(client, retry.id, lambda s: s.status != "processing")
    assert failed.status == "requires_input"
    assert failed.last_error.code == "id_number_mismatch"
    assert failed.client_secret not in (None, first_secret)
    report = client.v1.identity.verification_reports.retrieve(failed.last_verification_report)
    assert report.type == "id_number" and report.options.to_dict() == {"id_number": {}}
    with pytest.raises(ValueError):
        submit(_account(sandbox_stack), retry.id, outcome="maybe")


def test_redact(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    sessions = client.v1.identity.verification_sessions
    verified = _seeded(client, "verified")
    assert verified.metadata.to_dict() == {"seeded": "true"}
    redacted = sessions.redact(verified.id)
    assert redacted.redaction.status == "processing" and redacted.status == "verified"
    assert redacted.metadata.to_dict() == {}
    report = client.v1.identity.verification_reports.retrieve(verified.last_verification_report)
    assert report.document.first_name == "[redacted]" and report.document.files == []
    assert report.document.address.city == "[redacted]"
    done = _wait(client, verified.id, lambda s: s.redaction.status == "redacted")
    assert done.redaction.status == "redacted"
    for call in (
        lambda: sessions.redact(verified.id),
        lambda: sessions.update(verified.id, {"metadata": {"a": "b"}}),
        lambda: sessions.cancel(verified.id),
    ):
        with pytest.raises(stripe.InvalidRequestError) as info:
            call()
        assert "redacted" in info.value.user_message

    fresh = sessions.create({"type": "document", "metadata": {"k": "v"}})
    gone = sessions.redact(fresh.id)
    assert gone.status == "canceled" and gone.client_secret is None
    assert gone.redaction.to_dict() == {"status": "processing"}


def test_list_pagination_and_filters(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    sessions = client.v1.identity.verification_sessions
    made = [
        sessions.create({"type": "document", "client_reference_id": f"u{i}"}).id for i in range(12)
    ]
    every = sessions.list({"limit": 100}).data
    assert len(every) == 16
    assert [s.id for s in every[:12]] == made[::-1]
    walked: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 5}
        if after:
            params["starting_after"] = after
        batch = sessions.list(params)  # type: ignore[arg-type]
        walked += [s.id for s in batch.data]
        if not batch.has_more:
            break
        after = batch.data[-1].id
    assert walked == [s.id for s in every]
    back = sessions.list({"limit": 5, "ending_before": every[8].id})
    assert [s.id for s in back.data] == [s.id for s in every[3:8]] and back.has_more
    default = sessions.list()
    assert len(default.data) == 10 and default.has_more
    assert [s.id for s in sessions.list({"client_reference_id": "u3"}).data] == [made[3]]
    waiting = sessions.list({"status": "requires_input", "limit": 100}).data
    assert len(waiting) == 13
    customer = _seeded(client, "verified").related_customer
    assert len(sessions.list({"related_customer": customer}).data) == 4
    old = sessions.list({"created": {"lt": every[11].created}}).data
    assert len(old) == 4 and all(s.metadata.to_dict() == {"seeded": "true"} for s in old)

    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.list({"status": "done"})  # type: ignore[typeddict-item]
    assert info.value.param == "status"
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.list({"limit": "x"})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_invalid_integer" and info.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.list({"created": {"after": 1}})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_unknown" and info.value.param == "created[after]"
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.list({"bogus": "1"})  # type: ignore[typeddict-unknown-key]
    assert info.value.code == "parameter_unknown" and info.value.param == "bogus"
    with pytest.raises(stripe.InvalidRequestError) as info:
        sessions.list({"starting_after": "vs_missing"})
    assert info.value.param == "starting_after"


def test_direct_http_shapes(sandbox_stack: SandboxStack) -> None:
    response = sandbox_stack.raw(
        "POST", "/v1/identity/verification_sessions", data={"type": "document"}
    )
    body = response.json()
    assert response.status_code == 200 and body["object"] == "identity.verification_session"
    assert body["options"] == {"document": {}}
    listed = sandbox_stack.raw("GET", "/v1/identity/verification_reports").json()
    assert listed["url"] == "/v1/identity/verification_reports"


def test_sessions_and_reports_have_the_current_apis_sections(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    sessions = client.v1.identity.verification_sessions
    created = sessions.create(
        {
            "type": "document",
            "options": {"document": {"require_matching_selfie": True, "require_id_number": True}},
            "provided_details": {"email": "jenny@example.com"},
        }
    )
    assert_stripe_fields(created)
    assert created.verified_outputs is None and created.verification_flow is None
    assert created.provided_details.to_dict() == {"email": "jenny@example.com", "phone": None}
    submit(_account(sandbox_stack), created.id)
    done = _wait(client, created.id, lambda s: s.status != "processing")
    assert done.status == "verified"
    assert_stripe_fields(done)
    assert done.verified_outputs.first_name == "Jenny"
    assert done.verified_outputs.address.country == "US"
    report = client.v1.identity.verification_reports.retrieve(done.last_verification_report)
    assert_stripe_fields(report)
    assert report.selfie.status == "verified" and report.selfie.selfie.startswith("file_")
    assert report.id_number.status == "verified" and report.id_number.id_number_type == "us_ssn"
    assert report.email is None and report.phone is None

    plain = sessions.create({"type": "id_number"})
    submit(_account(sandbox_stack), plain.id, outcome="unverified")
    failed = _wait(client, plain.id, lambda s: s.status != "processing")
    assert failed.verified_outputs is None
    report = client.v1.identity.verification_reports.retrieve(failed.last_verification_report)
    assert report.id_number.status == "unverified" and report.selfie is None
    assert report.id_number.error.code == "id_number_mismatch"

    redacted = sessions.redact(created.id)
    assert redacted.verified_outputs.first_name == "[redacted]"
