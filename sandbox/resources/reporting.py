"""Reporting: report types (read-only, seeded) and report runs (create, retrieve, list).

A report run is ``pending`` with ``result: null`` until ``settings.report_delay`` seconds
after it was created; from then on it reads as ``succeeded`` with ``succeeded_at`` and a
``result`` file (purpose ``finance_report_run``, a CSV of about
``settings.large_result_bytes`` generated on download). The transition happens on time in
the app (emitting ``reporting.report_run.succeeded``), or when the run is next read.

Report types flagged ``livemode_only`` (the connected accounts' itemized balance change) run
only on live-mode data: with the sandbox's test keys they are not listed, and retrieving one
or creating a run of it is a 400, as Stripe refuses them to a test-mode key.
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass
from typing import Any, cast

from sandbox.core import (
    Account,
    Call,
    SandboxError,
    bad_request,
    integer_value,
    make_object,
    missing,
    page,
)
from sandbox.resources import REGISTRY as api
from sandbox.resources.files import (
    csv_spec_for_size,
    file_object,
    register_generated_file,
)

TYPE = "reporting.report_type"
RUN = "reporting.report_run"
_STARTED = "reporting.started"
_DAY = 86400
#: the earliest data any report type covers (2018-01-01T00:00:00Z)
DATA_START = 1514764800

_INTERVALS = frozenset({"interval_start", "interval_end"})
_COMMON = frozenset({"interval_start", "interval_end", "currency", "timezone", "columns"})
_SUMMARY = ("reporting_category", "currency", "count", "gross", "fee", "net")
_ACTIVITY = (
    "balance_transaction_id",
    "created_utc",
    "created",
    "available_on_utc",
    "available_on",
    "currency",
    "gross",
    "fee",
    "net",
    "reporting_category",
    "source_id",
    "description",
)
_ACTIVITY_EXTRA = (
    "customer_facing_amount",
    "customer_facing_currency",
    "customer_id",
    "charge_id",
    "payment_intent_id",
    "invoice_id",
    "payment_method_type",
    "automatic_payout_id",
)
#: run parameters that name an object (of a type the sandbox does not serve)
_REFERENCES = {"connected_account": "account", "payout": "payout"}
_METADATA_COLUMN = re.compile(r"^(payment|refund|transfer|charge|payout)_metadata\[[^\],\"\n]+\]$")


@dataclass(frozen=True)
class ReportType:
    id: str
    name: str
    default_columns: tuple[str, ...]
    extra_columns: tuple[str, ...] = ()
    #: run parameters accepted besides the common ones
    parameters: frozenset[str] = frozenset()
    #: parameters a run must give
    required: frozenset[str] = frozenset()
    #: metadata columns (payment_metadata[key], ...) allowed
    metadata_columns: bool = False
    #: run only on live-mode data, with a live-mode key: the sandbox's test keys are refused
    #: (Stripe: "certain report types can only be run based on your live-mode data")
    livemode_only: bool = False

    @property
    def version(self) -> int:
        return int(self.id.rsplit(".", 1)[1])

    def accepts_column(self, column: str) -> bool:
        if column in self.default_columns or column in self.extra_columns:
            return True
        return self.metadata_columns and _METADATA_COLUMN.match(column) is not None


REPORT_TYPES: tuple[ReportType, ...] = (
    ReportType(
        "balance.summary.1",
        "Balance summary",
        ("category", "currency", "description", "net_amount"),
        required=_INTERVALS,
    ),
    ReportType(
        "balance_change_from_activity.summary.1",
        "Balance change from activity summary",
        _SUMMARY,
        parameters=frozenset({"reporting_category"}),
        required=_INTERVALS,
    ),
    ReportType(
        "balance_change_from_activity.itemized.3",
        "Itemized balance change from activity",
        _ACTIVITY,
        _ACTIVITY_EXTRA,
        parameters=frozenset({"reporting_category"}),
        required=_INTERVALS,
        metadata_columns=True,
    ),
    ReportType(
        "connected_account_balance_change_from_activity.itemized.3",
        "Itemized balance change from activity for connected accounts",
        ("connected_account", *_ACTIVITY),
        _ACTIVITY_EXTRA,
        parameters=frozenset({"reporting_category", "connected_account"}),
        required=_INTERVALS,
        metadata_columns=True,
        livemode_only=True,
    ),
    ReportType(
        "ending_balance_reconciliation.itemized.4",
        "Itemized ending balance reconciliation",
        _ACTIVITY,
        _ACTIVITY_EXTRA,
        parameters=frozenset({"reporting_category", "payout"}),
        metadata_columns=True,
    ),
    ReportType("payouts.summary.1", "Payouts summary", _SUMMARY, required=_INTERVALS),
    ReportType(
        "payouts.itemized.3",
        "Itemized payouts",
        (
            "payout_id",
            "effective_at_utc",
            "effective_at",
            "currency",
            "gross",
            "fee",
            "net",
            "reporting_category",
            "description",
        ),
        (
            "payout_expected_arrival_date",
            "payout_status",
            "payout_type",
            "payout_description",
            "payout_destination_id",
        ),
        parameters=frozenset({"reporting_category"}),
    ),
    ReportType(
        "payout_reconciliation.summary.1",
        "Payout reconciliation summary",
        _SUMMARY,
        parameters=frozenset({"payout"}),
    ),
    ReportType(
        "payout_reconciliation.itemized.5",
        "Itemized payout reconciliation",
        (
            "automatic_payout_id",
            "automatic_payout_effective_at",
            "balance_transaction_id",
            "created_utc",
            "created",
            "available_on_utc",
            "available_on",
            "currency",
            "gross",
            "fee",
            "net",
            "reporting_category",
            "description",
        ),
        ("charge_id", "customer_id", "payment_intent_id", "invoice_id", "source_id"),
        parameters=frozenset({"reporting_category", "payout"}),
        metadata_columns=True,
    ),
)
_BY_ID = {t.id: t for t in REPORT_TYPES}


def _test_mode(report_type: str, param: str) -> None:
    """Stripe's refusal of a live-mode-only report type to a test key (all the sandbox has)."""
    kind = _BY_ID.get(report_type)
    if kind is not None and kind.livemode_only:
        raise bad_request(
            f"The report type {report_type} is only available in live mode: it runs on "
            "live-mode data, so it needs a live-mode API key (this request used a test key).",
            param,
        )


