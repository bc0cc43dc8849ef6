"""Files and file links: uploads, retrieve, list, streamed contents, generated CSV results.

Uploaded bytes are kept in ``Account.private``. Result files other resources produce (Sigma
scheduled query runs, report runs) are registered with :func:`register_generated_file` and
hold only a :class:`CsvSpec` (from :mod:`._generated_csv`, re-exported here): their contents
are generated chunk by chunk when someone downloads them.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any, cast
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.multipart import parse_content_disposition

from sandbox.core import (
    Account,
    Call,
    bad_request,
    boolean_value,
    checked_expansions,
    integer_value,
    make_object,
    mapping_value,
    missing,
    page,
    required,
    unknown_param,
)
from sandbox.forms import FormError, decode
from sandbox.resources import REGISTRY as api
from sandbox.resources._generated_csv import CsvSpec, csv_spec_for_size

__all__ = [
    "CsvSpec",
    "csv_spec_for_size",
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
    shown = file_object(account, obj["id"])
    account.emit("file.created", shown)
    return shown


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
        raise bad_request("Invalid multipart/form-data body: no boundary.")
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
            raise bad_request("Invalid multipart/form-data body.")
        disposition = ""
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value.strip()
        _, params = parse_content_disposition(disposition)
        field = params.get("name")
        if field is None:
            raise bad_request("Invalid multipart/form-data body: a part has no name.")
        if "filename" in params:
            if field != "file":
                raise unknown_param(field)
            upload.filename = params["filename"] or "blob"
            upload.data = content
        else:
            try:
                upload.fields.append((field, content.decode("utf-8")))
            except UnicodeDecodeError:
                raise bad_request(f"Invalid string: {field} is not UTF-8.") from None
    return upload


def _upload_call(call: Call, upload: _Upload) -> Call:
    try:
        params = decode(urlencode(upload.fields))
    except FormError as exc:
        raise bad_request(str(exc), code="parameter_invalid", param=exc.param) from None
    for name in params:
        if name not in ("purpose", "file", "file_link_data", "expand"):
            raise unknown_param(name)
    expand = checked_expansions(params.get("expand"), ())
    return Call(call.request, call.account, params, call.path, call.base_url, expand=expand)


def _future_timestamp(raw: str, param: str) -> int:
    at = integer_value(raw, param)
    if at <= time.time():
        raise bad_request(f"{param} must be in the future.", param)
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
        raise bad_request(f"Cannot create links for files with purpose `{file['purpose']}`.", param)


@api.route("POST", "/v1/files", params=("purpose", "file", "file_link_data"))
async def create(call: Call) -> dict[str, Any]:
    request = call.params.get("__multipart__")
    if request is None:
        call.text("file", required=True)
        raise bad_request(
            "Invalid file: files must be uploaded as multipart/form-data.",
            param="file",
        )
    upload = await _read_upload(call.request)
    form = _upload_call(call, upload)
    purpose = form.choice("purpose", UPLOAD_PURPOSES, required=True)
    assert purpose is not None
    if upload.data is None:
        if "file" in form.params:
            raise bad_request("Invalid file: must be a file upload.", param="file")
        form.text("file", required=True)
    assert upload.data is not None and upload.filename is not None
    if not upload.data:
        raise bad_request("The file you uploaded is empty.", param="file")
    kind = _file_type(upload.filename, upload.data)
    if kind is None:
        raise bad_request(
            "We don't currently support that file type. Try uploading a file with one of the "
            f"following types: {', '.join(sorted(set(_EXTENSIONS.values())))}.",
            param="file",
        )
    link_data = form.mapping("file_link_data")
    make_link = False
    link_expires: int | None = None
    link_metadata: dict[str, str] = {}
    if link_data is not None:
        mapping_value(link_data, "file_link_data", ("create", "expires_at", "metadata"))
        sub = Call(call.request, call.account, link_data, call.path, call.base_url)
        param = "file_link_data[create]"
        make_link = boolean_value(required(link_data.get("create"), param), param)
        if make_link and purpose not in LINKABLE_PURPOSES:
            raise bad_request(f"Cannot create links for files with purpose `{purpose}`.", param)
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
    shown = file_object(call.account, obj["id"])
    call.account.emit("file.created", shown)
    return shown


@api.route("GET", "/v1/files/{id}", params=())
async def retrieve(call: Call) -> dict[str, Any]:
    return file_object(call.account, call.id())


@api.route("GET", "/v1/files", params=("purpose", "created"))
async def list_all(call: Call) -> dict[str, Any]:
    purpose = call.text("purpose")
    keep = call.range_filter("created")
    files = [
        file_object(call.account, obj["id"])
        for obj in call.account.table(FILE).values()
        if (purpose is None or obj["purpose"] == purpose) and keep(obj["created"])
    ]
    return page(call, files, "/v1/files")


@api.route("GET", "/v1/files/{id}/contents", params=(), lists=False)
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
    call: Call, link: dict[str, Any], expand: frozenset[str], prefix: str = ""
) -> dict[str, Any]:
    view = _link_view(link)
    if f"{prefix}file" in expand:
        view["file"] = file_object(call.account, link["file"])
    return view


@api.route("POST", "/v1/file_links", params=("file", "expires_at", "metadata"), expand=("file",))
async def create_link(call: Call) -> dict[str, Any]:
    expand = call.expand
    file_id = call.text("file", required=True)
    assert file_id is not None
    file = call.account.table(FILE).get(file_id)
    if file is None:
        raise missing("file", file_id, "file")
    _check_linkable(file, "file")
    raw_expiry = call.text("expires_at")
    expires_at = None if raw_expiry is None else _future_timestamp(raw_expiry, "expires_at")
    link = _new_link(call.account, file, expires_at, call.metadata())
    return _link_response(call, link, expand)


@api.route("GET", "/v1/file_links/{id}", params=(), expand=("file",))
async def retrieve_link(call: Call) -> dict[str, Any]:
    expand = call.expand
    link = call.account.get(LINK, call.id(), "file link")
    return _link_response(call, link, expand)


@api.route("POST", "/v1/file_links/{id}", params=("expires_at", "metadata"), expand=("file",))
async def update_link(call: Call) -> dict[str, Any]:
    expand = call.expand
    link = call.account.get(LINK, call.id(), "file link")
    if _link_view(link)["expired"]:
        raise bad_request("Expired links can no longer be updated.", "id")
    raw_expiry = call.text("expires_at")
    if raw_expiry == "now":
        link["expires_at"] = int(time.time())
    elif raw_expiry == "":
        link["expires_at"] = None
    elif raw_expiry is not None:
        link["expires_at"] = _future_timestamp(raw_expiry, "expires_at")
    link["metadata"] = call.metadata(link["metadata"])
    return _link_response(call, link, expand)


@api.route("GET", "/v1/file_links", params=("created", "expired", "file"), expand=("data.file",))
async def list_links(call: Call) -> dict[str, Any]:
    expand = call.expand
    expired = call.boolean("expired")
    file_id = call.text("file")
    if file_id is not None:
        call.account.find(FILE, file_id, "file", "file")
    keep = call.range_filter("created")
    links = []
    for link in call.account.table(LINK).values():
        view = _link_view(link)
        if (
            keep(link["created"])
            and (file_id is None or link["file"] == file_id)
            and (expired is None or view["expired"] == expired)
        ):
            links.append(_link_response(call, link, expand, "data."))
    return page(call, links, "/v1/file_links")
