"""Plugins' public routes on the main listener (``gateway_public_routes``), over real sockets."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import pytest
import requests
from aiohttp import web

from gateway.errors import StripeErrorResponse
from gateway.hookspecs import hookimpl
from gateway.host import PluginFailure
from gateway.keys import GENERATIONS, PUBLIC_AUDIT, REQUEST_ID
from gateway.testing import PluginTest
from tests.helpers import BILLING_KEY, Stack


class GreeterPlugin:
    """Serves ``POST /inbound/hello`` without a gateway key, and two failing routes."""

    name = "greeter"

    @hookimpl
    def gateway_public_routes(self) -> list[web.RouteDef]:
        return [
            web.post("/inbound/hello", self.hello),
            web.post("/inbound/refuse", self.refuse),
            web.post("/inbound/broken", self.broken),
        ]

    async def hello(self, request: web.Request) -> web.Response:
        request[PUBLIC_AUDIT]["greeted"] = (await request.read()).decode()
        request[PUBLIC_AUDIT].update(status="mine", event="mine")  # never the core's
        return web.json_response({"request_id": request[REQUEST_ID]})

    async def refuse(self, request: web.Request) -> web.Response:
        raise StripeErrorResponse(400, "No.", code="greeting_refused")

    async def broken(self, request: web.Request) -> web.Response:
        raise RuntimeError("boom")


class SlowPlugin:
    """Answers ``POST /inbound/slow`` once the test releases it; records its shutdowns."""

    name = "slow"
    started = threading.Event()
    release = threading.Event()
    shutdowns: ClassVar[list[str]] = []

    @hookimpl
    def gateway_public_routes(self) -> list[web.RouteDef]:
        return [web.post("/inbound/slow", self.slow)]

    async def slow(self, request: web.Request) -> web.Response:
        SlowPlugin.started.set()
        await asyncio.get_running_loop().run_in_executor(None, SlowPlugin.release.wait, 30)
        return web.json_response({"shut_down_meanwhile": bool(SlowPlugin.shutdowns)})

    @hookimpl
    def gateway_shutdown(self, app: web.Application) -> None:
        SlowPlugin.shutdowns.append("shut down")


class TwinPlugin(GreeterPlugin):
    """Takes the greeter's paths too."""

    name = "twin"


class ShadowPlugin:
    name = "shadow"

    @hookimpl
    def gateway_public_routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/customers", GreeterPlugin().hello)]


def _start(stack: Stack, *load: str) -> str:
    return stack.start_gateway(
        plugins={"audit": {"path": str(stack.audit_path)}, "load": list(load)}
    )


GREETER = "tests.gateway.test_public:GreeterPlugin"


def test_a_public_route_answers_without_a_key_with_a_request_id_and_a_log_line(
    stack: Stack,
) -> None:
    url = _start(stack, GREETER)
    response = requests.post(url + "/inbound/hello", data=b"hi", timeout=10)
    assert response.status_code == 200
    request_id = response.headers["Request-Id"]
    assert request_id.startswith("gwreq_") and response.json() == {"request_id": request_id}
    (line,) = stack.error_events("public_request")
    assert line["request_id"] == request_id and line["status"] == 200
    assert line["greeted"] == "hi" and line["path"] == "/inbound/hello"
    # the proxy is untouched: Stripe's paths still need a key
    assert requests.get(url + "/v1/customers", timeout=10).status_code == 401
    ok = requests.get(
        url + "/v1/customers", headers={"Authorization": f"Bearer {BILLING_KEY}"}, timeout=10
    )
    assert ok.status_code == 200
    # the audit plugin logs proxied requests only: the public one has its own line
    assert [line["path"] for line in stack.audit_lines(2)] == ["/v1/customers"] * 2


@pytest.mark.parametrize(
    ("method", "path", "status", "type_"),
    [
        ("POST", "/inbound/refuse", 400, "invalid_request_error"),
        ("POST", "/inbound/broken", 500, "api_error"),
        ("GET", "/inbound/hello", 405, "invalid_request_error"),
    ],
)
def test_public_route_errors_are_stripe_shaped(
    stack: Stack, method: str, path: str, status: int, type_: str
) -> None:
    url = _start(stack, GREETER)
    response = requests.request(method, url + path, timeout=10)
    assert response.status_code == status
    assert response.json()["error"]["type"] == type_
    assert response.headers["Request-Id"].startswith("gwreq_")
    (line,) = stack.error_events("public_request")
    assert line["status"] == status


def test_a_reload_swaps_the_public_routes(stack: Stack) -> None:
    url = _start(stack, GREETER)
    assert requests.post(url + "/inbound/hello", timeout=10).status_code == 200
    assert stack.reload(plugins={"audit": {"path": str(stack.audit_path)}})["reloaded"]
    gone = requests.post(url + "/inbound/hello", timeout=10)
    assert gone.status_code != 200 and gone.headers["Request-Id"]  # the proxy's answer now


def test_a_reload_waits_for_public_requests_in_flight_on_the_old_plugins(stack: Stack) -> None:
    SlowPlugin.started.clear()
    SlowPlugin.release.clear()
    SlowPlugin.shutdowns.clear()
    url = _start(stack, "tests.gateway.test_public:SlowPlugin")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, url + "/inbound/slow", timeout=30)
        assert SlowPlugin.started.wait(30)
        assert stack.app is not None
        plugins = {"audit": {"path": str(stack.audit_path)}, "load": [GREETER]}
        assert stack.reload(plugins=plugins)["reloaded"]
        # the outgoing generation still has the request: its plugins stay up
        assert stack.app[GENERATIONS].in_flight == 1
        SlowPlugin.release.set()
        response = answer.result(30)
    assert response.status_code == 200
    assert response.json() == {"shut_down_meanwhile": False}
    deadline = time.monotonic() + 30
    while not SlowPlugin.shutdowns:
        assert time.monotonic() < deadline, "the old generation never shut down"
        time.sleep(0.02)


async def test_a_public_route_on_stripes_paths_stops_start_up() -> None:
    async with PluginTest(GreeterPlugin()) as t:
        assert t.host.public_router is not None
    with pytest.raises(PluginFailure) as failure:
        async with PluginTest(ShadowPlugin()):
            pass
    assert failure.value.plugin == "shadow"
    with pytest.raises(PluginFailure) as twice:
        async with PluginTest(GreeterPlugin(), TwinPlugin()):
            pass
    assert twice.value.plugin in ("greeter", "twin")


async def test_plugin_test_calls_public_routes_without_a_server() -> None:
    async with PluginTest(GreeterPlugin()) as t:
        answer = await t.public("POST", "/inbound/hello", b"hi")
        assert answer.status == 200 and answer.headers["Request-Id"].startswith("gwreq_")
        refused = await t.public("POST", "/inbound/refuse")
        assert refused.status == 400
        (line,) = [r for r in t.logs() if r["event"] == "public_request" and r["status"] == 200]
        assert line["greeted"] == "hi"


async def test_no_public_route_means_no_router() -> None:
    async with PluginTest() as t:
        assert t.host.public_router is None
