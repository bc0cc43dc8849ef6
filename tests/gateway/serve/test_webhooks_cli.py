"""``stripe-gateway webhooks ...`` against a running gateway (webhooks plugin, admin
listener, a local subscriber), over real sockets; its errors; the range replay's request."""

from __future__ import annotations

import json
import threading
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.serve.cli import main
from gateway.serve.webhooks_cli import TOKEN_ENV, CommandError, parse_time, replay_form
from tests.cli_helpers import run_cli, subprocess_env
from tests.helpers import LoopThread, Stack, WebhookReceiver, digest, free_port, start_app
from tests.plugins.test_webhooks import (
    ADMIN_TOKEN,
    _event,
    _plugin,
    _post,
    _start,
    _subscription,
    _wait,
)

Run = Callable[..., tuple[int, str, str]]


def _config_file(tmp: Path, admin_url: str | None, token: str = ADMIN_TOKEN) -> str:
    """A config file whose [admin] table names ``admin_url`` (none: no admin listener)."""
    path = tmp / "cli.toml"
    if admin_url is None:
        admin = "[admin]\nport = 0\n"
    else:
        host, port = admin_url.removeprefix("http://").rsplit(":", 1)
        admin = f'[admin]\nhost = "{host}"\nport = {port}\ntoken_sha256 = "{digest(token)}"\n'
    # the rest of the file is not read: a team whose key variable is unset does no harm
    path.write_text(
        admin + '\n[[teams]]\nname = "x"\nkey_sha256 = ["' + digest("k") + '"]\n'
        'upstream_key_env = "UNSET_FOR_THE_CLI"\n'
    )
    return str(path)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``cli(*argv, token=ADMIN_TOKEN)``: ``stripe-gateway webhooks ARGV`` in this process
    (its HTTP calls go over real sockets): (exit code, stdout, stderr)."""

    def run(*argv: str, token: str | None = ADMIN_TOKEN) -> tuple[int, str, str]:
        capsys.readouterr()
        if token is None:
            monkeypatch.delenv(TOKEN_ENV, raising=False)
        else:
            monkeypatch.setenv(TOKEN_ENV, token)
        monkeypatch.delenv("STRIPE_GATEWAY_ADMIN_HOST", raising=False)
        monkeypatch.delenv("STRIPE_GATEWAY_ADMIN_PORT", raising=False)
        code = main(["webhooks", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _gateway(
    stack: Stack, receivers: Callable[..., WebhookReceiver], **subscription: Any
) -> tuple[str, str, WebhookReceiver]:
    """(gateway url, config file, subscriber)."""
    team = receivers(**subscription.pop("receiver", {}))
    sub = _subscription(stack.tmp, team.url, **subscription)
    url = _start(stack, _plugin(stack.tmp, [sub], breaker_failures=100))
    return url, _config_file(stack.tmp, stack.admin_url), team


# --------------------------------------------------------------------------- against the gateway


def test_list_subscriptions_events_and_deliveries(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver], cli: Run
) -> None:
    url, config, team = _gateway(stack, webhook_receivers, events=["invoice.*"])
    body = _event("invoice.paid", account="acct_1Listed000001")
    event_id = json.loads(body)["id"]
    assert _post(url, body).status_code == 200
    team.wait_for(1)
    code, out, err = cli("subscriptions", "--config", config)
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split()[:3] == ["NAME", "TEAM", "PAUSED"]
    assert row.split()[:4] == ["billing", "billing", "no", "closed"]
    assert "invoice.*" in row and team.url in row
    code, out, _ = cli("--config", config, "subscriptions", "--json")  # either order
    assert code == 0 and json.loads(out)["data"][0]["name"] == "billing"
    code, out, _ = cli("events", "--config", config)
    assert code == 0 and event_id in out and "acct_1Listed000001" in out
    assert "invoice.paid" in out

    def delivered() -> str:
        code, out, _ = cli("deliveries", "-c", config, "--event", event_id, "--status", "delivered")
        return out if code == 0 and event_id in out else ""

    out = _wait(delivered, "the delivery to show as delivered")
    assert out.splitlines()[1].split()[:4] == [event_id, "billing", "delivered", "1"]
    code, out, _ = cli("deliveries", "-c", config, "--status", "dead", "--json")
    assert code == 0 and json.loads(out)["data"] == []
    code, out, _ = cli("dead-letters", "-c", config)
    assert (code, out.strip()) == (0, "no dead letters")
    code, out, _ = cli("events", "-c", config, "--limit", "1", "--json")
    assert code == 0 and [e["id"] for e in json.loads(out)["data"]] == [event_id]


def test_pause_and_resume(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver], cli: Run
) -> None:
    url, config, team = _gateway(stack, webhook_receivers)
    code, out, _ = cli("pause", "billing", "--config", config)
    assert code == 0 and "paused: True" in out
    body = _event()
    assert _post(url, body).status_code == 200
    code, out, _ = cli("subscriptions", "--config", config, "--json")
    assert json.loads(out)["data"][0]["paused"] is True
    code, out, _ = cli("deliveries", "--config", config, "--status", "pending", "--json")
    assert [d["event_id"] for d in json.loads(out)["data"]] == [json.loads(body)["id"]]
    assert team.received == []
    code, out, _ = cli("resume", "billing", "--config", config, "--json")
    assert code == 0 and json.loads(out) == {
        "object": "webhook_subscription",
        "name": "billing",
        "paused": False,
    }
    assert team.wait_for(1)[0][0] == body


def test_a_dead_letter_is_listed_and_replayed(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver], cli: Run
) -> None:
    url, config, team = _gateway(
        stack, webhook_receivers, receiver={"status": 500}, retry_delays=[0.05]
    )
    body = _event()
    event_id = json.loads(body)["id"]
    assert _post(url, body).status_code == 200
    team.wait_for(2)

    def dead() -> str:
        code, out, _ = cli("dead-letters", "--config", config, "--subscription", "billing")
        return out if code == 0 and event_id in out else ""

    out = _wait(dead, "the dead letter")
    row = out.splitlines()[1]
    assert row.split()[:5] == [event_id, "billing", "dead", "2", "500"] and "HTTP 500" in row
    team.status = 200
    code, out, err = cli("replay", "--config", config, "--subscription", "billing",
                         "--event", event_id)  # fmt: skip
    assert (code, err) == (0, "")
    assert f"event_id: {event_id}" in out and "queued: True" in out
    assert team.wait_for(3)[2][0] == body
    _wait(lambda: cli("dead-letters", "-c", config)[1].strip() == "no dead letters",
          "the replayed delivery to leave the dead letters")  # fmt: skip


def test_a_range_replay_re_sends_the_events_received_in_the_range(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver], cli: Run
) -> None:
    url, config, team = _gateway(stack, webhook_receivers, events=["invoice.*"])
    start = datetime.now(UTC) - timedelta(seconds=5)
    routed = [_event("invoice.paid"), _event("invoice.created")]
    other = _event("customer.created")  # stored, but not routed to the subscription
    for body in [*routed, other]:
        assert _post(url, body).status_code == 200
    team.wait_for(2)
    end = datetime.now(UTC) + timedelta(seconds=5)
    code, out, err = cli("replay", "-c", config, "--subscription", "billing", "--json",
                         "--since", start.isoformat(), "--until", str(end.timestamp()))  # fmt: skip
    assert (code, err) == (0, "")
    answer = json.loads(out)
    assert answer["object"] == "webhook_replay" and answer["count"] == 2
    bodies = [body for body, _ in team.wait_for(4)]
    assert sorted(bodies[2:]) == sorted(routed) and other not in bodies
    # a range before the events holds none of them
    code, out, _ = cli("replay", "-c", config, "--subscription", "billing", "--json",
                       "--since", "0", "--until", str(start.timestamp()))  # fmt: skip
    assert code == 0 and json.loads(out)["count"] == 0


def test_the_servers_refusals_are_printed_with_exit_code_1(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver], cli: Run
) -> None:
    _, config, _ = _gateway(stack, webhook_receivers)
    code, out, err = cli("pause", "nobody", "--config", config)
    assert (code, out) == (1, "")
    assert (
        err.strip() == "stripe-gateway: the gateway answered 404: No subscription named 'nobody'."
    )
    code, _, err = cli("replay", "-c", config, "--subscription", "billing", "--event", "evt_none")
    assert code == 1 and "404: No event 'evt_none' is stored." in err
    # the config's digest is the token's, but the running gateway has another one
    other = _config_file(stack.tmp, stack.admin_url, token="a-token-the-gateway-does-not-know")
    code, _, err = cli("subscriptions", "-c", other, token="a-token-the-gateway-does-not-know")
    assert code == 1 and "answered 401" in err and "(admin_unauthorized)" in err
    assert "a-token-the-gateway-does-not-know" not in err


def test_config_and_connection_errors(
    tmp_path: Path, stack: Stack, webhook_receivers: Callable[..., WebhookReceiver], cli: Run
) -> None:
    # no admin listener in the file
    code, _, err = cli("subscriptions", "--config", _config_file(tmp_path, None))
    assert code == 2 and "admin listener is not configured" in err and "[admin] port" in err
    # nothing listens there
    port = free_port()
    nowhere = _config_file(tmp_path, f"http://127.0.0.1:{port}")
    code, _, err = cli("events", "--config", nowhere)
    assert code == 1 and f"cannot reach the gateway's admin listener at http://127.0.0.1:{port}"
    assert "cannot reach" in err and f"127.0.0.1:{port}" in err and "Traceback" not in err
    # the token: missing, wrong, from a file
    _, config, _ = _gateway(stack, webhook_receivers)
    code, _, err = cli("subscriptions", "--config", config, token=None)
    assert code == 2 and TOKEN_ENV in err and "--token-file" in err
    code, _, err = cli("subscriptions", "--config", config, token="not-the-admin-token")
    assert code == 2 and "does not match [admin] token_sha256" in err
    assert "not-the-admin-token" not in err
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    code, out, _ = cli("subscriptions", "-c", config, "--token-file", str(token_file), token=None)
    assert code == 0 and "billing" in out
    # a broken config file: the usual one-line config error
    bad = tmp_path / "bad.toml"
    bad.write_text("[admin]\nport = 99999\n")
    code, _, err = cli("subscriptions", "--config", str(bad))
    assert code == 2 and err.startswith("stripe-gateway: config error: admin.port")
    code, _, err = cli("subscriptions", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "cannot read config file" in err


def test_the_command_runs_as_a_process(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver]
) -> None:
    _, config, _ = _gateway(stack, webhook_receivers)
    done = run_cli("webhooks", "subscriptions", "--config", config,
                   env=subprocess_env(**{TOKEN_ENV: ADMIN_TOKEN}))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("billing")
    done = run_cli("webhooks", "pause", "nobody", "--config", config,
                   env=subprocess_env(**{TOKEN_ENV: ADMIN_TOKEN}))  # fmt: skip
    assert done.returncode == 1 and "No subscription named 'nobody'" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- range replay


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.none()
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_iso_times_and_unix_seconds_give_the_same_seconds(moment: datetime, offset: int) -> None:
    moment = moment.replace(microsecond=0)
    expected = int(moment.replace(tzinfo=UTC).timestamp())
    assert parse_time(moment.isoformat() + "Z") == expected
    assert parse_time(moment.isoformat()) == expected  # no zone: UTC
    assert parse_time(str(expected)) == expected
    zone = timezone(timedelta(minutes=offset))
    assert parse_time(moment.replace(tzinfo=UTC).astimezone(zone).isoformat()) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "1e9", "", "-5", "12:00"])
def test_a_time_that_is_neither_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="neither Unix seconds nor an ISO-8601 time"):
        parse_time(text)


def test_replay_takes_an_event_or_a_whole_range() -> None:
    assert replay_form("billing", "evt_1", None, None) == {
        "subscription": "billing",
        "event_id": "evt_1",
    }
    assert replay_form("billing", None, 10, 20) == {
        "subscription": "billing",
        "since": "10",
        "until": "20",
    }
    for event, since, until in (("evt_1", 10, 20), (None, 10, None), (None, None, None)):
        with pytest.raises(CommandError) as caught:
            replay_form("billing", event, since, until)
        assert caught.value.code == 2
    with pytest.raises(CommandError, match="after --until"):
        replay_form("billing", None, 20, 10)


def test_a_range_replay_sends_since_and_until_as_unix_seconds(
    loop_thread: LoopThread, tmp_path: Path, cli: Run
) -> None:
    """What ``replay --since --until`` sends, seen by a listener that records it (the
    gateway's side of the range replay is built apart)."""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    async def replay(request: web.Request) -> web.Response:
        form = dict(await request.post())
        with lock:
            seen.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "auth": request.headers.get("Authorization"),
                    "type": request.content_type,
                    "form": form,
                }
            )
        return web.json_response({"object": "webhook_replay", "queued": 3, **form})

    app = web.Application()
    app.router.add_post("/admin/webhooks/replay", replay)
    served = loop_thread.run(start_app(app))
    try:
        config = _config_file(tmp_path, served.url)
        code, out, err = cli("replay", "--config", config, "--subscription", "billing",
                             "--since", "2026-12-03T10:00:00Z",
                             "--until", "2026-12-03T11:30:00+01:00")  # fmt: skip
        assert (code, err) == (0, "")
        code, _, err = cli("replay", "-c", config, "--subscription", "billing",
                           "--since", "1796292000", "--until", "1796293800.9")  # fmt: skip
        assert code == 0
    finally:
        loop_thread.run(served.runner.cleanup())
    since = int(datetime(2026, 12, 3, 10, tzinfo=UTC).timestamp())
    assert since == 1796292000
    assert [s["form"] for s in seen] == [
        {"subscription": "billing", "since": str(since), "until": str(since + 1800)},
        {"subscription": "billing", "since": str(since), "until": str(since + 1800)},
    ]
    assert all(s["auth"] == f"Bearer {ADMIN_TOKEN}" for s in seen)
    assert all(s["type"] == "application/x-www-form-urlencoded" for s in seen)
    assert "queued: 3" in out


