"""The built-in demo's webhooks: the sandbox's events come back in through the gateway's
ingress and reach the demo's receiver, re-signed per team and verified with the stripe SDK."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import stripe
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.serve.demo import DemoOptions, _banner, _demo_config, _demo_document
from gateway.serve.demo_webhooks import SUBSCRIPTIONS, receiver_app
from gateway.webhooks.events import sign
from tests.gateway.serve.test_demo import EPHEMERAL, _start

#: ample: the whole round trip takes milliseconds on an idle machine
WAIT = 60.0
VERIFIED = re.compile(r"webhook receiver: (\S+) +(\S+) (evt_\S+) \(signature verified\)")


def recorded(event_id: str) -> re.Pattern[str]:
    """The gateway's log line for a delivery of ``event_id`` that it recorded as delivered
    (said after the receiver answered, just before its ``webhook_delivery`` audit line)."""
    return re.compile(
        rf'"event_id":"{re.escape(event_id)}".*"outcome":"delivered".*"event":'
        '"webhook_delivery"'
    )


class RunningDemo:
    """``stripe-gateway demo`` with its standard error read, line by line, as it comes."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.stdout = (tmp_path / "audit.out").open("w")
        env = {**os.environ, "TMPDIR": str(tmp_path)}  # where its private folder goes
        self.process, self.banner = _start("demo", *EPHEMERAL, stdout=self.stdout, env=env)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def url(self, pattern: str) -> str:
        match = re.search(pattern, self.banner)
        assert match, self.banner
        return match[1]

    def wait_for(self, count: int, predicate: re.Pattern[str] | str) -> list[str]:
        """The lines said after the banner that match, once there are ``count`` of them."""

        def matching() -> list[str]:
            if isinstance(predicate, str):
                return [line for line in self.lines if predicate in line]
            return [line for line in self.lines if predicate.search(line)]

        with self.changed:
            assert self.changed.wait_for(lambda: len(matching()) >= count, WAIT), self.lines
            return matching()

    def close(self) -> None:
        self.reader.join(timeout=30)
        assert self.process.stderr is not None
        self.process.stderr.close()
        self.stdout.close()

    def stop(self) -> tuple[str, str]:
        """Stop it (SIGINT); its standard output and everything it said on standard error."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=30)
        self.close()
        assert code == 0, self.lines
        return (self.tmp / "audit.out").read_text(), self.banner + "\n".join(self.lines)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[RunningDemo]:
    running = RunningDemo(tmp_path)
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()
    running.close()


def test_an_object_made_through_the_gateway_comes_back_verified_at_each_team(
    demo: RunningDemo,
) -> None:
    gateway = demo.url(r"the gateway on (http://[\d.]+:\d+)")
    ingress = demo.url(r"the gateway's ingress (http://\S+),")
    assert ingress == f"{gateway}/webhooks/stripe"
    full = stripe.StripeClient(
        "gw_demo_full_key", base_addresses={"api": gateway}, max_network_retries=0
    )
    session = full.v1.identity.verification_sessions.create({"type": "document"})
    events = full.v1.events.list({"type": "identity.verification_session.created"}).data
    (event,) = [e for e in events if e.data.object["id"] == session.id]

    # both teams subscribe to identity.*: one verified line each, for this event
    seen = demo.wait_for(2, re.compile(r"\(signature verified\)$"))
    got = sorted(VERIFIED.fullmatch(line).groups() for line in seen)  # type: ignore[union-attr]
    assert got == sorted((team, event.type, event.id) for team, _ in SUBSCRIPTIONS)

    # the gateway records each delivery once the receiver has answered
    demo.wait_for(len(SUBSCRIPTIONS), recorded(event.id))
    # the demo registered the ingress in the sandbox, where the teams' calls land
    endpoints = full.v1.webhook_endpoints.list().data
    assert [w.url for w in endpoints] == [ingress]
    assert endpoints[0].id in demo.banner
    out, said = demo.stop()
    audit = [json.loads(line) for line in out.splitlines()]
    received = [a for a in audit if a["event"] == "webhook_received"]
    assert [(a["event_id"], a["outcome"]) for a in received] == [(event.id, "accepted")]
    delivered = {a["team"] for a in audit if a["event"] == "webhook_delivery"}
    assert delivered == {team for team, _ in SUBSCRIPTIONS}
    assert "stopped" in said and "Traceback" not in said


def test_a_delivery_the_teams_secret_did_not_sign_is_refused_and_not_said_verified(
    demo: RunningDemo,
) -> None:
    receiver = demo.url(r"the demo's receiver on (http://[\d.]+:\d+)")
    body = json.dumps(
        {"id": "evt_forged0000000000000000", "object": "event", "type": "customer.created"}
    ).encode()
    now = int(time.time())
    forged = [
        sign(body, "whsec_not_the_teams_secret", now),  # another secret
        f"t={now},v1={'0' * 64}",  # a signature of nothing
        "",  # none
    ]
    for header in forged:
        response = requests.post(
            f"{receiver}/full",
            data=body,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 400, response.text
    assert requests.post(f"{receiver}/nobody", data=body, timeout=10).status_code == 404
    demo.wait_for(len(forged), "refused a delivery")
    _, said = demo.stop()
    assert "evt_forged" not in said
    assert not VERIFIED.search(said)  # (the banner's hint names no event)


def test_no_secret_or_stripe_key_is_printed_and_the_secret_files_go_when_it_stops(
    demo: RunningDemo,
) -> None:
    (folder,) = demo.tmp.glob("stripe-gateway-demo-*")  # private, with a file per secret
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(p.name for p in folder.glob("*.secret"))
    assert files == sorted(["ingress.secret", *(f"{team}.secret" for team, _ in SUBSCRIPTIONS)])
    for path in folder.glob("*.secret"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().startswith("whsec_")
    # an event goes the whole way, so every line that could carry a secret is said
    gateway = demo.url(r"the gateway on (http://[\d.]+:\d+)")
    full = stripe.StripeClient(
        "gw_demo_full_key", base_addresses={"api": gateway}, max_network_retries=0
    )
    session = full.v1.identity.verification_sessions.create({"type": "document"})
    (event,) = full.v1.events.list({"type": "identity.verification_session.created"}).data
    assert event.data.object["id"] == session.id
    demo.wait_for(len(SUBSCRIPTIONS), recorded(event.id))
    out, said = demo.stop()
    assert not folder.exists()
    for text in (out, said):
        assert not re.search(r"whsec_[A-Za-z0-9]", text)
        assert not re.search(r"\b[sr]k_(test|live)_", text)


# --------------------------------------------------------------------------- the receiver alone

TEAM_SECRETS = {"full": "whsec_full_0123456789abcdef", "readonly": "whsec_ro_0123456789abcdef"}


def _deliver(team: str, body: bytes, header: str) -> tuple[int, list[str]]:
    said: list[str] = []

    async def post() -> int:
        async with TestClient(TestServer(receiver_app(TEAM_SECRETS, said.append))) as client:
            response = await client.post(
                f"/{team}", data=io.BytesIO(body), headers={"Stripe-Signature": header}
            )
            await response.read()
            return response.status

    return asyncio.run(post()), said


def test_the_receiver_says_a_delivery_signed_with_the_teams_secret_verified() -> None:
    body = json.dumps({"id": "evt_1", "object": "event", "type": "file.created"}).encode()
    status, said = _deliver("full", body, sign(body, TEAM_SECRETS["full"], int(time.time())))
    assert status == 200
    assert said == ["webhook receiver: full      file.created evt_1 (signature verified)"]


def test_the_receiver_reads_a_whole_large_body_and_refuses_one_over_its_cap() -> None:
    """A body that arrives in many chunks is verified whole; one over 1 MiB gets 413."""
    pad = "x" * 600_000
    body = json.dumps({"id": "evt_big", "object": "event", "type": "a.b", "pad": pad}).encode()
    status, said = _deliver(
        "readonly", body, sign(body, TEAM_SECRETS["readonly"], int(time.time()))
    )
    assert status == 200 and said == [
        "webhook receiver: readonly  a.b evt_big (signature verified)"
    ]
    huge = body + b" " * (1024 * 1024)
    status, said = _deliver(
        "readonly", huge, sign(huge, TEAM_SECRETS["readonly"], int(time.time()))
    )
    assert status == 413 and said == []


@settings(max_examples=40, deadline=None)
@given(
    event_id=st.text("abcdefXYZ0189", min_size=1, max_size=20),
    team=st.sampled_from(sorted(TEAM_SECRETS)),
    forgery=st.sampled_from(["other team", "other secret", "other body", "stale", "garbled"]),
    age=st.integers(min_value=301, max_value=10**6),
)
def test_the_receiver_verifies_only_this_body_signed_now_with_this_teams_secret(
    event_id: str, team: str, forgery: str, age: int
) -> None:
    body = json.dumps({"id": f"evt_{event_id}", "object": "event", "type": "x.y"}).encode()
    now = int(time.time())
    secret = TEAM_SECRETS[team]
    other = next(s for t, s in TEAM_SECRETS.items() if t != team)
    header = {
        "other team": sign(body, other, now),
        "other secret": sign(body, secret + "x", now),
        "other body": sign(body + b" ", secret, now),
        "stale": sign(body, secret, now - age),
        "garbled": sign(body, secret, now).replace("v1=", "v0="),
    }[forgery]
    status, said = _deliver(team, body, header)
    assert status == 400
    assert len(said) == 1 and "refused" in said[0] and "verified" not in said[0]
    assert f"evt_{event_id}" not in said[0]


def test_without_the_stripe_sdk_the_banner_says_what_the_receiver_needs() -> None:
    """The receiver verifies with the stripe SDK (the "demo" extra): without it the built-in
    demo runs without webhooks, and its banner says so and how to install it."""
    options = DemoOptions()
    document, environ = _demo_document(options)
    config = _demo_config(
        options, document, environ, port=8080, sandbox_url="http://127.0.0.1:12111", admin_port=1
    )
    banner = _banner(config, "http://g", "http://s", "http://c", None, None)
    assert "webhooks: not shown: the demo's receiver needs the stripe SDK" in banner
    assert "-m pip install stripe" in banner and "whsec_" not in banner
