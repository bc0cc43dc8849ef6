"""Files and file links: uploads, retrieve, list, streamed contents, generated CSV results.

Uploaded bytes are kept in ``Account.private``. Result files other resources produce (Sigma
scheduled query runs, report runs) are registered with :func:`register_generated_file` and
hold only a :class:`CsvSpec`: their contents are generated on the fly, deterministically and
chunk by chunk, when someone downloads them, and are never held whole in memory. Every
generated column has a fixed width or cycles through a fixed list of values, so a file's
``size`` (and the ``Content-Length`` of its download) is known without generating it.
"""

from __future__ import annotations

import base64
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.multipart import parse_content_disposition

from gateway.sandbox.core import (
    Account,
    Call,
    SandboxError,
    expand_fields,
    make_object,
    missing,
    page,
)
from gateway.sandbox.forms import FormError, decode
from gateway.sandbox.resources import REGISTRY as api

__all__ = [
    "CsvSpec",
    "created_filter",
    "csv_spec_for_size",
    "expansions",
    "file_object",
    "register_generated_file",
]

FILE = "file"
LINK = "file_link"
_CONTENTS = "files.contents"
_CHUNK = 64 * 1024

#: purposes a file can be uploaded with
UPLOAD_PURPOSES = (
    "account_requirement",
    "additional_verification",
    "business_icon",
    "business_logo",
    "customer_signature",
    "dispute_evidence",
    "identity_document",
    "issuing_regulatory_reporting",
    "pci_document",
    "platform_terms_of_service",
    "tax_document_user_upload",
    "terminal_android_apk",
    "terminal_reader_splashscreen",
    "terminal_wifi_certificate",
    "terminal_wifi_private_key",
)
#: purposes whose files can have file links
LINKABLE_PURPOSES = frozenset(
    {
        "business_icon",
        "business_logo",
        "customer_signature",
        "dispute_evidence",
        "finance_report_run",
        "financial_account_statement",
        "identity_document_downloadable",
        "issuing_regulatory_reporting",
        "pci_document",
        "selfie",
        "sigma_scheduled_query",
        "tax_document_user_upload",
        "terminal_android_apk",
        "terminal_reader_splashscreen",
    }
)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
_ZIP_TYPES = frozenset({"zip", "xlsx", "docx", "apk"})
_EXTENSIONS = {
    "pdf": "pdf",
    "png": "png",
    "jpg": "jpg",
    "jpeg": "jpg",
    "gif": "gif",
    "tif": "tiff",
    "tiff": "tiff",
    "csv": "csv",
    "txt": "txt",
    "json": "json",
    "xls": "xls",
    "xlsx": "xlsx",
    "doc": "doc",
    "docx": "docx",
    "zip": "zip",
    "apk": "apk",
    "pem": "pem",
    "key": "key",
    "webp": "webp",
}
_MIME = {
    "pdf": "application/pdf",
    "png": "image/png",
    "jpg": "image/jpeg",
    "gif": "image/gif",
    "tiff": "image/tiff",
    "webp": "image/webp",
    "csv": "text/csv",
    "txt": "text/plain",
    "json": "application/json",
    "xls": "application/vnd.ms-excel",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "zip": "application/zip",
    "apk": "application/vnd.android.package-archive",
    "pem": "application/x-pem-file",
    "key": "application/octet-stream",
}


# --------------------------------------------------------------------------- shared helpers


def expansions(call: Call, allowed: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """The ``expand[]`` fields asked for; any not in ``allowed`` is a 400, like Stripe's."""
    wanted = expand_fields(call)
    for name in wanted:
        if name not in allowed:
            raise SandboxError(400, f"This property cannot be expanded ({name}).", param="expand")
    return set(wanted)


def _int_param(value: Any, param: str) -> int:
    if not isinstance(value, str):
        raise SandboxError(
            400,
            f"Invalid integer: {param} must be an integer.",
            code="parameter_invalid_integer",
            param=param,
        )
    try:
        return int(value)
    except ValueError:
        raise SandboxError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        ) from None


