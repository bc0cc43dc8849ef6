"""Redaction in every log pipeline of a running gateway: audit, error log, stdlib logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import requests

from gateway.app import HOST
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
    route_stdlib_logging(app[HOST].log_processors)
    try:
        raise ValueError(f"bad key {LIVE_KEY} for card {CARD}")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    err = capfd.readouterr().err
    assert '"logger":"aiohttp.server"' in err and "Traceback" in err
    assert LIVE_KEY not in err and CARD not in err
