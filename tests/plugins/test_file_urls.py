"""The file_urls plugin: file objects' download URLs lead through the gateway.

End to end against the sandbox (the official SDK through the gateway, downloads with
``requests`` and the team's gateway key), against a crafted upstream (what is rewritten and
what is not), and as a property of :func:`plugins.file_urls.rewrite_file_urls`.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
import stripe
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from plugins.file_urls import (
    FORM_MAX_BYTES,
    STRIPE_FILES,
    FileUrlsSettings,
    asks_to_expand,
    rewrite_file_urls,
)
from sandbox.app import Sandbox, create_sandbox_app
from sandbox.core import SandboxSettings
from tests.helpers import BILLING_KEY, BILLING_UPSTREAM_KEY, Stack, start_app

ORIGINS = (STRIPE_FILES,)
BASE = "https://gw.internal:8443"
FILE_URL = f"{STRIPE_FILES}/v1/files/file_1Nabcdefghij/contents"


# --------------------------------------------------------------------------- the sandbox


@pytest.fixture
def sandbox(stack: Stack) -> Iterator[tuple[Sandbox, str]]:
    """The sandbox as the api and files upstreams (its file URLs on Stripe's files host, as
    Stripe writes them), the gateway in front, not yet rewriting."""
    box = Sandbox(settings=SandboxSettings(report_delay=0.2, seed=11))
    served = stack.loop.run(start_app(create_sandbox_app(box)))
    stack._runners.append(served.runner)
    stack.start_gateway(upstream={"api": served.url, "files": served.url})
    yield box, served.url


def _client(stack: Stack) -> stripe.StripeClient:
    url = stack.gateway_url
    return stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": url, "files": url}, max_network_retries=0
    )


def _rewrite_to_the_gateway(stack: Stack, sandbox_url: str) -> None:
    """Reload the gateway with ``public_base_url`` set to its own address."""
    result = stack.reload(
        upstream={"api": sandbox_url, "files": sandbox_url},
        plugins={"file_urls": {"public_base_url": stack.gateway_url}},
    )
    assert result["reloaded"] is True, result


def _report_run(client: stripe.StripeClient) -> Any:
    kind = client.v1.reporting.report_types.retrieve("balance.summary.1")
    run = client.v1.reporting.report_runs.create(
        {
            "report_type": "balance.summary.1",
            "parameters": {
                "interval_start": kind.data_available_end - 86400,
                "interval_end": kind.data_available_end,
            },
        }
    )
    deadline = time.monotonic() + 30
    while run.status == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
        run = client.v1.reporting.report_runs.retrieve(run.id)
    assert run.status == "succeeded"
    return run


def test_a_report_runs_result_downloads_through_the_gateway(
    stack: Stack, sandbox: tuple[Sandbox, str]
) -> None:
    box, sandbox_url = sandbox
    _rewrite_to_the_gateway(stack, sandbox_url)
    client = _client(stack)
    run = _report_run(client)
    file_id = run.result.id
    assert run.result.url == f"{stack.gateway_url}/v1/files/{file_id}/contents"
    # Stripe's own answer (the sandbox's, asked directly) points at its files host
    direct = requests.get(
        f"{sandbox_url}/v1/reporting/report_runs/{run.id}",
        headers={"Authorization": f"Bearer {BILLING_UPSTREAM_KEY}"},
        timeout=10,
    ).json()
    assert direct["result"]["url"] == f"{STRIPE_FILES}/v1/files/{file_id}/contents"
    # a 5 MB result: streamed through, with the team's gateway key
    response = requests.get(
        run.result.url, headers={"Authorization": f"Bearer {BILLING_KEY}"}, stream=True, timeout=30
    )
    assert response.status_code == 200
    body = b"".join(response.iter_content(64 * 1024))
    assert len(body) == run.result.size >= box.settings.large_result_bytes
    assert body.startswith(b"category,")
    # through the gateway: audited, sent to the configured files upstream
    download = stack.audit_lines_for(f"/v1/files/{file_id}/contents")
    assert len(download) == 1
    lines = stack.audit_lines()
    assert download[0]["team"] == "billing" and download[0]["status"] == 200
    assert download[0]["upstream"] == "files" and download[0]["bytes_out"] == len(body)
    assert "file_urls_rewritten" not in download[0]  # streamed, never read whole
    retrieves = [line for line in lines if line["path"] == f"/v1/reporting/report_runs/{run.id}"]
    assert retrieves[-1]["file_urls_rewritten"] == 1


def test_file_retrieves_are_rewritten_on_a_miss_and_on_a_hit(
    stack: Stack, sandbox: tuple[Sandbox, str]
) -> None:
    client = _client(stack)
    run = _report_run(client)
    file_id = run.result.id
    # cached before the rewrite was on: the hit is rewritten as it is served
    before = client.v1.files.retrieve(file_id)
    assert before.url == f"{STRIPE_FILES}/v1/files/{file_id}/contents"
    assert before.last_response.headers["X-Cache"] == "MISS"
    _rewrite_to_the_gateway(stack, sandbox[1])
    gateway_url = f"{stack.gateway_url}/v1/files/{file_id}/contents"
    old_hit = client.v1.files.retrieve(file_id)
    assert old_hit.last_response.headers["X-Cache"] == "HIT"
    assert old_hit.url == gateway_url
    # a fresh miss stores the rewritten form; its hit serves it
    other = _report_run(client).result.id
    miss = client.v1.files.retrieve(other)
    hit = client.v1.files.retrieve(other)
    assert miss.last_response.headers["X-Cache"] == "MISS"
    assert hit.last_response.headers["X-Cache"] == "HIT"
    assert miss.url == hit.url == f"{stack.gateway_url}/v1/files/{other}/contents"
    assert hit.to_dict() == miss.to_dict()
    # lists: every file, and every scheduled query run's file
    listed = client.v1.files.list({"limit": 100}).data
    assert listed and all(f.url is None or f.url.startswith(stack.gateway_url) for f in listed)
    runs = client.v1.sigma.scheduled_query_runs.list({"limit": 100}).data
    files = [r.file for r in runs if r.file is not None]
    assert files and all(f.url.startswith(f"{stack.gateway_url}/v1/files/") for f in files)


def test_events_carry_file_urls_through_the_gateway(
    stack: Stack, sandbox: tuple[Sandbox, str]
) -> None:
    _rewrite_to_the_gateway(stack, sandbox[1])
    client = _client(stack)
    run = _report_run(client)
    expected = f"{stack.gateway_url}/v1/files/{run.result.id}/contents"
    listed = [
        e
        for e in client.v1.events.list({"limit": 100}).data
        if e.type == "reporting.report_run.succeeded" and e.data.object.id == run.id
    ]
    assert len(listed) == 1
    assert listed[0].data.object.result.url == expected
    event = client.v1.events.retrieve(listed[0].id)
    assert event.data.object.result.url == expected


def test_a_file_links_public_url_is_left_alone(stack: Stack, sandbox: tuple[Sandbox, str]) -> None:
    _rewrite_to_the_gateway(stack, sandbox[1])
    client = _client(stack)
    upload = io.BytesIO(b"a,b\n1,2\n")
    upload.name = "data.csv"
    created = client.v1.files.create({"purpose": "dispute_evidence", "file": upload})
    assert created.url == f"{stack.gateway_url}/v1/files/{created.id}/contents"
    link = client.v1.file_links.create({"file": created.id, "expand": ["file"]})
    assert link.url.startswith(f"{STRIPE_FILES}/links/")  # public, needs no key
    assert link.file.url == created.url
    # the public link downloads nothing through the gateway, and the file's URL does
    got = requests.get(created.url, headers={"Authorization": f"Bearer {BILLING_KEY}"}, timeout=10)
    assert got.status_code == 200 and got.content == b"a,b\n1,2\n"


# --------------------------------------------------------------------------- a crafted upstream


class Crafted:
    """An upstream answering each path with a body the test chose."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[bytes, dict[str, str], bool]] = {}
        self.headers: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        body, headers, chunked = self.answers[request.path]
        if not chunked:
            return web.Response(body=body, headers=headers)
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(body), 100):
            await response.write(body[i : i + 100])
        await response.write_eof()
        return response


