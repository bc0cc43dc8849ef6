"""Raw requests against a real gateway: the invariants of tests/fuzzing.py, on a fixed,
derandomized seed set plus the known attacks. ``bench/fuzz.py`` runs the same for longer."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings

from tests.fuzzing import (
    GZIP_BODY,
    TRAP,
    FuzzRequest,
    FuzzStack,
    fuzz_stack,
    request_sequences,
    run_sequence,
)
from tests.helpers import ANALYTICS_KEY, BILLING_KEY, LoopThread

SIGMA = b"Bearer " + ANALYTICS_KEY.encode()
BILLING = b"Bearer " + BILLING_KEY.encode()
CUSTOMER = b"/v1/customers/cus_1Nabcdefghij"


def _req(
    method: bytes,
    target: bytes,
    *headers: tuple[bytes, bytes],
    form: str = "origin",
    auth: tuple[str | None, ...] = ("sigma",),
    body: bytes = b"",
) -> FuzzRequest:
    if not any(name.lower() == b"host" for name, _ in headers):
        headers = ((b"Host", b"x"), *headers)
    return FuzzRequest(method, target, b"HTTP/1.1", headers, body, False, auth, form)


@pytest.fixture(scope="module")
def fuzz(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    with fuzz_stack(loop_thread, tmp_path_factory.mktemp("fuzz")) as fs:
        yield fs


ABSOLUTE_FORM = [
    _req(
        b"GET",
        b"munity://x/v1/sigma/scheduled_query_runs",
        (b"Host", b"x"),
        (b"Authorization", SIGMA),
        form="absolute",
    )
]
TRAP_AUTHORITY = [
    _req(
        b"GET",
        b"http://" + TRAP + b"/v1/sigma/scheduled_query_runs",
        (b"Host", TRAP),
        (b"Authorization", SIGMA),
        form="absolute",
    )
]
DUPLICATE_ACCOUNT = [
    _req(
        b"GET",
        b"/v1/sigma/scheduled_query_runs",
        (b"Authorization", SIGMA),
        (b"Stripe-Account", b"acct_allowed000001"),
        (b"Stripe-Account", b"acct_evil00000001"),
    )
]
DUPLICATE_CONTEXT = [
    _req(
        b"GET",
        b"/v1/sigma/scheduled_query_runs",
        (b"Authorization", SIGMA),
        (b"Stripe-Context", b"acct_allowed000001"),
        (b"stripe-context", b"acct_evil00000001"),
    )
]
DUPLICATE_AUTHORIZATION = [
    _req(
        b"GET",
        CUSTOMER,
        (b"Authorization", BILLING),
        (b"Authorization", SIGMA),
        auth=("billing", "sigma"),
    )
]
CONNECTION_VERSION = [
    # fetched without a Stripe-Version (Connection strips it), keyed with the client's one
    _req(
        b"GET",
        CUSTOMER,
        (b"Authorization", BILLING),
        (b"Stripe-Version", b"2020-08-27"),
        (b"Connection", b"Stripe-Version"),
        auth=("billing",),
    ),
    _req(
        b"GET",
        CUSTOMER,
        (b"Authorization", BILLING),
        (b"Stripe-Version", b"2020-08-27"),
        auth=("billing",),
    ),
]
NON_UTF8_KEY = [
    _req(b"GET", CUSTOMER, (b"Authorization", b"Bearer gw_test_\xffbilling"), auth=(None,))
]
NON_UTF8_BASIC = [
    _req(
        b"GET",
        CUSTOMER,
        (b"Authorization", b"Basic " + base64.b64encode(b"\xff:")),
        auth=(None,),
    )
]
CONNECT = [_req(b"CONNECT", b"host:443", (b"Host", b"host:443"), form="authority")]
OPTIONS_ASTERISK = [_req(b"OPTIONS", b"*", (b"Host", b"x"), form="asterisk")]
NEWLINE_IN_PATH = [_req(b"GET", b"/v1/sigma/%0a", (b"Authorization", SIGMA))]
# a gzip body must reach Stripe as sent, with its Content-Encoding (not inflated)
GZIP_POST = [
    _req(
        b"POST",
        b"/v1/customers",
        (b"Authorization", BILLING),
        (b"Content-Encoding", b"gzip"),
        (b"Content-Length", b"%d" % len(GZIP_BODY)),
        auth=("billing",),
        body=GZIP_BODY,
    )
]

# RFC 9112 §6.1: HTTP/1.0 has no transfer codings (a 1.0 hop would frame this otherwise)
HTTP10_CHUNKED = [
    FuzzRequest(
        b"POST",
        b"/v1/customers",
        b"HTTP/1.0",
        (
            (b"Host", b"x"),
            (b"Authorization", BILLING),
            (b"Connection", b"keep-alive"),
            (b"Transfer-Encoding", b"chunked"),
        ),
        b"a=1",
        True,
        ("billing",),
        "origin",
    )
]

KNOWN_ATTACKS = {
    "absolute_form": ABSOLUTE_FORM,
    "trap_authority": TRAP_AUTHORITY,
    "duplicate_account": DUPLICATE_ACCOUNT,
    "duplicate_context": DUPLICATE_CONTEXT,
    "duplicate_authorization": DUPLICATE_AUTHORIZATION,
    "connection_version": CONNECTION_VERSION,
    "non_utf8_key": NON_UTF8_KEY,
    "non_utf8_basic": NON_UTF8_BASIC,
    "connect": CONNECT,
    "options_asterisk": OPTIONS_ASTERISK,
    "newline_in_path": NEWLINE_IN_PATH,
    "gzip_body": GZIP_POST,
    "http10_chunked": HTTP10_CHUNKED,
}


@pytest.mark.parametrize("name", list(KNOWN_ATTACKS))
def test_known_attack(fuzz: FuzzStack, name: str) -> None:
    run_sequence(fuzz, KNOWN_ATTACKS[name])


@settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(requests=request_sequences())
@example(requests=ABSOLUTE_FORM)
@example(requests=DUPLICATE_ACCOUNT)
@example(requests=CONNECTION_VERSION)
@example(requests=NON_UTF8_KEY)
@example(requests=CONNECT)
@example(requests=OPTIONS_ASTERISK)
@example(requests=NEWLINE_IN_PATH)
@example(requests=GZIP_POST)
@example(requests=HTTP10_CHUNKED)
def test_raw_requests_keep_the_invariants(fuzz: FuzzStack, requests: list[FuzzRequest]) -> None:
    run_sequence(fuzz, requests)