def test_the_admin_token_goes_to_no_proxy_and_along_no_redirect(
    loop_thread: LoopThread,
    tmp_path: Path,
    cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``http_proxy`` in the environment and a 3xx from the listener never see the token."""
    seen: list[tuple[str, str | None]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.path_qs, request.headers.get("Authorization")))
        return web.json_response({"object": "list", "data": []})

    elsewhere = web.Application()
    elsewhere.router.add_route("*", "/{tail:.*}", record)
    other = loop_thread.run(start_app(elsewhere))

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(other.url + "/stolen")

    admin = web.Application()
    admin.router.add_get("/admin/webhooks/subscriptions", record)
    admin.router.add_get("/admin/webhooks/events", redirect)
    served = loop_thread.run(start_app(admin))
    try:
        for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, other.url)  # a proxy that records what it is sent
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        config = _config_file(tmp_path, served.url)
        code, _, err = cli("subscriptions", "--config", config, "--json")
        assert (code, err) == (0, "")
        assert seen == [("/admin/webhooks/subscriptions", f"Bearer {ADMIN_TOKEN}")]  # direct
        code, _, err = cli("events", "--config", config)
        assert code == 1 and "302" in err
        assert len(seen) == 1  # the redirect was not followed, to the token's loss
    finally:
        loop_thread.run(served.runner.cleanup())
        loop_thread.run(other.runner.cleanup())


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
@example("invoice.\u202egnp.exe")  # right-to-left override
@example("a\x1b[2Jb\x9b")  # an escape sequence, a C1 control
def test_a_table_cell_holds_no_control_or_bidi_character(text: str) -> None:
    from gateway.serve.webhooks_cli import _clean

    cleaned = _clean(text)
    assert not any(
        unicodedata.category(c) == "Cc" or unicodedata.bidirectional(c) in _BIDI_CONTROLS
        for c in cleaned
    )


_BIDI_CONTROLS = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}


def test_range_replay_usage_errors(tmp_path: Path, cli: Run) -> None:
    config = _config_file(tmp_path, f"http://127.0.0.1:{free_port()}")
    code, _, err = cli("replay", "-c", config, "--subscription", "b", "--since", "10")
    assert code == 2 and "--since TIME and --until TIME" in err
    code, _, err = cli("replay", "-c", config, "--subscription", "b", "--event", "evt_1",
                       "--since", "1", "--until", "2")  # fmt: skip
    assert code == 2 and "not both" in err
    with pytest.raises(SystemExit) as exited:  # argparse: usage error, exit 2
        cli("replay", "-c", config, "--subscription", "b", "--since", "soon", "--until", "2")
    assert exited.value.code == 2


def test_help_lists_the_actions() -> None:
    done = run_cli("webhooks", "--help")
    assert done.returncode == 0
    for action in ("subscriptions", "events", "deliveries", "dead-letters", "pause", "replay"):
        assert action in done.stdout
