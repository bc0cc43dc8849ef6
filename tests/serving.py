"""Helpers for tests that run ``stripe-gateway serve`` as a real process (one process or
``--workers N``): a config file that can be rewritten for reloads, the gateway's JSON log
events, plain HTTP requests on fresh connections (the subprocess itself:
:mod:`tests.cli_helpers`)."""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.cli_helpers import (
    REPO,
    GatewayProcess,
    http_get,
    serving,
    subprocess_env,
)
from tests.helpers import (
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    PASSTHROUGH_KEY,
    complete_lines,
    digest,
)

__all__ = [
    "NEW_KEY",
    "GatewayConfigFile",
    "events",
    "gateway_env",
    "get",
    "serve_gateway",
    "wait_for_events",
]

#: the key of a team that a reload adds
NEW_KEY = "gw_test_newteam_000000000000001"

_TEAMS = {
    "billing": (BILLING_KEY, 'upstream_key_env = "BILLING_STRIPE_KEY"'),
    "direct": (PASSTHROUGH_KEY, ""),
    "newteam": (NEW_KEY, 'upstream_key_env = "BILLING_STRIPE_KEY"'),
}


class GatewayConfigFile:
    """``tmp/gateway.toml`` in front of one fake upstream; audit lines in ``tmp/audit.jsonl``."""

    def __init__(self, tmp: Path, *, api: str, drain_timeout: float = 5.0) -> None:
        self.path = tmp / "gateway.toml"
        self.audit = tmp / "audit.jsonl"
        self.api = api
        self.drain_timeout = drain_timeout

    def write(
        self,
        *,
        teams: tuple[str, ...] = ("billing", "direct"),
        rate_limit: bool = False,
        workers: int | None = None,
        extra: str = "",
    ) -> Path:
        """Write the file atomically (write, then rename), as an operator should."""
        text = f"""\
        [server]
        host = "127.0.0.1"
        port = 0
        drain_timeout = {self.drain_timeout}
        {f"workers = {workers}" if workers is not None else ""}

        [upstream]
        api = "{self.api}"
        connect_timeout = 2.0
        read_timeout = 10.0

        [plugins.audit]
        path = "{self.audit}"
        """
        if rate_limit:
            text += """
        [plugins.rate_limit.default]
        read = { rate = 100000, burst = 100000 }
        write = { rate = 100000, burst = 100000 }
        """
        for name in teams:
            key, upstream = _TEAMS[name]
            text += f"""
        [[teams]]
        name = "{name}"
        key_sha256 = ["{digest(key)}"]
        {upstream}
        """
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
        os.replace(tmp, self.path)
        return self.path

    def audit_lines(self, at_least: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The audit file's lines, waiting up to ``timeout`` for ``at_least`` of them (a
        request's line is written just after its response ends: pass the number of lines
        the test relies on, not fewer)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = []
            if self.audit.exists():
                lines = [json.loads(x) for x in complete_lines(self.audit.read_text()) if x]
            if len(lines) >= at_least or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)


def gateway_env(**extra: str) -> dict[str, str]:
    """The subprocess environment: the billing team's upstream key, and the repository on
    ``PYTHONPATH`` (so ``[plugins] load`` can name test plugins)."""
    return subprocess_env(BILLING_STRIPE_KEY=BILLING_UPSTREAM_KEY, PYTHONPATH=str(REPO), **extra)


@contextmanager
def serve_gateway(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    with serving(config, *args, env=env or gateway_env()) as gw:
        yield gw


def events(gw: GatewayProcess, name: str) -> list[dict[str, Any]]:
    """The gateway's (and supervisor's) JSON log lines named ``name``, so far."""
    out = []
    for line in list(gw.stderr):
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                out.append(record)
    return out


def wait_for_events(
    gw: GatewayProcess, name: str, at_least: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = events(gw, name)
        if len(found) >= at_least:
            return found
        assert time.monotonic() < deadline, (
            f"{len(found)} {name} events after {timeout} s, expected {at_least}:\n{gw.output()}"
        )
        time.sleep(0.02)


def get(gw: GatewayProcess, path: str, key: str) -> tuple[int, dict[str, str], bytes]:
    """``GET path`` with the key, on a fresh connection (the kernel picks the worker)."""
    return http_get(gw.host_port, path, {"Authorization": f"Bearer {key}"})
