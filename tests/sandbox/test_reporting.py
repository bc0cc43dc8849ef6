"""Report types and report runs in the sandbox, through the gateway with the official SDK."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import pytest
import stripe

from sandbox.resources.reporting import REPORT_TYPES
from tests.sandbox.conftest import GATEWAY_KEY, SANDBOX_KEY, SandboxStack
from tests.sandbox.fidelity import assert_stripe_fields

ITEMIZED = "balance_change_from_activity.itemized.3"


def _interval(client: stripe.StripeClient, report_type: str = ITEMIZED) -> dict[str, int]:
    kind = client.v1.reporting.report_types.retrieve(report_type)
    return {
        "interval_start": kind.data_available_end - 30 * 86400,
        "interval_end": kind.data_available_end,
    }


def _assert_report_type_fields(kind: Any) -> None:
    assert_stripe_fields(kind)


def _wait(client: stripe.StripeClient, run_id: str) -> Any:
    deadline = time.monotonic() + 5
    while True:
        run = client.v1.reporting.report_runs.retrieve(run_id)
        if run.status != "pending" or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def test_report_types(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    listed = client.v1.reporting.report_types.list()
    assert listed.has_more is False
    assert [t.id for t in listed.data] == [t.id for t in REPORT_TYPES if not t.livemode_only]
    for kind in listed.data:
        assert kind.object == "reporting.report_type"
        assert kind.version == int(kind.id.rsplit(".", 1)[1])
        assert kind.data_available_start < kind.data_available_end <= time.time()
        assert kind.default_columns and kind.name
        _assert_report_type_fields(kind)
    got = client.v1.reporting.report_types.retrieve("balance.summary.1")
    assert got.default_columns == ["category", "currency", "description", "net_amount"]
    assert got.to_dict() == listed.data[0].to_dict()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.reporting.report_types.retrieve("balance.summary.99")
    assert info.value.http_status == 404 and info.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.reporting.report_types.list({"expand": ["data.name"]})
    assert info.value.param == "expand"


def test_run_goes_from_pending_to_succeeded_and_downloads(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    interval = _interval(client)
    sandbox_stack.sandbox.settings.report_delay = 3600.0  # pending until told, however slow
    run = client.v1.reporting.report_runs.create(
        {"report_type": ITEMIZED, "parameters": {**interval, "timezone": "Etc/UTC"}}
    )
    assert run.id.startswith("frr_") and run.object == "reporting.report_run"
    assert run.status == "pending" and run.result is None and run.succeeded_at is None
    assert run.error is None and run.report_type == ITEMIZED
    assert run.parameters.to_dict() == {**interval, "timezone": "Etc/UTC"}
    assert_stripe_fields(run)
    assert client.v1.reporting.report_runs.retrieve(run.id).status == "pending"
    sandbox_stack.sandbox.settings.report_delay = 0.0  # done now
    done = _wait(client, run.id)
    assert done.status == "succeeded" and done.succeeded_at >= run.created
    assert_stripe_fields(done)
    result = done.result
    assert_stripe_fields(result)
    assert result.purpose == "finance_report_run" and result.type == "csv"
    large = sandbox_stack.sandbox.settings.large_result_bytes
    assert large <= result.size < large + 1024
    assert client.v1.files.retrieve(result.id).to_dict() == result.to_dict()
    assert client.v1.reporting.report_runs.retrieve(run.id).to_dict() == done.to_dict()

    response = sandbox_stack.raw(
        "GET", f"/v1/files/{result.id}/contents", key=GATEWAY_KEY, direct=False, stream=True
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    assert int(response.headers["Content-Length"]) == result.size
    received = 0
    chunks = 0
    head = b""
    tail = b""
    for chunk in response.iter_content(chunk_size=256 * 1024):
        received += len(chunk)
        chunks += 1
        if len(head) < 4096:
            head += chunk[:4096]
        tail = (tail + chunk)[-4096:]
    assert received == result.size and chunks > 1
    lines = head.decode().split("\n")
    kind = client.v1.reporting.report_types.retrieve(ITEMIZED)
    assert lines[0].split(",") == kind.default_columns
    first = next(csv.reader([lines[1]]))
    assert len(first) == len(kind.default_columns) and first[0].startswith("txn_")
    assert tail.endswith(b"\n") and tail.decode().split("\n")[-2].count(",") == len(first) - 1

    # a client that walks away mid-download leaves the sandbox and the gateway serving
    for direct in (True, False):
        key = SANDBOX_KEY if direct else GATEWAY_KEY
        partial = sandbox_stack.raw(
            "GET", f"/v1/files/{result.id}/contents", key=key, direct=direct, stream=True
        )
        assert len(next(partial.iter_content(chunk_size=1024))) == 1024
        partial.close()
    assert client.v1.reporting.report_runs.retrieve(run.id).status == "succeeded"


def test_columns_and_default_parameters(sandbox_stack: SandboxStack) -> None:
    sandbox_stack.sandbox.settings.large_result_bytes = 20_000
    client = sandbox_stack.sdk()
    columns = ["balance_transaction_id", "gross", "customer_id", "payment_metadata[order_id]"]
    run = client.v1.reporting.report_runs.create(
        {"report_type": ITEMIZED, "parameters": {**_interval(client), "columns": columns}}
    )
    assert run.parameters.columns == columns
    # payouts.itemized.3 does not require an interval: it defaults to the data available
    defaults = client.v1.reporting.report_runs.create(
        {
            "report_type": "payouts.itemized.3",
            "parameters": {"currency": "usd", "reporting_category": "payout"},
        }
    )
    kind = client.v1.reporting.report_types.retrieve("payouts.itemized.3")
    assert defaults.parameters.to_dict() == {
        "interval_start": kind.data_available_start,
        "interval_end": kind.data_available_end,
        "currency": "usd",
        "reporting_category": "payout",
    }
    done = _wait(client, run.id)
    body = sandbox_stack.raw(
        "GET", f"/v1/files/{done.result.id}/contents", key=GATEWAY_KEY, direct=False
    ).content
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0] == columns and len(body) == done.result.size >= 20_000
    assert all(row[2].startswith("cus_") and row[3] == "" for row in rows[1:])
    payouts = _wait(client, defaults.id)
    assert payouts.status == "succeeded"
    header = sandbox_stack.raw(
        "GET", f"/v1/files/{payouts.result.id}/contents", key=GATEWAY_KEY, direct=False
    ).text.split("\n", 1)[0]
    assert header.split(",") == kind.default_columns


def test_list_runs_paginates(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    interval = _interval(client, "balance.summary.1")
    made = [
        client.v1.reporting.report_runs.create(
            {"report_type": "balance.summary.1", "parameters": interval}
        ).id
        for _ in range(12)
    ]
    newest_first = made[::-1]
    first = client.v1.reporting.report_runs.list({"limit": 5})
    assert [r.id for r in first.data] == newest_first[:5] and first.has_more
    second = client.v1.reporting.report_runs.list({"limit": 5, "starting_after": made[7]})
    assert [r.id for r in second.data] == newest_first[5:10]
    back = client.v1.reporting.report_runs.list({"limit": 5, "ending_before": made[1]})
    assert [r.id for r in back.data] == newest_first[5:10] and back.has_more is True
    walked = [r.id for r in client.v1.reporting.report_runs.list({"limit": 5}).auto_paging_iter()]
    assert walked == newest_first
    assert [r.id for r in client.v1.reporting.report_runs.list().data] == newest_first[:10]
    now = int(time.time())
    assert client.v1.reporting.report_runs.list({"created": {"lt": now - 3600}}).data == []
    assert len(client.v1.reporting.report_runs.list({"created": {"gte": now - 60}}).data) == 10
    time.sleep(sandbox_stack.sandbox.settings.report_delay)
    listed = client.v1.reporting.report_runs.list({"limit": 3, "expand": ["data.result"]})
    assert all(r.status == "succeeded" and r.result.type == "csv" for r in listed.data)


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({}, "report_type", "parameter_missing"),
        ({"report_type": "balance.summary.99"}, "report_type", "resource_missing"),
        ({"report_type": "balance.summary.1"}, "parameters[interval_start]", "parameter_missing"),
        (
            {
                "report_type": "balance.summary.1",
                "parameters": {"interval_start": 1, "interval_end": 2},
            },
            "parameters[interval_start]",
            None,
        ),
        (
            {"report_type": "payouts.itemized.3", "parameters": {"interval_end": 4_000_000_000}},
            "parameters[interval_end]",
            None,
        ),
        (
            {
                "report_type": "payouts.itemized.3",
                "parameters": {"interval_start": 1_600_000_000, "interval_end": 1_600_000_000},
            },
            "parameters[interval_end]",
            None,
        ),
        (
            {"report_type": "payouts.itemized.3", "parameters": {"interval_start": "soon"}},
            "parameters[interval_start]",
            "parameter_invalid_integer",
        ),
        (
            {"report_type": "payouts.itemized.3", "parameters": {"bogus": "1"}},
            "parameters[bogus]",
            "parameter_unknown",
        ),
        (
            {"report_type": "payouts.itemized.3", "parameters": {"connected_account": "acct_1"}},
            "parameters[connected_account]",
            None,
        ),
        (
            {"report_type": "payouts.itemized.3", "parameters": {"columns": ["gross", "nope"]}},
            "parameters[columns]",
            None,
        ),
        ({"report_type": ITEMIZED, "bogus": "1"}, "bogus", "parameter_unknown"),
    ],
)
def test_create_errors(
    sandbox_stack: SandboxStack, params: dict[str, Any], param: str, code: str | None
) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.reporting.report_runs.create(params)  # type: ignore[arg-type]
    assert info.value.http_status == 400
    assert (info.value.param, info.value.code) == (param, code)


LIVE_ONLY = [t.id for t in REPORT_TYPES if t.livemode_only]


def test_the_seed_flags_live_mode_only_report_types() -> None:
    assert LIVE_ONLY == ["connected_account_balance_change_from_activity.itemized.3"]


@pytest.mark.parametrize("report_type", LIVE_ONLY)
def test_live_mode_only_report_types_are_refused_to_test_keys(
    sandbox_stack: SandboxStack, report_type: str
) -> None:
    """A test key cannot run (nor retrieve) a report type that runs on live-mode data only;
    the refused run is not created, and emits nothing."""
    client = sandbox_stack.sdk()
    interval = _interval(client)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.reporting.report_runs.create(
            {"report_type": report_type, "parameters": {**interval, "connected_account": "acct_1"}}
        )
    error = info.value
    assert error.http_status == 400 and error.param == "report_type"
    assert error.error is not None and error.error.type == "invalid_request_error"
    assert error.user_message is not None and "only available in live mode" in error.user_message
    assert report_type in error.user_message
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.reporting.report_types.retrieve(report_type)
    assert info.value.http_status == 400 and info.value.param == "id"
    assert "only available in live mode" in str(info.value.user_message)
    assert report_type not in [t.id for t in client.v1.reporting.report_types.list().data]
    assert client.v1.reporting.report_runs.list().data == []
    assert client.v1.events.list({"type": "reporting.*"}).data == []


def test_unknown_run(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.reporting.report_runs.retrieve("frr_missing")
    assert info.value.http_status == 404 and info.value.code == "resource_missing"
    assert info.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.reporting.report_runs.list({"limit": 101})
    assert info.value.code == "parameter_invalid_integer" and info.value.param == "limit"


def test_the_control_route_finishes_a_run_now(sandbox_stack: SandboxStack) -> None:
    sandbox_stack.sandbox.settings.report_delay = 3600.0  # pending until told
    client = sandbox_stack.sdk()
    run = client.v1.reporting.report_runs.create(
        {"report_type": ITEMIZED, "parameters": _interval(client)}
    )
    assert client.v1.reporting.report_runs.retrieve(run.id).status == "pending"
    path = f"/v1/sandbox/reporting/report_runs/{run.id}/succeed"
    done = sandbox_stack.raw("POST", path)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "succeeded" and body["result"]["object"] == "file"
    got = client.v1.reporting.report_runs.retrieve(run.id)
    assert got.status == "succeeded" and got.result.id == body["result"]["id"]

    def succeeded_events() -> list[Any]:
        events = client.v1.events.list({"limit": 100}).data
        return [
            e
            for e in events
            if e.type == "reporting.report_run.succeeded" and e.data.object.id == run.id
        ]

    assert len(succeeded_events()) == 1
    # a run no longer pending is answered as it is: nothing new
    again = sandbox_stack.raw("POST", path)
    assert again.status_code == 200 and again.json()["result"]["id"] == body["result"]["id"]
    assert len(succeeded_events()) == 1
    missing = sandbox_stack.raw("POST", "/v1/sandbox/reporting/report_runs/frr_missing/succeed")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "resource_missing"
