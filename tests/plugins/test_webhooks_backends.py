"""The webhooks plugin on both store backends (range replay), and several gateway processes
sharing one queue in a real Redis: each event recorded once and delivered once per
subscription, a killed process's leased deliveries finished by another, an event Redis
could not store never acknowledged."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.host import PluginFailure
from gateway.keys import ADMIN_URLS, METRICS
from tests.cli_helpers import GatewayProcess
from tests.conftest import RedisServer
from tests.helpers import LoopThread, Served, Stack, WebhookReceiver, start_app
from tests.plugins import test_webhooks
from tests.plugins.test_webhooks import (
    ADMIN_TOKEN,
    DEADLINE,
    PATH,
    SOURCE_SECRET,
    TEAM_SECRET,
    _admin,
    _event,
    _plugin,
    _post,
    _secret_file,
    _start,
    _subscription,
    _verified,
    _wait,
)
from tests.serving import GatewayConfigFile, events, serve_gateway

PREFIX = "sgw:webhooks"


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``[plugins.webhooks]`` keys of a backend."""
    if request.param == "sqlite":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"backend": "redis", "redis_url": server.url}


def _replay(stack: Stack, **data: str) -> requests.Response:
    return requests.post(
        stack.admin_url + "/admin/webhooks/replay",
        data=data,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )


# --------------------------------------------------------------------------- the same tests


