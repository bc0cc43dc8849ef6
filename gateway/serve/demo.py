"""``stripe-gateway sandbox`` and ``stripe-gateway demo``: run the sandbox, alone or behind
the gateway, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass

from aiohttp import web

from gateway.app import create_app
from gateway.config import parse_config
from gateway.demokeys import DEMO_KEYS
from gateway.serve.server import GatewayRunner
from sandbox.app import Sandbox, create_sandbox_app
from sandbox.core import SandboxSettings
from sandbox.faults import Faults, control_app

__all__ = ["DEMO_KEYS", "DemoOptions", "SandboxOptions", "run_demo", "run_sandbox"]

DEMO_UPSTREAM_KEY = "sk_test_demo_sandbox_key"


@dataclass
class SandboxOptions:
    host: str = "127.0.0.1"
    port: int = 12111
    #: None: the API port + 1, or an ephemeral port when the API port is (0)
    control_port: int | None = None
    settings: SandboxSettings | None = None
    faults: Faults | None = None


@dataclass
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    sandbox: SandboxOptions | None = None


async def _listen(runner: web.BaseRunner, host: str, port: int) -> str:
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    address = runner.addresses[-1]
    return f"http://{address[0]}:{address[1]}"


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _start_sandbox(
    options: SandboxOptions,
) -> tuple[list[web.BaseRunner], Sandbox, str, str]:
    sandbox = Sandbox(
        settings=options.settings or SandboxSettings(), faults=options.faults or Faults()
    )
    api = web.AppRunner(create_sandbox_app(sandbox), access_log=None, shutdown_timeout=2)
    url = await _listen(api, options.host, options.port)
    if options.settings is None or options.settings.files_base == SandboxSettings.files_base:
        sandbox.settings.files_base = url
    control = web.AppRunner(control_app(sandbox.faults, sandbox.reset), access_log=None)
    control_port = options.control_port
    if control_port is None:
        control_port = options.port + 1 if options.port else 0
    control_url = await _listen(control, options.host, control_port)
    return [api, control], sandbox, url, control_url


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _sandbox_main(options: SandboxOptions) -> None:
    runners, _, url, control_url = await _start_sandbox(options)
    _say(f"stripe-gateway sandbox: API and files on {url}, fault control on {control_url}")
    _say("Any sk_test_/rk_test_ key works; each key has its own data. Ctrl-C stops.")
    try:
        await _wait_for_signal()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def _demo_main(options: DemoOptions) -> None:
    runners, sandbox, sandbox_url, control_url = await _start_sandbox(
        options.sandbox or SandboxOptions()
    )
    try:
        teams = [
            {
                "name": "readonly",
                "key_sha256": [_digest(DEMO_KEYS[0][1])],
                "upstream_key_env": "DEMO_UPSTREAM_KEY",
                "allow": ["GET /**"],
            },
            {
                "name": "full",
                "key_sha256": [_digest(DEMO_KEYS[1][1])],
                "upstream_key_env": "DEMO_UPSTREAM_KEY",
            },
        ]
        config = parse_config(
            {
                "server": {"host": options.host, "port": options.port},
                "upstream": {
                    name: sandbox_url for name in ("api", "files", "connect", "meter_events")
                },
                "teams": teams,
            },
            source="<demo>",
            environ={"DEMO_UPSTREAM_KEY": DEMO_UPSTREAM_KEY},
        )
        gateway = GatewayRunner(create_app(config), access_log=None, shutdown_timeout=5)
        runners.append(gateway)
        url = await _listen(gateway, options.host, options.port)
        sandbox.settings.files_base = url  # file URLs lead through the gateway
        _say(_banner(url, sandbox_url, control_url))
        await _wait_for_signal()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        _say("stripe-gateway demo: stopped.")


def _digest(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def _banner(url: str, sandbox_url: str, control_url: str) -> str:
    keys = "\n".join(f"    {team:<9} {key:<24} ({what})" for team, key, what in DEMO_KEYS)
    return f"""
stripe-gateway demo: the gateway on {url}, in front of the built-in Stripe sandbox on {sandbox_url}
  gateway keys (use one as your Stripe API key):
{keys}
  fault control (latency, 500s, 429s, resets): {control_url}/faults

Try it:
  curl -s {url}/v1/sigma/scheduled_query_runs?limit=2 -u {DEMO_KEYS[0][1]}:

  python3 - <<'PY'
import stripe
client = stripe.StripeClient(
    "{DEMO_KEYS[1][1]}", base_addresses={{"api": "{url}", "files": "{url}"}}
)
hook = {{"url": "https://example.com/hook", "enabled_events": ["*"]}}
print(client.v1.webhook_endpoints.create(hook))
PY

Audit lines follow on standard output. Ctrl-C stops both.
"""


def run_sandbox(options: SandboxOptions) -> None:
    asyncio.run(_sandbox_main(options))


def run_demo(options: DemoOptions) -> None:
    asyncio.run(_demo_main(options))
