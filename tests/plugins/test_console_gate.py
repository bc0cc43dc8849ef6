"""The console page behind the admin token, over real sockets: without the session cookie
``GET /`` is the sign-in page and the console's script and stylesheet are refused; only the
admin token gets a cookie; the cookie opens the page and nothing else (every ``/admin/``
path, purge and replay included, still needs the token); a forged, tampered or expired
cookie, or one from before the token changed, is refused; nothing of the token is logged."""

from __future__ import annotations

import hashlib
import re
import string
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.console.session import COOKIE, KEY_BYTES, Sessions
from tests.fake_stripe import FakeStripe
from tests.helpers import BILLING_KEY, Served, Stack, digest, free_port
from tests.plugins.test_console import (
    ADMIN_TOKEN,
    AUTH,
    CUSTOMER,
    client,
    plugins_of,
    signed_in,
    start,
    summary_with,
)
from tests.serving import GatewayConfigFile, serve_gateway

SESSION = "/admin/console/session"
#: the console's own files: never served without a valid cookie
GATED = ("/", "/console/console.js", "/console/console.css")
NEW_TOKEN = "adm_test_console_0000000000000002"


def cookie_of(response: requests.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    jar.load(response.headers.get("Set-Cookie", ""))
    return jar


def is_console(response: requests.Response) -> bool:
    """Whether ``response`` is one of the console's own files (the page, script or style)."""
    return response.status_code == 200 and (
        'id="console"' in response.text
        or "showSummary" in response.text  # console.js
        or "#audit td" in response.text  # console.css
    )


def with_cookie(admin: str, path: str, value: str, method: str = "GET") -> requests.Response:
    return requests.request(
        method, admin + path, headers={"Cookie": f"{COOKIE}={value}"}, timeout=5
    )


# ------------------------------------------------------------------ the happy path


def test_without_a_cookie_the_page_is_the_sign_in_form(stack: Stack) -> None:
    admin = start(stack)
    page = requests.get(admin + "/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'id="login-form"' in page.text and not is_console(page)
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert page.headers["Cache-Control"] == "no-store"
    assert re.findall(r"<script[^>]*>([^<]*)</script>", page.text) == [""]  # no inline script
    assert re.findall(r'src="([^"]+)"', page.text) == ["/console/login.js"]
    for path in ("/console/console.js", "/console/console.css"):
        refused = requests.get(admin + path, timeout=5)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "console_signed_out"
        assert refused.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/console/login.js", "/console/login.css"):
        assert requests.get(admin + path, timeout=5).status_code == 200, path
    script = requests.get(admin + "/console/login.js", timeout=5).text
    assert "innerHTML" not in script and "/admin/console/session" in script


def test_the_token_gets_a_cookie_for_the_page(stack: Stack) -> None:
    admin = start(stack)
    answer = requests.post(admin + SESSION, headers=AUTH, timeout=5)
    assert answer.status_code == 200 and answer.json()["object"] == "console_session"
    assert answer.headers["Cache-Control"] == "no-store"
    header = answer.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "secure" not in attributes  # the admin listener speaks plain HTTP
    morsel = cookie_of(answer)[COOKIE]
    assert (morsel["samesite"], morsel["path"], morsel["max-age"]) == ("Strict", "/", "43200")
    value = morsel.value
    assert ADMIN_TOKEN not in value and digest(ADMIN_TOKEN) not in value
    for path in GATED:
        assert is_console(with_cookie(admin, path, value)), path


def test_a_shorter_session_setting_is_the_cookies_lifetime(stack: Stack) -> None:
    admin = start(stack, plugins={"console": {"session_hours": 0.5}})
    answer = requests.post(admin + SESSION, headers=AUTH, timeout=5)
    assert cookie_of(answer)[COOKIE]["max-age"] == "1800"


def test_signing_out_clears_the_cookie_of_a_signed_in_browser_only(stack: Stack) -> None:
    admin = start(stack)
    assert requests.post(admin + "/console/logout", timeout=5).status_code == 401
    browser = signed_in(admin)
    out = browser.post(admin + "/console/logout", timeout=5)
    assert out.status_code == 200
    assert cookie_of(out)[COOKIE]["max-age"] == "0"
    assert COOKIE not in browser.cookies
    assert not is_console(browser.get(admin + "/", timeout=5))


def test_a_reload_keeping_the_token_keeps_the_browsers_signed_in(stack: Stack) -> None:
    admin = start(stack)
    browser = signed_in(admin)
    assert stack.config is not None
    same = {"port": stack.config.admin.port, "token_sha256": digest(ADMIN_TOKEN)}
    assert stack.reload(admin=same, plugins=plugins_of(stack))["reloaded"]
    assert is_console(browser.get(admin + "/", timeout=5))


def test_a_token_change_ends_every_session(stack: Stack) -> None:
    admin = start(stack)
    browser = signed_in(admin)
    value = browser.cookies[COOKIE]
    assert is_console(browser.get(admin + "/", timeout=5))
    assert stack.config is not None
    rotated = {"port": stack.config.admin.port, "token_sha256": digest(NEW_TOKEN)}
    assert stack.reload(admin=rotated, plugins=plugins_of(stack))["reloaded"]
    for path in GATED:
        assert not is_console(with_cookie(admin, path, value)), path
    assert requests.post(admin + SESSION, headers=AUTH, timeout=5).status_code == 401
    fresh = requests.post(
        admin + SESSION, headers={"Authorization": f"Bearer {NEW_TOKEN}"}, timeout=5
    )
    assert is_console(with_cookie(admin, "/", cookie_of(fresh)[COOKIE].value))
    # and a token taken away (no digest configured) leaves no way in
    revoked = {"port": stack.config.admin.port}
    assert stack.reload(admin=revoked, plugins=plugins_of(stack))["reloaded"]
    assert not is_console(with_cookie(admin, "/", cookie_of(fresh)[COOKIE].value))


# ------------------------------------------------------------------ the adversary


WRONG = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer "},
    {"Authorization": ADMIN_TOKEN},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": f"Bearer {digest(ADMIN_TOKEN)}"},
    {"Cookie": f"token={ADMIN_TOKEN}"},
]


@pytest.mark.parametrize("headers", WRONG)
def test_anything_but_the_token_gets_no_cookie(stack: Stack, headers: dict[str, str]) -> None:
    admin = start(stack)
    refused = requests.post(admin + SESSION, headers=headers, timeout=5)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "admin_unauthorized"
    assert "Set-Cookie" not in refused.headers


@pytest.mark.parametrize(
    "form",
    [
        {"data": {"token": ADMIN_TOKEN}},
        {"data": {"Authorization": f"Bearer {ADMIN_TOKEN}"}},
        {"json": {"token": ADMIN_TOKEN}},
        {"data": f"Authorization=Bearer {ADMIN_TOKEN}", "headers": {"Content-Type": "text/plain"}},
    ],
)
def test_another_sites_form_cannot_sign_a_browser_in(stack: Stack, form: dict[str, Any]) -> None:
    """Login CSRF: a form (or a no-cors fetch) from another origin can send a body and
    simple headers, never ``Authorization``; the token in a body is not taken."""
    admin = start(stack)
    sent = dict(form)
    headers = {"Origin": "https://evil.example", **sent.pop("headers", {})}
    refused = requests.post(admin + SESSION, headers=headers, timeout=5, **sent)
    assert refused.status_code == 401 and "Set-Cookie" not in refused.headers
    # and the browser's preflight for a cross-origin request with the header is not allowed
    preflight = requests.options(
        admin + SESSION,
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=5,
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


ADMIN_CALLS = [
    ("GET", "/admin/console/summary"),
    ("GET", "/admin/console/audit"),
    ("GET", "/admin/console/charts/requests.svg"),
    ("GET", "/admin/teams"),
    ("GET", "/admin/config"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/cache/purge"),
    ("POST", "/admin/webhooks/replay"),
    ("POST", SESSION),  # a cookie cannot renew itself either
]


def test_the_cookie_opens_no_admin_endpoint(stack: Stack) -> None:
    admin = start(stack)
    billing = client(stack, BILLING_KEY)
    billing.v1.customers.retrieve(CUSTOMER)
    browser = signed_in(admin)
    assert is_console(browser.get(admin + "/", timeout=5))
    for method, path in ADMIN_CALLS:
        data = {"object_id": CUSTOMER, "event_id": "evt_1", "subscription": "billing"}
        response = browser.request(method, admin + path, json=data, timeout=5)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == "admin_unauthorized"
    billing.v1.customers.retrieve(CUSTOMER)
    summary_with(admin, 2)
    audit = requests.get(admin + "/admin/console/audit", headers=AUTH, timeout=5).json()
    assert audit["data"][0]["cache"] == "HIT"  # the purge with the cookie purged nothing


def test_forged_and_tampered_cookies_are_refused(stack: Stack) -> None:
    admin = start(stack)
    good = signed_in(admin).cookies[COOKIE]
    expires, nonce, mac = good.split(".")
    past, _ = Sessions(b"\x00" * KEY_BYTES, 1.0).issue(digest(ADMIN_TOKEN), 1_000_000.0)
    forged = [
        "",
        ADMIN_TOKEN,
        digest(ADMIN_TOKEN),
        hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
        f"{expires}.{nonce}",
        f"{expires}.{nonce}.",
        f"{int(expires) + 1}.{nonce}.{mac}",  # a later expiry
        f"{int(expires) - 3600}.{nonce}.{mac}",
        f"{expires}.{nonce[::-1]}.{mac}",
        f"{expires}.{nonce}.{mac[:-1]}",
        f"{expires}.{nonce}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        f"{expires}.{nonce}.{mac.lower()}",
        f"9999999999.{nonce}.{mac}",
        good + ".",
        "." + good,
        past,  # the right shape, another key, long expired
        Sessions(b"\x01" * KEY_BYTES, 3600.0).issue(digest(ADMIN_TOKEN), 2e9)[0],
    ]
    for value in forged:
        for path in GATED:
            response = with_cookie(admin, path, value)
            assert not is_console(response), (value, path)
    assert is_console(with_cookie(admin, "/", good))  # the real one still works


def test_nothing_of_the_token_is_logged(stack: Stack) -> None:
    admin = start(stack)
    requests.post(admin + SESSION, headers={"Authorization": "Bearer wrong"}, timeout=5)
    requests.post(admin + SESSION, headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"}, timeout=5)
    browser = signed_in(admin)
    value = browser.cookies[COOKIE]
    browser.get(admin + "/", timeout=5)
    browser.post(admin + "/console/logout", timeout=5)
    client(stack, BILLING_KEY).v1.customers.retrieve(CUSTOMER)
    summary_with(admin, 1)
    (signed,) = stack.error_events("console_signed_in")
    assert signed["level"] == "info" and signed["remote"] == "127.0.0.1"
    written = stack.errors_path.read_text() + stack.audit_path.read_text()
    for secret in (ADMIN_TOKEN, ADMIN_TOKEN + "x", digest(ADMIN_TOKEN), value, value[-20:]):
        assert secret not in written


COOKIE_TEXT = st.text(string.ascii_letters + string.digits + "-_.=+/", max_size=90)


def test_no_request_without_a_valid_cookie_gets_the_console(stack: Stack) -> None:
    admin = start(stack)  # one gateway for every example
    good = signed_in(admin).cookies[COOKIE]
    assert good is not None

    @settings(max_examples=150, deadline=None)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        made_up = data.draw(COOKIE_TEXT, label="made up")
        position = data.draw(st.integers(0, len(good) - 1), label="position")
        char = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_."))
        changed = good[:position] + char + good[position + 1 :]
        value = data.draw(st.sampled_from([made_up, changed, good[:position]]), label="value")
        name = data.draw(st.sampled_from([COOKIE, COOKIE.upper(), "session", COOKIE + "_"]))
        path = data.draw(st.sampled_from(GATED), label="path")
        if value == good and name == COOKIE:
            return
        response = requests.get(admin + path, headers={"Cookie": f"{name}={value}"}, timeout=5)
        assert not is_console(response)
        assert response.status_code == (200 if path == "/" else 401)

    check()
    assert is_console(with_cookie(admin, "/", good))


def test_with_workers_a_cookie_from_one_opens_the_page_on_every_one(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    admin_port = free_port()
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write(extra=f'[admin]\nport = {admin_port}\ntoken_sha256 = "{digest(ADMIN_TOKEN)}"\n')
    admin = f"http://127.0.0.1:{admin_port}"
    with serve_gateway(config.path, "--workers", "2"):
        answer = requests.post(admin + SESSION, headers=AUTH, timeout=10)
        value = cookie_of(answer)[COOKIE].value
        for _ in range(20):  # a fresh connection each: either worker may answer
            assert is_console(with_cookie(admin, "/", value))
        forged = value[:-1] + ("A" if value[-1] != "A" else "B")
        assert not is_console(with_cookie(admin, "/", forged))
