"""Sigma scheduled query runs in the sandbox, through the gateway with the official SDK."""

from __future__ import annotations

import csv
import io

import pytest
import stripe

from sandbox.resources.sigma import RUNS
from tests.sandbox.conftest import GATEWAY_KEY, SandboxStack
from tests.sandbox.fidelity import assert_stripe_fields


def test_list_shows_the_seeded_runs_newest_first(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    runs = client.v1.sigma.scheduled_query_runs.list({"limit": 100}).data
    assert len(runs) == RUNS
    assert [r.created for r in runs] == sorted((r.created for r in runs), reverse=True)
    statuses = [r.status for r in runs]
    assert statuses.count("completed") == RUNS - 3
    assert {"failed", "timed_out", "canceled"} <= set(statuses)
    for run in runs:
        assert run.id.startswith("sqr_") and run.object == "scheduled_query_run"
        assert run.data_load_time < run.created < run.result_available_until
        assert run.sql.startswith("SELECT ") and run.title
        assert_stripe_fields(run)
        if run.status == "completed":
            assert run.file.purpose == "sigma_scheduled_query" and run.file.type == "csv"
            assert run.file.url.endswith(f"/v1/files/{run.file.id}/contents")
            assert_stripe_fields(run.file)
        else:
            assert run.file is None
        if run.status in ("failed", "timed_out"):
            assert run.error.message
        else:
            assert run.error is None


def test_pagination(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    every = [r.id for r in client.v1.sigma.scheduled_query_runs.list({"limit": 100}).data]
    walked: list[str] = []
    page = client.v1.sigma.scheduled_query_runs.list({"limit": 5})
    walked += [r.id for r in page.data]
    while page.has_more:
        page = client.v1.sigma.scheduled_query_runs.list(
            {"limit": 5, "starting_after": page.data[-1].id}
        )
        walked += [r.id for r in page.data]
    assert walked == every
    assert [r.id for r in client.v1.sigma.scheduled_query_runs.list().data] == every[:10]
    back = client.v1.sigma.scheduled_query_runs.list({"limit": 3, "ending_before": every[8]})
    assert [r.id for r in back.data] == every[5:8] and back.has_more is True
    auto = [
        r.id for r in client.v1.sigma.scheduled_query_runs.list({"limit": 4}).auto_paging_iter()
    ]
    assert auto == every


def test_retrieve_and_download_the_csv_through_the_gateway(
    sandbox_stack: SandboxStack,
) -> None:
    client = sandbox_stack.sdk()
    runs = client.v1.sigma.scheduled_query_runs.list({"limit": 100}).data
    completed = [r for r in runs if r.status == "completed"]
    run = client.v1.sigma.scheduled_query_runs.retrieve(completed[0].id)
    assert run.to_dict() == completed[0].to_dict()
    assert_stripe_fields(run)
    expanded = client.v1.sigma.scheduled_query_runs.retrieve(run.id, {"expand": ["file"]})
    assert expanded.file.id == run.file.id
    response = sandbox_stack.raw(
        "GET", f"/v1/files/{run.file.id}/contents", key=GATEWAY_KEY, direct=False, stream=True
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    body = b"".join(response.iter_content(chunk_size=8192))
    assert len(body) == run.file.size == int(response.headers["Content-Length"])
    rows = list(csv.reader(io.StringIO(body.decode())))
    header = rows[0]
    expected_rows = sandbox_stack.sandbox.settings.csv_rows
    assert len(rows) == expected_rows + 1
    assert all(len(row) == len(header) for row in rows)
    selected = run.sql.split("SELECT ", 1)[1].split(" FROM ", 1)[0]
    assert header == [part.split(" AS ")[-1].strip() for part in selected.split(",")]
    again = sandbox_stack.raw(
        "GET", f"/v1/files/{run.file.id}/contents", key=GATEWAY_KEY, direct=False
    )
    assert again.content == body  # generated deterministically
    file = client.v1.files.retrieve(run.file.id)
    assert file.to_dict() == run.file.to_dict()


def test_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.sigma.scheduled_query_runs.retrieve("sqr_missing")
    assert info.value.http_status == 404 and info.value.code == "resource_missing"
    assert info.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.sigma.scheduled_query_runs.list({"limit": 0})
    assert info.value.code == "parameter_invalid_integer" and info.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.sigma.scheduled_query_runs.list({"status": "completed"})  # type: ignore[arg-type]
    assert info.value.code == "parameter_unknown" and info.value.param == "status"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.sigma.scheduled_query_runs.list({"starting_after": "sqr_missing"})
    assert info.value.code == "resource_missing" and info.value.param == "starting_after"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.sigma.scheduled_query_runs.list({"expand": ["data.sql"]})
    assert info.value.param == "expand"


def test_each_account_gets_its_own_runs(sandbox_stack: SandboxStack) -> None:
    mine = sandbox_stack.sdk().v1.sigma.scheduled_query_runs.list().data
    connected = sandbox_stack.sdk(stripe_account="acct_other").v1.sigma.scheduled_query_runs
    theirs = connected.list().data
    assert len(theirs) == len(mine) and not {r.id for r in mine} & {r.id for r in theirs}