def created_filter(call: Call, name: str = "created") -> Callable[[dict[str, Any]], bool]:
    """The list filter ``created`` (an exact time or a ``gt``/``gte``/``lt``/``lte`` range)."""
    raw = call.params.get(name)
    if raw is None:
        return lambda obj: True
    if isinstance(raw, str):
        exact = _int_param(raw, name)
        return lambda obj: obj.get(name) == exact
    if not isinstance(raw, dict):
        raise SandboxError(
            400,
            f"Invalid {name}: must be an integer or a hash of gt, gte, lt, lte.",
            code="parameter_invalid_integer",
            param=name,
        )
    bounds: dict[str, int] = {}
    for key, value in raw.items():
        if key not in ("gt", "gte", "lt", "lte"):
            raise SandboxError(
                400,
                f"Received unknown parameter: {name}[{key}]",
                code="parameter_unknown",
                param=f"{name}[{key}]",
            )
        bounds[key] = _int_param(value, f"{name}[{key}]")

    def keep(obj: dict[str, Any]) -> bool:
        at = int(obj.get(name) or 0)
        return (
            ("gt" not in bounds or at > bounds["gt"])
            and ("gte" not in bounds or at >= bounds["gte"])
            and ("lt" not in bounds or at < bounds["lt"])
            and ("lte" not in bounds or at <= bounds["lte"])
        )

    return keep


# --------------------------------------------------------------------------- generated CSVs


class _Block:
    """A block of rows being generated: their timestamps, formatted once per offset."""

    def __init__(self, first: int, times: list[int]) -> None:
        self.first = first
        self.times = times
        self._formatted: dict[int, list[str]] = {}

    def formatted(self, offset: int) -> list[str]:
        done = self._formatted.get(offset)
        if done is None:
            done = self._formatted[offset] = [_format_time(at + offset) for at in self.times]
        return done


#: a column's values for a block of rows
_Maker = Callable[[random.Random, _Block], list[str]]


@dataclass(frozen=True)
class _Column:
    """One generated column: fixed-width values drawn per row, or a cycle of values."""

    width: int = 0
    make: _Maker | None = None
    cycle: tuple[str, ...] = ()

    def values(self, rng: random.Random, block: _Block) -> list[str]:
        if self.make is not None:
            return self.make(rng, block)
        cycle = self.cycle
        size = len(cycle)
        return [cycle[row % size] for row in range(block.first, block.first + len(block.times))]

    def total(self, rows: int) -> int:
        if self.make is not None:
            return self.width * rows
        full, rest = divmod(rows, len(self.cycle))
        return full * sum(map(len, self.cycle)) + sum(map(len, self.cycle[:rest]))


_ID_PREFIXES = {
    "automatic_payout_id": "po",
    "balance_transaction_id": "txn",
    "charge_id": "ch",
    "connected_account": "acct",
    "customer_id": "cus",
    "destination_id": "ba",
    "dispute_id": "dp",
    "invoice_id": "in",
    "payment_intent_id": "pi",
    "payout_id": "po",
    "payout_destination_id": "ba",
    "refund_id": "re",
    "source_id": "ch",
    "subscription_id": "sub",
    "transfer_id": "tr",
}
_TIME_COLUMNS = frozenset(
    {
        "available_on",
        "available_on_utc",
        "created",
        "created_utc",
        "effective_at",
        "effective_at_utc",
        "automatic_payout_effective_at",
        "automatic_payout_effective_at_utc",
        "payout_expected_arrival_date",
    }
)
_DECIMAL_COLUMNS = frozenset(
    {"gross", "net", "net_amount", "customer_facing_amount", "starting_balance"}
)
_CYCLES: dict[str, tuple[str, ...]] = {
    "currency": ("usd", "usd", "eur", "gbp"),
    "customer_facing_currency": ("usd", "usd", "eur", "gbp"),
    "category": ("charge", "refund", "fee", "payout", "adjustment", "charge"),
    "reporting_category": ("charge", "charge", "refund", "fee", "payout", "transfer"),
    "description": (
        "Payment for order",
        "Subscription update",
        "Refund for order",
        "Stripe processing fees",
        "STRIPE PAYOUT",
    ),
    "payout_description": ("STRIPE PAYOUT", "Weekly payout"),
    "status": ("succeeded", "succeeded", "succeeded", "failed", "pending"),
    "payout_status": ("paid", "paid", "in_transit"),
    "payout_type": ("bank_account", "bank_account", "card"),
    "payment_method_type": ("card", "card", "us_bank_account", "sepa_debit"),
    "reason": ("requested_by_customer", "duplicate", "fraudulent"),
}