@api.seeder
def seed(account: Account) -> None:
    available_end = int(time.time()) // _DAY * _DAY
    for kind in REPORT_TYPES:
        obj = make_object(
            TYPE,
            kind.id,
            data_available_start=DATA_START,
            data_available_end=available_end,
            default_columns=list(kind.default_columns),
            name=kind.name,
            updated=available_end,
            version=kind.version,
        )
        account.add(obj, TYPE)


# --------------------------------------------------------------------------- report types


@api.route("GET", "/v1/reporting/report_types/{id}", params=())
async def retrieve_type(call: Call) -> dict[str, Any]:
    found = call.account.get(TYPE, call.id(), "report type")
    _test_mode(call.id(), "id")
    return found


@api.route("GET", "/v1/reporting/report_types", params=())
async def list_types(call: Call) -> dict[str, Any]:
    # Stripe lists every report type in one page
    # every key is a test key: the live-mode-only types are not among a test key's
    types = [t for t in call.account.table(TYPE).values() if not _BY_ID[t["id"]].livemode_only]
    return {
        "object": "list",
        "url": "/v1/reporting/report_types",
        "has_more": False,
        "data": types,
    }


# --------------------------------------------------------------------------- report runs


def _started(account: Account) -> dict[str, float]:
    return cast(dict[str, float], account.private.setdefault(_STARTED, {}))


def _param_error(name: str, message: str, code: str | None = None) -> SandboxError:
    return bad_request(message, f"parameters[{name}]", code)


def _timestamp(parameters: dict[str, Any], name: str) -> int | None:
    raw = parameters.get(name)
    return None if raw is None else integer_value(raw, f"parameters[{name}]")