@pytest.fixture
def crafted(stack: Stack) -> Crafted:
    upstream = Crafted()
    served = stack.loop.run(start_app(upstream.app()))
    stack._runners.append(served.runner)
    stack.start_gateway(
        upstream={"api": served.url, "files": served.url},
        plugins={"file_urls": {"public_base_url": BASE + "/", "max_body_bytes": 4096}},
    )
    return upstream


_JSON = {"Content-Type": "application/json"}


def _get(stack: Stack, path: str) -> requests.Response:
    return requests.get(
        stack.gateway_url + path, headers={"Authorization": f"Bearer {BILLING_KEY}"}, timeout=10
    )


def test_only_file_objects_urls_on_a_files_host_are_rewritten(
    stack: Stack, crafted: Crafted
) -> None:
    doc = {
        "object": "list",
        "data": [
            {"object": "file", "id": "file_1", "url": FILE_URL},
            {"object": "file", "id": "file_2", "url": FILE_URL + "?download=1"},
            {"object": "file", "url": "HTTPS://FILES.STRIPE.COM/v1/files/file_3/contents"},
            # not a file object
            {"object": "webhook_endpoint", "url": FILE_URL},
            {"object": "file_link", "url": f"{STRIPE_FILES}/links/abc", "file": "file_1"},
            {"url": FILE_URL},
            # a file object, but not a files host or not a contents path
            {"object": "file", "url": "https://evil.example/v1/files/file_1/contents"},
            {"object": "file", "url": "https://files.stripe.com.evil.example/v1/files/f/contents"},
            {"object": "file", "url": "https://files.stripe.com@evil.example/v1/files/f/contents"},
            {"object": "file", "url": "https://files.stripe.com:444/v1/files/f/contents"},
            {"object": "file", "url": f"{STRIPE_FILES}/v1/files/../admin/contents"},
            {"object": "file", "url": f"{STRIPE_FILES}/v1/customers"},
            {"object": "file", "url": None},
            {"object": "file", "url": 7},
        ],
        "nested": {"deep": [{"object": "file", "url": FILE_URL}]},
    }
    crafted.answers["/v1/files"] = (orjson.dumps(doc), _JSON, False)
    got = _get(stack, "/v1/files").json()
    urls = [entry.get("url") for entry in got["data"]]
    assert urls[:3] == [
        f"{BASE}/v1/files/file_1Nabcdefghij/contents",
        f"{BASE}/v1/files/file_1Nabcdefghij/contents?download=1",
        f"{BASE}/v1/files/file_3/contents",
    ]
    assert urls[3:] == [entry.get("url") for entry in doc["data"][3:]]  # type: ignore[index]
    assert got["nested"]["deep"][0]["url"] == f"{BASE}/v1/files/file_1Nabcdefghij/contents"
    # the upstream was asked for an answer it could be read in
    assert crafted.headers[-1]["Accept-Encoding"] == "identity"


