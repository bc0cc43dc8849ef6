"""Files and file links in the sandbox, through the gateway with the official SDK."""

from __future__ import annotations

import io
import time

import pytest
import stripe

from sandbox.resources.files import CsvSpec, csv_spec_for_size
from tests.sandbox.conftest import GATEWAY_KEY, SandboxStack
from tests.sandbox.fidelity import assert_stripe_fields

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + b"".join(b"%d 0 obj <<>> endobj\n" % i for i in range(12000))


def _upload(data: bytes, name: str) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def _download(stack: SandboxStack, file_id: str) -> tuple[bytes, dict[str, str]]:
    response = stack.raw(
        "GET", f"/v1/files/{file_id}/contents", key=GATEWAY_KEY, direct=False, stream=True
    )
    assert response.status_code == 200, response.text
    body = b"".join(response.iter_content(chunk_size=32 * 1024))
    return body, dict(response.headers)


def test_upload_retrieve_and_download(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    created = client.v1.files.create(
        {"purpose": "dispute_evidence", "file": _upload(PNG, "receipt.png")}
    )
    assert created.id.startswith("file_") and created.object == "file"
    assert created.purpose == "dispute_evidence" and created.type == "png"
    assert created.size == len(PNG) and created.filename == "receipt.png"
    assert created.url == f"{sandbox_stack.sandbox_url}/v1/files/{created.id}/contents"
    assert created.links.data == [] and created.links.url == f"/v1/file_links?file={created.id}"
    assert_stripe_fields(created)
    got = client.v1.files.retrieve(created.id)
    assert got.to_dict() == created.to_dict()
    assert_stripe_fields(got)
    body, headers = _download(sandbox_stack, created.id)
    assert body == PNG
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Length"] == str(len(PNG))


def test_large_upload_streams_back_intact(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    created = client.v1.files.create(
        {"purpose": "additional_verification", "file": _upload(PDF, "statement.pdf")}
    )
    assert created.type == "pdf" and created.size == len(PDF) > 200_000
    body, headers = _download(sandbox_stack, created.id)
    assert body == PDF and headers["Content-Type"] == "application/pdf"


def test_type_comes_from_the_contents_or_the_extension(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    blob = client.v1.files.create({"purpose": "identity_document", "file": io.BytesIO(PNG)})
    assert blob.type == "png" and blob.filename == "blob"
    csv = client.v1.files.create(
        {"purpose": "account_requirement", "file": _upload(b"a,b\n1,2\n", "data.csv")}
    )
    assert csv.type == "csv"
    body, headers = _download(sandbox_stack, csv.id)
    assert body == b"a,b\n1,2\n" and headers["Content-Type"] == "text/csv; charset=utf-8"


def test_list_filters_and_paginates(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    made = [
        client.v1.files.create(
            {
                "purpose": "dispute_evidence" if i % 3 else "identity_document",
                "file": _upload(PNG, f"f{i}.png"),
            }
        ).id
        for i in range(12)
    ]
    listed = client.v1.files.list({"limit": 100})
    seeded = [f.id for f in listed.data if f.id not in made]  # generated results (sigma)
    assert [f.id for f in listed.data if f.id in made] == sorted(made, key=lambda i: -made.index(i))
    total = len(made) + len(seeded)
    assert all(f.purpose == "sigma_scheduled_query" for f in listed.data if f.id in seeded)
    walked: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, object] = {"limit": 5}
        if after:
            params["starting_after"] = after
        page = client.v1.files.list(params)  # type: ignore[arg-type]
        walked += [f.id for f in page.data]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert len(walked) == total and len(set(walked)) == total
    back = client.v1.files.list({"limit": 5, "ending_before": walked[7]})
    assert [f.id for f in back.data] == walked[2:7] and back.has_more is True
    identity = client.v1.files.list({"purpose": "identity_document"})
    assert sorted(f.id for f in identity.data) == sorted(made[0::3])
    now = int(time.time())
    old = client.v1.files.list({"created": {"lt": now - 3600}, "limit": 100})
    assert sorted(f.id for f in old.data) == sorted(seeded)
    recent = client.v1.files.list({"created": {"gte": now - 60}, "limit": 100})
    assert {f.id for f in recent.data} >= set(made)


def test_file_links(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    expires = int(time.time()) + 3600
    created = client.v1.files.create(
        {
            "purpose": "dispute_evidence",
            "file": _upload(PNG, "evidence.png"),
            "file_link_data": {"create": True, "expires_at": expires, "metadata": {"a": "1"}},
        }
    )
    assert len(created.links.data) == 1
    auto = created.links.data[0]
    assert auto.file == created.id and auto.expires_at == expires and auto.expired is False
    assert auto.metadata.to_dict() == {"a": "1"}
    link = client.v1.file_links.create({"file": created.id, "metadata": {"b": "2"}})
    assert link.id.startswith("link_") and link.expires_at is None and link.expired is False
    assert link.url.startswith(f"{sandbox_stack.sandbox_url}/links/")
    assert_stripe_fields(link)
    got = client.v1.file_links.retrieve(link.id, {"expand": ["file"]})
    assert got.file.id == created.id and got.file.object == "file"
    assert_stripe_fields(got.file)
    assert client.v1.file_links.retrieve(link.id).file == created.id
    updated = client.v1.file_links.update(link.id, {"metadata": {"b": "", "c": "3"}})
    assert updated.metadata.to_dict() == {"c": "3"}
    assert [lk.id for lk in client.v1.files.retrieve(created.id).links.data] == [link.id, auto.id]
    expired = client.v1.file_links.update(link.id, {"expires_at": "now"})
    assert expired.expired is True
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.file_links.update(link.id, {"metadata": {"d": "4"}})
    assert "expired" in str(info.value.user_message).lower()
    listed = client.v1.file_links.list({"file": created.id, "expand": ["data.file"]})
    assert [lk.id for lk in listed.data] == [link.id, auto.id]
    assert listed.data[0].file.id == created.id
    assert [lk.id for lk in client.v1.file_links.list({"expired": True}).data] == [link.id]
    assert [lk.id for lk in client.v1.file_links.list({"expired": False}).data] == [auto.id]
    cleared = client.v1.file_links.update(auto.id, {"expires_at": ""})
    assert cleared.expires_at is None


def test_file_link_pagination(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    file = client.v1.files.create({"purpose": "business_logo", "file": _upload(PNG, "l.png")})
    made = [client.v1.file_links.create({"file": file.id}).id for _ in range(11)]
    first = client.v1.file_links.list({"limit": 6})
    assert [lk.id for lk in first.data] == made[::-1][:6] and first.has_more
    second = client.v1.file_links.list({"limit": 6, "starting_after": first.data[-1].id})
    assert [lk.id for lk in second.data] == made[::-1][6:] and not second.has_more
    links = client.v1.files.retrieve(file.id).links
    assert len(links.data) == 10 and links.has_more is True


def test_upload_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    cases: list[tuple[dict[str, object], str, str | None]] = [
        ({"file": _upload(PNG, "x.png")}, "purpose", "parameter_missing"),
        ({"purpose": "dispute_evidence"}, "file", "parameter_missing"),
        ({"purpose": "finance_report_run", "file": _upload(PNG, "x.png")}, "purpose", None),
        ({"purpose": "dispute_evidence", "file": _upload(b"", "x.png")}, "file", None),
        ({"purpose": "dispute_evidence", "file": _upload(b"\x00\x01", "x.exe")}, "file", None),
        (
            {"purpose": "dispute_evidence", "file": _upload(PNG, "x.png"), "bogus": "1"},
            "bogus",
            "parameter_unknown",
        ),
        (
            {
                "purpose": "identity_document",
                "file": _upload(PNG, "x.png"),
                "file_link_data": {"create": True},
            },
            "file_link_data[create]",
            None,
        ),
        (
            {
                "purpose": "dispute_evidence",
                "file": _upload(PNG, "x.png"),
                "file_link_data": {"create": True, "expires_at": "soon"},
            },
            "file_link_data[expires_at]",
            "parameter_invalid_integer",
        ),
        (
            {
                "purpose": "dispute_evidence",
                "file": _upload(PNG, "x.png"),
                "file_link_data": {"expires_at": 1},
            },
            "file_link_data[create]",
            "parameter_missing",
        ),
    ]
    for params, param, code in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.files.create(params)  # type: ignore[arg-type]
        assert (info.value.param, info.value.code) == (param, code), params
    assert all(f.filename != "x.png" for f in client.v1.files.list({"limit": 100}).data)


def test_not_multipart_and_unknown_ids(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    response = sandbox_stack.raw(
        "POST", "/v1/files", data={"purpose": "dispute_evidence", "file": "abc"}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.files.retrieve("file_missing")
    assert info.value.http_status == 404 and info.value.code == "resource_missing"
    assert info.value.param == "id"
    missing = sandbox_stack.raw(
        "GET", "/v1/files/file_missing/contents", key=GATEWAY_KEY, direct=False
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.file_links.retrieve("link_missing")
    assert info.value.http_status == 404 and info.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.file_links.create({"file": "file_missing"})
    assert info.value.code == "resource_missing" and info.value.param == "file"


def test_link_and_list_errors(sandbox_stack: SandboxStack) -> None:
    client = sandbox_stack.sdk()
    private = client.v1.files.create({"purpose": "identity_document", "file": io.BytesIO(PNG)})
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.file_links.create({"file": private.id})
    assert info.value.param == "file" and "identity_document" in str(info.value.user_message)
    public = client.v1.files.create({"purpose": "dispute_evidence", "file": io.BytesIO(PNG)})
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.file_links.create({"file": public.id, "expires_at": 1})
    assert info.value.param == "expires_at"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.file_links.create({"file": public.id, "bogus": 1})  # type: ignore[typeddict-unknown-key]
    assert info.value.code == "parameter_unknown" and info.value.param == "bogus"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.file_links.create({})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_missing" and info.value.param == "file"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.files.list({"limit": "x"})  # type: ignore[arg-type]
    assert info.value.code == "parameter_invalid_integer" and info.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.files.list({"created": {"gt": "yesterday"}})  # type: ignore[arg-type]
    assert info.value.code == "parameter_invalid_integer" and info.value.param == "created[gt]"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.files.retrieve(public.id, {"expand": ["links"]})
    assert info.value.param == "expand"


def test_generated_csv_size_is_exact_and_deterministic() -> None:
    columns = (
        "balance_transaction_id",
        "created_utc",
        "available_on",
        "currency",
        "gross",
        "fee",
        "net",
        "count",
        "amount",
        "email",
        "reporting_category",
        "description",
        "payment_metadata[order]",
    )
    for rows in (0, 1, 511, 512, 513, 2000):
        spec = CsvSpec(columns, rows, 42, 1_700_000_000, 1_700_086_400)
        data = b"".join(spec.chunks())
        assert len(data) == spec.size()
        lines = data.decode().splitlines()
        assert len(lines) == rows + 1 and all(line.count(",") == 12 for line in lines)
        assert data == b"".join(spec.chunks())
    big = csv_spec_for_size(columns, 300_000, 7, 0, 86400)
    assert big.size() >= 300_000 > CsvSpec(columns, big.rows - 1, 7, 0, 86400).size()