def _ids(prefix: str) -> _Maker:
    def make(rng: random.Random, block: _Block) -> list[str]:
        bits = rng.getrandbits
        return [f"{prefix}_{bits(96):024x}" for _ in block.times]

    return make


def _amounts(low: int, high: int, decimal: bool) -> _Maker:
    """Integers in [low, high] (as cents with ``decimal``): all of the same width."""
    span = high - low + 1

    def make(rng: random.Random, block: _Block) -> list[str]:
        draw = rng.random
        drawn = [low + int(draw() * span) for _ in block.times]
        if decimal:
            return [f"{c // 100}.{c % 100:02d}" for c in drawn]
        return [str(c) for c in drawn]

    return make


def _format_time(at: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _times(offset: int) -> _Maker:
    return lambda rng, block: block.formatted(offset)


def _emails(rng: random.Random, block: _Block) -> list[str]:
    bits = rng.getrandbits
    return [f"user{bits(32):08x}@example.com" for _ in block.times]


@lru_cache(maxsize=256)
def _column(name: str) -> _Column:
    if name in _ID_PREFIXES or name.endswith("_id"):
        prefix = _ID_PREFIXES.get(name, "obj")
        return _Column(len(prefix) + 25, _ids(prefix))
    if name in _TIME_COLUMNS or name.endswith(("_at", "_utc")):
        later = name.startswith("available_on") or name == "payout_expected_arrival_date"
        return _Column(19, _times(2 * 86400 if later else 0))
    if name == "fee":  # 1.00 - 9.99
        return _Column(4, _amounts(100, 999, decimal=True))
    if name in _DECIMAL_COLUMNS:  # 100.00 - 999.99
        return _Column(6, _amounts(10000, 99999, decimal=True))
    if name == "amount":  # in cents
        return _Column(6, _amounts(100000, 999999, decimal=False))
    if name == "count":
        return _Column(2, _amounts(10, 99, decimal=False))
    if name == "email":
        return _Column(24, _emails)
    return _Column(cycle=_CYCLES.get(name, ("",)))


#: rows generated at a time (fixed, so the contents never depend on how they are read)
_BLOCK = 512


@dataclass(frozen=True)
class CsvSpec:
    """A generated CSV: a header row, then ``rows`` rows spread over [start, end)."""

    columns: tuple[str, ...]
    rows: int
    seed: int
    start: int
    end: int

    def header(self) -> bytes:
        return (",".join(_quote(c) for c in self.columns) + "\n").encode()

    def size(self) -> int:
        body = sum(_column(c).total(self.rows) for c in self.columns)
        return len(self.header()) + body + self.rows * len(self.columns)

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, a block of rows at a time, the same on every call."""
        yield self.header()
        columns = [_column(c) for c in self.columns]
        rng = random.Random(self.seed)
        span = max(0, self.end - self.start)
        rows, start = self.rows, self.start
        for first in range(0, rows, _BLOCK):
            times = [start + span * row // rows for row in range(first, min(rows, first + _BLOCK))]
            block = _Block(first, times)
            values = [c.values(rng, block) for c in columns]
            yield ("\n".join(map(",".join, zip(*values, strict=True))) + "\n").encode()


def _quote(value: str) -> str:
    if any(ch in value for ch in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_spec_for_size(
    columns: tuple[str, ...], target: int, seed: int, start: int, end: int
) -> CsvSpec:
    """The smallest CsvSpec with these columns that is at least ``target`` bytes long."""
    probe = CsvSpec(columns, 1000, seed, start, end)
    per_row = (probe.size() - len(probe.header())) / 1000
    rows = max(1, math.ceil((target - len(probe.header())) / per_row))
    spec = CsvSpec(columns, rows, seed, start, end)
    while spec.size() < target:
        spec = CsvSpec(columns, spec.rows + 1, seed, start, end)
    while spec.rows > 1 and CsvSpec(columns, spec.rows - 1, seed, start, end).size() >= target:
        spec = CsvSpec(columns, spec.rows - 1, seed, start, end)
    return spec


# --------------------------------------------------------------------------- file objects


def _contents(account: Account) -> dict[str, bytes | CsvSpec]:
    return cast(dict[str, bytes | CsvSpec], account.private.setdefault(_CONTENTS, {}))


def _link_view(link: dict[str, Any]) -> dict[str, Any]:
    expires_at = link["expires_at"]
    return {**link, "expired": expires_at is not None and expires_at <= time.time()}


def _links_of(account: Account, file_id: str) -> dict[str, Any]:
    links = [_link_view(lk) for lk in account.table(LINK).values() if lk["file"] == file_id]
    links.reverse()
    return {
        "object": "list",
        "data": links[:10],
        "has_more": len(links) > 10,
        "url": f"/v1/file_links?file={file_id}",
    }


def file_object(account: Account, file_id: str) -> dict[str, Any]:
    """A file as the API shows it (a copy, with its current ``links``)."""
    stored = account.get(FILE, file_id, "file")
    return {**stored, "links": _links_of(account, file_id)}


def _new_file(
    account: Account,
    *,
    purpose: str,
    filename: str | None,
    size: int,
    type_: str | None,
    contents: bytes | CsvSpec,
    created: int | None = None,
    expires_at: int | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    file_id = account.ids.new("file")
    obj = make_object(
        FILE,
        file_id,
        purpose=purpose,
        filename=filename,
        size=size,
        type=type_,
        title=title,
        expires_at=expires_at,
        url=f"{account.settings.files_base}/v1/files/{file_id}/contents",
        links=None,
    )
    if created is not None:
        obj["created"] = created
    account.add(obj, FILE)
    _contents(account)[file_id] = contents
    return obj


def register_generated_file(
    account: Account,
    *,
    purpose: str,
    filename: str | None,
    spec: CsvSpec,
    created: int | None = None,
    expires_at: int | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Add a CSV file whose contents ``spec`` generates on download; returns the file object."""
    obj = _new_file(
        account,
        purpose=purpose,
        filename=filename,
        size=spec.size(),
        type_="csv",
        contents=spec,
        created=created,
        expires_at=expires_at,
        title=title,
    )
    return file_object(account, obj["id"])


def _file_type(filename: str, data: bytes) -> str | None:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data.startswith(b"PK\x03\x04"):
        return ext if ext in _ZIP_TYPES else "zip"
    return _EXTENSIONS.get(ext)


# --------------------------------------------------------------------------- uploads


@dataclass
class _Upload:
    fields: list[tuple[str, str]]
    filename: str | None = None
    data: bytes | None = None


def _boundary(request: web.Request) -> str:
    message = Message()
    message["content-type"] = request.headers.get("Content-Type", "")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise SandboxError(400, "Invalid multipart/form-data body: no boundary.")
    return boundary


async def _read_upload(request: web.Request) -> _Upload:
    # the whole body (it is kept anyway); read() is cached, so this also works after the
    # idempotency step has read the body for its fingerprint
    body = await request.read()
    delimiter = b"\r\n--" + _boundary(request).encode("latin-1")
    upload = _Upload(fields=[])
    for part in (b"\r\n" + body).split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise SandboxError(400, "Invalid multipart/form-data body.")
        disposition = ""
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value.strip()
        _, params = parse_content_disposition(disposition)
        field = params.get("name")
        if field is None:
            raise SandboxError(400, "Invalid multipart/form-data body: a part has no name.")
        if "filename" in params:
            if field != "file":
                raise SandboxError(
                    400,
                    f"Received unknown parameter: {field}",
                    code="parameter_unknown",
                    param=field,
                )
            upload.filename = params["filename"] or "blob"
            upload.data = content
        else:
            try:
                upload.fields.append((field, content.decode("utf-8")))
            except UnicodeDecodeError:
                raise SandboxError(400, f"Invalid string: {field} is not UTF-8.") from None
    return upload


def _upload_call(call: Call, upload: _Upload) -> Call:
    try:
        params = decode(urlencode(upload.fields))
    except FormError as exc:
        raise SandboxError(400, str(exc), code="parameter_invalid", param=exc.param) from None
    for name in params:
        if name not in ("purpose", "file", "file_link_data", "expand"):
            raise SandboxError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )
    return Call(call.request, call.account, params, call.path, call.base_url)


