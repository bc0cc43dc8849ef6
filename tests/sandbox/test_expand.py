"""``expand[]``: one check for every route (sandbox.core), with the official SDK."""

from __future__ import annotations

import io
import re
import time

import pytest
import stripe

from sandbox.core import Endpoint
from sandbox.resources import REGISTRY
from tests.sandbox.conftest import SandboxStack


def _path(template: str) -> str:
    return re.sub(r"\{\w+\}", "x_1Nabcdefgh", template)


def _expand_error(
    client: stripe.StripeClient, endpoint: Endpoint, expand: list[str]
) -> stripe.InvalidRequestError | None:
    """Call ``endpoint`` with ``expand[]`` (and nothing else) through the SDK's raw request;
    the error it raised if that is the refusal of an expansion, else None."""
    try:
        client.raw_request(endpoint.method.lower(), _path(endpoint.template), expand=expand)
    except stripe.InvalidRequestError as exc:
        if exc.param == "expand":
            return exc
    except stripe.StripeError:
        pass
    return None


def test_an_unknown_expansion_is_refused_on_every_route(sandbox_stack: SandboxStack) -> None:
    """Every retrieve, list, create, update, delete and action route of the route table
    answers Stripe's 400 for ``expand[]=nonexistent_field``, before it looks at anything else
    (test_coverage checks that the table serves every route of tests/data/
    sandbox_routes.json)."""
    client = sandbox_stack.sdk(direct=True)
    wrong: list[str] = []
    for endpoint in REGISTRY.endpoints:
        error = _expand_error(client, endpoint, ["nonexistent_field"])
        name = f"{endpoint.method} {endpoint.template}"
        if error is None:
            wrong.append(f"{name}: not refused")
            continue
        body = error.json_body["error"]
        if (error.http_status, body["type"], body["message"]) != (
            400,
            "invalid_request_error",
            "This property cannot be expanded (nonexistent_field).",
        ):
            wrong.append(f"{name}: {error.http_status} {body}")
    assert not wrong, "\n".join(wrong)


def test_an_unknown_expansion_is_refused_on_a_multipart_upload(
    sandbox_stack: SandboxStack,
) -> None:
    client = sandbox_stack.sdk(direct=True)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.files.create(
            {
                "file": io.BytesIO(b"%PDF-1.4 evidence"),
                "purpose": "dispute_evidence",
                "expand": ["nonexistent_field"],
            }
        )
    assert info.value.http_status == 400 and info.value.param == "expand"
    assert info.value.user_message == "This property cannot be expanded (nonexistent_field)."
    assert client.v1.files.list({"purpose": "dispute_evidence"}).data == []


def test_an_unknown_expansion_is_refused_through_the_gateway(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.webhook_endpoints.list({"expand": ["data.secret"]})
    assert info.value.http_status == 400
    assert info.value.user_message == "This property cannot be expanded (data.secret)."


def test_a_failed_expansion_changes_nothing(sandbox_stack: SandboxStack) -> None:
    """A create refused for its ``expand[]`` creates nothing and emits no event."""
    client = sandbox_stack.sdk(direct=True)
    before = len(client.v1.events.list().data)
    product = client.v1.climate.products.list().data[0].id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.climate.orders.create(
            {"product": product, "metric_tons": "1", "expand": ["supplier"]}
        )
    assert client.v1.climate.orders.list().data == []
    assert len(client.v1.events.list().data) == before


def test_every_declared_expansion_is_accepted(sandbox_stack: SandboxStack) -> None:
    """What a route declares it expands (and the prefixes it accepts without expanding) is
    never refused; what each expansion shows is checked per resource (test_climate,
    test_files, test_financial_connections, test_identity, test_reporting, test_sigma,
    test_tax)."""
    client = sandbox_stack.sdk(direct=True)
    wrong: list[str] = []
    declared = 0
    for endpoint in REGISTRY.endpoints:
        fields = [*endpoint.expandable, *(p + "dob" for p in endpoint.expand_ignored)]
        for field in fields:
            declared += 1
            if _expand_error(client, endpoint, [field]) is not None:
                wrong.append(f"{endpoint.method} {endpoint.template}: {field}")
    assert declared > 30
    assert not wrong, "\n".join(wrong)


def test_list_expansions_need_the_data_prefix(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk(direct=True)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.reporting.report_runs.list({"expand": ["result"]})
    assert info.value.user_message == "This property cannot be expanded (result)."
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.sigma.scheduled_query_runs.retrieve(
            client.v1.sigma.scheduled_query_runs.list().data[0].id, {"expand": ["data.file"]}
        )
    assert info.value.user_message == "This property cannot be expanded (data.file)."


def test_valid_expansions_on_create_update_action_and_list_routes(
    sandbox_stack: SandboxStack,
) -> None:
    """The routes that create, change or act on an object expand like its retrieve does."""
    client = sandbox_stack.sdk()
    product = client.v1.climate.products.list().data[0].id
    sandbox_stack.sandbox.settings.report_delay = 3600.0  # not delivered before the cancel
    order = client.v1.climate.orders.create(
        {"product": product, "amount": 10_000, "expand": ["product"]}
    )
    assert order.product.object == "climate.product" and order.product.id == product
    canceled = client.v1.climate.orders.cancel(order.id, {"expand": ["product"]})
    sandbox_stack.sandbox.settings.report_delay = 0.3
    assert canceled.product.id == product
    assert client.v1.climate.orders.retrieve(order.id).product == product  # stored as an id

    upload = io.BytesIO(b"%PDF-1.4 evidence")
    upload.name = "evidence.pdf"
    file = client.v1.files.create({"file": upload, "purpose": "dispute_evidence"})
    link = client.v1.file_links.create({"file": file.id, "expand": ["file"]})
    assert link.file.object == "file" and link.file.id == file.id
    updated = client.v1.file_links.update(link.id, {"metadata": {"a": "b"}, "expand": ["file"]})
    assert updated.file.id == file.id

    fca = (
        client.v1.financial_connections.sessions.create(
            {
                "account_holder": {"type": "customer", "customer": "cus_expand"},
                "permissions": ["ownership"],
            }
        )
        .accounts.data[0]
        .id
    )
    accounts = client.v1.financial_connections.accounts
    accounts.refresh(fca, {"features": ["ownership"]})
    deadline = time.monotonic() + 30
    while accounts.retrieve(fca).ownership is None:
        assert time.monotonic() < deadline, "the ownership refresh never finished"
        time.sleep(0.05)
    disconnected = accounts.disconnect(fca, {"expand": ["ownership"]})
    assert disconnected.ownership.object == "financial_connections.account_ownership"
    assert disconnected.ownership.owners.data

    runs = client.v1.sigma.scheduled_query_runs.list({"expand": ["data.file"]}).data
    files = [run.file for run in runs if run.file is not None]  # a failed run has none
    assert files and all(file.object == "file" for file in files)
