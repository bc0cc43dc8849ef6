"""Test helpers: real servers on real loopback sockets, run in a background event loop.

The official ``stripe`` SDK is synchronous, so the servers (fake Stripe upstreams and the
gateway) run in an event loop on a separate thread and the tests call them like any
service would.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import requests
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from gateway.keys import ADMIN_URLS, RELOAD
from gateway.serve.server import GatewayRunner
from tests.fake_stripe import FakeStripe

T = TypeVar("T")

#: fake keys: gateway keys per team, and the Stripe keys the gateway swaps in
BILLING_KEY = "gw_test_billing_0000000000000001"
ANALYTICS_KEY = "gw_test_analytics_00000000000001"
PASSTHROUGH_KEY = "sk_test_passthrough00000000000001"
BILLING_UPSTREAM_KEY = "sk_test_billingupstream000000001"
ANALYTICS_UPSTREAM_KEY = "sk_test_analyticsupstream0000001"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def free_port() -> int:
    """A loopback port free now (for listeners whose config needs a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def complete_lines(text: str) -> list[str]:
    """The lines of a log file read while it is being written: a last line without its
    newline is still being written, so it is left out (parsing it would fail)."""
    lines = text.split("\n")
    return lines[:-1]  # after the last newline: "" or a line not yet whole


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(url: str, data: bytes, timeout: float = 10.0) -> RawResponse:
    """Send ``data`` as is (a whole raw HTTP/1.1 request) to ``url``'s host and port, and
    read one response (Content-Length, chunked or until close)."""
    host, _, port = url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(data)
        response = http.client.HTTPResponse(conn)
        response.begin()
        body = response.read()
        return RawResponse(response.status, dict(response.getheaders()), body)


def until_closed(url: str, data: bytes, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` and read until the server closes the connection (a kept-alive one
    fails the read by timeout): the status, headers (lower-case names) and body."""
    host, _, port = url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(data)
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, body


class LoopThread:
    """An asyncio event loop running forever in a daemon thread (``loop``, when given:
    a uvloop one, say, as the gateway runs on by default)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop if loop is not None else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class Served:
    runner: web.BaseRunner
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


async def start_app(app: web.Application, *, gateway: bool = False, **kwargs: Any) -> Served:
    runner_cls = GatewayRunner if gateway else web.AppRunner
    kwargs.setdefault("shutdown_timeout", 0.5)
    runner = runner_cls(app, access_log=None, **kwargs)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return Served(runner=runner, url=f"http://{host}:{port}")


def team(
    name: str,
    key: str,
    *,
    upstream_env: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "key_sha256": [digest(key)], **extra}
    if upstream_env:
        out["upstream_key_env"] = upstream_env
    return out


def default_teams() -> list[dict[str, Any]]:
    return [
        team("billing", BILLING_KEY, upstream_env="BILLING_STRIPE_KEY"),
        team(
            "analytics",
            ANALYTICS_KEY,
            upstream_env="ANALYTICS_STRIPE_KEY",
            allow=["GET /v1/sigma/**", "GET /v1/reporting/**", "POST /v1/reporting/report_runs"],
            stripe_accounts=["acct_allowed000001"],
        ),
        team("direct", PASSTHROUGH_KEY),
    ]


ENVIRON = {
    "BILLING_STRIPE_KEY": BILLING_UPSTREAM_KEY,
    "ANALYTICS_STRIPE_KEY": ANALYTICS_UPSTREAM_KEY,
}


@dataclass
class Stack:
    """A gateway in front of fake Stripe hosts, all on loopback sockets."""

    loop: LoopThread
    tmp: Path
    upstreams: dict[str, FakeStripe] = field(default_factory=dict)
    upstream_urls: dict[str, str] = field(default_factory=dict)
    _runners: list[web.BaseRunner] = field(default_factory=list)
    gateway_url: str = ""
    config: GatewayConfig | None = None
    app: web.Application | None = None
    _error_streams: list[BinaryIO] = field(default_factory=list)
    _next_data: dict[str, Any] | None = None

    def start_upstreams(self) -> None:
        for name in ("api", "files", "connect", "meter_events"):
            fake = FakeStripe(name=name)
            served = self.loop.run(start_app(fake.app()))
            self._runners.append(served.runner)
            self.upstreams[name] = fake
            self.upstream_urls[name] = served.url

    def start_gateway(self, *, error_stream: BinaryIO | None = None, **overrides: Any) -> str:
        data = self.gateway_data(**overrides)
        self.config = parse_config(data, environ=ENVIRON)
        if error_stream is None:  # the gateway's own log, in a file the test can poll
            error_stream = self.errors_path.open("ab", buffering=0)
            self._error_streams.append(error_stream)
        app = create_app(self.config, error_stream=error_stream, reload_from=self._reload_config)
        served = self.loop.run(start_app(app, gateway=True, shutdown_timeout=5))
        self._runners.append(served.runner)
        self.gateway_url = served.url
        self.app = app
        return served.url

    def reload(self, **overrides: Any) -> dict[str, Any]:
        """Reload the running gateway (``app[RELOAD]``) with the config ``start_gateway``
        would build from ``overrides``; returns the reload's answer."""
        assert self.app is not None, "start the gateway first"
        self._next_data = self.gateway_data(**overrides)
        return self.loop.run(self.app[RELOAD]())

    def _reload_config(self) -> GatewayConfig:
        assert self._next_data is not None
        return parse_config(self._next_data, environ=ENVIRON)

    def gateway_data(self, **overrides: Any) -> dict[str, Any]:
        """The gateway's config document: the fake upstreams, the default teams, the audit
        log in the test's directory; ``overrides`` replace keys (tables are merged)."""
        data: dict[str, Any] = {
            "upstream": {**self.upstream_urls, "read_timeout": 2.0, "connect_timeout": 2.0},
            "teams": default_teams(),
            "plugins": {"audit": {"path": str(self.audit_path)}},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return data

    @property
    def admin_url(self) -> str:
        """The admin listener of the last gateway started (``[admin] port`` must be set)."""
        assert self.app is not None, "start the gateway first"
        urls = self.app[ADMIN_URLS]
        assert urls, "the gateway has no admin listener: set admin = {'port': free_port()}"
        return str(urls[0])

    @property
    def audit_path(self) -> Path:
        return self.tmp / "audit.jsonl"

    @property
    def errors_path(self) -> Path:
        return self.tmp / "errors.jsonl"

    def error_events(
        self, event: str, at_least: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The gateway error log's records named ``event``, waiting up to ``timeout`` for
        ``at_least`` of them (the log is written once per event-loop iteration, so often
        just after the response that caused it)."""
        deadline = time.monotonic() + timeout
        while True:
            records = []
            if self.errors_path.exists():
                for line in complete_lines(self.errors_path.read_text()):
                    record = json.loads(line) if line else {}
                    if record.get("event") == event:
                        records.append(record)
            if len(records) >= at_least or time.monotonic() > deadline:
                return records
            time.sleep(0.02)

    def audit_lines(self, at_least: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The audit file's lines, waiting up to ``timeout`` for ``at_least`` of them.

        A request's line is written just after its response ends, so a client can finish
        reading before the line exists: pass the number of lines the test relies on (every
        request so far that writes one), or use :meth:`audit_lines_for`; lines of earlier
        requests say nothing of whether the latest one's is there. The wait returns as soon
        as they are (the long default only matters on a loaded machine).
        """
        deadline = time.monotonic() + timeout
        while True:
            lines = []
            if self.audit_path.exists():
                text = self.audit_path.read_text()
                lines = [json.loads(line) for line in complete_lines(text) if line]
            if len(lines) >= at_least or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def audit_lines_for(
        self, path: str, at_least: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The audit lines of requests to ``path`` (with its query, as logged), waiting up
        to ``timeout`` for ``at_least`` of them: other requests' lines already written say
        nothing of whether this one's is (it is written just after its response ends)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.audit_lines(0, 0) if line.get("path") == path]
            if len(lines) >= at_least or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def close(self) -> None:
        for runner in reversed(self._runners):
            self.loop.run(runner.cleanup())
        self._runners.clear()
        for stream in self._error_streams:
            stream.close()
        self._error_streams.clear()


#: the prefix of every metric the gateway exports
METRIC_PREFIX = "stripe_gateway_"


class Scrape:
    """One scrape of ``/metrics``: ``scrape["requests_total", {"team": "billing"}]`` sums
    every sample of that name whose labels include the given ones."""

    def __init__(self, admin: str) -> None:
        response = requests.get(admin + "/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        ]

    def __getitem__(self, key: tuple[str, Mapping[str, str]] | str) -> float:
        name, labels = (key, {}) if isinstance(key, str) else key
        return sum(
            value
            for n, have, value in self.samples
            if n == METRIC_PREFIX + name and all(have.get(k) == v for k, v in labels.items())
        )


@dataclass
class WebhookReceiver:
    """A webhook endpoint on a loopback port (``url``): records every delivery (body and
    ``Stripe-Signature``), answers the next status of ``plan``, then ``status``."""

    url: str = ""
    status: int = 200
    plan: list[int] = field(default_factory=list)
    received: list[tuple[bytes, str]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._changed:
            self.received.append((body, request.headers.get("Stripe-Signature", "")))
            status = self.plan.pop(0) if self.plan else self.status
            self._changed.notify_all()
        return web.Response(status=status, text="ok")

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[bytes, str]]:
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self.received) >= count, timeout)
            assert ok, f"expected {count} deliveries, got {len(self.received)}"
            return list(self.received)

    def events(self) -> list[dict[str, Any]]:
        with self._changed:
            return [json.loads(body) for body, _ in self.received]


@dataclass
class RecordedSpan:
    """A span of :class:`RecordingTracer`."""

    name: str
    client: bool
    attributes: dict[str, Any]
    error: str | None = None
    ended: int = 0

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def end(self, error: str | None = None) -> None:
        self.ended += 1
        self.error = error


@dataclass
class RecordingTracer:
    """A :class:`gateway.spans.Tracer` that keeps its spans, for the core's tests (the
    tracing plugin's own tests use OpenTelemetry's SDK)."""

    spans: list[RecordedSpan] = field(default_factory=list)

    def start_span(
        self, name: str, *, client: bool = False, attributes: Mapping[str, Any] | None = None
    ) -> RecordedSpan:
        span = RecordedSpan(name, client, dict(attributes or {}))
        self.spans.append(span)
        return span