def test_answers_it_cannot_or_need_not_read_pass_untouched(stack: Stack, crafted: Crafted) -> None:
    small = orjson.dumps({"object": "file", "id": "file_1", "url": FILE_URL})
    large = orjson.dumps({"object": "file", "url": FILE_URL, "pad": "x" * 5000})
    crafted.answers["/v1/files/file_small"] = (small, _JSON, True)  # chunked, within the limit
    crafted.answers["/v1/files/file_large"] = (large, _JSON, False)
    crafted.answers["/v1/files/file_largechunks"] = (large, _JSON, True)
    zipped_body = gzip.compress(small)  # once: its header holds the time of compression
    crafted.answers["/v1/files/file_zipped"] = (
        zipped_body,
        {**_JSON, "Content-Encoding": "gzip"},
        False,
    )
    crafted.answers["/v1/files/file_text"] = (small, {"Content-Type": "text/plain"}, False)
    crafted.answers["/v1/files/file_broken"] = (
        b'{"object": "file", "url": "' + FILE_URL.encode(),
        _JSON,
        False,
    )
    crafted.answers["/v1/customers/cus_1Nabcdefghij"] = (small, _JSON, False)  # not a file route
    crafted.answers["/v1/files/file_1/contents"] = (small, _JSON, False)  # contents stream
    chunked = _get(stack, "/v1/files/file_small")
    assert chunked.json()["url"] == f"{BASE}/v1/files/file_1Nabcdefghij/contents"
    assert int(chunked.headers["Content-Length"]) == len(chunked.content)
    for path, body in [
        ("/v1/files/file_large", large),  # over max_body_bytes: streamed
        ("/v1/files/file_largechunks", large),
        ("/v1/files/file_text", small),
        ("/v1/files/file_broken", crafted.answers["/v1/files/file_broken"][0]),
        ("/v1/customers/cus_1Nabcdefghij", small),
        ("/v1/files/file_1/contents", small),
    ]:
        got = _get(stack, path)
        assert got.status_code == 200 and got.content == body, path
    zipped = requests.get(
        stack.gateway_url + "/v1/files/file_zipped",
        headers={"Authorization": f"Bearer {BILLING_KEY}"},
        stream=True,
        timeout=10,
    )
    assert zipped.raw.read() == zipped_body


