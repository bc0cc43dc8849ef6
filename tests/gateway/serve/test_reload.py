"""Config reload (gateway/serve/reload.py): in process through ``app[RELOAD]``, and as a real
``stripe-gateway serve`` process (one process and ``--workers 2``) through SIGHUP, under
continuous load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests

from gateway.hookspecs import hookimpl
from gateway.host import PluginHost
from gateway.keys import GENERATIONS, REOPEN_LOGS
from plugins.cache import CachePlugin
from plugins.rate_limit import RateLimitPlugin
from tests.fake_stripe import FakeStripe
from tests.helpers import (
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    PASSTHROUGH_KEY,
    LoopThread,
    Served,
    Stack,
    default_teams,
    digest,
    team,
)
from tests.serving import (
    NEW_KEY,
    GatewayConfigFile,
    events,
    get,
    serve_gateway,
    wait_for_events,
)

CUSTOMER = "/v1/customers/cus_Reload0000001"


class Recorder:
    """A test plugin: records its start-ups and shutdowns (class-wide, in order)."""

    name = "recorder"
    EVENTS: ClassVar[list[tuple[str, str]]] = []

    def __init__(self) -> None:
        self.tag = ""
        self.fail = False
        self.fail_reopen = False

    @hookimpl
    def gateway_configure(self, settings: dict[str, Any]) -> None:
        self.tag = str(settings.get("tag", ""))
        self.fail = bool(settings.get("fail_startup", False))
        self.fail_reopen = bool(settings.get("fail_reopen", False))

    @hookimpl
    def gateway_startup(self, host: PluginHost) -> None:
        # the host given is the generation being started's
        assert host.pm.get_plugin("recorder") is self
        assert host.config.plugins.tables()["recorder"]["tag"] == self.tag
        Recorder.EVENTS.append(("startup", self.tag))
        if self.fail:
            raise RuntimeError("refusing to start")

    @hookimpl
    def gateway_reopen_logs(self) -> None:
        Recorder.EVENTS.append(("reopen", self.tag))
        if self.fail_reopen:
            raise RuntimeError("cannot reopen")

    @hookimpl
    def gateway_shutdown(self) -> None:
        Recorder.EVENTS.append(("shutdown", self.tag))


def _recorder(tag: str, **extra: Any) -> dict[str, Any]:
    return {"load": ["tests.gateway.serve.test_reload:Recorder"], "recorder": {"tag": tag, **extra}}


def _get(stack: Stack, path: str = CUSTOMER, key: str = BILLING_KEY) -> requests.Response:
    return requests.get(
        stack.gateway_url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


@pytest.fixture(autouse=True)
def _fresh_recorder() -> Iterator[None]:
    Recorder.EVENTS.clear()
    yield
    Recorder.EVENTS.clear()


# --------------------------------------------------------------------------- in process


def test_reopen_logs_reaches_the_current_generation_and_a_failure_is_skipped(
    stack: Stack,
) -> None:
    stack.start_gateway(plugins=_recorder("one", fail_reopen=True))
    stack.loop.run(stack.app[REOPEN_LOGS]())  # what SIGUSR1 does
    assert ("reopen", "one") in Recorder.EVENTS
    (failed,) = stack.error_events("plugin_failed")
    assert failed["plugin"] == "recorder" and failed["hook"] == "gateway_reopen_logs"
    (reopened,) = stack.error_events("audit_reopened")  # the next plugin still ran
    assert reopened["cause"] == "signal"
    assert stack.reload(plugins=_recorder("two"))["reloaded"]
    stack.loop.run(stack.app[REOPEN_LOGS]())
    assert [e for e in Recorder.EVENTS if e[0] == "reopen"] == [
        ("reopen", "one"),
        ("reopen", "two"),
    ]
    assert len(stack.error_events("audit_reopened", at_least=2)) == 2
    assert _get(stack).status_code == 200
    assert stack.audit_lines(1)[-1]["status"] == 200


def test_reload_swaps_teams_the_new_key_works_and_the_removed_one_gets_401(stack: Stack) -> None:
    stack.start_gateway()
    assert _get(stack).status_code == 200
    teams = [t for t in default_teams() if t["name"] != "billing"]
    teams.append(team("newteam", NEW_KEY, upstream_env="BILLING_STRIPE_KEY"))
    result = stack.reload(teams=teams)
    assert result == {"reloaded": True, "error": None, "generation": 2, "not_reloaded": []}
    json.dumps(result)  # JSON-able, for the admin endpoint
    assert _get(stack, key=NEW_KEY).status_code == 200
    refused = _get(stack)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert _get(stack, key=PASSTHROUGH_KEY).status_code == 200
    (reloaded,) = stack.error_events("config_reloaded")
    assert reloaded["generation"] == 2
    assert "newteam" in reloaded["teams"] and "billing" not in reloaded["teams"]
    assert [line["team"] for line in stack.audit_lines(4)] == [
        "billing",
        "newteam",
        None,
        "direct",
    ]


def test_an_invalid_config_changes_nothing_and_logs_the_key_path_and_reason(
    stack: Stack,
) -> None:
    stack.start_gateway()
    result = stack.reload(teams=[{"name": "broken", "key_sha256": ["not-a-digest"]}])
    assert result["reloaded"] is False
    assert result["error"].startswith("teams[0].key_sha256[0]: must be 64 lowercase hex")
    (failed,) = stack.error_events("config_reload_failed")
    assert failed["path"] == "teams[0].key_sha256[0]"
    assert "64 lowercase hex" in failed["reason"]
    assert failed["level"] == "error"
    assert _get(stack).status_code == 200
    assert stack.app is not None
    assert stack.app[GENERATIONS].current.number == 1
    # a plugin's own validation is part of it too
    result = stack.reload(plugins={"cache": {"default_ttl": -1}})
    assert result["reloaded"] is False
    assert result["error"] == "plugins.cache.default_ttl: must be a number > 0"


def test_a_plugin_failing_to_start_keeps_the_running_generation(stack: Stack) -> None:
    stack.start_gateway(plugins=_recorder("one"))
    result = stack.reload(plugins=_recorder("two", fail_startup=True))
    assert result["reloaded"] is False
    assert result["error"].startswith("plugins.recorder: gateway_startup failed: RuntimeError")
    # the failed generation was shut down; the first one is untouched and serves
    assert Recorder.EVENTS == [("startup", "one"), ("startup", "two"), ("shutdown", "two")]
    assert stack.app is not None
    assert stack.app[GENERATIONS].current.host.pm.get_plugin("recorder").tag == "one"  # type: ignore[union-attr]
    assert _get(stack).status_code == 200
    (failed,) = stack.error_events("config_reload_failed")
    assert failed["path"] == "plugins.recorder"


def test_in_flight_requests_finish_on_the_old_generation_whose_plugins_stop_after_them(
    stack: Stack,
) -> None:
    stack.start_gateway(plugins=_recorder("old"), upstream={"read_timeout": 30.0})
    held = stack.loop.call(asyncio.Event)
    stack.upstreams["api"].hold = held  # the slow request's answer waits for the test
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(_get, stack, "/v1/test_faults/hold")
        try:
            deadline = time.monotonic() + 10
            while not stack.upstreams["api"].received:
                assert time.monotonic() < deadline, "the slow request never reached the upstream"
                time.sleep(0.01)
            teams = [t for t in default_teams() if t["name"] != "billing"]
            result = stack.reload(teams=teams, plugins=_recorder("new"))
            assert result["reloaded"] is True
            # the new generation started; the old one is still serving the slow request
            assert Recorder.EVENTS == [("startup", "old"), ("startup", "new")]
            assert _get(stack).status_code == 401  # billing is gone for new requests
            assert not slow.done()
        finally:
            stack.loop.call(held.set)
        response = slow.result(10)
    assert response.status_code == 200  # ... but the one in flight finished as billing
    deadline = time.monotonic() + 10
    while ("shutdown", "old") not in Recorder.EVENTS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Recorder.EVENTS == [("startup", "old"), ("startup", "new"), ("shutdown", "old")]
    (reloaded,) = stack.error_events("config_reloaded")
    assert reloaded["in_flight_on_previous"] == 1
    retired = stack.error_events("generation_retired")
    assert [r["generation"] for r in retired] == [1]
    lines = stack.audit_lines(2)
    assert {(line["team"], line["status"]) for line in lines} == {("billing", 200), (None, 401)}


def test_keys_a_running_process_cannot_change_keep_their_values_with_a_warning(
    stack: Stack,
) -> None:
    stack.start_gateway()
    assert stack.config is not None
    body_limit = stack.config.server.max_body_bytes
    result = stack.reload(
        server={"max_body_bytes": 10, "workers": 3},
        upstream={"max_connections": 7, "read_timeout": 3.0},
    )
    assert result["reloaded"] is True
    assert result["not_reloaded"] == [
        "server.max_body_bytes",
        "server.workers",
        "upstream.max_connections",
    ]
    (warning,) = stack.error_events("config_keys_not_reloaded")
    assert warning["keys"] == result["not_reloaded"]
    assert warning["level"] == "warning"
    assert stack.app is not None
    config = stack.app[GENERATIONS].current.config
    assert config.server.max_body_bytes == body_limit
    assert config.upstream.max_connections == 100
    assert config.upstream.read_timeout == 3.0  # what can change, did
    response = requests.post(
        stack.gateway_url + "/v1/customers",
        data={"name": "x" * 100},
        headers={"Authorization": f"Bearer {BILLING_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200


def _cache(stack: Stack) -> CachePlugin:
    assert stack.app is not None
    plugin = stack.app[GENERATIONS].current.host.pm.get_plugin("cache")
    assert isinstance(plugin, CachePlugin)
    return plugin


def test_the_memory_cache_keeps_its_entries_when_its_settings_did_not_change(
    stack: Stack,
) -> None:
    stack.start_gateway()
    assert _get(stack).headers["X-Cache"] == "MISS"
    first = _cache(stack)
    assert stack.reload(upstream={"read_timeout": 3.0})["reloaded"] is True
    assert _cache(stack) is not first
    assert _cache(stack).store is first.store
    assert _get(stack).headers["X-Cache"] == "HIT"
    assert _cache(stack).counts["hit"] == 1 and _cache(stack).counts["miss"] == 1
    # the retired plugin's shutdown did not close the store it handed over
    time.sleep(0.05)
    assert _get(stack).headers["X-Cache"] == "HIT"
    # changed settings: a fresh store (the reload resets the cache)
    assert stack.reload(plugins={"cache": {"default_ttl": 60}})["reloaded"] is True
    assert _get(stack).headers["X-Cache"] == "MISS"
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 2


def test_rate_limit_buckets_survive_a_reload(stack: Stack) -> None:
    limits = {"rate_limit": {"teams": {"billing": {"read": {"rate": 0.01, "burst": 2}}}}}
    stack.start_gateway(plugins=limits)
    assert [_get(stack, "/v1/customers").status_code for _ in range(2)] == [200, 200]
    assert stack.reload(plugins=limits)["reloaded"] is True
    assert _get(stack, "/v1/customers").status_code == 429  # not a fresh burst
    # limits changed: the same buckets, judged by the new limit at once
    wider = {"rate_limit": {"teams": {"billing": {"read": {"rate": 0.01, "burst": 5}}}}}
    assert stack.reload(plugins=wider)["reloaded"] is True
    assert [_get(stack, "/v1/customers").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert stack.app is not None
    plugin = stack.app[GENERATIONS].current.host.pm.get_plugin("rate_limit")
    assert isinstance(plugin, RateLimitPlugin)
    assert plugin.counts["deny"] == 2


def test_reload_without_a_config_source_answers_an_error(loop_thread: LoopThread) -> None:
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.keys import RELOAD

    app = create_app(parse_config({}))
    result = loop_thread.run(app[RELOAD]())
    assert result == {
        "reloaded": False,
        "error": "this gateway was not started from a config file",
    }


# --------------------------------------------------------------------------- real processes


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_teams_and_keeps_the_config_when_the_new_one_is_invalid(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served], workers: int
) -> None:
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write()
    with serve_gateway(config.path, "--workers", str(workers)) as gw:
        for _ in range(10):
            assert get(gw, CUSTOMER + "?n=a", BILLING_KEY)[0] == 200
        assert get(gw, CUSTOMER, NEW_KEY)[0] == 401

        config.write(teams=("direct", "newteam"))
        gw.proc.send_signal(signal.SIGHUP)
        reloaded = wait_for_events(gw, "config_reloaded", workers)
        assert sorted(r.get("worker", 0) for r in reloaded) == list(range(workers))
        # fresh connections reach every worker
        for i in range(20):
            assert get(gw, f"{CUSTOMER}?n={i}", NEW_KEY)[0] == 200
            assert get(gw, f"{CUSTOMER}?n={i}", BILLING_KEY)[0] == 401

        config.path.write_text(config.path.read_text() + "\n[server.extra]\n")
        gw.proc.send_signal(signal.SIGHUP)
        (failed,) = wait_for_events(gw, "config_reload_failed", 1)
        assert failed["path"] == "server.extra"
        assert failed["reason"] == "unknown key"
        if workers > 1:
            assert failed["role"] == "supervisor"  # validated there, not forwarded
            assert len(events(gw, "config_reload_forwarded")) == 1
        time.sleep(0.2)
        assert len(events(gw, "config_reloaded")) == workers
        for i in range(10):
            assert get(gw, f"{CUSTOMER}?n=b{i}", NEW_KEY)[0] == 200

        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
    assert "Traceback" not in gw.output()
    assert BILLING_UPSTREAM_KEY not in gw.output()


@pytest.mark.parametrize("workers", [1, 2])
def test_repeated_reloads_under_continuous_load_fail_no_request(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served], workers: int
) -> None:
    """Clients keep sending (fast reads, slow writes that span reloads) while the config
    is reloaded again and again, alternating two configs; not one request may fail."""
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write()
    reloads = 12
    stop = threading.Event()
    failures: list[str] = []
    done: list[int] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        session = requests.Session()  # keep-alive: a connection lives across reloads
        sent = 0
        try:
            while not stop.is_set():
                sent += 1
                slow = sent % 5 == 0
                try:
                    if slow:  # a write held 0.3 s by the upstream, spanning a reload
                        response = session.post(
                            f"{gw.url}/v1/customers?delay=0.3",
                            data={"n": f"{number}-{sent}"},
                            headers={"Authorization": f"Bearer {BILLING_KEY}"},
                            timeout=10,
                        )
                    else:
                        response = session.get(
                            f"{gw.url}{CUSTOMER}?c={number}&n={sent}",
                            headers={"Authorization": f"Bearer {BILLING_KEY}"},
                            timeout=10,
                        )
                    ok = response.status_code == 200
                    problem = f"{response.status_code} {response.text[:200]}"
                except requests.RequestException as exc:
                    ok, problem = False, repr(exc)
                with lock:
                    done.append(1)
                    if not ok:
                        failures.append(problem)
                if number % 2 and sent % 7 == 0:  # some clients also open new connections
                    session.close()
                    session = requests.Session()
        finally:
            session.close()

    with serve_gateway(config.path, "--workers", str(workers)) as gw:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.3)
            for i in range(reloads):
                # alternate: with and without rate limits and an extra team, swapped atomically
                config.write(
                    teams=("billing", "direct", "newteam") if i % 2 == 0 else ("billing",),
                    rate_limit=i % 2 == 0,
                )
                gw.proc.send_signal(signal.SIGHUP)
                wait_for_events(gw, "config_reloaded", workers * (i + 1))
                time.sleep(0.1)
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join(15)
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(15) == 0

    assert failures == []
    assert len(done) > 100
    # and every one of them has its audit line, whichever generation served it
    assert len(config.audit_lines(len(done))) == len(done)
    reloaded = events(gw, "config_reloaded")
    assert len(reloaded) == workers * reloads
    # slow requests really were in flight on an outgoing generation during reloads
    assert sum(r["in_flight_on_previous"] for r in reloaded) > 0
    assert events(gw, "config_reload_failed") == []
    assert "Traceback" not in gw.output()
    assert os.path.exists(config.path)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_admin_endpoint_reloads_every_worker(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served], workers: int
) -> None:
    """``POST /admin/reload`` reaches one process; with workers it goes through the
    supervisor (202), which validates the file and reloads them all."""
    from tests.helpers import digest, free_port

    token = "adm_test_token_reload0000000001"
    admin_port = free_port()
    admin = f'[admin]\nport = {admin_port}\ntoken_sha256 = "{digest(token)}"\n'
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write(extra=admin)
    url = f"http://127.0.0.1:{admin_port}/admin/reload"
    with serve_gateway(config.path, "--workers", str(workers)) as gw:
        assert get(gw, CUSTOMER, NEW_KEY)[0] == 401
        config.write(teams=("direct", "newteam"), extra=admin)
        answer = requests.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        if workers == 1:
            assert answer.status_code == 200 and answer.json()["reloaded"] is True
        else:
            assert answer.status_code == 202 and answer.json()["requested"] is True
        reloaded = wait_for_events(gw, "config_reloaded", workers)
        assert sorted(r.get("worker", 0) for r in reloaded) == list(range(workers))
        for i in range(10):
            assert get(gw, f"{CUSTOMER}?n={i}", NEW_KEY)[0] == 200
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0


def test_a_reload_to_a_public_demo_key_is_refused_and_the_running_config_stays(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write()
    with serve_gateway(config.path) as gw:
        config.write(
            extra=f"""
            [[teams]]
            name = "copied"
            key_sha256 = ["{digest("gw_demo_full_key")}"]
            """
        )
        gw.proc.send_signal(signal.SIGHUP)
        (failed,) = wait_for_events(gw, "config_reload_failed", 1)
        assert failed["path"] == "teams[2].key_sha256[0]"
        assert "'copied'" in failed["reason"] and "new-key" in failed["reason"]
        assert get(gw, CUSTOMER, "gw_demo_full_key")[0] == 401
        assert get(gw, CUSTOMER, BILLING_KEY)[0] == 200