@pytest.mark.parametrize(
    "test",
    [
        test_webhooks.test_the_same_event_twice_is_delivered_once,
        test_webhooks.test_a_failing_subscriber_gets_the_event_after_retries,
        test_webhooks.test_after_the_last_attempt_the_delivery_is_dead_lettered_and_can_be_replayed,
        test_webhooks.test_a_paused_subscription_gets_nothing_until_resumed,
        test_webhooks.test_type_globs_and_livemode_and_account_filters_route_events,
        test_webhooks.test_a_pending_delivery_survives_a_restart_on_the_same_file,
        test_webhooks.test_a_delivery_pending_at_stop_is_sent_by_the_next_gateway,
        test_webhooks.test_a_team_limited_to_some_accounts_never_gets_another_accounts_events,
    ],
    ids=lambda test: test.__name__.removeprefix("test_"),
)
def test_the_plugin_tests_pass_on_the_redis_backend(
    test: Callable[[Stack, Callable[..., WebhookReceiver]], None],
    stack: Stack,
    webhook_receivers: Callable[..., WebhookReceiver],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plugin's own tests (``tests/plugins/test_webhooks.py``), their gateway on the
    ``redis`` backend (each builds its config with ``_plugin``)."""

    def on_redis(*args: Any, **extra: Any) -> dict[str, Any]:
        return _plugin(*args, backend="redis", redis_url=redis_server.url, **extra)

    monkeypatch.setattr(test_webhooks, "_plugin", on_redis)
    test(stack, webhook_receivers)
    client = redis.Redis.from_url(redis_server.url)
    assert client.zcard(f"{PREFIX}:received") > 0  # it was Redis that stored them
    client.close()


# --------------------------------------------------------------------------- range replay


def test_a_range_replay_re_queues_only_the_events_routed_to_the_subscription(
    stack: Stack,
    webhook_receivers: Callable[..., WebhookReceiver],
    backend: dict[str, Any],
) -> None:
    billing, ops = webhook_receivers(), webhook_receivers()
    subs = [
        _subscription(stack.tmp, billing.url, name="billing", events=["invoice.*"]),
        _subscription(stack.tmp, ops.url, name="ops"),
    ]
    _start(stack, _plugin(stack.tmp, subs, **backend))
    first, charge, last = _event("invoice.paid"), _event("charge.succeeded"), _event()
    for body in (first, charge, last):
        assert _post(stack.gateway_url, body).status_code == 200
        time.sleep(0.01)  # (distinct received times, to cut the range between them)
    billing.wait_for(2)
    ops.wait_for(3)
    received = {
        e["id"]: e["received"] for e in _admin(stack, "GET", "/admin/webhooks/events")["data"]
    }
    ids = [json.loads(body)["id"] for body in (first, charge, last)]
    assert len(received) == 3

    def settled() -> bool:
        rows = _admin(stack, "GET", "/admin/webhooks/deliveries")["data"]
        return len(rows) == 5 and all(r["status"] == "delivered" for r in rows)

    _wait(settled, "every first delivery to be settled")
    # everything from the first event to the charge (until is excluded: not the last)
    answer = _replay(
        stack, subscription="billing", since=str(received[ids[0]]), until=str(received[ids[2]])
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "object": "webhook_replay",
        "subscription": "billing",
        "since": received[ids[0]],
        "until": received[ids[2]],
        "count": 1,  # the charge was never routed to billing
    }
    assert [b for b, _ in billing.wait_for(3)][2] == first
    # the whole range, for billing: its two invoices again, nothing else
    whole = _replay(stack, subscription="billing", since="0", until=str(time.time() + 60))
    assert whole.json()["count"] == 2
    got = billing.wait_for(5)
    assert sorted(b for b, _ in got[3:]) == sorted([first, last])
    assert all(_verified(r) for r in got)
    _wait(settled, "the replayed deliveries to be settled")
    assert len(billing.received) == 5 and len(ops.received) == 3
    assert charge not in {b for b, _ in billing.received}


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ({"subscription": "billing"}, 400, "parameter_missing"),
        ({"since": "1", "until": "2"}, 400, "parameter_missing"),
        ({"subscription": "billing", "since": "1"}, 400, "parameter_missing"),
        ({"subscription": "billing", "until": "2"}, 400, "parameter_missing"),
        ({"subscription": "billing", "since": "yesterday", "until": "2"}, 400, "parameter_invalid"),
        ({"subscription": "billing", "since": "1", "until": "0x10"}, 400, "parameter_invalid"),
        ({"subscription": "billing", "since": "nan", "until": "2"}, 400, "parameter_invalid"),
        ({"subscription": "billing", "since": "1", "until": "inf"}, 400, "parameter_invalid"),
        ({"subscription": "billing", "since": "1", "until": "1e999"}, 400, "parameter_invalid"),
        ({"subscription": "billing", "since": "-5", "until": "2"}, 400, "parameter_invalid"),
        ({"subscription": "billing", "since": "2", "until": "2"}, 400, "parameter_invalid"),
        ({"subscription": "billing", "since": "3", "until": "2"}, 400, "parameter_invalid"),
        (
            {"subscription": "billing", "event_id": "evt_1", "since": "1", "until": "2"},
            400,
            "parameter_invalid",
        ),
        ({"subscription": "nobody", "since": "1", "until": "2"}, 404, None),
    ],
)
def test_a_bad_range_replay_is_a_stripe_shaped_400(
    stack: Stack, data: dict[str, str], status: int, code: str | None
) -> None:
    _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, "http://127.0.0.1:9/hook")]))
    response = _replay(stack, **data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error.get("code") == code
    assert response.headers["Request-Id"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(since=st.text(max_size=12), until=st.text(max_size=12))
def test_any_range_text_is_a_count_or_a_400(stack: Stack, since: str, until: str) -> None:
    if stack.app is None:
        _start(stack, _plugin(stack.tmp, [_subscription(stack.tmp, "http://127.0.0.1:9/hook")]))
    response = _replay(stack, subscription="billing", since=since, until=until)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        assert float(since) < float(until) and response.json()["count"] == 0


# --------------------------------------------------------------------------- shared state


def test_a_pause_on_one_instance_holds_the_other_and_a_resume_on_it_releases_both(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver], redis_server: RedisServer
) -> None:
    team = webhook_receivers()
    webhooks = _plugin(
        stack.tmp, [_subscription(stack.tmp, team.url)], backend="redis", redis_url=redis_server.url
    )
    _start(stack, webhooks)
    first = stack.app
    _start(stack, webhooks)
    second = stack.app
    assert first is not None and second is not None

    def admin(app: web.Application, method: str, path: str) -> Any:
        url = str(app[ADMIN_URLS][0]) + path
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        response = requests.request(method, url, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def paused(app: web.Application) -> bool:
        (sub,) = admin(app, "GET", "/admin/webhooks/subscriptions")["data"]
        return bool(sub["paused"])

    def depth(app: web.Application) -> float:
        value = app[METRICS].registry.get_sample_value(
            "stripe_gateway_webhook_queue_depth", {"subscription": "billing"}
        )
        return value or 0.0

    admin(first, "POST", "/admin/webhooks/subscriptions/billing/pause")
    _wait(lambda: paused(second), "the second instance to see the pause")
    body = _event()
    assert _post(stack.gateway_url, body).status_code == 200  # the second instance
    _wait(lambda: depth(first) == 1 and depth(second) == 1, "both to look at the queue")
    assert team.received == []
    admin(second, "POST", "/admin/webhooks/subscriptions/billing/resume")
    _wait(lambda: not paused(first), "the first instance to see the resume")
    (received,) = team.wait_for(1)
    assert received[0] == body

    def statuses() -> list[str]:
        return [r["status"] for r in _admin(stack, "GET", "/admin/webhooks/deliveries")["data"]]

    _wait(lambda: statuses() == ["delivered"], "the delivery to be settled")
    assert len(team.received) == 1


# --------------------------------------------------------------------------- Redis down


def test_an_event_redis_cannot_store_is_not_acknowledged_and_is_not_lost(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver], redis_server: RedisServer
) -> None:
    team = webhook_receivers()
    webhooks = _plugin(
        stack.tmp,
        [_subscription(stack.tmp, team.url)],
        backend="redis",
        redis_url=redis_server.url,
        redis_timeout=2.0,  # slack for the store after the hang
    )
    _start(stack, webhooks)
    body = _event()
    event_id = json.loads(body)["id"]
    redis_server.process.send_signal(signal.SIGSTOP)  # hung, not gone: a timeout
    try:
        refused = _post(stack.gateway_url, body)
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["type"] == "api_error" and error["code"] == "webhook_store_unavailable"
    assert refused.headers.get("Stripe-Should-Retry") == "true"
    # Stripe sends it again: stored now (or already: the first write may have gone through)
    again = _post(stack.gateway_url, body)
    assert again.status_code == 200, again.text
    (received,) = team.wait_for(1)
    assert received[0] == body and _verified(received).id == event_id

    def delivered() -> bool:
        rows = _admin(stack, "GET", "/admin/webhooks/deliveries", event_id=event_id)["data"]
        return len(rows) == 1 and rows[0]["status"] == "delivered"

    _wait(delivered, "the delivery to be settled")
    assert len(team.received) == 1
    # Redis gone altogether: refused at once, the same way
    redis_server.kill()
    gone = _post(stack.gateway_url, _event())
    assert gone.status_code == 503 and gone.json()["error"]["code"] == "webhook_store_unavailable"
    assert len(team.received) == 1


# --------------------------------------------------------------------------- several processes


@dataclass
class _Subscriber:
    """A webhook endpoint that records which gateway process sent each delivery (the
    ``from`` query parameter of each process's subscription URL), and can hold every
    request until released."""

    loop: LoopThread
    url: str = ""
    stalled: bool = False
    arrivals: list[tuple[str, str, bytes, str]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._changed:
            self.arrivals.append(
                (
                    request.query["from"],
                    json.loads(body)["id"],
                    body,
                    request.headers["Stripe-Signature"],
                )
            )
            self._changed.notify_all()
        if self.stalled:
            await self._release.wait()
        return web.Response(text="ok")

    def release(self) -> None:
        self.stalled = False
        self.loop.loop.call_soon_threadsafe(self._release.set)

    def wait_for(self, count: int) -> list[tuple[str, str, bytes, str]]:
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self.arrivals) >= count, DEADLINE)
            assert ok, f"expected {count} deliveries, got {len(self.arrivals)}"
            return list(self.arrivals)


@pytest.fixture
def subscriber(loop_thread: LoopThread) -> Iterator[_Subscriber]:
    sub = _Subscriber(loop_thread)
    app = web.Application()
    app.router.add_post("/hook", sub.handle)
    served: Served = loop_thread.run(start_app(app))
    sub.url = served.url + "/hook"
    yield sub
    sub.release()
    loop_thread.run(served.runner.cleanup())


def _instance_config(
    tmp: Path,
    api: str,
    redis_url: str,
    name: str,
    subscriptions: list[tuple[str, str, str]],
    *,
    timeout: float,
) -> Path:
    """A gateway process's config: the redis backend, its own directory and audit file;
    each subscription (name, event glob, url) tagged ``?from=<name>``; a claimed delivery
    stays leased ``timeout`` + 0.5 s."""
    folder = tmp / name
    folder.mkdir()
    source = _secret_file(folder, "source", SOURCE_SECRET)
    secret = _secret_file(folder, "team", TEAM_SECRET)
    text = f"""
    [plugins.webhooks]
    backend = "redis"
    redis_url = "{redis_url}"
    poll_seconds = 0.2
    lease_seconds = 0.5
    [[plugins.webhooks.sources]]
    name = "main"
    path = "{PATH}"
    secret_file = ["{source}"]
    """
    for sub, glob, url in subscriptions:
        text += f"""
    [[plugins.webhooks.subscriptions]]
    name = "{sub}"
    team = "billing"
    url = "{url}?from={name}"
    events = ["{glob}"]
    secret_file = "{secret}"
    timeout = {timeout}
    jitter = 0.0
    retry_delays = {[0.2] * 20}
    """
    return GatewayConfigFile(folder, api=api).write(extra=text)


def _settled(client: redis.Redis, subscriptions: tuple[str, ...]) -> bool:
    """Nothing pending in Redis for these subscriptions (every delivery finished)."""
    return all(client.zcard(f"{PREFIX}:due:{sub}") == 0 for sub in subscriptions)


def test_two_processes_on_one_redis_record_each_event_once_and_deliver_it_once(
    tmp_path: Path,
    fake_api: tuple[Any, Served],
    redis_server: RedisServer,
    webhook_receivers: Callable[..., WebhookReceiver],
    subscriber: _Subscriber,
) -> None:
    invoices = webhook_receivers()
    subs = [("everything", "*", subscriber.url), ("invoices", "invoice.*", invoices.url)]
    api = fake_api[1].url
    bodies = [_event("invoice.paid" if n % 3 else "charge.succeeded") for n in range(24)]
    ids = [json.loads(body)["id"] for body in bodies]
    with ExitStack() as stack:
        # (a long timeout: no attempt fails on a busy machine, so none is sent twice)
        a, b = (
            stack.enter_context(
                serve_gateway(
                    _instance_config(tmp_path, api, redis_server.url, name, subs, timeout=30.0)
                )
            )
            for name in ("a", "b")
        )
        # Stripe's retries may reach either instance, at once: each event goes to both
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda job: _post(job[0].url, job[1]),
                    [(gw, body) for body in bodies for gw in (a, b)],
                )
            )
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        for n in range(len(bodies)):
            pair = [answers[2 * n].json()["duplicate"], answers[2 * n + 1].json()["duplicate"]]
            assert sorted(pair) == [False, True]  # recorded by one, a duplicate for the other
        subscriber.wait_for(len(bodies))
        wanted = [i for i, body in zip(ids, bodies, strict=True) if b"invoice.paid" in body]
        invoices.wait_for(len(wanted))
        client = redis.Redis.from_url(redis_server.url)
        _wait(lambda: _settled(client, ("everything", "invoices")), "every delivery to finish")
        assert client.zcard(f"{PREFIX}:received") == len(bodies)
        client.close()
        # steady state: exactly once per subscription
        assert Counter(i for _, i, _, _ in subscriber.arrivals) == Counter(ids)
        assert Counter(json.loads(body)["id"] for body, _ in invoices.received) == Counter(wanted)
        assert all(_verified((body, header)) for _, _, body, header in subscriber.arrivals)
        senders = Counter(sender for sender, _, _, _ in subscriber.arrivals)
        lines = events(a, "webhook_delivery") + events(b, "webhook_delivery")
        assert len(lines) == len(bodies) + len(wanted)
        assert set(senders) <= {"a", "b"}


def test_a_killed_process_leased_deliveries_are_finished_by_the_other(
    tmp_path: Path,
    fake_api: tuple[Any, Served],
    redis_server: RedisServer,
    subscriber: _Subscriber,
) -> None:
    subs = [("everything", "*", subscriber.url)]
    api = fake_api[1].url
    subscriber.stalled = True  # every attempt hangs: the leases are held
    bodies = [_event() for _ in range(3)]
    ids = {json.loads(body)["id"] for body in bodies}
    with ExitStack() as stack:
        gateways: dict[str, GatewayProcess] = {
            name: stack.enter_context(
                serve_gateway(
                    _instance_config(tmp_path, api, redis_server.url, name, subs, timeout=5.0)
                )
            )
            for name in ("a", "b")
        }
        for body in bodies:
            assert _post(gateways["a"].url, body).status_code == 200
        first = subscriber.wait_for(3)
        victim = first[0][0]  # the process holding (at least) the first delivery
        survivor = "b" if victim == "a" else "a"
        held = {event_id for sender, event_id, _, _ in first if sender == victim}
        gateways[victim].proc.send_signal(signal.SIGKILL)
        gateways[victim].proc.wait(10)
        subscriber.release()
        client = redis.Redis.from_url(redis_server.url)

        def finished() -> bool:
            statuses = {
                client.hget(f"{PREFIX}:delivery:everything:{i}", "status") for i in ids
            }  # fmt: skip
            return statuses == {b"delivered"}

        _wait(finished, "the survivor to finish every delivery")
        client.close()
        resent = {i for sender, i, _, _ in subscriber.arrivals if sender == survivor}
        assert held <= resent  # the killed process's deliveries, sent again by the other

        def logged() -> bool:  # the line is written just after the store's write
            lines = events(gateways[survivor], "webhook_delivery")
            return held <= {line["event_id"] for line in lines if line["outcome"] == "delivered"}

        _wait(logged, "the survivor's webhook_delivery lines")
        after = [a for a in subscriber.arrivals if a[0] == survivor and a[1] in held]
        assert all(_verified((body, header)) for _, _, body, header in after)


def test_the_redis_backend_needs_a_url_and_only_it_takes_one(tmp_path: Path) -> None:
    from gateway.errors import ConfigError
    from tests.plugins.test_webhooks import _config

    sub = _subscription(tmp_path, "http://127.0.0.1:9/hook")
    with pytest.raises(ConfigError, match=r"plugins\.webhooks\.backend: .*redis_url"):
        _config(tmp_path, _plugin(tmp_path, [sub], backend="redis"))
    with pytest.raises(ConfigError, match=r"plugins\.webhooks\.redis_url: has a password"):
        _config(tmp_path, _plugin(tmp_path, [sub], backend="redis", redis_url="redis://:pw@h"))
    with pytest.raises(ConfigError, match=r"plugins\.webhooks\.redis_url_env: .*NOPE"):
        _config(tmp_path, _plugin(tmp_path, [sub], backend="redis", redis_url_env="NOPE"))
    with pytest.raises(ConfigError, match='backend is not "redis"'):
        _config(tmp_path, _plugin(tmp_path, [sub], redis_url="redis://127.0.0.1:6379/0"))
    host = _config(tmp_path, _plugin(tmp_path, [sub], backend="redis", redis_url="unix:///r.sock"))
    plugin: Any = host.pm.get_plugin("webhooks")
    assert plugin.settings.url == "unix:///r.sock"


# --------------------------------------------------------------------------- Redis durability


def test_a_gateway_on_a_redis_without_persistence_says_so_once_or_refuses_when_required(
    stack: Stack, webhook_receivers: Callable[..., WebhookReceiver], redis_server: RedisServer
) -> None:
    team = webhook_receivers()
    subs = [_subscription(stack.tmp, team.url)]
    with pytest.raises(PluginFailure) as failed:
        _start(
            stack,
            _plugin(
                stack.tmp,
                subs,
                backend="redis",
                redis_url=redis_server.url,
                require_durable_redis=True,
            ),
        )
    assert isinstance(failed.value.__cause__, ConfigError)
    assert "require_durable_redis: the webhooks Redis can lose acknowledged events" in str(
        failed.value.__cause__
    )
    _start(stack, _plugin(stack.tmp, subs, backend="redis", redis_url=redis_server.url))
    (line,) = stack.error_events("webhook_redis_not_durable", timeout=DEADLINE)
    assert line["level"] == "error" and line["appendonly"] == "no"
    body = _event()
    assert _post(stack.gateway_url, body).status_code == 200  # it serves all the same
    (received,) = team.wait_for(1)
    assert received[0] == body


def test_require_durable_redis_is_for_the_redis_backend_only(tmp_path: Path) -> None:
    from tests.plugins.test_webhooks import _config

    sub = _subscription(tmp_path, "http://127.0.0.1:9/hook")
    with pytest.raises(ConfigError, match=r"require_durable_redis: .*backend is not \"redis\""):
        _config(tmp_path, _plugin(tmp_path, [sub], require_durable_redis=True))