def _future_timestamp(raw: str, param: str) -> int:
    at = _int_param(raw, param)
    if at <= time.time():
        raise SandboxError(400, f"{param} must be in the future.", param=param)
    return at


def _new_link(
    account: Account, file: dict[str, Any], expires_at: int | None, metadata: dict[str, str]
) -> dict[str, Any]:
    token = base64.urlsafe_b64encode(
        f"0|acct_sandbox|fl_test_{account.ids.new('fl', 24)[3:]}".encode()
    ).decode()
    obj = make_object(
        LINK,
        account.ids.new("link"),
        file=file["id"],
        expires_at=expires_at,
        expired=False,
        metadata=metadata,
        url=f"{account.settings.files_base}/links/{token.rstrip('=')}",
    )
    return account.add(obj, LINK)


def _check_linkable(file: dict[str, Any], param: str) -> None:
    if file["purpose"] not in LINKABLE_PURPOSES:
        raise SandboxError(
            400, f"Cannot create links for files with purpose `{file['purpose']}`.", param=param
        )


@api.route("POST", "/v1/files", params=("purpose", "file", "file_link_data"))
async def create(call: Call) -> dict[str, Any]:
    request = call.params.get("__multipart__")
    if request is None:
        call.text("file", required=True)
        raise SandboxError(
            400,
            "Invalid file: files must be uploaded as multipart/form-data.",
            param="file",
        )
    upload = await _read_upload(call.request)
    form = _upload_call(call, upload)
    expansions(form)
    purpose = form.text("purpose", required=True)
    if purpose not in UPLOAD_PURPOSES:
        raise SandboxError(
            400, f"Invalid purpose: must be one of {', '.join(UPLOAD_PURPOSES)}", param="purpose"
        )
    if upload.data is None:
        if "file" in form.params:
            raise SandboxError(400, "Invalid file: must be a file upload.", param="file")
        form.text("file", required=True)
    assert upload.data is not None and upload.filename is not None
    if not upload.data:
        raise SandboxError(400, "The file you uploaded is empty.", param="file")
    kind = _file_type(upload.filename, upload.data)
    if kind is None:
        raise SandboxError(
            400,
            "We don't currently support that file type. Try uploading a file with one of the "
            f"following types: {', '.join(sorted(set(_EXTENSIONS.values())))}.",
            param="file",
        )
    link_data = form.mapping("file_link_data")
    make_link = False
    link_expires: int | None = None
    link_metadata: dict[str, str] = {}
    if link_data is not None:
        for key in link_data:
            if key not in ("create", "expires_at", "metadata"):
                raise SandboxError(
                    400,
                    f"Received unknown parameter: file_link_data[{key}]",
                    code="parameter_unknown",
                    param=f"file_link_data[{key}]",
                )
        sub = Call(call.request, call.account, link_data, call.path, call.base_url)
        created = link_data.get("create")
        if created is None:
            raise SandboxError(
                400,
                "Missing required param: file_link_data[create].",
                code="parameter_missing",
                param="file_link_data[create]",
            )
        if created not in ("true", "false"):
            raise SandboxError(
                400,
                f"Invalid boolean: {created}",
                code="parameter_invalid_boolean",
                param="file_link_data[create]",
            )
        make_link = created == "true"
        if make_link and purpose not in LINKABLE_PURPOSES:
            raise SandboxError(
                400,
                f"Cannot create links for files with purpose `{purpose}`.",
                param="file_link_data[create]",
            )
        raw_expiry = sub.text("expires_at")
        if raw_expiry is not None:
            link_expires = _future_timestamp(raw_expiry, "file_link_data[expires_at]")
        link_metadata = sub.metadata()
    obj = _new_file(
        call.account,
        purpose=purpose,
        filename=upload.filename,
        size=len(upload.data),
        type_=kind,
        contents=upload.data,
    )
    if make_link:
        _new_link(call.account, obj, link_expires, link_metadata)
    return file_object(call.account, obj["id"])


