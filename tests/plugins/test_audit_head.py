"""The audit line's head: gateway-owned fields that skip the log processors.

The exemption is exact: a value is admitted only if redaction would have left it as it
is, and a hostile value in any head field (a team named like a key, a method a client made
up, a number long enough to be a card number) sends the whole line through redaction.
"""

from __future__ import annotations

import re
from typing import Any

import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.context import OUTCOMES
from gateway.redaction.redact import RedactingProcessor, Redactor
from gateway.routing import UPSTREAM_NAMES
from plugins.audit import SafeValues
from tests.helpers import BILLING_KEY, BILLING_UPSTREAM_KEY, Stack, raw_request, team

HOSTILE_TEAM = "sk_live_" + "a1B2c3D4e5F6g7H8i9J0k1L2"
TEAMS = ["billing", "analytics", "team-1.eu", HOSTILE_TEAM, "whsec_abcdefghijklmnop", "x"]


def _safe(**redactor: Any) -> tuple[SafeValues, RedactingProcessor]:
    processor = RedactingProcessor(Redactor(**redactor))
    safe = SafeValues.verified([processor], TEAMS)
    assert safe is not None
    return safe, processor


SAFE, PROCESSOR = _safe()

_texts = st.one_of(
    st.none(),
    st.sampled_from([*TEAMS, *OUTCOMES, *UPSTREAM_NAMES, "GET", "POST", "PROPFIND"]),
    st.text(max_size=40),
    st.from_regex(r"(sk|rk|gw)_(test|live)_[A-Za-z0-9]{8,30}", fullmatch=True),
)
_numbers = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=4000000000000000, max_value=4999999999999999).map(float),
    st.text(max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(
    team_name=_texts,
    method=_texts,
    outcome=_texts,
    upstream=_texts,
    livemode=_numbers,
    status=_numbers,
    attempts=_numbers,
    duration=_numbers,
    upstream_ms=_numbers,
    bytes_in=_numbers,
    bytes_out=_numbers,
)
def test_an_admitted_head_is_one_redaction_leaves_as_it_is(
    team_name: Any,
    method: Any,
    outcome: Any,
    upstream: Any,
    livemode: Any,
    status: Any,
    attempts: Any,
    duration: Any,
    upstream_ms: Any,
    bytes_in: Any,
    bytes_out: Any,
) -> None:
    head = {
        "team": team_name,
        "method": method,
        "livemode": livemode,
        "status": status,
        "outcome": outcome,
        "upstream": upstream,
        "duration_ms": duration,
        "upstream_ms": upstream_ms,
        "attempts": attempts,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "event": "request",
        "level": "info",
    }
    args = (team_name, method, outcome, upstream, livemode, status, attempts, duration)
    if SAFE.admits(*args, upstream_ms, bytes_in, bytes_out):
        redacted = PROCESSOR(None, "info", dict(head))
        assert redacted == head
        assert [type(v) for v in redacted.values()] == [type(v) for v in head.values()]


def test_hostile_or_unknown_text_is_never_admitted() -> None:
    assert "billing" in SAFE.teams and None in SAFE.teams
    assert HOSTILE_TEAM not in SAFE.teams
    assert "whsec_abcdefghijklmnop" not in SAFE.teams
    ok = ("billing", "GET", "ok", "api", False, 200, 1, 1.5, 0.9, 0, 712)
    assert SAFE.admits(*ok)
    for i, bad in enumerate(
        [
            HOSTILE_TEAM,
            "PROPFIND",
            BILLING_KEY,
            "files2",
            "false",
            4242424242424242,
            "1",
            1e13,
            float("nan"),
        ]
    ):
        assert not SAFE.admits(*ok[:i], bad, *ok[i + 1 :]), (i, bad)


def test_a_configured_pattern_takes_its_matches_out_of_the_sets() -> None:
    safe, _ = _safe(patterns=[re.compile("bill"), re.compile("GE")])
    assert "billing" not in safe.teams and "analytics" in safe.teams
    assert "GET" not in safe.methods and "POST" in safe.methods


def test_a_pattern_matching_the_event_or_level_means_no_head_at_all() -> None:
    for pattern in ("quest", "inf"):
        processor = RedactingProcessor(Redactor(patterns=[re.compile(pattern)]))
        assert SafeValues.verified([processor], TEAMS) is None


def test_no_head_without_redaction_or_with_another_processor() -> None:
    assert SafeValues.verified([], TEAMS) is None
    assert SafeValues.verified([PROCESSOR, lambda _, __, event: event], TEAMS) is None


def test_a_team_named_like_a_key_and_a_made_up_method_are_redacted_in_the_line(
    stack: Stack,
) -> None:
    teams = [team(HOSTILE_TEAM, BILLING_KEY, upstream_env="BILLING_STRIPE_KEY")]
    stack.start_gateway(teams=teams)
    assert requests.get(f"{stack.gateway_url}/v1/customers", auth=(BILLING_KEY, ""), timeout=5).ok
    host = stack.gateway_url.removeprefix("http://")
    # a method outside the verified set (the parser refuses anything but upper-case
    # tokens): this line goes through redaction whole
    request = (
        f"PROPFIND /v1/customers HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {BILLING_KEY}\r\nConnection: close\r\n\r\n"
    )
    assert raw_request(stack.gateway_url, request.encode()).status == 200
    first, second = stack.audit_lines(2)
    text = stack.audit_path.read_text()
    assert HOSTILE_TEAM not in text and BILLING_KEY not in text
    assert BILLING_UPSTREAM_KEY not in text
    assert first["team"].startswith("sk_live_") and first["team"] == "sk_live_\u2026k1L2"
    assert first["status"] == 200 and first["method"] == "GET"
    assert second["team"] == first["team"] and second["method"] == "PROPFIND"
    assert next(iter(first)) == "timestamp" and next(iter(second)) == "timestamp"
