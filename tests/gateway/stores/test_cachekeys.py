"""What the cache may store and the keys it uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.stores.cachekeys import cache_key, is_cacheable_retrieve, normal_query, object_ids_in

ROUTES = json.loads((Path(__file__).parents[2] / "data" / "stripe_routes.json").read_text())[
    "routes"
]
NEVER = ("/v1/events/", "/v2/core/events/")


def _concrete(template: str) -> str:
    return re.sub(r"\{\w+\}", "obj_1Nabcdefghij", template)


@pytest.mark.parametrize(("method", "template"), ROUTES, ids=lambda v: str(v))
def test_every_stripe_route_is_classified(method: str, template: str) -> None:
    # a retrieve of one object is a GET whose template ends in an id placeholder;
    # events and everything else (lists, searches, balance, file contents, PDFs) are not
    expected = method == "GET" and template.endswith("}") and not template.startswith(NEVER)
    assert is_cacheable_retrieve(method, _concrete(template)) is expected


@pytest.mark.parametrize(
    "path",
    [
        "/v1/balance",
        "/v1/customers",
        "/v1/customers/search",
        "/v1/files/file_1Nabcdefgh/contents",
        "/v1/quotes/qt_1Nabcdefgh/pdf",
        "/v1/webhook_endpoints",
        "/v1/events/evt_1Nabcdefgh",
        "/v1/reporting/report_types/balance.summary.1",
    ],
)
def test_never_cached(path: str) -> None:
    assert not is_cacheable_retrieve("GET", path)


def test_writes_are_never_retrieves() -> None:
    for method in ("POST", "DELETE", "HEAD", "PUT", "PATCH"):
        assert not is_cacheable_retrieve(method, "/v1/customers/cus_1Nabcdefghij")


def test_expand_forms_and_order_make_one_key() -> None:
    forms = [
        "expand[]=a&expand[]=b",
        "expand[]=b&expand[]=a",
        "expand[0]=a&expand[1]=b",
        "expand%5B%5D=a&expand%5B%5D=b",
        "expand%5B0%5D=b&expand%5B1%5D=a",
        "expand[]=a&expand[]=b&expand[]=a",
    ]
    assert len({normal_query(q) for q in forms}) == 1
    assert normal_query("expand[]=a") != normal_query("expand[]=b")
    assert normal_query("b=2&a=1") == normal_query("a=1&b=2")


def _key(**overrides: str | None) -> str:
    base: dict[str, str | None] = {
        "credential": "sk_test_1",
        "account": None,
        "context": None,
        "version": None,
        "path": "/v1/customers/cus_1Nabcdefghij",
        "query_string": "",
    }
    base.update(overrides)
    return cache_key(**base)  # type: ignore[arg-type]


def test_key_partitions() -> None:
    plain = _key()
    assert _key() == plain
    for change in (
        {"credential": "sk_test_2"},
        {"account": "acct_1"},
        {"context": "acct_1"},
        {"version": "2024-06-20"},
        {"path": "/v1/customers/cus_2Nabcdefghij"},
        {"query_string": "expand[]=default_source"},
    ):
        assert _key(**change) != plain, change


def test_object_ids_in_paths() -> None:
    assert object_ids_in("/v1/customers/cus_1Nabcdefghij/sources/src_1Nabcdefghij") == [
        "cus_1Nabcdefghij",
        "src_1Nabcdefghij",
    ]
    assert object_ids_in("/v1/identity/verification_sessions/vs_1Nabcdefghij/cancel") == [
        "vs_1Nabcdefghij"
    ]
    assert object_ids_in("/v1/customers") == []