def _file_doc(name: str) -> bytes:
    """A Stripe-indented answer holding a file object, and numbers as Stripe need not write
    them (a re-serialiser would change their text)."""
    inner = orjson.dumps({"object": "file", "id": "file_1", "url": FILE_URL}).decode()
    head = f'{{\n  "id": "{name}",\n  "amount": 1.0e2,\n  "rate": 0.50,\n'
    return (head + f'  "data": {{"object": {inner}}}\n}}').encode()


def _moved(body: bytes) -> bytes:
    return body.replace(STRIPE_FILES.encode(), BASE.encode())


def test_events_answers_are_rewritten_byte_for_byte(stack: Stack, crafted: Crafted) -> None:
    paths = ["/v1/events", "/v1/events/evt_1", "/v2/core/events", "/v2/core/events/evt_2"]
    for path in paths:
        crafted.answers[path] = (_file_doc(path), _JSON, False)
    for path in paths:
        got = _get(stack, path)
        # only the URL's bytes changed: 1.0e2 and 0.50 are as Stripe wrote them
        assert got.status_code == 200 and got.content == _moved(_file_doc(path)), path
        assert crafted.headers[-1]["Accept-Encoding"] == "identity", path


def _post(stack: Stack, path: str, form: str, **headers: str) -> requests.Response:
    return requests.post(
        stack.gateway_url + path,
        data=form,
        headers={
            "Authorization": f"Bearer {BILLING_KEY}",
            "Content-Type": "application/x-www-form-urlencoded",
            **headers,
        },
        timeout=10,
    )


def test_a_write_asking_to_expand_in_its_form_body_is_rewritten(
    stack: Stack, crafted: Crafted
) -> None:
    body = _file_doc("dp_1")
    crafted.answers["/v1/disputes/dp_1"] = (body, _JSON, False)
    for form in [
        "expand[]=evidence.receipt",
        "evidence[product_description]=x&expand[0]=evidence.receipt",
        "%65xpand%5B%5D=evidence.receipt",  # percent-encoded name: what Stripe reads
        "expand=evidence.receipt",
    ]:
        got = _post(stack, "/v1/disputes/dp_1", form)
        assert got.status_code == 200 and got.content == _moved(body), form
    # no expand parameter (a value or another name that merely contains the word)
    for form in ["metadata[expand]=1", "description=expand[]", "expandx=1", "a=1"]:
        got = _post(stack, "/v1/disputes/dp_1", form)
        assert got.status_code == 200 and got.content == body, form
    # a form body larger than the plugin looks into streams untouched
    big = "metadata[pad]=" + "x" * (FORM_MAX_BYTES + 10) + "&expand[]=evidence.receipt"
    got = _post(stack, "/v1/disputes/dp_1", big)
    assert got.status_code == 200 and got.content == body


def test_expand_must_be_a_parameter_name_to_read_an_answer_whole(
    stack: Stack, crafted: Crafted
) -> None:
    body = _file_doc("cus_1")
    crafted.answers["/v1/customers/cus_1"] = (body, _JSON, False)
    for query in ["q=expand", "expandx=1", "metadata[expand]=1", "a=expand%5B%5D"]:
        got = _get(stack, f"/v1/customers/cus_1?{query}")
        assert got.content == body, query
        assert crafted.headers[-1].get("Accept-Encoding") != "identity", query
    for query in ["expand[]=x", "expand=x", "%65xpand%5B0%5D=x", "a=1&expand[1]=y"]:
        got = _get(stack, f"/v1/customers/cus_1?{query}")
        assert got.content == _moved(body), query
        assert crafted.headers[-1]["Accept-Encoding"] == "identity", query


