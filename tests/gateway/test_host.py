"""The plugin host, end to end: plugins from entry points and from config, async hook
order, the failure policy of every request hook, and the hook specs themselves.

Everything runs on real loopback sockets: fake Stripe upstreams from the ``stack``
fixture, the gateway in front of them, and the official ``stripe`` SDK (or ``requests``)
as the client.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import stripe
from aiohttp import web
from multidict import CIMultiDict
from pydantic import Field, ValidationError

from gateway import hookspecs
from gateway.app import create_app
from gateway.config import parse_config
from gateway.context import RequestContext
from gateway.errors import ConfigError, StripeErrorResponse
from gateway.hookspecs import hookimpl
from gateway.host import DEFAULT_PLUGINS as _DEFAULT_PLUGINS
from gateway.host import REQUEST_HOOKS, PluginHost
from gateway.keys import GENERATIONS
from gateway.logs import make_error_logger
from gateway.settings import RouteText, Settings
from tests.helpers import (
    ANALYTICS_KEY,
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    ENVIRON,
    Stack,
    default_teams,
    start_app,
)

BUILTINS = [name for name, _ in _DEFAULT_PLUGINS]
BUILTIN_LIST = ", ".join(BUILTINS)

REPO_ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- the acme plugin

#: A third-party plugin as its own distribution would ship it (async hooks on purpose).
ACME_SOURCE = textwrap.dedent(
    '''
    """acme: stamps every response and answers /v1/acme/ping itself."""

    import asyncio

    from aiohttp import web

    from gateway.hookspecs import hookimpl


    class AcmePlugin:
        name = "acme"

        @hookimpl
        async def gateway_request(self, ctx):
            await asyncio.sleep(0)
            if ctx.method == "GET" and ctx.path == "/v1/acme/ping":
                return web.json_response({"object": "acme.ping", "pong": True})
            return None

        @hookimpl
        async def gateway_response_headers(self, ctx, headers):
            await asyncio.sleep(0)
            headers["X-Acme"] = "stamped"
    '''
)

#: A plugin whose hook name is misspelt: start-up must stop.
TYPO_SOURCE = textwrap.dedent(
    """
    from gateway.hookspecs import hookimpl


    class TypoPlugin:
        name = "typo"

        @hookimpl
        def gateway_reqest(self, ctx):
            return None
    """
)

ACME_DIST = "acme_gw_plugin"


def write_module(directory: Path, name: str, source: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(source)


def write_acme_distribution(site: Path) -> None:
    """``acme_gw_plugin`` 0.1, installed as a plain directory on a path entry."""
    write_module(site, ACME_DIST, ACME_SOURCE)
    info = site / f"{ACME_DIST}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-gw-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[stripe_gateway]\nacme = {ACME_DIST}:AcmePlugin\n")


@pytest.fixture
def modules_to_forget() -> Iterator[list[str]]:
    """Module names to drop from ``sys.modules`` after the test (files live in tmp_path)."""
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def acme_dist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modules_to_forget: list[str]
) -> Path:
    """The acme distribution, importable and visible to ``importlib.metadata``."""
    site = tmp_path / "site"
    write_acme_distribution(site)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    modules_to_forget.append(ACME_DIST)
    return site


_module_ids = itertools.count()


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """Put plugin objects in a fresh in-memory module; returns their ``[plugins] load`` specs."""

    def _install(**objects: object) -> list[str]:
        name = f"_gw_host_test_plugins_{next(_module_ids)}"
        module = types.ModuleType(name)
        for attr, obj in objects.items():
            setattr(module, attr, obj)
        monkeypatch.setitem(sys.modules, name, module)
        return [f"{name}:{attr}" for attr in objects]

    return _install


# --------------------------------------------------------------------------- gateways


@dataclass
class Gateway:
    url: str
    app: web.Application
    log: io.BytesIO

    @property
    def host(self) -> PluginHost:
        return self.app[GENERATIONS].current.host

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.getvalue().splitlines() if line]
        return [e for e in lines if event is None or e.get("event") == event]


class Gateways:
    """Starts gateways in front of ``stack``'s upstreams, with the app and its log at hand."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._runners: list[web.BaseRunner] = []

    def config_data(self, *, audit: bool = True, **overrides: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "upstream": {**self.stack.upstream_urls, "read_timeout": 2.0, "connect_timeout": 2.0},
            "teams": default_teams(),
            "plugins": {"audit": {"path": str(self.stack.audit_path)}} if audit else {},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return data

    def start(self, *, audit: bool = True, **overrides: Any) -> Gateway:
        config = parse_config(self.config_data(audit=audit, **overrides), environ=ENVIRON)
        app = create_app(config)
        log = io.BytesIO()
        app[GENERATIONS].current.host.log = make_error_logger(log)
        served = self.stack.loop.run(start_app(app, gateway=True, shutdown_timeout=5))
        self._runners.append(served.runner)
        return Gateway(url=served.url, app=app, log=log)

    def close(self) -> None:
        for runner in reversed(self._runners):
            self.stack.loop.run(runner.cleanup())
        self._runners.clear()


@pytest.fixture
def gateways(stack: Stack) -> Iterator[Gateways]:
    gws = Gateways(stack)
    yield gws
    gws.close()


@pytest.fixture
def sdk() -> Iterator[Callable[..., stripe.StripeClient]]:
    """Make ``stripe.StripeClient``s pointed at a gateway; their sessions close afterwards."""
    http_clients: list[stripe.RequestsClient] = []

    def make(url: str, key: str = BILLING_KEY) -> stripe.StripeClient:
        http = stripe.RequestsClient(timeout=10)
        http_clients.append(http)
        return stripe.StripeClient(
            key,
            base_addresses={"api": url, "files": url, "connect": url, "meter_events": url},
            max_network_retries=0,
            http_client=http,
        )

    yield make
    for http in http_clients:
        http.close()


def get(url: str, key: str | None = BILLING_KEY, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.get(url, headers=headers, timeout=10, **kwargs)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the gateway"
        time.sleep(0.01)


def plugin_host(data: dict[str, Any], *, entry_points: bool = True) -> PluginHost:
    return PluginHost(parse_config(data, environ=ENVIRON), entry_points_enabled=entry_points)


def run_cli(*args: str, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(REPO_ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        cwd=pythonpath,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------- 1. entry points


def test_entry_point_plugin_is_discovered(acme_dist: Path) -> None:
    host = plugin_host({})
    assert host.plugin_names() == [*BUILTINS, "acme"]
    plugin = host.pm.get_plugin("acme")
    assert type(plugin).__name__ == "AcmePlugin"  # the class was instantiated
    assert [i.plugin for i in host.impls("gateway_response_headers")] == [
        "acme",
        "cache",
        "rate_limit",
        "idempotency",
    ]
    # without entry points (the switch exists for tests and embedders) it is not there
    assert "acme" not in plugin_host({}, entry_points=False).plugin_names()


def test_entry_point_plugin_stamps_responses_and_answers_ping(
    acme_dist: Path, stack: Stack, gateways: Gateways, sdk: Callable[..., stripe.StripeClient]
) -> None:
    gw = gateways.start()
    api = stack.upstreams["api"]

    ping = get(f"{gw.url}/v1/acme/ping")
    assert ping.status_code == 200
    assert ping.json() == {"object": "acme.ping", "pong": True}
    assert ping.headers["X-Acme"] == "stamped"
    assert ping.headers["X-Gateway-Request-Id"].startswith("gwreq_")
    assert api.received == []  # answered without going upstream

    # the SDK, through to the upstream: stamped too
    customers = sdk(gw.url).v1.customers.list()
    assert customers.data[0].id == "obj_list0000001"
    assert customers.last_response.headers["X-Acme"] == "stamped"
    assert [r.path for r in api.received] == ["/v1/customers"]

    # refused requests and upstream errors are stamped as well
    refused = get(f"{gw.url}/v1/customers", key=None)
    assert refused.status_code == 401
    assert refused.headers["X-Acme"] == "stamped"
    not_found = get(f"{gw.url}/v1/test_faults/nope")
    assert not_found.status_code == 404
    assert not_found.headers["X-Acme"] == "stamped"
    # the ping short-circuits only its own path
    assert [r.path for r in api.received] == ["/v1/customers", "/v1/test_faults/nope"]


def test_entry_point_plugin_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """No in-process caches: ``stripe-gateway check-config`` finds the distribution."""
    site = tmp_path / "site"
    write_acme_distribution(site)
    (site / "gateway.toml").write_text("[server]\nport = 8080\n")
    result = run_cli("check-config", "gateway.toml", pythonpath=site)
    assert result.returncode == 0, result.stderr
    assert f"plugins: {BUILTIN_LIST}, acme" in result.stdout

    (site / "off.toml").write_text('[plugins]\ndisable = ["acme"]\n')
    result = run_cli("check-config", "off.toml", pythonpath=site)
    assert result.returncode == 0, result.stderr
    assert f"plugins: {BUILTIN_LIST})" in result.stdout


# --------------------------------------------------------------------------- 2. config


def test_plugin_loaded_by_config(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    modules_to_forget: list[str],
    stack: Stack,
    gateways: Gateways,
) -> None:
    write_module(tmp_path / "cfg", "acme_cfg_plugin", ACME_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path / "cfg"))
    modules_to_forget.append("acme_cfg_plugin")

    gw = gateways.start(plugins={"load": ["acme_cfg_plugin:AcmePlugin"]})
    # named by its `name`
    assert gw.host.plugin_names() == [*BUILTINS, "acme"]

    ping = get(f"{gw.url}/v1/acme/ping")
    assert ping.status_code == 200
    assert ping.json()["pong"] is True
    assert ping.headers["X-Acme"] == "stamped"
    assert stack.upstreams["api"].received == []
    assert get(f"{gw.url}/v1/customers").headers["X-Acme"] == "stamped"
    assert len(stack.upstreams["api"].received) == 1


def test_config_load_errors_name_the_entry(tmp_path: Path, acme_dist: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        plugin_host({"plugins": {"load": ["acme_gw_plugin:Nope"]}})
    assert missing.value.path == "plugins.load[0]"
    # the same plugin from an entry point and from config: one name, refused
    with pytest.raises(ConfigError, match="already registered") as twice:
        plugin_host({"plugins": {"load": [f"{ACME_DIST}:AcmePlugin"]}})
    assert twice.value.path == "plugins.load[0]"
    # (`disable` works by name, so it would turn both off; without entry points the
    # config one is all there is)
    host = plugin_host({"plugins": {"load": [f"{ACME_DIST}:AcmePlugin"]}}, entry_points=False)
    assert host.plugin_names() == [*BUILTINS, "acme"]


def test_disable_turns_the_entry_point_plugin_off(
    acme_dist: Path, stack: Stack, gateways: Gateways
) -> None:
    assert "acme" not in plugin_host({"plugins": {"disable": ["acme"]}}).plugin_names()

    gw = gateways.start(plugins={"disable": ["acme"]})
    assert gw.host.plugin_names() == BUILTINS
    ping = get(f"{gw.url}/v1/acme/ping")
    assert ping.status_code == 200
    assert "X-Acme" not in ping.headers
    assert ping.json()["object"] == "list"  # the fake upstream's answer this time
    assert [r.path for r in stack.upstreams["api"].received] == ["/v1/acme/ping"]


def test_disable_a_builtin(
    stack: Stack, gateways: Gateways, sdk: Callable[..., stripe.StripeClient]
) -> None:
    assert plugin_host({"plugins": {"disable": ["audit"]}}).plugin_names() == [
        name for name in BUILTINS if name != "audit"
    ]

    others = [name for name in BUILTINS if name != "auth"]
    gw = gateways.start(audit=False, plugins={"disable": others})
    assert gw.host.plugin_names() == ["auth"]
    assert not gw.host.has("gateway_request_finished")
    customer = sdk(gw.url).v1.customers.retrieve("cus_disabledaudit01")
    assert customer.id == "cus_disabledaudit01"
    assert not stack.audit_path.exists()

    # disabling auth too leaves a bare proxy: the client's own key goes upstream
    bare = gateways.start(audit=False, plugins={"disable": BUILTINS})
    assert bare.host.plugin_names() == []
    assert get(f"{bare.url}/v1/customers", key="sk_test_direct000000000001").status_code == 200
    assert stack.upstreams["api"].last().headers["Authorization"] == (
        "Bearer sk_test_direct000000000001"
    )


def test_disable_errors() -> None:
    with pytest.raises(ConfigError) as unknown:
        plugin_host({"plugins": {"disable": ["audit", "nope"]}})
    assert unknown.value.path == "plugins.disable[1]"
    assert "nope" in unknown.value.reason

    # settings for a disabled plugin are a mistake, not silently ignored
    with pytest.raises(ConfigError) as table:
        plugin_host({"plugins": {"disable": ["audit"], "audit": {"path": "-"}}})
    assert table.value.path == "plugins.audit"
    assert "disabled" in table.value.reason


# --------------------------------------------------------------------------- 3. async order


class SlowPasser:
    """Awaits, then declines (returns None)."""

    name = "passer"

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    async def gateway_request(self, ctx: RequestContext) -> None:
        self.calls.append("passer:start")
        await asyncio.sleep(0.02)
        self.calls.append("passer:done")


class AsyncAnswerer:
    name = "answerer"

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    async def gateway_request(self, ctx: RequestContext) -> web.Response:
        await asyncio.sleep(0)
        self.calls.append("answerer")
        return web.json_response({"object": "answer", "by": self.name})


class TryfirstAnswerer(AsyncAnswerer):
    name = "first"

    @hookimpl(tryfirst=True)
    async def gateway_request(self, ctx: RequestContext) -> web.Response:
        self.calls.append("first")
        await asyncio.sleep(0)
        return web.json_response({"object": "answer", "by": self.name})


class Bystander:
    name = "bystander"

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> None:
        self.calls.append("bystander")


def test_async_request_hooks_are_awaited_in_turn(
    stack: Stack, gateways: Gateways, install: Callable[..., list[str]]
) -> None:
    calls: list[str] = []
    # the most recently registered runs first: the passer, then the answerer
    load = install(answerer=AsyncAnswerer(calls), passer=SlowPasser(calls))
    gw = gateways.start(plugins={"load": load})
    assert [i.plugin for i in gw.host.impls("gateway_request")] == [
        "audit",
        "passer",
        "answerer",
        "file_urls",  # before the cache, so its hits are rewritten too
        "cache",
        "idempotency",
        "rate_limit",  # trylast: after the cache, so hits spend no budget
    ]

    response = get(f"{gw.url}/v1/customers")
    assert response.status_code == 200
    assert response.json() == {"object": "answer", "by": "answerer"}
    assert calls == ["passer:start", "passer:done", "answerer"]
    assert stack.upstreams["api"].received == []
    assert gw.events("plugin_bad_answer") == []


def test_tryfirst_answer_stops_later_plugins(
    stack: Stack, gateways: Gateways, install: Callable[..., list[str]]
) -> None:
    calls: list[str] = []
    # registered first, so without tryfirst it would run last
    load = install(first=TryfirstAnswerer(calls), bystander=Bystander(calls))
    gw = gateways.start(plugins={"load": load})
    assert [i.plugin for i in gw.host.impls("gateway_request")] == [
        "first",
        "audit",
        "bystander",
        "file_urls",
        "cache",
        "idempotency",
        "rate_limit",  # trylast: after the cache, so hits spend no budget
    ]

    response = get(f"{gw.url}/v1/customers")
    assert response.status_code == 200
    assert response.json()["by"] == "first"
    assert calls == ["first"]
    assert stack.upstreams["api"].received == []


# --------------------------------------------------------------------------- 4. failures


class BrokenRequest:
    name = "boom"

    @hookimpl
    async def gateway_request(self, ctx: RequestContext) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom in gateway_request")


class BrokenAuthenticate:
    name = "broken"

    @hookimpl
    def gateway_authenticate(self, ctx: RequestContext) -> None:
        raise RuntimeError("boom in gateway_authenticate")


class BrokenUpstreamHeaders:
    name = "broken"

    @hookimpl
    async def gateway_upstream_headers(
        self, ctx: RequestContext, headers: CIMultiDict[str]
    ) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom in gateway_upstream_headers")


class Teapot:
    name = "teapot"

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> None:
        raise StripeErrorResponse(
            418, "The gateway is a teapot today.", code="teapot", headers={"X-Teapot": "yes"}
        )


def test_failure_in_gateway_request_is_logged_and_skipped(
    stack: Stack,
    gateways: Gateways,
    install: Callable[..., list[str]],
    sdk: Callable[..., stripe.StripeClient],
) -> None:
    gw = gateways.start(plugins={"load": install(boom=BrokenRequest())})
    customers = sdk(gw.url).v1.customers.list()
    assert customers.object == "list"
    assert [r.path for r in stack.upstreams["api"].received] == ["/v1/customers"]

    (failed,) = gw.events("plugin_failed")
    assert failed["plugin"] == "boom"
    assert failed["hook"] == "gateway_request"
    assert failed["level"] == "error"
    assert "boom in gateway_request" in failed["exception"]
    (line,) = stack.audit_lines()
    assert line["status"] == 200
    assert line["error"] is None


@pytest.mark.parametrize(
    ("plugin", "hook"),
    [
        (BrokenAuthenticate, "gateway_authenticate"),
        (BrokenUpstreamHeaders, "gateway_upstream_headers"),
    ],
)
def test_failure_in_fail_closed_hooks_answers_500(
    plugin: type,
    hook: str,
    stack: Stack,
    gateways: Gateways,
    install: Callable[..., list[str]],
    sdk: Callable[..., stripe.StripeClient],
) -> None:
    gw = gateways.start(plugins={"load": install(broken=plugin())})

    with pytest.raises(stripe.APIError) as caught:
        sdk(gw.url).v1.customers.create(params={"email": "a@example.com"})
    assert caught.value.http_status == 500
    assert caught.value.error is not None
    assert caught.value.error.type == "api_error"
    assert "Nothing was sent to Stripe" in str(caught.value.user_message)

    raw = get(f"{gw.url}/v1/customers")
    assert raw.status_code == 500
    assert raw.headers["Content-Type"].startswith("application/json")
    assert raw.headers["Stripe-Should-Retry"] == "false"
    assert raw.headers["Request-Id"] == raw.headers["X-Gateway-Request-Id"]
    assert raw.json()["error"]["type"] == "api_error"

    for upstream in stack.upstreams.values():
        assert upstream.received == []
    closed = gw.events("plugin_failed_closed")
    assert [(e["plugin"], e["hook"]) for e in closed] == [("broken", hook)] * 2
    assert f"boom in {hook}" in closed[0]["exception"]
    assert [(a["status"], a["error"]) for a in stack.audit_lines(2)] == [
        (500, "plugin_failure")
    ] * 2


def test_stripe_error_from_gateway_request_is_the_answer(
    stack: Stack,
    gateways: Gateways,
    install: Callable[..., list[str]],
    sdk: Callable[..., stripe.StripeClient],
) -> None:
    gw = gateways.start(plugins={"load": install(teapot=Teapot())})

    with pytest.raises(stripe.APIError) as caught:
        sdk(gw.url).v1.customers.list()
    assert caught.value.http_status == 418
    assert caught.value.error is not None
    assert caught.value.error.code == "teapot"

    raw = get(f"{gw.url}/v1/customers")
    assert raw.status_code == 418
    assert raw.json() == {
        "error": {
            "type": "invalid_request_error",
            "message": "The gateway is a teapot today.",
            "code": "teapot",
        }
    }
    assert raw.headers["X-Teapot"] == "yes"
    assert raw.headers["Request-Id"].startswith("gwreq_")
    assert stack.upstreams["api"].received == []
    assert gw.events("plugin_failed") == []  # a chosen answer, not a failure
    assert [(a["status"], a["error"]) for a in stack.audit_lines(2)] == [(418, "teapot")] * 2


def test_misspelt_hook_stops_startup(
    stack: Stack, gateways: Gateways, install: Callable[..., list[str]]
) -> None:
    class Typo:
        name = "typo"

        @hookimpl
        def gateway_reqest(self, ctx: RequestContext) -> None:
            raise AssertionError("never called")

    load = install(typo=Typo())
    with pytest.raises(ConfigError, match="gateway_reqest") as caught:
        gateways.start(plugins={"load": load})
    assert caught.value.path == "plugins"


def test_misspelt_hook_is_a_config_error_on_the_command_line(tmp_path: Path) -> None:
    write_module(tmp_path, "typo_gw_plugin", TYPO_SOURCE)
    (tmp_path / "gateway.toml").write_text('[plugins]\nload = ["typo_gw_plugin:TypoPlugin"]\n')
    result = run_cli("check-config", "gateway.toml", pythonpath=tmp_path)
    assert result.returncode == 2
    assert "config error" in result.stderr
    assert "gateway_reqest" in result.stderr
    assert "Traceback" not in result.stderr


def test_hookimpl_with_unknown_argument_is_a_config_error(
    install: Callable[..., list[str]],
) -> None:
    class WrongArgument:
        name = "wrongarg"

        @hookimpl
        def gateway_request(self, request: object) -> None:
            return None

    with pytest.raises(ConfigError, match="gateway_request"):
        plugin_host({"plugins": {"load": install(p=WrongArgument())}}, entry_points=False)


def test_hook_wrapper_on_a_request_hook_stops_startup(
    install: Callable[..., list[str]],
) -> None:
    class Wrapper:
        name = "wrapper"

        @hookimpl(wrapper=True)
        def gateway_authenticate(self, ctx: RequestContext) -> object:
            return (yield)

    with pytest.raises(ConfigError, match="hook wrapper"):
        plugin_host({"plugins": {"load": install(w=Wrapper())}}, entry_points=False)


def test_a_plugin_loaded_by_config_can_be_disabled(
    install: Callable[..., list[str]],
) -> None:
    class Named:
        name = "named"

        @hookimpl
        def gateway_request(self, ctx: RequestContext) -> None:
            return None

    host = plugin_host(
        {"plugins": {"load": install(n=Named()), "disable": ["named"]}}, entry_points=False
    )
    assert "named" not in host.plugin_names()


# --------------------------------------------------------------------------- 5. more hooks


class Stamp:
    name = "stamp"

    def __init__(self) -> None:
        self.seen_authorization: list[str | None] = []

    @hookimpl
    async def gateway_upstream_headers(
        self, ctx: RequestContext, headers: CIMultiDict[str]
    ) -> None:
        await asyncio.sleep(0)
        self.seen_authorization.append(headers.get("Authorization"))
        headers["X-Acme-Trace"] = ctx.request_id
        headers.setdefault("Idempotency-Key", f"acme-{ctx.request_id}")


def test_upstream_headers_hook_adds_headers_the_upstream_receives(
    stack: Stack,
    gateways: Gateways,
    install: Callable[..., list[str]],
    sdk: Callable[..., stripe.StripeClient],
) -> None:
    stamp = Stamp()
    gw = gateways.start(plugins={"load": install(stamp=stamp)})
    api = stack.upstreams["api"]

    created = sdk(gw.url).v1.customers.create(params={"email": "a@example.com"})
    assert created.id == "obj_created00001"
    request_id = created.last_response.headers["X-Gateway-Request-Id"]
    assert api.last().headers["X-Acme-Trace"] == request_id
    assert api.last().body == b"email=a%40example.com"
    sdk_key = api.last().headers["Idempotency-Key"]  # the SDK sends its own on POST
    assert not sdk_key.startswith("acme-")

    raw = requests.post(
        f"{gw.url}/v1/customers",
        data={"email": "b@example.com"},
        headers={"Authorization": f"Bearer {BILLING_KEY}"},
        timeout=10,
    )
    assert raw.status_code == 200
    raw_id = raw.headers["X-Gateway-Request-Id"]
    assert api.last().headers["X-Acme-Trace"] == raw_id
    assert api.last().headers["Idempotency-Key"] == f"acme-{raw_id}"

    # the hook ran after the key swap, and its changes are what the audit line records
    assert stamp.seen_authorization == [f"Bearer {BILLING_UPSTREAM_KEY}"] * 2
    assert [a["idempotency_key"] for a in stack.audit_lines(2)] == [sdk_key, f"acme-{raw_id}"]


class Finisher:
    name = "finisher"

    def __init__(self) -> None:
        self.finished: list[tuple[str, str, int, str | None]] = []

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> web.Response | None:
        if ctx.path == "/v1/acme/ping":
            return web.json_response({"pong": True})
        if ctx.path == "/v1/acme/teapot":
            raise StripeErrorResponse(418, "Teapot.", code="teapot")
        return None

    @hookimpl
    def gateway_upstream_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if ctx.path == "/v1/acme/boom":
            raise RuntimeError("boom")

    @hookimpl
    async def gateway_request_finished(self, ctx: RequestContext) -> None:
        await asyncio.sleep(0)
        self.finished.append((ctx.request_id, ctx.path, ctx.status, ctx.error))


def test_request_finished_fires_once_per_request(
    stack: Stack, gateways: Gateways, install: Callable[..., list[str]]
) -> None:
    finisher = Finisher()
    gw = gateways.start(
        plugins={"load": install(finisher=finisher)}, server={"max_body_bytes": 1024}
    )
    url = gw.url
    responses = [
        get(f"{url}/v1/customers"),  # forwarded
        get(f"{url}/v1/customers", key=None),  # refused by auth: 401
        get(f"{url}/v1/customers", key=ANALYTICS_KEY),  # refused by auth: 403
        get(f"{url}/v1/acme/ping"),  # answered by the plugin
        get(f"{url}/v1/acme/teapot"),  # refused by the plugin
        get(f"{url}/v1/acme/boom"),  # failed closed
        requests.post(  # refused before any hook: body too large
            f"{url}/v1/customers",
            data=b"x" * 2048,
            headers={"Authorization": f"Bearer {BILLING_KEY}"},
            timeout=10,
        ),
    ]
    # the health check never reaches the plugin host
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200

    expected = [
        ("/v1/customers", 200, None),
        ("/v1/customers", 401, "refused"),
        ("/v1/customers", 403, "route_not_allowed"),
        ("/v1/acme/ping", 200, None),
        ("/v1/acme/teapot", 418, "teapot"),
        ("/v1/acme/boom", 500, "plugin_failure"),
        ("/v1/customers", 413, "request_too_large"),
    ]
    assert [r.status_code for r in responses] == [status for _, status, _ in expected]
    wait_for(lambda: len(finisher.finished) >= len(expected))
    time.sleep(0.05)  # a second call would come right after the first
    by_id = {rid: (path, status, error) for rid, path, status, error in finisher.finished}
    assert len(finisher.finished) == len(by_id) == len(expected)
    assert [by_id[r.headers["X-Gateway-Request-Id"]] for r in responses] == expected
    # the built-in audit plugin saw the same requests, once each
    assert sorted(a["request_id"] for a in stack.audit_lines(len(by_id))) == sorted(by_id)
    assert [r.path for r in stack.upstreams["api"].received] == ["/v1/customers"]


# --------------------------------------------------------------------------- 6. hook specs


def _specs() -> dict[str, Callable[..., Any]]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, marker)
    }


def test_every_gateway_function_in_hookspecs_is_a_spec() -> None:
    specs = _specs()
    assert len(specs) >= 8
    functions = {n for n, f in vars(hookspecs).items() if inspect.isfunction(f)}
    assert {n for n in functions if n.startswith("gateway_")} == set(specs)


@pytest.mark.parametrize("name", sorted(_specs()))
def test_hookspec_docstring_says_when_it_fires_and_what_a_failure_does(name: str) -> None:
    doc = inspect.getdoc(_specs()[name])
    assert doc, f"{name} has no docstring"
    assert re.search(r"\bFires\b", doc), f"{name}: the docstring does not say when it fires"
    failure = re.search(r"^Failure:(.*?)(?:\n\n|\Z)", doc, re.M | re.S)
    assert failure, f"{name}: the docstring has no 'Failure:' paragraph"
    policy = " ".join(failure.group(1).lower().split())
    policies = ("fails closed", "logged and skipped", "start-up stops", "stops start-up")
    assert any(p in policy for p in policies), f"{name}: failure policy unclear: {policy!r}"


@pytest.mark.parametrize("name", sorted(_specs()))
def test_the_failure_policy_the_host_applies_is_the_one_the_docstring_states(name: str) -> None:
    doc = inspect.getdoc(_specs()[name]) or ""
    failure = re.search(r"^Failure:(.*?)(?:\n\n|\Z)", doc, re.M | re.S)
    assert failure is not None
    policy = " ".join(failure.group(1).lower().split())
    closed = any(p in policy for p in ("fails closed", "start-up stops", "stops start-up"))
    assert hookspecs.fails_closed_hook(name) is closed, f"{name}: @fails_closed disagrees"


def test_request_hooks_are_the_specs_taking_ctx() -> None:
    with_ctx = {name for name, fn in _specs().items() if "ctx" in inspect.signature(fn).parameters}
    assert set(REQUEST_HOOKS) == with_ctx
    assert len(REQUEST_HOOKS) == len(set(REQUEST_HOOKS))


# --------------------------------------------------------------------------- declared settings


class DeclaredRoute(Settings):
    route: RouteText
    weight: int = Field(1, ge=1, le=10)


class DeclaredSettings(Settings):
    ttl: float = Field(30.0, gt=0)
    enabled: bool = True
    routes: list[DeclaredRoute] = Field(default_factory=list)


class DeclaringPlugin:
    """A third-party plugin that declares its settings as a model."""

    name = "declaring"
    settings_model = DeclaredSettings
    seen: ClassVar[list[object]] = []

    @hookimpl
    def gateway_configure(self, settings: DeclaredSettings) -> None:
        self.seen.append(settings)


class ModelOnlyPlugin:
    """Declares settings but implements no gateway_configure: still validated."""

    name = "model_only"
    settings_model = DeclaredSettings


class RawPlugin:
    """Declares no model: gets the raw table."""

    name = "raw"
    seen: ClassVar[list[object]] = []

    @hookimpl
    def gateway_configure(self, settings: dict[str, Any]) -> None:
        self.seen.append(settings)


_HERE = "tests.gateway.test_host"


def _declared(table: dict[str, Any], plugin: str = "DeclaringPlugin") -> PluginHost:
    name = {"DeclaringPlugin": "declaring", "ModelOnlyPlugin": "model_only", "RawPlugin": "raw"}
    return plugin_host(
        {"plugins": {"load": [f"{_HERE}:{plugin}"], name[plugin]: table}}, entry_points=False
    )


def test_a_declared_model_gives_the_plugin_a_typed_frozen_object() -> None:
    DeclaringPlugin.seen.clear()
    _declared({"ttl": 5, "routes": [{"route": "GET /v1/x/**", "weight": 3}]})
    (settings,) = DeclaringPlugin.seen
    assert isinstance(settings, DeclaredSettings)
    assert settings.ttl == 5.0 and isinstance(settings.ttl, float)  # a whole number is a number
    assert settings.enabled is True
    assert settings.routes == [DeclaredRoute(route="GET /v1/x/**", weight=3)]
    with pytest.raises(ValidationError):
        settings.ttl = 1.0  # type: ignore[misc]
    DeclaringPlugin.seen.clear()
    _declared({})
    assert DeclaringPlugin.seen == [DeclaredSettings()]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"ttl": "30"}, "plugins.declaring.ttl: must be a number > 0, not a string"),
        ({"ttl": 0}, "plugins.declaring.ttl: must be a number > 0"),
        ({"ttl": True}, "plugins.declaring.ttl: must be a number > 0, not true"),
        ({"enabled": 1}, "plugins.declaring.enabled: must be true or false"),
        ({"colour": "red", "ttl": "x"}, "plugins.declaring.colour: unknown key"),
        (
            {"routes": [{"route": "GET /a"}, {"rout": "GET /b"}]},
            "plugins.declaring.routes[1].rout: unknown key",
        ),
        (
            {"routes": [{"route": "GET /a", "weight": 11}]},
            "plugins.declaring.routes[0].weight: must be a whole number between 1 and 10",
        ),
        (
            {"routes": [{"route": "FETCH /a"}]},
            "plugins.declaring.routes[0].route: rule 'FETCH /a': unknown method 'FETCH'",
        ),
        ({"routes": "GET /a"}, "plugins.declaring.routes: must be a list, not a string"),
    ],
)
def test_a_declared_model_reports_key_paths_in_the_gateways_words(
    table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _declared(table)
    assert str(info.value) == message


def test_a_declared_model_is_validated_without_a_configure_hook() -> None:
    with pytest.raises(ConfigError) as info:
        _declared({"ttl": -1}, "ModelOnlyPlugin")
    assert info.value.path == "plugins.model_only.ttl"


def test_a_plugin_without_a_model_gets_its_raw_table() -> None:
    RawPlugin.seen.clear()
    _declared({"anything": [1, "x"]}, "RawPlugin")
    assert RawPlugin.seen == [{"anything": [1, "x"]}]
