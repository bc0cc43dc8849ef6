"""The metric objects: one registry per app, and the sum over worker processes in
prometheus-client's multiprocess mode (two real ``stripe-gateway serve`` processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import stripe

from gateway.metrics import GatewayMetrics, exposition
from tests.helpers import BILLING_KEY, ENVIRON, Scrape, Stack, default_teams, free_port

_LISTENING = re.compile(r"listening on (http://\S+)")


def test_every_app_has_its_own_registry() -> None:
    a, b = GatewayMetrics.create(), GatewayMetrics.create()
    labels = ("team", "method", "family", "status")
    a.counter("requests", "Requests.", labels).labels("t", "GET", "other", "2xx").inc(3)
    b.counter("requests", "Requests.", labels).labels("t", "GET", "other", "2xx").inc()
    line = 'stripe_gateway_requests_total{family="other",method="GET",status="2xx",team="t"}'
    assert f"{line} 3.0" in exposition(a).decode()
    assert f"{line} 1.0" in exposition(b).decode()
    assert not a.multiprocess
    assert "process_cpu_seconds_total" in exposition(a).decode()


# ------------------------------------------------------------------ multiprocess mode


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _config(stack: Stack, path: Path, admin_port: int, audit: Path) -> Path:
    lines = ["[server]", 'host = "127.0.0.1"', "port = 0", "drain_timeout = 1.0", ""]
    lines += ["[upstream]"] + [f"{k} = {_toml(v)}" for k, v in stack.upstream_urls.items()]
    lines += ["", "[admin]", f"port = {admin_port}", "", "[plugins]", 'disable = ["cache"]', ""]
    lines += ["[plugins.audit]", f"path = {_toml(str(audit))}", ""]
    for team in default_teams():
        lines.append("[[teams]]")
        lines += [f"{k} = {_toml(v)}" for k, v in team.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class _Gateway:
    def __init__(self, process: subprocess.Popen[bytes], url: str, admin: str) -> None:
        self.process = process
        self.url = url
        self.admin = admin


def _serve(config: Path, admin_port: int, multiproc: Path, log: Path) -> _Gateway:
    env = {**os.environ, **ENVIRON, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    with log.open("wb") as stderr:  # a file, not a pipe: nothing can block on a full pipe
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        found = _LISTENING.search(log.read_text())
        if found:
            return _Gateway(process, found[1], f"http://127.0.0.1:{admin_port}")
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    raise AssertionError("the gateway did not start:\n" + log.read_text())


@pytest.fixture
def two_workers(stack: Stack, tmp_path: Path) -> Iterator[list[_Gateway]]:
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    gateways = []
    try:
        for n in range(2):
            port = free_port()
            config = _config(stack, tmp_path / f"gw{n}.toml", port, tmp_path / f"audit{n}.jsonl")
            gateways.append(_serve(config, port, multiproc, tmp_path / f"gw{n}.log"))
        yield gateways
    finally:
        for gw in gateways:
            gw.process.terminate()
        for gw in gateways:
            try:
                gw.process.wait(10)
            except subprocess.TimeoutExpired:
                gw.process.kill()
                gw.process.wait(5)


def test_metrics_are_summed_over_processes_sharing_the_directory(
    two_workers: list[_Gateway],
) -> None:
    first, second = two_workers
    for gw, count in ((first, 3), (second, 2)):
        client = stripe.StripeClient(
            BILLING_KEY, base_addresses={"api": gw.url}, max_network_retries=0
        )
        for _ in range(count):
            client.v1.customers.list()
    requests.get(first.url + "/v1/customers", timeout=5)  # no key: a 401 from the first
    labels = {"team": "billing", "family": "other", "status": "2xx"}
    deadline = time.monotonic() + 5
    while True:
        scrapes = [Scrape(gw.admin) for gw in two_workers]
        if all(s["requests_total", labels] == 5 for s in scrapes) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for scrape in scrapes:  # either process answers with the sum
        assert scrape["requests_total", labels] == 5
        assert scrape["requests_total", {"team": "-", "status": "4xx"}] == 1
        assert scrape["request_duration_seconds_count"] == 6
        assert scrape["upstream_duration_seconds_count", {"upstream": "api"}] == 5
        assert scrape["requests_in_flight"] == 0
    # readiness and health are per process
    for gw in two_workers:
        assert requests.get(gw.admin + "/readyz", timeout=5).json()["status"] == "ready"