def test_the_audit_logs_no_form_it_would_not_have(stack: Stack) -> None:
    # file_urls asks for a copy of write bodies up to FORM_MAX_BYTES; the audit still logs
    # the parameters of bodies within its own params_max_bytes only
    upstream = Crafted()
    served = stack.loop.run(start_app(upstream.app()))
    stack._runners.append(served.runner)
    stack.start_gateway(
        upstream={"api": served.url, "files": served.url},
        plugins={
            "audit": {"path": str(stack.audit_path), "params_max_bytes": 64},
            "file_urls": {"public_base_url": BASE},
        },
    )
    body = _file_doc("dp_1")
    upstream.answers["/v1/disputes/dp_1"] = (body, _JSON, False)
    form = "metadata[note]=" + "x" * 100 + "&expand[]=evidence.receipt"
    got = _post(stack, "/v1/disputes/dp_1", form)
    assert got.content == _moved(body)
    line = stack.audit_lines(at_least=1, timeout=10)[-1]
    assert line["file_urls_rewritten"] == 1
    assert "metadata" not in line["params"] and "x" * 100 not in json.dumps(line)
    assert line["request_body"] == f"[body {len(form)} bytes, not logged]"


def test_what_covers_reads() -> None:
    settings = FileUrlsSettings(public_base_url=BASE)
    assert not settings.covers("POST", "/v1/disputes/dp_1", "")
    assert settings.covers("POST", "/v1/disputes/dp_1", "", b"expand[]=evidence.receipt")
    assert settings.covers("POST", "/v1/disputes/dp_1", "expand[]=evidence")
    assert settings.covers("GET", "/v1/events", "") and settings.covers("GET", "/v1/events/e", "")
    assert settings.covers("GET", "/v2/core/events/evt_1", "")
    for path in ["/v1/files/file_1/contents", "/v1/files/file_1/contents/x"]:
        assert not settings.covers("GET", path, "expand[]=x", b"expand[]=x")
    assert asks_to_expand("a=1&expand%5B%5D=x") and not asks_to_expand("expandable=1")
    assert not asks_to_expand("=expand&x=expand[]")


def test_a_public_base_url_must_be_an_address(stack: Stack) -> None:
    for bad in ["gateway:8080", "ftp://gw", "https://user@gw", "https://gw/?x=1", "https://gw/#a"]:
        with pytest.raises(ConfigError) as info:
            stack.start_gateway(plugins={"file_urls": {"public_base_url": bad}})
        assert info.value.path == "plugins.file_urls.public_base_url", bad


def test_a_5_mb_download_streams_even_when_its_answer_would_be_read(stack: Stack) -> None:
    # expand in the query makes any route one whose JSON answers are read, but file
    # contents never are: they stream, the first half before the upstream sends the second
    stack.start_gateway(plugins={"file_urls": {"public_base_url": BASE}})
    files = stack.upstreams["files"]
    release = stack.loop.call(asyncio.Event)
    files.release_download = release
    size = 5 * 1024 * 1024
    url = f"{stack.gateway_url}/v1/files/file_1Nabcdefghij/contents?size={size}&expand[]=x"
    with requests.get(
        url, headers={"Authorization": f"Bearer {BILLING_KEY}"}, stream=True, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(size)
        received = 0
        chunks = response.iter_content(64 * 1024)
        while received < size // 2:
            received += len(next(chunks))
        assert files.download_progress, "the upstream should be paused mid-body"
        stack.loop.call(release.set)
        for chunk in chunks:
            received += len(chunk)
    assert received == size
    # never read whole, so the client's own Accept-Encoding went up
    assert files.last().headers.get("Accept-Encoding") != "identity"


# --------------------------------------------------------------------------- the rewrite


def test_the_rewrite_survives_hostile_json() -> None:
    def nested(depth: int) -> bytes:
        inner = b'{"object": "file", "url": "' + FILE_URL.encode() + b'"}'
        return b"[" * depth + inner + b"]" * depth

    for depth in (200, 900):  # no recursion: only the URL's bytes are replaced
        new, count = rewrite_file_urls(nested(depth), ORIGINS, BASE)
        assert count == 1 and new == nested(depth).replace(STRIPE_FILES.encode(), BASE.encode())
    # deeper than the parser reads: left as it is, without a failure
    assert rewrite_file_urls(nested(5000), ORIGINS, BASE) == (None, 0)
    assert rewrite_file_urls(b"not json files.stripe.com", ORIGINS, BASE) == (None, 0)
    huge = b'{"n": 123456789012345678901234567890, "u": "files.stripe.com"}'
    assert rewrite_file_urls(huge, ORIGINS, BASE) == (None, 0)
    # what a parser reads decides: the last of repeated keys, escapes in keys, quotes in keys
    url = orjson.dumps(FILE_URL)
    moved = orjson.dumps(BASE + FILE_URL.removeprefix(STRIPE_FILES))
    for body, changed in [
        (b'{"object": "file", "url": ' + url + b', "url": 5}', False),
        (b'{"url": 5, "object": "file", "url": ' + url + b"}", True),
        (b'{"object": "file", "url": ' + url + b', "object": "x"}', False),
        (b'{"\\u006fbject": "fil\\u0065", "\\u0075rl": ' + url + b"}", True),
        (b'{"object": "file", "ab\\"url": ' + url + b', "u\\"": [' + url + b"]}", False),
        (b'[{"object": "file", "x": {"url": ' + url + b'}}, {"url": ' + url + b"}]", False),
    ]:
        new, count = rewrite_file_urls(body, ORIGINS, BASE)
        if changed:
            assert count == 1 and new == body.replace(url, moved), body
        else:
            assert (new, count) == (None, 0), body
    # no files host in the bytes: not even parsed
    assert rewrite_file_urls(b"{", ORIGINS, BASE) == (None, 0)
    # Stripe's two-space indentation is kept
    pretty = json.dumps({"object": "file", "url": FILE_URL}, indent=2).encode()
    new, _ = rewrite_file_urls(pretty, ORIGINS, BASE)
    assert new is not None and new.startswith(b'{\n  "object": "file"')


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from([FILE_URL, "https://evil.example/v1/files/f/contents", "file", "url"]),
)
_FILES = st.builds(
    lambda url, extra: {**extra, "object": "file", "url": url},
    st.sampled_from(
        [FILE_URL, FILE_URL + "?a=b", "https://evil.example/v1/files/file_1/contents", None]
    ),
    st.dictionaries(st.sampled_from(["id", "size", "purpose"]), _SCALARS, max_size=3),
)
_DOCS = st.recursive(
    st.one_of(_SCALARS, _FILES),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=25,
)