def _parameters(call: Call, kind: ReportType, report: dict[str, Any]) -> dict[str, Any]:
    """The run's ``parameters``, checked against the report type."""
    given = call.mapping("parameters") or {}
    accepted = _COMMON | kind.parameters
    for name in given:
        if name not in accepted:
            known = name in _COMMON or any(name in t.parameters for t in REPORT_TYPES)
            if known:
                raise _param_error(
                    name, f"parameters[{name}] is not a valid parameter for report type {kind.id}."
                )
            raise _param_error(
                name, f"Received unknown parameter: parameters[{name}]", "parameter_unknown"
            )
    for name in ("interval_start", "interval_end"):
        if name in kind.required and given.get(name) is None:
            raise _param_error(
                name,
                f"Missing required param: parameters[{name}] (required for {kind.id}).",
                "parameter_missing",
            )
    out: dict[str, Any] = {}
    start = _timestamp(given, "interval_start")
    end = _timestamp(given, "interval_end")
    start = report["data_available_start"] if start is None else start
    end = report["data_available_end"] if end is None else end
    if start < report["data_available_start"]:
        raise _param_error(
            "interval_start",
            f"parameters[interval_start] must be at or after the report type's "
            f"data_available_start ({report['data_available_start']}).",
        )
    if end > report["data_available_end"]:
        raise _param_error(
            "interval_end",
            f"parameters[interval_end] must be at or before the report type's "
            f"data_available_end ({report['data_available_end']}).",
        )
    if start >= end:
        raise _param_error(
            "interval_end", "parameters[interval_end] must be after parameters[interval_start]."
        )
    out["interval_start"] = start
    out["interval_end"] = end
    columns = given.get("columns")
    if columns is not None:
        if isinstance(columns, dict) and not columns:
            columns = []
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise _param_error(
                "columns",
                "Invalid array: columns must be an array of strings.",
                "parameter_invalid_array",
            )
        if not columns:
            raise _param_error("columns", "parameters[columns] must not be empty.")
        bad = [c for c in columns if not kind.accepts_column(c)]
        if bad:
            raise _param_error(
                "columns", f"Invalid column(s) for report type {kind.id}: {', '.join(bad)}."
            )
        out["columns"] = columns
    for name in sorted(accepted - _INTERVALS - {"columns"}):
        value = given.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _param_error(name, f"Invalid string: parameters[{name}] must be a string.")
        if name in _REFERENCES:
            call.account.foreign(_REFERENCES[name], value, f"parameters[{name}]")
        out[name] = value
    return out


def _advance(account: Account, run: dict[str, Any], now: bool = False) -> dict[str, Any]:
    """Bring a pending run up to date: succeeded once report_delay has passed (``now``:
    succeeded at once, whatever the delay)."""
    if run["status"] != "pending":
        return run
    started = _started(account).get(run["id"], float(run["created"]))
    done_at = started + account.settings.report_delay
    if now:
        done_at = min(done_at, time.time())
    elif time.time() < done_at:
        return run
    kind = _BY_ID[run["report_type"]]
    parameters = run["parameters"]
    columns = tuple(parameters.get("columns") or kind.default_columns)
    spec = csv_spec_for_size(
        columns,
        account.settings.large_result_bytes,
        zlib.crc32(run["id"].encode()),
        parameters["interval_start"],
        parameters["interval_end"],
    )
    result = register_generated_file(
        account,
        purpose="finance_report_run",
        filename=f"{run['id']}.csv",
        spec=spec,
        created=int(done_at),
    )
    run.update(status="succeeded", succeeded_at=int(done_at), result=result)
    account.emit(
        "reporting.report_run.succeeded",
        {**run, "result": file_object(account, result["id"])},
        None,
    )
    return run


def succeed_now(account: Account, run: dict[str, Any]) -> dict[str, Any]:
    """Finish a pending run at once (the sandbox's control route), as if report_delay had
    passed: ``succeeded`` with its result, ``reporting.report_run.succeeded`` emitted."""
    return _view(account, _advance(account, run, now=True))


def _view(account: Account, run: dict[str, Any]) -> dict[str, Any]:
    run = _advance(account, run)
    result = run["result"]
    return {**run, "result": None if result is None else file_object(account, result["id"])}


@api.route(
    "POST", "/v1/reporting/report_runs", params=("report_type", "parameters"), expand=("result",)
)
async def create_run(call: Call) -> dict[str, Any]:
    report_type = call.text("report_type", required=True)
    assert report_type is not None
    kind = _BY_ID.get(report_type)
    report = call.account.table(TYPE).get(report_type)
    _test_mode(report_type, "report_type")
    if kind is None or report is None:
        raise missing("report type", report_type, "report_type")
    parameters = _parameters(call, kind, report)
    run = make_object(
        RUN,
        call.account.ids.new("frr"),
        error=None,
        parameters=parameters,
        report_type=report_type,
        result=None,
        status="pending",
        succeeded_at=None,
    )
    started = _started(call.account)[run["id"]] = time.time()
    call.account.add(run, RUN)
    account = call.account
    account.at(started + account.settings.report_delay, lambda: _advance(account, run))
    return _view(call.account, run)


@api.route("GET", "/v1/reporting/report_runs/{id}", params=(), expand=("result",))
async def retrieve_run(call: Call) -> dict[str, Any]:
    return _view(call.account, call.account.get(RUN, call.id(), "report run"))


@api.route("GET", "/v1/reporting/report_runs", params=("created",), expand=("data.result",))
async def list_runs(call: Call) -> dict[str, Any]:
    keep = call.range_filter("created")
    runs = [_view(call.account, r) for r in call.account.table(RUN).values() if keep(r["created"])]
    return page(call, runs, "/v1/reporting/report_runs")
