"""Redaction in every log pipeline of a running gateway: audit, error log, stdlib logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import requests

from gateway.keys import GENERATIONS
from gateway.logs import route_stdlib_logging
from tests.helpers import BILLING_KEY, Stack

CARD = "4242424242424242"
LIVE_KEY = "sk_live_51Habcdefghijklmnopqrstuv1234"


def test_the_audit_line_is_redacted(stack: Stack) -> None:
    stack.start_gateway()
    requests.get(f"{stack.gateway_url}/v1/customers/{CARD}", auth=(BILLING_KEY, ""), timeout=5)
    requests.get(
        f"{stack.gateway_url}/v1/customers",
        auth=(BILLING_KEY, ""),
        timeout=5,
        headers={"Stripe-Account": LIVE_KEY},
    )
    text = stack.audit_path.read_text() if stack.audit_lines(2) else ""
    assert CARD not in text and LIVE_KEY not in text
    assert "4242" in text  # the last four stay, for correlation
    assert "sk_live_" in text and "1234" in text


def test_the_error_log_is_redacted(stack: Stack) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack.start_gateway(upstream={"api": f"http://127.0.0.1:{port}"})
    response = requests.get(
        f"{stack.gateway_url}/v1/customers/{CARD}", auth=(BILLING_KEY, ""), timeout=5
    )
    assert response.status_code == 502
    assert stack.error_events("upstream_error")
    assert CARD not in stack.errors_path.read_text()


@pytest.fixture
def stdlib_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    logging.captureWarnings(False)


def test_stdlib_logs_go_through_the_same_processors(
    stack: Stack, stdlib_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    stack.start_gateway()
    app = stack._runners[-1].app  # type: ignore[attr-defined]
    assert app is not None
    route_stdlib_logging(app[GENERATIONS].current.host.log_processors)
    try:
        raise ValueError(f"bad key {LIVE_KEY} for card {CARD}")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    err = capfd.readouterr().err
    assert '"logger":"aiohttp.server"' in err and "Traceback" in err
    assert LIVE_KEY not in err and CARD not in err


# --------------------------------------------------------------------------- the traffic

FORM_WITH_CARD = (
    b"amount=2000&currency=usd&payment_method_data[type]=card"
    b"&payment_method_data[card][number]=" + CARD.encode() + b"&payment_method_data[card][cvc]=123"
    b"&payment_method_data[billing_details][email]=jenny%40example.com"
    b"&description=caf%C3%A9+%2B+%E2%82%AC&metadata%5Bnote%5D=a%26b%3Dc&expand[]=latest_charge"
)
JSON_WITH_CARD = (
    b'{"amount": 2000, "card": {"number": "' + CARD.encode() + b'", "cvc": "123"},'
    b' "name": "Jenny Rosen", "note": "caf\\u00e9 \xe2\x82\xac"}'
)


def _prepared(stack: Stack, kind: str) -> requests.PreparedRequest:
    url = f"{stack.gateway_url}/v1/payment_intents?expand%5B%5D=customer&q=a+b%2Bc&card={CARD}"
    auth = (BILLING_KEY, "")
    if kind == "form":
        request = requests.Request("POST", url, auth=auth, data=FORM_WITH_CARD, headers=_FORM)
    elif kind == "large_form":  # over params_max_bytes: copied, then the copy dropped
        body = FORM_WITH_CARD + b"&metadata[pad]=" + b"x" * 20_000
        request = requests.Request("POST", url, auth=auth, data=body, headers=_FORM)
    elif kind == "json":
        headers = {"Content-Type": "application/json"}
        request = requests.Request("POST", url, auth=auth, data=JSON_WITH_CARD, headers=headers)
    else:
        files = {"file": ("jenny-rosen-card.txt", b"card " + CARD.encode() + b"\r\n\x00\xff")}
        url = f"{stack.gateway_url}/v1/files"
        request = requests.Request("POST", url, auth=auth, files=files, data={"purpose": "x"})
    return request.prepare()


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("kind", ["form", "large_form", "json", "multipart"])
def test_bytes_are_unchanged_with_redaction_params_and_response_bodies_on(
    stack: Stack, kind: str
) -> None:
    stack.start_gateway(
        plugins={"audit": {"path": str(stack.audit_path), "params": True, "response_body": True}}
    )
    prepared = _prepared(stack, kind)
    with requests.Session() as session:
        response = session.send(prepared, timeout=5)
    assert response.status_code == 200
    upstream = stack.upstreams["files" if kind == "multipart" else "api"].last()
    assert isinstance(prepared.body, bytes) and prepared.path_url
    assert upstream.body == prepared.body  # what the client sent, byte for byte
    assert upstream.raw_path == prepared.path_url  # path and query string, as sent
    assert upstream.answer is not None and response.content == upstream.answer
    (line,) = stack.audit_lines(1)
    assert line["bytes_in"] == len(prepared.body)
    assert kind == "multipart" or line["params"]["q"] == "a b+c"
    described = {"large_form": "body {n} bytes, not logged", "multipart": "multipart {n} bytes"}
    if kind in described:
        assert line["request_body"] == "[" + described[kind].format(n=len(prepared.body)) + "]"
    else:
        assert line["params"]["amount"] == (2000 if kind == "json" else "2000")
    assert line["response_body"]["echo"]["method"] == "POST"
    assert CARD not in stack.audit_path.read_text()
