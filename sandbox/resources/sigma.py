"""Sigma scheduled query runs: list and retrieve (read-only, seeded per account).

Each account gets a dozen daily runs of a few saved queries. Completed runs carry their
result ``file`` (purpose ``sigma_scheduled_query``, a CSV of ``settings.csv_rows`` rows
generated on download); one run ``failed``, one ``timed_out`` and one was ``canceled``,
and those have no file.
"""

from __future__ import annotations

import time
from typing import Any

from sandbox.core import Account, Call, make_object, page
from sandbox.resources import REGISTRY as api
from sandbox.resources.files import CsvSpec, file_object, register_generated_file

TYPE = "scheduled_query_run"
RESOURCE = "scheduled query run"
RUNS = 12
_DAY = 86400

#: (title, sql, result columns)
QUERIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "Daily charges",
        "SELECT id AS charge_id, created, amount, currency, status FROM charges "
        "WHERE created >= date_add('day', -1, current_date)",
        ("charge_id", "created", "amount", "currency", "status"),
    ),
    (
        "Refunds by day",
        "SELECT id AS refund_id, charge_id, created, amount, currency, reason FROM refunds "
        "WHERE created >= date_add('day', -1, current_date)",
        ("refund_id", "charge_id", "created", "amount", "currency", "reason"),
    ),
    (
        "New customers",
        "SELECT id AS customer_id, email, created FROM customers "
        "WHERE created >= date_add('day', -1, current_date)",
        ("customer_id", "email", "created"),
    ),
    (
        "Balance activity",
        "SELECT id AS balance_transaction_id, created, amount, currency, reporting_category "
        "FROM balance_transactions WHERE created >= date_add('day', -1, current_date)",
        ("balance_transaction_id", "created", "amount", "currency", "reporting_category"),
    ),
)
#: run index (0 = newest) -> a status other than completed
_UNSUCCESSFUL = {3: "failed", 7: "timed_out", 10: "canceled"}
#: a run's ``error`` by status (``null`` for the others)
_ERRORS = {
    "failed": {"message": 'Query failed: column "amount_refunded" does not exist'},
    "timed_out": {"message": "Query exceeded the maximum execution time."},
}


@api.seeder
def seed(account: Account) -> None:
    today = int(time.time()) // _DAY * _DAY
    # oldest first, so that the table is in creation order
    for index in reversed(range(RUNS)):
        title, sql, columns = QUERIES[index % len(QUERIES)]
        created = today - (index + 1) * _DAY + 2 * 3600  # yesterday's run is the newest
        data_load_time = created - 3 * 3600
        status = _UNSUCCESSFUL.get(index, "completed")
        run_id = account.ids.new("sqr")
        file = None
        if status == "completed":
            spec = CsvSpec(
                columns=columns,
                rows=account.settings.csv_rows,
                seed=account.ids.randint(0, 2**31),
                start=data_load_time - _DAY,
                end=data_load_time,
            )
            file = register_generated_file(
                account,
                purpose="sigma_scheduled_query",
                filename=f"{run_id}.csv",
                spec=spec,
                created=created,
            )
        run = make_object(
            TYPE,
            run_id,
            created=created,
            data_load_time=data_load_time,
            error=_ERRORS.get(status),
            file=file,
            result_available_until=created + 30 * _DAY,
            sql=sql,
            status=status,
            title=title,
        )
        account.add(run, TYPE)


def _view(account: Account, run: dict[str, Any]) -> dict[str, Any]:
    file = run["file"]
    return {**run, "file": None if file is None else file_object(account, file["id"])}


@api.route("GET", "/v1/sigma/scheduled_query_runs/{id}", params=(), expand=("file",))
async def retrieve(call: Call) -> dict[str, Any]:
    return _view(call.account, call.account.get(TYPE, call.id(), RESOURCE))


@api.route("GET", "/v1/sigma/scheduled_query_runs", params=(), expand=("data.file",))
async def list_all(call: Call) -> dict[str, Any]:
    runs = [_view(call.account, run) for run in call.account.table(TYPE).values()]
    return page(call, runs, "/v1/sigma/scheduled_query_runs")
