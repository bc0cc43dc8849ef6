"""Fixtures for sandbox tests: the sandbox on a real socket, the gateway in front of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from gateway.app import create_app
from gateway.config import parse_config
from sandbox.app import Sandbox, create_sandbox_app
from sandbox.core import SandboxSettings
from tests.helpers import LoopThread, Served, digest, start_app

#: the gateway key a test's SDK presents, and the sandbox key the gateway swaps in
GATEWAY_KEY = "gw_test_sandbox_full_0000000001"
SANDBOX_KEY = "sk_test_sandbox_upstream_0000001"
OTHER_SANDBOX_KEY = "sk_test_sandbox_other_000000001"


@dataclass
class SandboxStack:
    loop: LoopThread
    sandbox: Sandbox
    sandbox_url: str
    gateway_url: str
    _clients: list[stripe.StripeClient] = field(default_factory=list)

    def sdk(
        self, key: str = GATEWAY_KEY, *, direct: bool = False, **kwargs: Any
    ) -> stripe.StripeClient:
        """A StripeClient through the gateway (or straight at the sandbox with ``direct``)."""
        url = self.sandbox_url if direct else self.gateway_url
        if direct and key == GATEWAY_KEY:
            key = SANDBOX_KEY
        client = stripe.StripeClient(
            key,
            base_addresses={"api": url, "files": url, "connect": url, "meter_events": url},
            max_network_retries=0,
            http_client=stripe.RequestsClient(session=requests.Session()),
            **kwargs,
        )
        self._clients.append(client)
        return client

    def raw(
        self, method: str, path: str, *, key: str = SANDBOX_KEY, direct: bool = True, **kwargs: Any
    ) -> requests.Response:
        """A plain HTTP request (to the sandbox by default) with a Bearer key."""
        url = self.sandbox_url if direct else self.gateway_url
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        return requests.request(method, url + path, headers=headers, timeout=10, **kwargs)


@pytest.fixture
def sandbox_settings() -> SandboxSettings:
    """Override in a test module to change the sandbox's settings."""
    return SandboxSettings(report_delay=0.3, seed=1234)


@pytest.fixture
def sandbox_stack(
    loop_thread: LoopThread, tmp_path: Path, sandbox_settings: SandboxSettings
) -> Iterator[SandboxStack]:
    sandbox = Sandbox(settings=sandbox_settings)
    runners: list[Served] = []
    served = loop_thread.run(start_app(create_sandbox_app(sandbox)))
    runners.append(served)
    sandbox.settings.files_base = served.url
    config = parse_config(
        {
            "upstream": {
                "api": served.url,
                "files": served.url,
                "connect": served.url,
                "meter_events": served.url,
                "read_timeout": 5.0,
            },
            "teams": [
                {
                    "name": "full",
                    "key_sha256": [digest(GATEWAY_KEY)],
                    "upstream_key_env": "SANDBOX_KEY",
                }
            ],
            # these tests look at the sandbox; the cache has its own tests
            "plugins": {"audit": {"path": str(tmp_path / "audit.jsonl")}, "disable": ["cache"]},
        },
        environ={"SANDBOX_KEY": SANDBOX_KEY},
    )
    gateway = loop_thread.run(start_app(create_app(config), gateway=True))
    runners.append(gateway)
    stack = SandboxStack(loop_thread, sandbox, served.url, gateway.url)
    yield stack
    for client in stack._clients:
        client._requestor._client.close()  # type: ignore[attr-defined]
    for runner in reversed(runners):
        loop_thread.run(runner.runner.cleanup())


@pytest.fixture
def sdk(sandbox_stack: SandboxStack) -> Callable[..., stripe.StripeClient]:
    return sandbox_stack.sdk