def _expected(value: Any) -> Any:
    """``value`` with what the rewrite should change changed (independently of it)."""
    if isinstance(value, list):
        return [_expected(v) for v in value]
    if isinstance(value, dict):
        out = {k: _expected(v) for k, v in value.items()}
        url = value.get("url")
        if value.get("object") == "file" and isinstance(url, str) and url.startswith(FILE_URL):
            out["url"] = BASE + url.removeprefix(STRIPE_FILES)
        return out
    return value


@settings(max_examples=300, deadline=None)
@given(_DOCS, st.booleans())
def test_the_rewrite_changes_only_file_urls(doc: Any, pretty: bool) -> None:
    body = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if pretty else 0)
    new, count = rewrite_file_urls(body, ORIGINS, BASE)
    expected = _expected(doc)
    if new is None:
        assert count == 0 and expected == doc
        return
    assert count > 0
    assert orjson.loads(new) == expected  # valid JSON, every other value as it was
    assert list(_keys(orjson.loads(new))) == list(_keys(doc))  # and in the same order


# Documents written the way any JSON writer might: each is a tree of (kind, value) nodes
# that _write turns into text, recording where each url of a file object that must change
# is, so the expected answer is built from the text itself, not by the code under test.
_NUMBERS = st.sampled_from(["0", "-0", "7", "1.0e2", "1E+2", "0.50", "100.00", "-1.5e-3", "12e0"])
_WORDS = st.sampled_from(["true", "false", "null"])
_STRINGS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["file", "url", "object", FILE_URL, f"{STRIPE_FILES}/links/a"]),
)
_URLS = st.sampled_from(
    [FILE_URL, FILE_URL + "?a=b", "https://evil.example/v1/files/file_1/contents", "file"]
)
_LEAVES = st.one_of(
    st.tuples(st.just("raw"), st.one_of(_NUMBERS, _WORDS)),
    st.tuples(st.just("str"), _STRINGS),
)


_TREES = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.tuples(st.just("arr"), st.lists(children, max_size=4)),
        st.tuples(
            st.just("obj"),
            st.lists(
                st.tuples(_STRINGS.filter(lambda k: k not in ("url", "object")), children),
                max_size=4,
                unique_by=lambda pair: pair[0],  # (a repeated key: the last one counts)
            ),
            st.one_of(
                st.none(),
                st.tuples(st.sampled_from(["file", "file_link"]), _URLS, st.booleans()),
            ),
            st.booleans(),
        ),
    ),
    max_leaves=20,
)