@api.route("GET", "/v1/files/{id}", params=())
async def retrieve(call: Call) -> dict[str, Any]:
    expansions(call)
    return file_object(call.account, call.id())


@api.route("GET", "/v1/files", params=("purpose", "created"))
async def list_all(call: Call) -> dict[str, Any]:
    expansions(call)
    purpose = call.text("purpose")
    keep = created_filter(call)
    files = [
        file_object(call.account, obj["id"])
        for obj in call.account.table(FILE).values()
        if (purpose is None or obj["purpose"] == purpose) and keep(obj)
    ]
    return page(call, files, "/v1/files")


@api.route("GET", "/v1/files/{id}/contents", params=())
async def contents(call: Call) -> web.StreamResponse:
    obj = call.account.get(FILE, call.id(), "file")
    data = _contents(call.account).get(obj["id"])
    if data is None:  # a file another module added without contents
        raise missing("file", call.id())
    response = web.StreamResponse(headers={"Request-Id": call.request_id})
    response.content_type = _MIME.get(obj["type"] or "", "application/octet-stream")
    if obj["type"] in ("csv", "txt", "json"):
        response.charset = "utf-8"
    chunks: Iterator[bytes | memoryview]
    if isinstance(data, CsvSpec):
        response.content_length = data.size()
        chunks = data.chunks()
    else:
        view = memoryview(data)
        response.content_length = len(data)
        chunks = (view[i : i + _CHUNK] for i in range(0, len(data), _CHUNK))
    await response.prepare(call.request)
    try:
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away mid-download: nothing more to send
    return response


# --------------------------------------------------------------------------- file links


def _link_response(
    call: Call, link: dict[str, Any], expand: set[str], prefix: str = ""
) -> dict[str, Any]:
    view = _link_view(link)
    if f"{prefix}file" in expand:
        view["file"] = file_object(call.account, link["file"])
    return view


@api.route("POST", "/v1/file_links", params=("file", "expires_at", "metadata"))
async def create_link(call: Call) -> dict[str, Any]:
    expand = expansions(call, {"file"})
    file_id = call.text("file", required=True)
    assert file_id is not None
    file = call.account.table(FILE).get(file_id)
    if file is None:
        raise SandboxError(400, f"No such file: '{file_id}'", code="resource_missing", param="file")
    _check_linkable(file, "file")
    raw_expiry = call.text("expires_at")
    expires_at = None if raw_expiry is None else _future_timestamp(raw_expiry, "expires_at")
    link = _new_link(call.account, file, expires_at, call.metadata())
    return _link_response(call, link, expand)


@api.route("GET", "/v1/file_links/{id}", params=())
async def retrieve_link(call: Call) -> dict[str, Any]:
    expand = expansions(call, {"file"})
    link = call.account.get(LINK, call.id(), "file link")
    return _link_response(call, link, expand)


@api.route("POST", "/v1/file_links/{id}", params=("expires_at", "metadata"))
async def update_link(call: Call) -> dict[str, Any]:
    expand = expansions(call, {"file"})
    link = call.account.get(LINK, call.id(), "file link")
    if _link_view(link)["expired"]:
        raise SandboxError(400, "Expired links can no longer be updated.", param="id")
    raw_expiry = call.text("expires_at")
    if raw_expiry == "now":
        link["expires_at"] = int(time.time())
    elif raw_expiry == "":
        link["expires_at"] = None
    elif raw_expiry is not None:
        link["expires_at"] = _future_timestamp(raw_expiry, "expires_at")
    link["metadata"] = call.metadata(link["metadata"])
    return _link_response(call, link, expand)


@api.route("GET", "/v1/file_links", params=("created", "expired", "file"))
async def list_links(call: Call) -> dict[str, Any]:
    expand = expansions(call, {"data.file"})
    expired = call.boolean("expired")
    file_id = call.text("file")
    keep = created_filter(call)
    links = []
    for link in call.account.table(LINK).values():
        view = _link_view(link)
        if (
            keep(link)
            and (file_id is None or link["file"] == file_id)
            and (expired is None or view["expired"] == expired)
        ):
            links.append(_link_response(call, link, expand, "data."))
    return page(call, links, "/v1/file_links")