class _Writer:
    def __init__(self, draw_space: Iterator[str], escape_slashes: bool, ascii_only: bool) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.spans: list[tuple[int, int, str]] = []  # (start, end, new url) in characters
        self.space = draw_space
        self.escape_slashes = escape_slashes
        self.ascii_only = ascii_only

    def put(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)

    def string(self, value: str) -> str:
        text = json.dumps(value, ensure_ascii=self.ascii_only)
        return text.replace("/", "\\/") if self.escape_slashes else text

    def write(self, node: Any) -> None:
        kind = node[0]
        if kind == "raw":
            self.put(node[1])
        elif kind == "str":
            self.put(self.string(node[1]))
        elif kind == "arr":
            self.put("[" + next(self.space))
            for i, child in enumerate(node[1]):
                if i:
                    self.put("," + next(self.space))
                self.write(child)
            self.put(next(self.space) + "]")
        else:
            _, pairs, fields, url_first = node
            entries: list[tuple[str, Any]] = [(self.string(k), v) for k, v in pairs]
            if fields is not None:
                type_, url, escaped_key = fields
                key = '"\\u0075rl"' if escaped_key else '"url"'
                url_entry = (key, ("url", type_, url))
                object_entry = ('"object"', ("str", type_))
                at = len(entries) // 2
                both = [url_entry, object_entry] if url_first else [object_entry, url_entry]
                entries[at:at] = both
            self.put("{" + next(self.space))
            for i, (key, value) in enumerate(entries):
                if i:
                    self.put("," + next(self.space))
                self.put(key + next(self.space) + ":" + next(self.space))
                if value[0] == "url":
                    _, type_, url = value
                    start = self.size
                    self.put(self.string(url))
                    if type_ == "file" and url.startswith(FILE_URL):
                        new = BASE + url.removeprefix(STRIPE_FILES)
                        self.spans.append((start, self.size, new))
                else:
                    self.write(value)
            self.put(next(self.space) + "}")


@settings(max_examples=400, deadline=None)
@given(
    _TREES,
    st.lists(st.sampled_from(["", " ", "\n  ", "\t"]), min_size=1, max_size=8),
    st.booleans(),
    st.booleans(),
)
def test_only_the_file_urls_bytes_change(
    tree: Any, spaces: list[str], escape_slashes: bool, ascii_only: bool
) -> None:
    writer = _Writer(itertools.cycle(spaces), escape_slashes, ascii_only)
    writer.write(tree)
    text = "".join(writer.parts)
    body = text.encode()
    # the expected answer: the written text with each such url's string replaced, and
    # nothing else (character offsets become byte offsets through the prefix's encoding)
    expected = text
    for start, end, new in reversed(writer.spans):
        expected = expected[:start] + orjson.dumps(new).decode() + expected[end:]
    new_body, count = rewrite_file_urls(body, ORIGINS, BASE)
    assert count == len(writer.spans)
    if count == 0:
        assert new_body is None
    else:
        assert new_body == expected.encode()


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


# --------------------------------------------------------------------------- without a server


async def test_the_plugin_alone_with_plugin_test() -> None:
    from gateway.testing import PluginTest
    from plugins.file_urls import FileUrlsPlugin

    body = orjson.dumps({"object": "file", "id": "file_1", "url": FILE_URL})
    settings = {"file_urls": {"public_base_url": BASE}}
    async with PluginTest(FileUrlsPlugin(), settings=settings) as t:
        ctx = t.context("GET", "/v1/files/file_1", team="billing")
        assert await t.request(ctx) is None
        assert (await t.upstream_headers(ctx))["Accept-Encoding"] == "identity"
        got = orjson.loads(await t.response_body(ctx, body))
        assert got["url"] == f"{BASE}/v1/files/file_1Nabcdefghij/contents"
        assert t.audit_fields(ctx)["file_urls_rewritten"] == 1
        other = t.context("GET", "/v1/customers/cus_1", team="billing")
        assert await t.request(other) is None and other.response_body_limit == 0
        assert await t.response_body(other, body) == body
    async with PluginTest(FileUrlsPlugin()) as t:  # no public_base_url: off
        ctx = t.context("GET", "/v1/files/file_1", team="billing")
        await t.request(ctx)
        assert ctx.response_body_limit == 0 and "Accept-Encoding" not in (
            await t.upstream_headers(ctx)
        )
